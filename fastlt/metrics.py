"""Evaluation metrics from per-sample predictions, in O(N + C) time and memory: no C × C array anywhere.

Long-tailed papers report four numbers on a balanced test set: top-1 over all images, and the mean of
per-class accuracies inside each group of classes, grouped by their *training* count (many > 100,
few < 20, medium otherwise; the shard index carries the groups). On a balanced test set "all" equals the
mean per-class accuracy; on an unbalanced split it is plain top-1, and ``mean_class`` is reported beside it.

Evaluation keeps, for every image, its label and its top-k predicted classes (:class:`Predictions`, k = 5
or C when smaller). Everything in ``eval.json`` is derived from them with bincounts over N or C entries
(:func:`summarize`): top-1 and top-5 per group, per-class accuracy and support, the many/medium/few → many/
medium/few error flow (3 × 3), prediction diversity and collapse warnings, the most confused (true,
predicted) pairs by name (one sort of the N' mispredicted pair keys), and accuracy per super-category where
the index records a taxonomy. At iNaturalist's shape (C = 8,142, N = 24,426) the dense path this replaces
held a 506 MiB C × C matrix and spent 25 s per evaluation in bincounts over it.

Tie rules, so that every number is a function of the predictions alone: the top-k of a row orders equal
logits by class index (:func:`fastlt.topk.topk_lowest_index`); pairs of equal count are listed by (true,
predicted) class index; the most-predicted class is the lowest index among equals.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GROUPS = ("many", "medium", "few")
TOP_K = 5  # the second accuracy reported beside top-1
TOP_PAIRS = 20  # confused pairs kept in eval.json (predictions.npz holds every prediction)
TRAIN_PAIRS = 10  # training confusion pairs per metrics line

# Collapse: one class takes at least COLLAPSE_SHARE of all predictions *and* COLLAPSE_RATIO times its share of
# the labels, or fewer than COLLAPSE_COVERAGE of the classes present in the split are ever predicted. A
# healthy model on a balanced 8,142-class split gives its most-predicted class well under 1 % and predicts
# most classes; the collapsed LFM run that motivated this put 67 % of predictions on three classes and
# predicted 37 classes.
COLLAPSE_SHARE = 0.05
COLLAPSE_RATIO = 5.0
COLLAPSE_COVERAGE = 0.25


@dataclass(frozen=True)
class Predictions:
    """Every evaluated image once, by row: ``rows`` int64[N] (shard rows, ascending), ``labels`` int64[N],
    ``top`` int64[N, k] (predicted classes, best first: column 0 is the top-1 prediction)."""

    rows: np.ndarray
    labels: np.ndarray
    top: np.ndarray

    @property
    def top1(self) -> np.ndarray:
        return self.top[:, 0]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def save(self, path: str | os.PathLike) -> Path:
        """``predictions.npz`` (int32: 24 bytes an image at k = 5), written under a temporary name."""
        path = Path(path)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, rows=self.rows.astype(np.int32), labels=self.labels.astype(np.int32),
                 top=self.top.astype(np.int32))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Predictions:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["rows"].astype(np.int64), z["labels"].astype(np.int64), z["top"].astype(np.int64))


# ------------------------------------------------------------------------------------------ summary
def _pct(num, den) -> float | None:
    return float(100 * num / den) if den else None


def _means(per_class: np.ndarray, group_ids: np.ndarray, correct: np.ndarray, support: np.ndarray) -> dict:
    """many / medium / few (mean per-class accuracy of the group's classes with test images), all (top-1
    over images), mean_class. ``per_class`` is NaN for a class without test images: left out of the means."""
    out: dict = {}
    valid = ~np.isnan(per_class)
    for g, name in enumerate(GROUPS):
        sel = (group_ids == g) & valid
        out[name] = float(100 * per_class[sel].mean()) if sel.any() else None
    out["all"] = _pct(correct.sum(), support.sum())
    out["mean_class"] = float(100 * per_class[valid].mean()) if valid.any() else None
    return out


def _per_class(hits: np.ndarray, labels: np.ndarray, support: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(correct int64[C], accuracy float64[C] with NaN where the class has no test image)."""
    correct = np.bincount(labels[hits], minlength=support.shape[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(support > 0, correct / np.maximum(support, 1), np.nan)
    return correct, acc


def _as_list(acc: np.ndarray) -> list:
    return [None if math.isnan(a) else float(100 * a) for a in acc]


def summarize(preds: Predictions, index) -> dict:
    """Everything ``eval.json`` reports, from the predictions and the split's index (see the module
    docstring; the keys are listed in README "Run directory")."""
    C = int(index.num_classes)
    labels, top = preds.labels, preds.top
    group_ids = np.asarray(index.group_ids, dtype=np.int64)
    support = np.bincount(labels, minlength=C)
    hit1 = top[:, 0] == labels
    hit5 = (top == labels[:, None]).any(1)
    correct1, acc1 = _per_class(hit1, labels, support)
    correct5, acc5 = _per_class(hit5, labels, support)
    predicted = np.bincount(top[:, 0], minlength=C)
    out = _means(acc1, group_ids, correct1, support)
    out["top5"] = _means(acc5, group_ids, correct5, support)
    out.update(
        top_k=int(top.shape[1]),
        num_images=int(len(labels)),
        per_class=_as_list(acc1),
        per_class_top5=_as_list(acc5),
        per_class_support=support.tolist(),
        per_class_predicted=predicted.tolist(),
        group_flow=group_flow(labels, top[:, 0], group_ids),
        diversity=diversity(predicted, support, index.class_names),
        confused_pairs=confused_pairs(labels, top[:, 0], support, index.class_names),
        taxonomy=taxonomy_accuracy(index, acc1, correct1, support),
    )
    out["collapse"] = collapse_warnings(out["diversity"])
    return out


def group_flow(labels: np.ndarray, top1: np.ndarray, group_ids: np.ndarray) -> list[list[int]]:
    """3 × 3 image counts: row = the true class's group, column = the predicted class's group
    (many, medium, few). The diagonal holds the correct predictions too."""
    flat = group_ids[labels] * 3 + group_ids[top1]
    return np.bincount(flat, minlength=9).reshape(3, 3).tolist()


def diversity(predicted: np.ndarray, support: np.ndarray, names) -> dict:
    """How spread the top-1 predictions are: distinct classes predicted (against classes present in the
    split), the most-predicted class and its share (against its share of the labels), the share of the
    three most-predicted classes, and how few classes take half of all predictions."""
    n = int(predicted.sum())
    top = int(np.argmax(predicted)) if n else 0  # first maximum: the lowest index among equals
    ranked = np.sort(predicted)[::-1]
    half = int(np.searchsorted(np.cumsum(ranked), n / 2) + 1) if n else 0
    return {
        "classes_in_split": int((support > 0).sum()),
        "predicted_classes": int((predicted > 0).sum()),
        "top_class": int(top),
        "top_class_name": str(names[top]),
        "top_class_share": float(predicted[top] / n) if n else 0.0,
        "top_class_label_share": float(support[top] / n) if n else 0.0,
        "top3_share": float(ranked[:3].sum() / n) if n else 0.0,
        "classes_for_half": half,
    }


def collapse_warnings(div: dict) -> list[str]:
    """Plain-language warnings when predictions concentrate (thresholds: COLLAPSE_* above); [] when not."""
    out = []
    share, label_share = div["top_class_share"], div["top_class_label_share"]
    if share >= max(COLLAPSE_SHARE, COLLAPSE_RATIO * label_share):
        ratio = f"{share / label_share:.0f}× its share of the labels" if label_share else "not a label"
        out.append(f"class {div['top_class_name']!r} takes {100 * share:.1f} % of all predictions ({ratio}); "
                   f"the top 3 classes take {100 * div['top3_share']:.1f} %")
    present, predicted = div["classes_in_split"], div["predicted_classes"]
    if predicted < COLLAPSE_COVERAGE * present:
        out.append(f"only {predicted:,} of the {present:,} classes in the split are ever predicted; "
                   f"{div['classes_for_half']:,} classes take half of all predictions")
    return out


def pair_counts(labels: np.ndarray, top1: np.ndarray, C: int) -> tuple[np.ndarray, np.ndarray]:
    """(keys y·C + ŷ ascending, counts) of the mispredicted pairs: one sort of the N' errors."""
    wrong = labels != top1
    keys = labels[wrong].astype(np.int64) * C + top1[wrong]
    return np.unique(keys, return_counts=True)


def top_pairs(keys: np.ndarray, counts: np.ndarray, C: int, k: int):
    """The ``k`` largest counts as (y, ŷ, count) arrays, equal counts by (y, ŷ) ascending."""
    order = np.lexsort((keys, -counts))[:k]  # last key sorts first: count descending, then key ascending
    return keys[order] // C, keys[order] % C, counts[order]


def confused_pairs(labels: np.ndarray, top1: np.ndarray, support: np.ndarray, names, k: int = TOP_PAIRS):
    """Distinct mispredicted pairs, errors, and the ``k`` most frequent pairs with names and the share of the
    true class's test images each takes."""
    C = support.shape[0]
    keys, counts = pair_counts(labels, top1, C)
    ys, js, cs = top_pairs(keys, counts, C, k)
    rows = [
        {"true": int(y), "predicted": int(j), "true_name": str(names[y]), "predicted_name": str(names[j]),
         "count": int(c), "share_of_true": float(c / support[y])}
        for y, j, c in zip(ys, js, cs)
    ]
    return {"distinct": int(keys.shape[0]), "errors": int(counts.sum()), "top": rows}


def taxonomy_accuracy(index, acc: np.ndarray, correct: np.ndarray, support: np.ndarray) -> dict:
    """Per taxonomy level the index records (``settings['class_taxonomy']``, e.g. iNat's supercategory and
    kingdom): for each value, its classes, test images, mean per-class accuracy and top-1 over its images.
    Values sorted by name; {} for a dataset without a taxonomy."""
    levels = (index.settings or {}).get("class_taxonomy") or {}
    out = {}
    for level, values in levels.items():
        names, code = np.unique(np.asarray(values, dtype=str), return_inverse=True)
        classes = np.bincount(code, minlength=len(names))
        images = np.bincount(code, weights=support, minlength=len(names))
        hits = np.bincount(code, weights=correct, minlength=len(names))
        valid = ~np.isnan(acc)
        acc_sum = np.bincount(code[valid], weights=acc[valid], minlength=len(names))
        with_images = np.bincount(code[valid], minlength=len(names))
        out[level] = [
            {"name": str(n), "classes": int(classes[i]), "images": int(images[i]),
             "mean_class": _pct(acc_sum[i], with_images[i]), "top1": _pct(hits[i], images[i])}
            for i, n in enumerate(names)
        ]
    return out


# ------------------------------------------------------------------------------------------ per epoch
def epoch_fields(summary: dict | None) -> dict:
    """The evaluation's part of a ``metrics.jsonl`` line (all None in an epoch without evaluation)."""
    keys = ("many", "medium", "few", "all", "top5_all", "group_flow", "predicted_classes", "top_class_share",
            "collapse")
    if summary is None:
        return dict.fromkeys(keys)
    div = summary["diversity"]
    return {
        **{k: summary[k] for k in ("many", "medium", "few", "all")},
        "top5_all": summary["top5"]["all"],
        "group_flow": summary["group_flow"],
        "predicted_classes": div["predicted_classes"],
        "top_class_share": div["top_class_share"],
        "collapse": summary["collapse"],
    }


def collapse_note(record: dict) -> str:
    """The epoch line's tail: nothing, or the collapse warnings of the epoch's evaluation."""
    warnings = record.get("collapse") or []
    return "".join(f"\n  WARNING predictions collapse: {w}" for w in warnings)


def training_pairs(counts, names, k: int = TRAIN_PAIRS) -> dict:
    """What a confusion-learning method's metrics line says about its counts K (``ConfusionCounts``): the
    total, the distinct pairs and the ``k`` most frequent by name, ``[[true, predicted, count], …]``."""
    y, j, c = counts.pairs()
    C = int(counts.num_classes)
    ys, js, cs = top_pairs(y * C + j, c, C, k)
    return {
        "confusion_pairs": int(counts.total),
        "confusion_distinct": int(y.shape[0]),
        "confusion_top": [[str(names[a]), str(names[b]), int(n)] for a, b, n in zip(ys, js, cs)],
    }


# ------------------------------------------------------------------------------------------ output
def summary_table(rows: list[tuple[str, dict]]) -> str:
    """The many / medium / few / all table of ``(label, summary)`` rows. A group no class of the dataset falls
    into gets no column: the table says which groups the dataset has instead of printing empty columns."""
    present = [g for g in GROUPS if any(s[g] is not None for _, s in rows)]
    cols = [*present, "all"]
    lines = [f"{'':<20} " + " ".join(f"{c:>7}" for c in cols)]
    for label, s in rows:
        cells = (f"{s[c]:7.1f}" if s[c] is not None else "    n/a" for c in cols)
        lines.append(f"{label:<20} " + " ".join(cells))
    missing = [g for g in GROUPS if g not in present]
    if missing:
        lines.append(f"(no {' or '.join(missing)} classes in this dataset's groups)")
    return "\n".join(lines)


def eval_record(summary: dict, index, extra: dict | None = None) -> dict:
    """The ``eval.json`` document: the split, the summary, the classes, and ``extra`` (checkpoint, epoch…)."""
    s = dict(summary)
    return {
        "dataset": index.dataset,
        "split": index.split,
        "num_classes": index.num_classes,
        **{k: s.pop(k) for k in ("many", "medium", "few", "all", "mean_class", "num_images")},
        "class_names": list(index.class_names),
        "class_groups": list(index.class_groups),
        "train_class_counts": list(index.train_class_counts),
        "per_class_accuracy": s.pop("per_class"),
        **s,
        **(extra or {}),
    }


def write_eval(
    run_dir: str | os.PathLike,
    summary: dict,
    index,
    preds: Predictions,
    extra: dict | None = None,
) -> Path:
    """``eval.json`` (atomic) and ``predictions.npz`` in ``run_dir`` (plots: ``fastlt.plots.write_plots``)."""
    run_dir = Path(run_dir)
    path = run_dir / "eval.json"
    tmp = path.with_name(f".eval.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(eval_record(summary, index, extra), indent=1) + "\n")
    os.replace(tmp, path)
    preds.save(run_dir / "predictions.npz")
    return path


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
