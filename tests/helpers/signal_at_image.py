"""``fastlt convert`` that signals itself when a writer process starts loading source image N:

    python signal_at_image.py N SIGNAL {group,main} CONVERT-ARGS...

SIGNAL is a name (SIGINT, SIGKILL). ``group`` signals the conversion's whole process group, as Ctrl-C in a
terminal does; ``main`` only the converting process. The writer process that loads image N then waits to be
stopped, so the conversion cannot finish first: the signal lands mid-write on every machine, with nothing
added to fastlt for it. FFCV's writer processes are forked, so they inherit the wrapped ``load``.
"""

from __future__ import annotations

import os
import signal
import sys

from fastlt.convert import main
from fastlt.datasets.engine import FileSource


def signal_at(image: int, signum: int, target: str) -> None:
    converter = os.getpid()
    load = FileSource.load

    def load_or_signal(self, i: int):
        if i == image:
            if target == "group":
                os.killpg(os.getpgrp(), signum)
            else:
                os.kill(converter, signum)
            signal.pause()  # until the interrupted conversion stops this writer process
        return load(self, i)

    FileSource.load = load_or_signal


if __name__ == "__main__":
    image, name, target = sys.argv[1:4]
    signal_at(int(image), signal.Signals[name], target)
    sys.exit(main(sys.argv[4:]))
