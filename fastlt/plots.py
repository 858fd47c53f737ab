"""The two PNG plots of a run directory (matplotlib, Agg): the confusion matrix where it is readable, and
per-class accuracy against training count (one point per class, so it scales to any class count)."""

from __future__ import annotations

import os

import numpy as np

from fastlt.metrics import GROUPS, Predictions

CONFUSION_PNG_MAX_CLASSES = 60  # confusion.png is drawn only where every row is readable


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(path: str | os.PathLike, preds: Predictions, class_names) -> None:
    """Row-normalised confusion matrix (rows: true class), names on both axes. For tens of classes only
    (``CONFUSION_PNG_MAX_CLASSES``): past that a pixel per class pair is unreadable, and the report's
    confused-pair table says more."""
    plt = _pyplot()
    C = len(class_names)
    m = np.bincount(preds.labels * C + preds.top1, minlength=C * C).reshape(C, C).astype(np.float64)
    m = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6, 5.5) if C <= 30 else (9, 8.5), dpi=120)
    im = ax.imshow(m, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    size = 7 if C <= 30 else 5
    ax.set_xticks(range(C), [str(n) for n in class_names], rotation=90, fontsize=size)
    ax.set_yticks(range(C), [str(n) for n in class_names], fontsize=size)
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
    groups = np.asarray(groups)
    for g in GROUPS:
        sel = groups == g
        if sel.any():
            ax.scatter(n[sel], acc[sel], s=14 if len(acc) <= 1000 else 3, alpha=0.8, c=colors[g], label=g,
                       rasterized=True)
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


def write_plots(run_dir: str | os.PathLike, summary: dict, index, preds: Predictions) -> None:
    """``per_class_accuracy.png`` and, up to CONFUSION_PNG_MAX_CLASSES classes, ``confusion.png``."""
    from pathlib import Path

    run_dir = Path(run_dir)
    if index.num_classes <= CONFUSION_PNG_MAX_CLASSES:
        plot_confusion(run_dir / "confusion.png", preds, index.class_names)
    plot_per_class(run_dir / "per_class_accuracy.png", summary["per_class"], index.train_class_counts,
                   index.class_groups)
