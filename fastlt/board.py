"""TensorBoard: with ``--tensorboard true`` each epoch's metrics line is also written as scalars to
``<run>/tensorboard/`` (x axis: the epoch, 1-based), for ``tensorboard --logdir runs``.

Needs the ``tensorboard`` package (``torch.utils.tensorboard`` writes through it); without it the run says so
once and goes on — metrics.jsonl always has everything. Each epoch opens a writer, adds its scalars and closes
it: nothing stays open between epochs, so a run killed at any point leaves complete event files.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fastlt.metrics import GROUPS

# metrics-line key → scalar tag
SCALARS = {
    "many": "test/many", "medium": "test/medium", "few": "test/few", "all": "test/all",
    "top5_all": "test/top5_all", "train_loss": "train/loss", "train_acc": "train/acc", "lr": "train/lr",
    "img_per_s": "speed/img_per_s", "data_wait": "speed/data_wait",
    "predicted_classes": "diversity/predicted_classes", "top_class_share": "diversity/top_class_share",
    "confusion_pairs": "confusion/pairs", "confusion_distinct": "confusion/distinct",
}
_warned: list[bool] = []  # the missing-package notice is printed once per process


def scalars(record: dict) -> dict[str, float]:
    """The tags and values of one metrics line: the SCALARS present, and the group flow as the share (%) of
    each true group's images predicted in each group (``flow/few_to_many`` …)."""
    out = {tag: float(record[k]) for k, tag in SCALARS.items() if record.get(k) is not None}
    flow = record.get("group_flow")
    if flow:
        for i, true in enumerate(GROUPS):
            total = sum(flow[i])
            for j, pred in enumerate(GROUPS):
                if total:
                    out[f"flow/{true}_to_{pred}"] = 100.0 * flow[i][j] / total
    return out


def stream(run_dir: str | Path, record: dict) -> bool:
    """Write ``record`` (a metrics line) to ``run_dir/tensorboard``; False when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if not _warned:
            _warned.append(True)
            print("fastlt: --tensorboard true, but the tensorboard package is not installed (pip install "
                  "tensorboard); the metrics are in metrics.jsonl only", file=sys.stderr)
        return False
    step = int(record["epoch"]) + 1
    writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), filename_suffix=f".epoch{step}")
    try:
        for tag, value in scalars(record).items():
            writer.add_scalar(tag, value, step)
        for warning in record.get("collapse") or []:
            writer.add_text("collapse", warning, step)
    finally:
        writer.close()
    return True
