"""``fastlt train`` that, when the trainer reports global step K finished, either holds or presses Ctrl-C:

    python at_step.py hold K TRAIN-ARGS...        # prints HOLDING and waits for a line on stdin, then goes on
    python at_step.py interrupt K TRAIN-ARGS...   # sends itself SIGINT (what Ctrl-C in a terminal sends)

Like ``kill_at_step.py``, the action lands inside ``PlanQueue.done(K)``, right after step K's optimiser
update, on the training loop's thread: the same moment on every machine, with nothing added to fastlt for it.
``hold`` keeps a training alive, its run directory locked, for as long as the test needs.
"""

from __future__ import annotations

import os
import signal
import sys

from fastlt.pipelines.plan import PlanQueue
from fastlt.train import main


def act_at(action: str, step: int) -> None:
    done = PlanQueue.done

    def done_then_act(self, finished: int, *args, **kwargs):
        if finished == step:
            if action == "hold":
                print("HOLDING", flush=True)
                sys.stdin.readline()
            else:
                os.kill(os.getpid(), signal.SIGINT)
        return done(self, finished, *args, **kwargs)

    PlanQueue.done = done_then_act


if __name__ == "__main__":
    if sys.argv[1] not in ("hold", "interrupt"):
        sys.exit(f"usage: {sys.argv[0]} hold|interrupt STEP TRAIN-ARGS...")
    act_at(sys.argv[1], int(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
