"""Run directories under faults, through ``fastlt train`` / ``fastlt eval`` on digits-lt: one writer at a time
(a second training or an evaluation is refused naming the holder; a dead holder's lock is taken over), Ctrl-C,
an unusable ``--runs``, damaged checkpoints, a first-epoch NaN, another dataset's shard, and commands printed
for the shell.

Trainings that must be alive or stopped at a known moment run in a subprocess through a launcher that acts
when the trainer reports a given step (``helpers/at_step.py``, ``helpers/kill_at_step.py``): 544 train
images at batch 128 make 5 steps an epoch, so global step 7 lies in epoch 2, after the first ``last.pt``.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastlt.convert import main as convert_main
from fastlt.evaluate import main as eval_main
from fastlt.train import main as train_main
from helpers import HERE, KILL_AT_STEP, eval_json, metrics
from synth import write_cifar

AT_STEP = HERE / "at_step.py"
REPO = HERE.parents[1]
STEP_IN_EPOCH_2 = 7


def train_args(data: Path, runs: Path, *more: str, epochs: int = 3) -> list[str]:
    return [
        "--dataset", "digits-lt", "--method", "bs", "--epochs", str(epochs), "--batch-size", "128",
        "--progress", "false", "--data-root", str(data), "--runs", str(runs), "--name", "run", *more,
    ]


def launch(launcher: Path, *args: str) -> subprocess.Popen:
    """``python LAUNCHER ARGS`` with stdin and a merged stdout/stderr on pipes."""
    return subprocess.Popen(
        [sys.executable, str(launcher), *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_until(proc: subprocess.Popen, marker: str) -> str:
    """The process's output up to the line ``marker`` (blocking reads: no sleeps, no polling)."""
    seen = []
    for line in proc.stdout:
        if line.strip() == marker:
            return "".join(seen)
        seen.append(line)
    raise AssertionError(f"the process ended before printing {marker}:\n{''.join(seen)}")


# ------------------------------------------------------------------------------------------ one writer
def test_a_second_writer_is_refused_naming_the_first(digits_data, tmp_path, capsys):
    runs = tmp_path / "runs"
    run = runs / "run"
    first = launch(AT_STEP, "hold", str(STEP_IN_EPOCH_2), *train_args(digits_data, runs))
    try:
        read_until(first, "HOLDING")
        holder = json.loads((run / "run.lock").read_text())
        assert holder["pid"] == first.pid and holder["command"] == "fastlt train"
        named = f"{run} is in use by fastlt train (pid {first.pid} on host {socket.gethostname()}, since "

        # another training into the same directory, and a resume of it: refused, nothing of theirs written
        assert train_main(train_args(digits_data, runs, "--lr", "0.01")) == 2
        assert named in capsys.readouterr().err
        assert train_main(["--resume", str(run)]) == 2
        assert named in capsys.readouterr().err
        # an evaluation writing into the run: refused; into a folder of its own: allowed
        assert eval_main(["--run", str(run), "--checkpoint", "last", "--no-plots"]) == 2
        err = capsys.readouterr().err
        assert named in err and "evaluate into another --out folder" in err
        assert eval_main(["--run", str(run), "--checkpoint", "last", "--no-plots",
                          "--out", str(tmp_path / "elsewhere")]) == 0
    finally:
        first.stdin.write("\n")
        first.stdin.flush()
        out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out
    assert [m["epoch"] for m in metrics(run)] == [0, 1, 2]  # one run's epochs, once each
    assert json.loads((run / "recipe.json").read_text())["lr"] == 0.05  # the first run's, not 0.01
    assert eval_json(run)["epochs"] == 3
    assert not (run / "run.lock").exists()


def test_a_dead_holders_lock_is_taken_over_and_said(digits_data, tmp_path, capsys):
    runs = tmp_path / "runs"
    run = runs / "run"
    victim = launch(KILL_AT_STEP, str(STEP_IN_EPOCH_2), *train_args(digits_data, runs))
    out, _ = victim.communicate(timeout=300)
    assert victim.returncode == -signal.SIGKILL, out
    assert json.loads((run / "run.lock").read_text())["pid"] == victim.pid  # left behind by the kill

    assert train_main(["--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"{run}: took over run.lock from fastlt train (pid {victim.pid} on host" in out
    assert "no longer running" in out
    assert [m["epoch"] for m in metrics(run)] == [0, 1, 2]
    assert not (run / "run.lock").exists()


# ------------------------------------------------------------------------------------------ stops
def test_ctrl_c_stops_cleanly_and_names_the_resume_command(digits_data, tmp_path):
    runs = tmp_path / "my runs"  # a space: the printed command must quote it
    run = runs / "run"
    proc = launch(AT_STEP, "interrupt", str(STEP_IN_EPOCH_2), *train_args(digits_data, runs))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    said = f"fastlt train: interrupted; {run / 'last.pt'} holds the last finished epoch; continue with: "
    assert said in out
    assert not (run / "run.lock").exists()
    command = out.split("continue with: ", 1)[1].splitlines()[0]
    argv = shlex.split(command)
    assert argv == ["fastlt", "train", "--resume", str(run)]
    assert train_main(argv[2:]) == 0  # the state was fine: the run finishes from its last epoch
    assert [m["epoch"] for m in metrics(run)] == [0, 1, 2]


def test_unusable_runs_folder_is_a_message(digits_data, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert train_main(train_args(digits_data, blocker)) == 2
    err = capsys.readouterr().err
    assert f"cannot make the run directory {blocker / 'run'}: Not a directory (see --runs)" in err
    # sysfs takes no new folders, whoever asks (root included, where permission bits do not stop it)
    if not os.path.ismount("/sys"):
        pytest.skip("no sysfs at /sys to stand for a folder no one can write")
    assert train_main(train_args(digits_data, Path("/sys/fastlt-runs"))) == 2
    err = capsys.readouterr().err
    assert "cannot make the run directory /sys/fastlt-runs/run: " in err and "Traceback" not in err


def test_first_epoch_nan_names_no_checkpoint(digits_data, tmp_path, capsys):
    # lr 1e30: the first update sends the weights to ~1e30 and the loss to inf/NaN within epoch 1
    assert train_main(train_args(digits_data, tmp_path, "--lr", "1e30", epochs=2)) == 2
    err = capsys.readouterr().err
    assert "at epoch 1 step" in err and "No epoch had finished, so there is no checkpoint" in err
    assert "last.pt" not in err
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "run.lock").exists()


# ------------------------------------------------------------------------------------------ checkpoints
def test_damaged_checkpoints_are_refused_by_name(digits_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(train_args(digits_data, tmp_path, epochs=1)) == 0
    capsys.readouterr()
    last = run / "last.pt"
    state = torch.load(last, weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "optimizer"}, last)
    assert train_main(["--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{last}: not a complete fastlt checkpoint: missing ['optimizer']" in err

    last.write_bytes(np.random.default_rng(0).bytes(4096))  # random bytes
    assert train_main(["--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{last}: not a readable fastlt checkpoint: not a torch checkpoint file" in err
    assert eval_main(["--run", str(run), "--checkpoint", str(last)]) == 2
    err += capsys.readouterr().err
    torch.save({"version": 2, "hook": print}, last)  # a file that would need code to load
    assert train_main(["--resume", str(run)]) == 2
    err += capsys.readouterr().err
    assert "it holds a Python object (print); fastlt loads only tensors and plain data" in err
    assert "weights_only=False" not in err and "Traceback" not in err
    assert not (run / "run.lock").exists()


# ------------------------------------------------------------------------------------------ foreign shard
def test_eval_refuses_another_datasets_shard_unless_forced(digits_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(train_args(digits_data, tmp_path, epochs=1)) == 0
    src = write_cifar(tmp_path / "cifar", hundred=False, per_class_train=6, per_class_test=2, num_classes=10)
    out = tmp_path / "shards"
    argv = ["cifar10-lt", str(src.root), "--imbalance-factor", "2", "--out", str(out), "--workers", "1"]
    assert convert_main(argv) == 0
    shard = out / "cifar10-lt" / "test.beton"
    capsys.readouterr()

    assert eval_main(["--run", str(run), "--shard", str(shard), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert (
        f"{shard} does not fit {run / 'best.pt'}: its classes are not the model's ('cifar10-lt' shard, "
        "model trained on 'digits-lt': class 0 is 'thing_0' there and '0' in training)" in err
    )
    assert "--allow-foreign-shard" in err and not (run / "eval-cifar10-lt-test").exists()

    assert eval_main(["--run", str(run), "--shard", str(shard), "--no-plots", "--allow-foreign-shard"]) == 0
    record = eval_json(run / "eval-cifar10-lt-test")
    assert record["foreign_shard"].startswith("its classes are not the model's ('cifar10-lt' shard")
    # the run's own splits are no foreign shard
    assert eval_main(["--run", str(run), "--no-plots"]) == 0
    assert "foreign_shard" not in eval_json(run)


# ------------------------------------------------------------------------------------------ commands
def test_the_missing_shard_command_runs_in_a_shell(tmp_path, capsys):
    data = tmp_path / "data dir" / "it's here"
    assert train_main(["--dataset", "digits-lt", "--data-root", str(data), "--runs", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    command = err.split("Make it with:", 1)[1].strip().splitlines()[0]
    assert shlex.split(command) == ["tools/convert", "digits-lt", "--out", str(data)]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (data / "digits-lt" / "train.beton").exists() and (data / "digits-lt" / "test.index.json").exists()
