"""``fastlt convert`` that signals itself when a worker process starts converting one source image:

    python signal_at_image.py IMAGE SIGNAL {group,main} CONVERT-ARGS...

IMAGE is the image's path relative to the dataset root (e.g. ``val/class_b/00070.jpg``).
SIGNAL is a name (SIGINT, SIGKILL). ``group`` signals the conversion's whole process group, as Ctrl-C in a
terminal does; ``main`` only the converting process. The worker process that converts IMAGE then waits to be
stopped, so the conversion cannot finish first: the signal lands mid-write on every machine, with nothing
added to fastlt for it. The worker processes are forked, so they inherit the wrapped ``FileRows.row``.
"""

from __future__ import annotations

import os
import signal
import sys

from fastlt.convert import main
from fastlt.datasets.engine import FileRows


def signal_at(image: str, signum: int, target: str) -> None:
    converter = os.getpid()
    row = FileRows.row

    def row_or_signal(self, i: int, rel: str, clock):
        if rel == image:
            if target == "group":
                os.killpg(os.getpgrp(), signum)
            else:
                os.kill(converter, signum)
            signal.pause()  # until the interrupted conversion stops this worker process
        return row(self, i, rel, clock)

    FileRows.row = row_or_signal


if __name__ == "__main__":
    image, name, target = sys.argv[1:4]
    signal_at(image, signal.Signals[name], target)
    sys.exit(main(sys.argv[4:]))
