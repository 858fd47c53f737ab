"""An interrupted conversion never leaves a ``.beton`` or ``.index.json`` at the destination.

The conversion runs in a subprocess (its own session, like a terminal job) through the real CLI and the
real FFCV writer, started by ``helpers/signal_at_image.py``: the writer process that loads image 30 of 60
sends the signal and then waits to be stopped, so the signal always lands mid-write.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from fastlt.convert import main as convert_main
from fastlt.shards import open_shard
from helpers import SIGNAL_AT_IMAGE
from synth import write_imagefolder

MID_WRITE = 30  # of 60 images: the first of class_b


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt") / "photos"
    write_imagefolder(root, {"": [30, 20, 10]})
    return root


def start(folder, out, signum: signal.Signals, target: str):
    """``fastlt convert imagefolder`` that sends ``signum`` to ``target`` ('group' or 'main') mid-write."""
    argv = [sys.executable, str(SIGNAL_AT_IMAGE), str(MID_WRITE), signum.name, target]
    argv += ["imagefolder", str(folder), "--out", str(out), "--workers", "2"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def final_files(dest):
    return sorted(p.name for p in dest.glob("*") if p.name.endswith((".beton", ".index.json")))


def reap(proc):
    """Make sure nothing of the conversion outlives the test (its writer processes share its group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate(timeout=30)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", ["group", "main"], ids=["ctrl-c", "sigint-main-only"])
def test_sigint_mid_write_leaves_nothing(folder, tmp_path, target):
    out = tmp_path / "out"
    dest = out / "photos"
    proc = start(folder, out, signal.SIGINT, target)
    try:
        rc = proc.wait(timeout=60)
        err = proc.stderr.read().decode()
        assert rc == 130, err
        assert "interrupted" in err
        assert final_files(dest) == []
        assert not list(dest.glob(".*.tmp")), "temporaries are removed on a clean interrupt"
    finally:
        reap(proc)


@pytest.mark.timeout(120)
def test_sigkill_mid_write_leaves_nothing_and_a_rerun_succeeds(folder, tmp_path):
    out = tmp_path / "out"
    dest = out / "photos"
    proc = start(folder, out, signal.SIGKILL, "group")
    try:
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        assert final_files(dest) == []
        assert list(dest.glob(".train.beton.*.tmp")), "a killed run leaves only its hidden temporary"
    finally:
        reap(proc)
    assert convert_main(["imagefolder", str(folder), "--out", str(out), "--workers", "2"]) == 0
    assert final_files(dest) == ["train.beton", "train.index.json"]
    assert not list(dest.glob(".*.tmp")), "the re-run swept the stale temporary"
    assert open_shard(dest / "train.beton").index.class_counts == [30, 20, 10]
