"""An interrupted conversion never leaves a split under a final name, says what it left, and takes its
worker processes with it.

The conversion runs in a subprocess (its own session, like a terminal job) through the real CLI and the
real worker processes, started by ``helpers/signal_at_image.py``: the worker that converts a given image
sends the signal and then waits to be stopped, so the signal always lands mid-write — in the train split
(the first written) or in the val split (when train is complete but not yet published).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastlt.convert import main as convert_main
from fastlt.shards import open_shard
from fastlt.workers import SLOT_BYTES, WorkerPool
from helpers import SIGNAL_AT_IMAGE
from synth import write_imagefolder

IN_TRAIN = "train/class_b/00030.jpg"  # image 31 of train's 60: the first of class_b
IN_VAL = "val/class_b/00070.jpg"  # image 11 of val's 30, after all of train
FINAL = ["train.beton", "train.index.json", "val.beton", "val.index.json"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt") / "photos"
    write_imagefolder(root, {"train": [30, 20, 10], "val": [10, 10, 10]})
    return root


def start(folder, out, signum: signal.Signals, target: str, image: str = IN_TRAIN):
    """``fastlt convert imagefolder`` that sends ``signum`` to ``target`` ('group' or 'main') when a worker
    starts on ``image``."""
    argv = [sys.executable, str(SIGNAL_AT_IMAGE), image, signum.name, target]
    argv += ["imagefolder", str(folder), "--out", str(out), "--workers", "2"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def final_files(dest):
    return sorted(p.name for p in dest.glob("*") if p.name.endswith((".beton", ".index.json")))


def digests(dest) -> dict[str, str]:
    return {name: hashlib.sha256((dest / name).read_bytes()).hexdigest() for name in final_files(dest)}


def live_members(group: int) -> list[int]:
    """Processes of a process group that are still running (zombies excluded)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            live.append(int(stat.parent.name))
    return live


def reap(proc):
    """Make sure nothing of the conversion outlives the test (its workers share its group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate(timeout=30)


def interrupted(proc) -> str:
    rc = proc.wait(timeout=60)
    err = proc.stderr.read().decode()
    assert rc == 130, err
    return err.strip().splitlines()[-1]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "target, image, split, n",
    [("group", IN_TRAIN, "train", 60), ("main", IN_VAL, "val", 30)],
    ids=["ctrl-c-in-train", "sigint-main-only-in-val"],
)
def test_sigint_mid_write_leaves_nothing_and_says_so(folder, tmp_path, target, image, split, n):
    out = tmp_path / "out"
    dest = out / "photos"
    proc = start(folder, out, signal.SIGINT, target, image)
    try:
        said = interrupted(proc)
        assert said.startswith(f"fastlt convert imagefolder: interrupted while converting photos/{split} (")
        assert said.endswith(f"of {n} images); removed its temporary files; nothing new under {dest}"), said
        # In val, train is complete but unpublished: the splits of a conversion land together or not at all.
        assert final_files(dest) == []
        assert not list(dest.glob(".*.tmp")), "temporaries are removed on a clean interrupt"
    finally:
        reap(proc)


@pytest.mark.timeout(180)
def test_an_interrupted_reconversion_keeps_the_earlier_one_and_names_it(folder, tmp_path):
    out = tmp_path / "out"
    dest = out / "photos"
    assert convert_main(["imagefolder", str(folder), "--out", str(out), "--workers", "2"]) == 0
    before = digests(dest)
    assert sorted(before) == FINAL
    proc = start(folder, out, signal.SIGTERM, "main", IN_VAL)
    try:
        said = interrupted(proc)
        assert said.endswith(f"nothing new under {dest} (the earlier {', '.join(FINAL)} there are unchanged)")
        assert digests(dest) == before
        assert open_shard(dest / "val.beton").index.class_counts == [10, 10, 10]
    finally:
        reap(proc)


@pytest.mark.timeout(120)
def test_sigkill_mid_write_leaves_nothing_and_a_rerun_succeeds(folder, tmp_path):
    out = tmp_path / "out"
    dest = out / "photos"
    proc = start(folder, out, signal.SIGKILL, "group", IN_VAL)
    try:
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        assert final_files(dest) == []
        left = sorted(p.name.split(".")[1] for p in dest.glob(".*.beton.*.tmp"))
        assert left == ["train", "val"], "a killed run leaves only its hidden temporaries"
    finally:
        reap(proc)
    assert convert_main(["imagefolder", str(folder), "--out", str(out), "--workers", "2"]) == 0
    assert final_files(dest) == FINAL
    assert not list(dest.glob(".*.tmp")), "the re-run swept the stale temporaries"
    assert open_shard(dest / "train.beton").index.class_counts == [30, 20, 10]


@pytest.mark.timeout(120)
def test_workers_die_with_a_sigkilled_parent(folder, tmp_path):
    dest = tmp_path / "out" / "photos"
    proc = start(folder, tmp_path / "out", signal.SIGKILL, "main")
    try:
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        # The worker that sent the signal waits in pause(), and nothing else would ever stop it.
        deadline = time.monotonic() + 30
        while live_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert live_members(proc.pid) == [], "worker processes outlived the killed conversion"
        temporary = next(dest.glob(".train.beton.*.tmp"))
        size = temporary.stat().st_size
        assert final_files(dest) == [] and temporary.stat().st_size == size
    finally:
        reap(proc)


# ------------------------------------------------------------------------- results of the worker processes
def _blob(n: int) -> bytes:
    """A task result: ``n`` MiB and a few bytes, every byte n."""
    return bytes([n]) * ((n << 20) + n)


def test_results_come_back_in_order_through_slots_and_the_pipe_even_after_an_abandoned_imap():
    sizes = [0, 1, 9, 2, 12, 3, 0, 1, 2, 3, 4, 5, 6, 7]  # MiB; 9 and 12 exceed a slot and take the pipe
    assert max(sizes) << 20 > SLOT_BYTES > 7 << 20
    with WorkerPool(2) as pool:
        assert list(pool.imap(_blob, sizes)) == [_blob(n) for n in sizes]
        # Closed after two results, while tasks that hold slots still run: a slot is reused once its task
        # is over, never while a worker may still write it.
        first = pool.imap(_blob, sizes)
        assert [next(first), next(first)] == [_blob(0), _blob(1)]
        first.close()
        assert list(pool.imap(_blob, sizes)) == [_blob(n) for n in sizes]
