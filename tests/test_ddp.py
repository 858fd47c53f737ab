"""``torchrun --nproc_per_node 2 -m fastlt train`` on CPU (gloo): the run finishes, every rank holds the same
confusion counts (the pairs are all-gathered before ``PlanQueue.done``, so CP-Mix plans agree across ranks;
the trainer compares the ranks' method state at the end and fails the run if they differ), and only rank 0
writes the run directory. The comparison itself is tested on two gloo processes whose states differ."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def test_two_process_gloo_run_agrees_on_confusion_counts(digits_data, tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    if not Path(torchrun).exists():
        pytest.skip("torchrun not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        torchrun,
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "fastlt",
        "train",
        "--dataset",
        "digits-lt",
        "--method",
        "cpmix",
        "--epochs",
        "2",
        "--cpmix-start-epoch",
        "1",
        "--finetune-epochs",
        "0",
        "--data-root",
        str(digits_data),
        "--runs",
        str(tmp_path),
        "--name",
        "ddp",
        "--progress",
        "false",
        "--device",
        "cpu",
    ]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "2 ranks" in out and "ranks disagree" not in out

    # rank 0's checkpoint holds the counts gathered from both ranks' halves of every batch: every mistake of
    # the two epochs' un-mixed forward passes, at most one per training image per epoch
    from fastlt.checkpoint import load_checkpoint
    from fastlt.sampling import ConfusionCounts

    ck = load_checkpoint(tmp_path / "ddp" / "last.pt")
    K = ConfusionCounts(10)
    K.load_state_dict(ck["method"]["counts"])
    assert 0 < K.total <= 2 * 544
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1]  # one writer: no duplicated lines
    assert (
        json.loads((tmp_path / "ddp" / "eval.json").read_text())["num_images"] == 400
    )  # every test image once


def _compare_states(rank: int, world: int, port: int, same: bool, results) -> None:
    import torch.distributed as dist

    from fastlt.distributed import Dist, check_same_state
    from fastlt.sampling import ConfusionCounts

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        K = ConfusionCounts(4)
        K.update(np.array([0, 1, 2]), np.array([1, 2, 3 if same or rank == 0 else 0]))
        check_same_state({"counts": K.state_dict()}, Dist(rank, world), "the confusion counts")
        results.put((rank, "agree"))
    except RuntimeError as e:
        results.put((rank, str(e)))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("same", [True, False])
def test_ranks_with_different_method_state_are_refused(same):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_compare_states, args=(r, 2, port, same, results)) for r in range(2)]
    for p in procs:
        p.start()
    got = sorted(results.get(timeout=120) for _ in procs)  # one answer per rank
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert [r for r, _ in got] == [0, 1]
    if same:
        assert [m for _, m in got] == ["agree", "agree"]
    else:
        assert all("ranks disagree on the confusion counts" in m for _, m in got), got
