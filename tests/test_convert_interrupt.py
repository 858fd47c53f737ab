"""An interrupted conversion never leaves a ``.beton`` or ``.index.json`` at the destination.

The conversion runs in a subprocess (its own session, like a terminal job) through the real CLI and the
real FFCV writer; each image load is slowed down so that the signal reliably lands mid-write.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from synth import write_imagefolder

from fastlt.convert import main as convert_main
from fastlt.shards import open_shard

SLOW_CONVERT = textwrap.dedent(
    """
    import sys, time
    from fastlt.datasets import engine
    from fastlt.convert import main

    load = engine.FileSource.load
    def slow_load(self, i):
        time.sleep(0.05)  # 60 rows x 50 ms: a few seconds of writing to interrupt
        return load(self, i)
    engine.FileSource.load = slow_load
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt") / "photos"
    write_imagefolder(root, {"": [30, 20, 10]})
    return root


def start(folder, out):
    argv = [
        sys.executable,
        "-c",
        SLOW_CONVERT,
        "imagefolder",
        str(folder),
        "--out",
        str(out),
        "--workers",
        "2",
    ]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def wait_mid_write(proc, dest, timeout=60):
    """Block until the writer's temporary .beton exists (validation done, writing under way)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if list(dest.glob(".train.beton.*.tmp")):
            time.sleep(0.5)  # let the writer processes get going
            assert proc.poll() is None, proc.communicate()
            return
        if proc.poll() is not None:
            pytest.fail(f"conversion ended before it was interrupted: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("conversion never started writing")


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
    proc = start(folder, out)
    try:
        wait_mid_write(proc, dest)
        if target == "group":  # what Ctrl-C in a terminal does
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT)
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
    proc = start(folder, out)
    try:
        wait_mid_write(proc, dest)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        assert final_files(dest) == []
        assert list(dest.glob(".train.beton.*.tmp")), "a killed run leaves only its hidden temporary"
    finally:
        reap(proc)
    assert convert_main(["imagefolder", str(folder), "--out", str(out), "--workers", "2"]) == 0
    assert final_files(dest) == ["train.beton", "train.index.json"]
    assert not list(dest.glob(".*.tmp")), "the re-run swept the stale temporary"
    assert open_shard(dest / "train.beton").index.class_counts == [30, 20, 10]
