"""A PlanQueue client that records what the queue did, for tests of its ordering guarantees."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fastlt.pipelines.plan import StepPlan


class PlanRecorder:
    """``make_plan`` and ``apply`` for a :class:`~fastlt.pipelines.plan.PlanQueue` that log what they see.

    Tests finish step ``s`` with payload ``s`` (``queue.done(s, s)``); ``apply`` logs each payload the queue
    hands over, and ``make_plan`` logs which payloads had been applied when it made each plan. A payload
    exists only once its step is finished, so ``made[s]`` shows which steps were finished, at the latest,
    when plan ``s`` was made. Both callbacks run on the queue's producer thread (``apply`` also on
    ``close()``), hence the lock.
    """

    def __init__(self, rows=lambda step: np.array([step])):
        self.rows = rows  # step -> the plan's main rows
        self._changed = threading.Condition()
        self.applied: list = []
        self.made: dict[int, tuple] = {}  # step -> payloads applied before its plan was made

    def apply(self, payload) -> None:
        with self._changed:
            self.applied.append(payload)

    def make_plan(self, step: int) -> StepPlan:
        with self._changed:
            self.made[step] = tuple(self.applied)
            self._changed.notify_all()
        return StepPlan.from_segments(0, step, seed=step, main=self.rows(step))

    def made_steps(self) -> list[int]:
        with self._changed:
            return sorted(self.made)

    def wait_made(self, step: int, timeout: float = 30.0) -> None:
        """Block until plan ``step`` is made; fail the test if that takes longer than ``timeout`` seconds."""
        with self._changed:
            if not self._changed.wait_for(lambda: step in self.made, timeout):
                pytest.fail(f"plan {step} not made within {timeout} s; made so far: {sorted(self.made)}")
