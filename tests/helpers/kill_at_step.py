"""``fastlt train`` that SIGKILLs itself when the trainer reports global step K finished:

    python kill_at_step.py K TRAIN-ARGS...

The kill lands inside ``PlanQueue.done(K)``, right after step K's optimiser update: a crash at a chosen
step, the same on every machine, with nothing added to fastlt for it.
"""

from __future__ import annotations

import os
import signal
import sys

from fastlt.pipelines.plan import PlanQueue
from fastlt.train import main


def kill_at(step: int) -> None:
    done = PlanQueue.done

    def done_or_kill(self, finished: int, *args, **kwargs):
        if finished == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return done(self, finished, *args, **kwargs)

    PlanQueue.done = done_or_kill


if __name__ == "__main__":
    kill_at(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
