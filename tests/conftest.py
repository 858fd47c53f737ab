"""Shared fixtures. Every test builds its own data; nothing downloads."""

from __future__ import annotations

import multiprocessing
import os

import pytest
import torch

# Tests must be reproducible on 2 cores: keep torch from oversubscribing next to numba/FFCV threads.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    """Everything under tests/gpu/ carries the `gpu` marker and is skipped cleanly without CUDA."""
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if f"{os.sep}gpu{os.sep}" in str(item.fspath):
            item.add_marker(pytest.mark.gpu)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip)


@pytest.fixture(scope="session")
def digits_data(tmp_path_factory):
    """Root of a converted digits-lt (train + test shards), made once per session through the real CLI."""
    from fastlt.convert import main as convert

    root = tmp_path_factory.mktemp("digits-data")
    assert convert(["digits-lt", "--out", str(root), "--workers", "1"]) == 0
    return root


@pytest.fixture(scope="module")
def interpreter():
    """A worker process whose Triton runs in the CPU interpreter, for the kernel tests.

    Triton fixes interpreter vs compiler when ``triton`` is first imported (its own ``tl.sum``/``tl.max`` are
    ``triton.jit`` functions), so the interpreter cannot share a process with compiled CUDA kernels. The
    worker is spawned with ``TRITON_INTERPRET=1``; this process never sets it, so tests/gpu in the same
    session still compile. ``interpreter.apply(fn, args, kwargs)`` runs ``fn`` there and returns its result
    (``fn`` must be importable by module and name).
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        mp.setenv("OMP_NUM_THREADS", "1")
        pool = multiprocessing.get_context("spawn").Pool(1)  # the worker starts (and copies the env) here
    yield pool
    pool.close()
    pool.join()
