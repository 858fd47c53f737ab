"""What several test modules share: reading a run directory, starting ``fastlt train`` in a subprocess, and
digits-lt recipes for short end-to-end runs.

Synthetic datasets on disk are made by ``synth.py``; the tiny CLIP checkpoint by ``tiny_clip.py``. The
scripts beside this file are launchers that a test runs in a subprocess (see each one's docstring).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KILL_AT_STEP = HERE / "kill_at_step.py"
SIGNAL_AT_IMAGE = HERE / "signal_at_image.py"

# metrics.jsonl fields a run reproduces exactly: everything but the wall-clock figures
DETERMINISTIC = (
    "epoch",
    "stage",
    "step",
    "lr",
    "train_loss",
    "train_acc",
    "confusion_pairs",
    "many",
    "medium",
    "few",
    "all",
)


def quiet(*args, **kwargs) -> None:
    """A ``log`` for :func:`fastlt.train.train` that prints nothing."""


def metrics(run: Path) -> list[dict]:
    """The records of ``run/metrics.jsonl``, one per finished epoch ([] before the first one)."""
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def eval_json(run: Path) -> dict:
    return json.loads((Path(run) / "eval.json").read_text())


def digits_recipe(data: Path, method: str, *over: str):
    """The digits-lt recipe of ``method`` reading the shards under ``data``, without a progress bar."""
    from fastlt.recipes import resolve

    return resolve("digits-lt", method, ["--data-root", str(data), "--progress", "false", *over])


def fastlt_train(*args: str, launcher: Path | None = None) -> subprocess.Popen:
    """``python -m fastlt train ARGS`` in a subprocess (or ``python LAUNCHER ARGS``, a script that ends in
    ``fastlt.train.main``), stdout and stderr merged. One OpenMP thread: the float reductions then match a
    run in the test process under ``torch.set_num_threads(1)``."""
    command = [str(launcher)] if launcher else ["-m", "fastlt", "train"]
    return subprocess.Popen(
        [sys.executable, *command, *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def train_index(counts, names=None, dataset: str = "synthetic"):
    """A real training-split :class:`~fastlt.shards.ShardIndex` with these class counts (no shard on disk):
    what a method is built from when a test drives its loss directly."""
    import numpy as np

    from fastlt.shards import SHARD_FORMAT_VERSION, ShardIndex, class_groups

    counts = [int(c) for c in counts]
    offsets = [0, *np.cumsum(counts).tolist()]
    return ShardIndex(
        version=SHARD_FORMAT_VERSION,
        dataset=dataset,
        split="train",
        num_classes=len(counts),
        class_names=list(names) if names is not None else [f"class {c}" for c in range(len(counts))],
        class_counts=counts,
        class_offsets=offsets,
        class_groups=class_groups(counts),
        train_class_counts=counts,
        source_ids=[f"{c}/{i}" for c, n in enumerate(counts) for i in range(n)],
        settings={},
    )


def photo_crops(n: int, height: int, width: int, seed: int,
                sources=("astronaut", "chelsea", "coffee", "rocket")):
    """uint8 [n, 3, height, width] crops of real photographs (``skimage.data``), NHWC in memory (what a
    pipeline hands over): crop i from ``sources[i % len(sources)]`` at a position drawn from ``seed``."""
    import numpy as np
    import skimage.data
    import torch

    images = [getattr(skimage.data, name)() for name in sources]
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(n):
        p = images[i % len(images)]
        y, x = rng.integers(0, p.shape[0] - height), rng.integers(0, p.shape[1] - width)
        crops.append(p[y : y + height, x : x + width])
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)
