"""``tools/bench eval``: what metrics and the report cost per evaluation at iNaturalist's shape, fastlt's
per-image predictions against the dense C × C confusion matrix they replaced, in the same command.

    tools/bench eval                        # C = 8,142 classes, N = 24,426 images (3 per class), batch 512
    tools/bench eval --dense-plot           # also draw the dense matrix as confusion.png (≈ 50 s, 4+ GiB)

Both paths see the same logits and labels: one ``[batch, C]`` block of random logits (made once, outside the
timing) stands for every batch's model output, with a long-tailed bias so the predictions spread like a real
model's (a few head classes predicted often, most classes rarely). Timed per path:

* accumulate — what the evaluation loop adds to each batch after the forward pass, summed over the
  N / batch batches: dense = ``argmax`` + one ``bincount`` of C² bins added into an int64 C × C matrix (the
  former ``metrics.ConfusionMatrix``); fastlt = the tie-exact top-5 (:func:`fastlt.topk.topk_lowest_index`)
  and three small tensors kept;
* summary — dense: per-class and group accuracy from the matrix (the former ``metrics.summarize``); fastlt:
  everything ``eval.json`` reports (:func:`fastlt.metrics.summarize`);
* files — fastlt: ``eval.json`` + ``predictions.npz``; ``report.html`` (with a 30-epoch metrics.jsonl);
  ``per_class_accuracy.png`` is timed on its own (both paths draw it).

Memory is the growth of the process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``
before each path), fastlt's path measured first, after one untimed pass of it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fastlt.bench.report import print_table, write_json
from fastlt.metrics import GROUPS


def synthetic_index(C: int, per_class: int):
    """An iNat-shaped eval split: long-tailed training counts (1000 → 2), ``per_class`` test images per class,
    a 14-value supercategory and 6-value kingdom per class."""
    from fastlt.datasets.longtail import longtail_counts
    from fastlt.shards import SHARD_FORMAT_VERSION, ShardIndex, class_groups

    train = np.maximum(longtail_counts(1000, C, 500.0), 2).tolist()
    counts = [per_class] * C
    offsets = np.concatenate([[0], np.cumsum(counts)]).tolist()
    tax = {"supercategory": [f"super {c % 14}" for c in range(C)],
           "kingdom": [f"kingdom {c % 6}" for c in range(C)]}
    index = ShardIndex(version=SHARD_FORMAT_VERSION, dataset="inat2018", split="val", num_classes=C,
                       class_names=[f"Species {c:04d}" for c in range(C)], class_counts=counts,
                       class_offsets=offsets, class_groups=class_groups(train), train_class_counts=train,
                       source_ids=[str(i) for i in range(offsets[-1])], settings={})
    return replace(index, settings={"class_taxonomy": tax})


def logit_batches(labels: np.ndarray, batch: int, train_counts, seed: int = 0):
    """``(labels int64[b], logits float32[b, C])`` per batch, like a half-trained long-tailed model's: noise,
    a log-prior pull toward the head, and the true class lifted so about 40 % of top-1 predictions are
    right."""
    g = torch.Generator().manual_seed(seed)
    prior = 0.4 * torch.as_tensor(np.log(np.asarray(train_counts, np.float32)))
    # One buffer, refilled in place: the batches cost no allocation, so the memory figures are the paths' own.
    buf = torch.empty(batch, prior.shape[0])
    for s in range(0, len(labels), batch):
        y = torch.as_tensor(labels[s : s + batch])
        logits = buf[: len(y)]
        torch.randn(logits.shape, generator=g, out=logits)
        logits.add_(prior)
        logits[torch.arange(len(y)), y] += 6.0 * (torch.rand(len(y), generator=g) < 0.45)
        yield y, logits


def rss_peak_reset() -> bool:
    """Reset the peak RSS to the current RSS (Linux ≥ 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Phase:
    """Times named phases and the peak memory growth over all of them."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self.ok = rss_peak_reset()
        self.base = rss_mib("VmRSS")

    @contextmanager
    def timed(self, name: str):
        t0 = time.perf_counter()
        yield
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0

    def run(self, name: str, fn):
        with self.timed(name):
            return fn()

    def peak(self) -> float | None:
        return rss_mib("VmHWM") - self.base if self.ok else None


def fastlt_path(stream, index, lines, out: Path) -> dict:
    from fastlt import metrics as M
    from fastlt.report import write_report
    from fastlt.topk import topk_lowest_index

    ph = Phase()

    tops, ys = [], []
    for y, logits in stream:  # the batch's logits are made outside the timing
        with ph.timed("accumulate"):
            tops.append(topk_lowest_index(logits, M.TOP_K)[1])
            ys.append(y)
    with ph.timed("accumulate"):
        preds = M.Predictions(np.arange(len(index.labels)), torch.cat(ys).numpy(), torch.cat(tops).numpy())
    summary = ph.run("summary", lambda: M.summarize(preds, index))
    ph.run("eval.json + predictions", lambda: M.write_eval(out, summary, index, preds))
    (out / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines(summary)))
    ph.run("report.html", lambda: write_report(out))
    peak = ph.peak()
    from fastlt.plots import plot_per_class

    png = Phase()
    png.run("per_class png", lambda: plot_per_class(out / "per_class_accuracy.png", summary["per_class"],
                                                    index.train_class_counts, index.class_groups))
    return {"path": "fastlt (top-5 per image)", **ph.times, "total": sum(ph.times.values()),
            "peak MiB": peak, "per_class png": png.times["per_class png"], "_summary": summary}


def dense_path(stream, index, out: Path, plot: bool) -> dict:
    ph = Phase()
    C = index.num_classes
    matrix = torch.zeros(C, C, dtype=torch.int64)

    for y, logits in stream:
        with ph.timed("accumulate"):
            matrix.add_(torch.bincount(y * C + logits.argmax(1), minlength=C * C).view(C, C))

    def summarize(m):
        m = np.asarray(m, dtype=np.float64)
        support, correct = m.sum(1), np.diag(m)
        per_class = np.where(support > 0, correct / np.maximum(support, 1), np.nan)
        return {g: float(np.nanmean(per_class[index.group_ids == i])) for i, g in enumerate(GROUPS)}

    matrix = matrix.numpy()
    ph.run("summary", lambda: summarize(matrix))
    if plot:
        ph.run("confusion png", lambda: dense_confusion_png(out / "confusion.png", matrix))
    return {"path": "dense C × C matrix (before)", **ph.times, "total": sum(ph.times.values()),
            "peak MiB": ph.peak()}


def dense_confusion_png(path: Path, matrix: np.ndarray) -> None:
    """The former plot: the row-normalised C × C matrix through ``imshow``."""
    from fastlt.plots import _pyplot

    plt = _pyplot()
    m = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(8, 7), dpi=120)
    ax.imshow(m, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    fig.savefig(path)
    plt.close(fig)


def epoch_lines(epochs: int):
    """A ``metrics.jsonl`` of ``epochs`` lines carrying the evaluation's per-epoch fields."""
    from fastlt.metrics import epoch_fields

    def make(summary):
        return [{"epoch": e, "stage": "train", "step": 100 * e, "lr": 0.1, "train_loss": 5.0 / (e + 1),
                 "train_acc": None, "img_per_s": 1000.0, "steps_per_s": 2.0, "data_wait": 0.05,
                 **epoch_fields(summary)} for e in range(epochs)]

    return make


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/bench eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=8142)
    p.add_argument("--per-class", type=int, default=3, help="test images per class (default 3: N = 24,426)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--epochs", type=int, default=30, help="metrics.jsonl lines in the report (default 30)")
    p.add_argument("--dense-plot", action="store_true", help="also time the dense confusion.png (slow, GiBs)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="folder for eval.json (the benchmark record)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    index = synthetic_index(args.classes, args.per_class)
    labels = index.labels

    def stream():
        return logit_batches(labels, args.batch_size, index.train_class_counts)

    with tempfile.TemporaryDirectory(prefix="fastlt-bench-eval-") as tmp:
        # Warm-up, untimed: the first use of a code path maps pages of torch's and numpy's libraries, which
        # count as resident memory (by a varying amount: the kernel maps around each fault what the page
        # cache already holds) and would be charged to whichever path ran first.
        fastlt_path(stream(), index, epoch_lines(args.epochs), Path(tmp))
        new = fastlt_path(stream(), index, epoch_lines(args.epochs), Path(tmp))
        old = dense_path(stream(), index, Path(tmp), args.dense_plot)
    summary = new.pop("_summary")
    rows = [old, new]
    for r in rows:
        r["× fastlt"] = r["total"] / new["total"]
    cols = ["path", "accumulate", "summary", "eval.json + predictions", "report.html", "confusion png",
            "total", "× fastlt", "peak MiB", "per_class png"]
    title = (f"metrics + report per evaluation: C = {args.classes:,}, N = {len(labels):,}, batch "
             f"{args.batch_size} (seconds; peak MiB = growth of the peak RSS); predictions cover "
             f"{summary['diversity']['predicted_classes']:,} classes")
    print_table(title, rows, cols)
    write_json(args.out, "eval", {"args": vars(args), "rows": rows})
    return 0
