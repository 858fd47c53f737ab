"""A run SIGKILLed mid-epoch and resumed with ``--resume`` reaches the metrics of an uninterrupted run.

CP-Mix over three epochs covers every kind of state a resume must restore: the ERM stage's confusion counts
feeding the CP-mix plans of epoch 2, momentum, BatchNorm statistics, the LR schedule position, and the stage
switch to the classifier fine-tune with its own optimiser. The killed run is ``fastlt.train.main`` in a
subprocess that SIGKILLs itself at a chosen step (``helpers/kill_at_step.py``); the resume is a real
``python -m fastlt train --resume`` process.
"""

import signal

import torch

from fastlt.checkpoint import load_checkpoint
from helpers import DETERMINISTIC, KILL_AT_STEP, eval_json, fastlt_train, metrics

ARGS = [
    "--dataset",
    "digits-lt",
    "--method",
    "cpmix",
    "--epochs",
    "2",
    "--cpmix-start-epoch",
    "1",
    "--finetune-epochs",
    "1",
    "--batch-size",
    "32",
    "--progress",
    "false",
]
# 544 train images / 32 = 17 steps an epoch: global steps 17..33 are epoch 2 (CP-Mix); 25 lies mid-epoch
KILL_STEP = 25


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(digits_data, tmp_path):
    common = [*ARGS, "--data-root", str(digits_data), "--runs", str(tmp_path)]
    # The uninterrupted run, in this process with the subprocesses' thread count (same float reductions).
    from fastlt.train import main as train_main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train_main([*common, "--name", "full"]) == 0
    finally:
        torch.set_num_threads(threads)
    want = metrics(tmp_path / "full")
    assert [m["stage"] for m in want] == ["erm", "cpmix", "finetune"]

    victim = fastlt_train(str(KILL_STEP), *common, "--name", "cut", launcher=KILL_AT_STEP)
    out, _ = victim.communicate(timeout=300)
    assert victim.returncode == -signal.SIGKILL, out
    run = tmp_path / "cut"
    assert [m["epoch"] for m in metrics(run)] == [0], "killed in epoch 2: only epoch 1 was recorded"
    assert load_checkpoint(run / "last.pt")["epoch"] == 0

    resumed = fastlt_train("--resume", str(run), "--progress", "false")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "resuming" in out and "epoch 2/3" in out
    got = metrics(run)
    assert len(got) == 3
    for g, w in zip(got, want):
        assert {k: g[k] for k in DETERMINISTIC} == {k: w[k] for k in DETERMINISTIC}
    assert eval_json(run)["per_class_accuracy"] == eval_json(tmp_path / "full")["per_class_accuracy"]
