"""Evaluation: a confusion matrix on the device, the many / medium / few / all summary, and the plots.

Long-tailed papers report four numbers on a balanced test set: top-1 over all images, and the mean of
per-class accuracies inside each group of classes, grouped by their *training* count (many > 100,
few < 20, medium otherwise; the shard index carries the groups). On a balanced test set "all" equals the
mean per-class accuracy; on an unbalanced split it is plain top-1, and ``mean_class`` is reported beside it.

The matrix ``M[y, ŷ]`` is accumulated with one ``bincount`` per batch on the device (no host sync per
batch); under DDP the per-rank matrices are summed with one ``all_reduce``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

GROUPS = ("many", "medium", "few")


class ConfusionMatrix:
    """``M[y, ŷ]`` counts, int64[C, C] on ``device``."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = int(num_classes)
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, labels: torch.Tensor, preds: torch.Tensor) -> None:
        C = self.num_classes
        flat = labels.to(self.matrix.device, torch.int64) * C + preds.to(self.matrix.device, torch.int64)
        self.matrix += torch.bincount(flat, minlength=C * C).view(C, C)

    def all_reduce(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix)

    def numpy(self) -> np.ndarray:
        return self.matrix.cpu().numpy()


def summarize(matrix: np.ndarray, group_ids: np.ndarray) -> dict:
    """many / medium / few / all (percent) and per-class accuracy from a confusion matrix.

    ``group_ids``: int[C], 0 many, 1 medium, 2 few. A group with no classes reports ``None``; a class with
    no test images is left out of its group's mean (its accuracy is undefined, reported as ``None``).
    """
    m = np.asarray(matrix, dtype=np.float64)
    support = m.sum(1)
    correct = np.diag(m)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, correct / np.maximum(support, 1), np.nan)
    out: dict = {}
    for g, name in enumerate(GROUPS):
        sel = (np.asarray(group_ids) == g) & ~np.isnan(per_class)
        out[name] = float(100 * per_class[sel].mean()) if sel.any() else None
    total = support.sum()
    out["all"] = float(100 * correct.sum() / total) if total else None
    valid = ~np.isnan(per_class)
    out["mean_class"] = float(100 * per_class[valid].mean()) if valid.any() else None
    out["per_class"] = [None if math.isnan(a) else float(100 * a) for a in per_class]
    out["num_images"] = int(total)
    return out


def format_row(label: str, s: dict) -> str:
    def f(v):
        return "  n/a" if v is None else f"{v:5.1f}"

    return f"{label:<20} {f(s['many'])}  {f(s['medium'])}  {f(s['few'])}  {f(s['all'])}"


TABLE_HEADER = f"{'':<20}  many  medium  few    all"


def write_eval(
    run_dir: str | os.PathLike,
    summary: dict,
    index,
    matrix: np.ndarray,
    extra: dict | None = None,
    plots: bool = True,
) -> Path:
    """``eval.json`` (+ ``confusion.png``, ``per_class_accuracy.png``) in ``run_dir``; atomic JSON write."""
    run_dir = Path(run_dir)
    record = {
        "dataset": index.dataset,
        "split": index.split,
        "num_classes": index.num_classes,
        **{k: summary[k] for k in ("many", "medium", "few", "all", "mean_class", "num_images")},
        "class_names": list(index.class_names),
        "class_groups": list(index.class_groups),
        "train_class_counts": list(index.train_class_counts),
        "per_class_accuracy": summary["per_class"],
        **(extra or {}),
    }
    path = run_dir / "eval.json"
    tmp = path.with_name(f".eval.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)
    if plots:
        plot_confusion(run_dir / "confusion.png", matrix, index.class_names)
        plot_per_class(
            run_dir / "per_class_accuracy.png",
            summary["per_class"],
            index.train_class_counts,
            index.class_groups,
        )
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(path: str | os.PathLike, matrix: np.ndarray, class_names) -> None:
    """Row-normalised confusion matrix (rows: true class). Class names shown only when C ≤ 30."""
    plt = _pyplot()
    m = np.asarray(matrix, dtype=np.float64)
    m = m / np.maximum(m.sum(1, keepdims=True), 1)
    C = len(m)
    fig, ax = plt.subplots(figsize=(6, 5.5) if C <= 30 else (8, 7), dpi=120)
    im = ax.imshow(m, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if C <= 30:
        ax.set_xticks(range(C), [str(n) for n in class_names], rotation=90, fontsize=7)
        ax.set_yticks(range(C), [str(n) for n in class_names], fontsize=7)
    ax.set_title("confusion matrix (row-normalised)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_per_class(path: str | os.PathLike, per_class, train_counts, groups) -> None:
    """Test accuracy of every class against its training count (log x), coloured by group."""
    plt = _pyplot()
    acc = np.array([np.nan if a is None else a for a in per_class], dtype=np.float64)
    n = np.maximum(np.asarray(train_counts, dtype=np.float64), 1)
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
    colors = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}
    for g in GROUPS:
        sel = np.array([x == g for x in groups])
        if sel.any():
            ax.scatter(n[sel], acc[sel], s=14 if len(acc) <= 1000 else 3, alpha=0.8, c=colors[g], label=g)
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(-2, 102)
    for x in (20, 100):  # the group boundaries
        ax.axvline(x, color="grey", lw=0.6, ls="--")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("per-class accuracy vs training count")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
