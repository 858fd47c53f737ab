"""Shared fixtures. Every test builds its own data; nothing downloads."""

from __future__ import annotations

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
