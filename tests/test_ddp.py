"""``torchrun --nproc_per_node 2 -m fastlt train`` on CPU (gloo): the run finishes, every rank holds the same
confusion counts (the pairs are all-gathered before ``PlanQueue.done``, so CP-Mix plans agree across ranks),
and only rank 0 writes the run directory."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

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
    digests = dict(re.findall(r"\[rank (\d)\] confusion counts: \d+ pairs, sha256 ([0-9a-f]+)", out))
    assert set(digests) == {"0", "1"}, out
    assert digests["0"] == digests["1"]
    assert "2 ranks" in out

    # rank 0's checkpoint holds those same counts, gathered from both ranks' halves of every batch
    from fastlt.checkpoint import load_checkpoint
    from fastlt.sampling import ConfusionCounts
    from fastlt.train import counts_digest

    ck = load_checkpoint(tmp_path / "ddp" / "last.pt")
    K = ConfusionCounts(10)
    K.load_state_dict(ck["sampler"]["counts"])
    assert K.total > 0 and counts_digest(K) == digests["0"]
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1]  # one writer: no duplicated lines
    assert (
        json.loads((tmp_path / "ddp" / "eval.json").read_text())["num_images"] == 400
    )  # every test image once
