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
* Results come back through shared memory: a worker pickles its result into one of ``window`` slots of a
  buffer mapped before the fork and sends only the length. Through the executor's pipe (64 KB at a time, a
  wake-up each) 16 shrunk photographs of 58 KB cost ~0.18 ms of CPU per image, workers and parent together,
  as much as a fifth of the decode; through a slot, one copy on each side. A slot is reused only after the
  parent has read it; a result larger than a slot, or one with no slot free, takes the pipe.
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import mmap
import multiprocessing as mp
import os
import pickle
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

PR_SET_PDEATHSIG = 1
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_BELOW = 64 << 20  # bytes: allocations smaller than this are recycled within a worker
SLOT_BYTES = 8 << 20  # a pickled result up to this size comes back through shared memory
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


def keep_freed_memory() -> None:
    """Have glibc's malloc recycle freed blocks below ``KEEP_BELOW`` in this process instead of unmapping
    them (see the module docstring). No effect elsewhere than Linux with glibc."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None)
        if hasattr(libc, "mallopt"):  # glibc
            libc.mallopt(M_MMAP_THRESHOLD, KEEP_BELOW)
            libc.mallopt(M_TRIM_THRESHOLD, 4 * KEEP_BELOW)


def _init_worker(parent: int) -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    keep_freed_memory()
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _into_slot(fn: Callable, task, key: int, slot: int | None) -> tuple[int, bytes | None]:
    """In a worker: ``fn(task)`` pickled, and put in ``slot`` of the pool's shared buffer when it fits.
    Returns (its length, None) for a result in the slot, else (-1, the pickled result)."""
    data = pickle.dumps(fn(task), protocol=pickle.HIGHEST_PROTOCOL)
    if slot is None or len(data) > SLOT_BYTES:
        return -1, data
    start = slot * SLOT_BYTES
    inherited(key)[start : start + len(data)] = data
    return len(data), None


class WorkerPool:
    """``with WorkerPool(workers) as pool: for result in pool.imap(fn, tasks): ...`` — ``fn`` a module-level
    function of one picklable task. With ``workers <= 1`` tasks run in this process, one at a time."""

    def __init__(self, workers: int, window_per_worker: int = 4):
        self.workers = max(1, int(workers))
        self.window = self.workers * window_per_worker
        self.executor: ProcessPoolExecutor | None = None
        self._children_before: set = set()
        self._slots: mmap.mmap | None = None  # results of the workers (see the module docstring)
        self._slots_key = 0
        self._free: list[int] = []

    def __enter__(self) -> WorkerPool:
        if self.workers > 1:
            self._children_before = set(mp.active_children())
            # Anonymous and shared: mapped before the workers fork, so theirs is the same memory.
            self._slots = mmap.mmap(-1, self.window * SLOT_BYTES)
            self._slots_key = inherit(self._slots)
            self._free = list(range(self.window))
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
        try:
            self._stop(exc_type is None)
        finally:
            forget(self._slots_key)
            self._slots.close()

    def _stop(self, finished: bool) -> None:
        if finished:
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

        def submit(task) -> None:
            slot = self._free.pop() if self._free else None
            pending.append((task, slot, self.executor.submit(_into_slot, fn, task, self._slots_key, slot)))

        for task in itertools.islice(tasks, self.window):
            submit(task)
        try:
            while pending:
                task, slot, future = pending.popleft()
                try:
                    size, data = future.result()
                except BrokenProcessPool:
                    raise WorkerDied([task, *(t for t, _, _ in pending)]) from None
                if size >= 0:
                    start = slot * SLOT_BYTES
                    with memoryview(self._slots) as view:  # read in place: unpickling is the one copy
                        result = pickle.loads(view[start : start + size])
                else:
                    result = pickle.loads(data)
                if slot is not None:  # read (or never written): free for the next task
                    self._free.append(slot)
                for more in itertools.islice(tasks, 1):
                    submit(more)
                yield result
        finally:
            # Abandoned (closed early, or failed): a slot is free again once its task is over.
            for _, slot, future in pending:
                if slot is not None:
                    future.add_done_callback(lambda _, slot=slot: self._free.append(slot))
