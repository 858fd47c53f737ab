"""Worker processes for conversion: forked, bounded, ordered, and never outliving the parent.

* Forked (Linux) so that workers start in milliseconds and inherit what the parent prepared (compiled numba
  kernels, an in-memory image source registered with :func:`inherit`).
* ``imap`` keeps at most ``window`` tasks in flight and yields results in task order: memory stays bounded
  however large the split, and the output is the same from run to run. Tasks are drawn from the iterator
  only as results come back, so a task generator can change what it asks for mid-way.
* A worker that dies (a decoder crash, the OOM killer) is reported as :class:`WorkerDied` naming its task,
  instead of a hang (``concurrent.futures`` notices dead workers; ``multiprocessing.Pool`` does not).
* Workers ignore SIGINT — Ctrl-C reaches the whole process group, and the parent alone decides what an
  interrupt cleans up — and ask the kernel to SIGKILL them when the parent dies (``PR_SET_PDEATHSIG``), so
  a SIGKILLed conversion leaves no worker behind. On any exception the parent kills them itself.
* Workers keep freed memory for reuse (glibc ``mallopt``): a decoded photograph is a few MB, above glibc's
  mmap threshold, so each image would otherwise map fresh pages and fault on every one of them — a third of
  the cost of shrinking a 700 px photograph to 512 px. Buffers above ``KEEP_BELOW`` are still returned.
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

PR_SET_PDEATHSIG = 1
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_BELOW = 64 << 20  # bytes: allocations smaller than this are recycled within a worker
_INHERITED: dict[int, object] = {}


class WorkerDied(RuntimeError):
    """A worker process exited while one of ``tasks`` (those in flight) was running."""

    def __init__(self, tasks: list):
        super().__init__("a worker process died (killed, or crashed in a decoder)")
        self.tasks = tasks


def inherit(obj) -> int:
    """Register ``obj`` for the workers of pools created from now on; they read it with :func:`inherited`
    (copied by fork, never pickled). Returns its key; :func:`forget` it when done."""
    key = id(obj)
    _INHERITED[key] = obj
    return key


def inherited(key: int):
    return _INHERITED[key]


def forget(key: int) -> None:
    _INHERITED.pop(key, None)


def _init_worker(parent: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if hasattr(libc, "mallopt"):  # glibc
            libc.mallopt(M_MMAP_THRESHOLD, KEEP_BELOW)
            libc.mallopt(M_TRIM_THRESHOLD, 4 * KEEP_BELOW)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class WorkerPool:
    """``with WorkerPool(workers) as pool: for result in pool.imap(fn, tasks): ...`` — ``fn`` a module-level
    function of one picklable task. With ``workers <= 1`` tasks run in this process, one at a time."""

    def __init__(self, workers: int, window_per_worker: int = 4):
        self.workers = max(1, int(workers))
        self.window = self.workers * window_per_worker
        self.executor: ProcessPoolExecutor | None = None
        self._children_before: set = set()

    def __enter__(self) -> WorkerPool:
        if self.workers > 1:
            self._children_before = set(mp.active_children())
            self.executor = ProcessPoolExecutor(
                self.workers,
                mp_context=mp.get_context("fork"),
                initializer=_init_worker,
                initargs=(os.getpid(),),
            )
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.executor is None:
            return
        if exc_type is None:
            self.executor.shutdown(wait=True)
            return
        # Interrupted or failed: stop the workers now rather than wait for tasks that nobody will read.
        self.executor.shutdown(wait=False, cancel_futures=True)
        started = set(mp.active_children()) - self._children_before
        for child in started:
            child.kill()
        for child in started:
            child.join(timeout=5)

    def imap(self, fn: Callable, tasks: Iterable) -> Iterator:
        tasks = iter(tasks)
        if self.executor is None:
            yield from map(fn, tasks)
            return
        pending: collections.deque = collections.deque()
        for task in itertools.islice(tasks, self.window):
            pending.append((task, self.executor.submit(fn, task)))
        while pending:
            task, future = pending.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:
                raise WorkerDied([task, *(t for t, _ in pending)]) from None
            for more in itertools.islice(tasks, 1):
                pending.append((more, self.executor.submit(fn, more)))
            yield result
