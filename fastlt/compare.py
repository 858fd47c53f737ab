"""``fastlt report RUN [RUN ...]``: one run → its ``report.html`` (:mod:`fastlt.report`); several → the runs
side by side against the first (the baseline), written here.

Printed and written as a page: top-1 per group and top-5 with deltas to the baseline, and per run the
confused pairs it *fixed* (fewer errors than the baseline on that (true, predicted) pair) and *created*
(more), by class name, from the two runs' ``predictions.npz`` — every pair counted, not only the top ones.
The runs must have been evaluated on the same split (same dataset, split, classes and images).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from html import escape
from pathlib import Path

import numpy as np

from fastlt.metrics import GROUPS, Predictions, pair_counts
from fastlt.report import CSS, ERROR_HOOK, ReportError, RunData, load_run, write_report

COLUMNS = (*GROUPS, "all")


def _check_same_split(runs: list[RunData]) -> None:
    base = runs[0].ev
    for r in runs[1:]:
        ev = r.ev
        same = all(ev[k] == base[k] for k in ("dataset", "split", "num_images", "class_names"))
        if not same:
            raise ReportError(f"{r.name} was evaluated on {ev['dataset']}/{ev['split']} "
                              f"({ev['num_images']:,} images), {runs[0].name} on "
                              f"{base['dataset']}/{base['split']} "
                              f"({base['num_images']:,}): compare runs evaluated on one split")


def pair_changes(base: Predictions, other: Predictions, C: int, k: int):
    """(fixed, created): the ``k`` pairs whose error count fell (rose) the most from ``base`` to ``other``, as
    (y, ŷ, base count, other count) tuples; equal changes by (y, ŷ) ascending."""
    kb, cb = pair_counts(base.labels, base.top1, C)
    ko, co = pair_counts(other.labels, other.top1, C)
    keys = np.union1d(kb, ko)
    a = np.zeros(keys.shape[0], np.int64)
    b = np.zeros(keys.shape[0], np.int64)
    a[np.searchsorted(keys, kb)] = cb
    b[np.searchsorted(keys, ko)] = co
    delta = b - a

    def pick(sign):
        sel = np.flatnonzero(sign * delta > 0)
        order = sel[np.lexsort((keys[sel], -sign * delta[sel]))][:k]
        return [(int(keys[i] // C), int(keys[i] % C), int(a[i]), int(b[i])) for i in order]

    return pick(-1), pick(1)


def _predictions(run: str | os.PathLike) -> Predictions:
    path = Path(run) / "predictions.npz"
    if not path.exists():
        raise ReportError(f"{run}: no predictions.npz (write it with `fastlt eval --run {run}`)")
    return Predictions.load(path)


def compare_runs(paths: list[str], out: str | None, k: int = 10, log=print) -> Path:
    """Print the comparison and write it as a page (``out``; default ``compare.html`` beside the first
    run)."""
    runs = [load_run(p) for p in paths]
    _check_same_split(runs)
    names = runs[0].ev["class_names"]
    C = len(names)
    preds = [_predictions(p) for p in paths]
    changes = [pair_changes(preds[0], p, C, k) for p in preds[1:]]
    log(_text_table(runs))
    for r, (fixed, created) in zip(runs[1:], changes):
        log(f"\n{r.name} vs {runs[0].name}:")
        for word, rows in (("fixed", fixed), ("created", created)):
            for y, j, a, b in rows:
                log(f"  {word:<7} {names[y]} → {names[j]}: {a} → {b} ({b - a:+d})")
    path = Path(out) if out else Path(paths[0]).resolve().parent / "compare.html"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(_page(runs, changes, names), encoding="utf-8")
    os.replace(tmp, path)
    log(f"\nwrote {path}")
    return path


def _values(ev: dict) -> list:
    return [ev[g] for g in COLUMNS] + [ev["top5"]["all"]]


def _delta(v, b) -> str:
    return "" if v is None or b is None else f" ({v - b:+.1f})"


def _text_table(runs: list[RunData]) -> str:
    width = max(len(r.name) for r in runs) + 2
    k = runs[0].ev["top_k"]
    lines = [f"{'':<{width}}" + "".join(f"{c:>16}" for c in (*COLUMNS, f"top-{k} all"))]
    base = _values(runs[0].ev)
    for i, r in enumerate(runs):
        cells = []
        for v, b in zip(_values(r.ev), base):
            text = "n/a" if v is None else f"{v:.1f}" + (_delta(v, b) if i else "")
            cells.append(f"{text:>16}")
        lines.append(f"{r.name:<{width}}" + "".join(cells))
    return "\n".join(lines)


def _page(runs: list[RunData], changes, names) -> str:
    k = runs[0].ev["top_k"]
    head = "".join(f"<th>{c}</th>" for c in (*COLUMNS, f"top-{k} all", "classes predicted"))
    base = _values(runs[0].ev)
    rows = []
    for i, r in enumerate(runs):
        cells = "".join(f"<td>{'n/a' if v is None else f'{v:.1f}'}{_delta(v, b) if i else ''}</td>"
                        for v, b in zip(_values(r.ev), base))
        warn = " ⚠ collapse" if r.ev["collapse"] else ""
        rows.append(f"<tr><td class='l'>{escape(r.name)}{warn}</td>{cells}"
                    f"<td>{r.ev['diversity']['predicted_classes']:,}</td></tr>")
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>fastlt: compare runs</title>",
             f"<style>{CSS}</style><script>{ERROR_HOOK}</script></head><body>",
             "<pre id='page-errors' class='errors'></pre>",
             f"<h1>{len(runs)} runs on {escape(runs[0].ev['dataset'])}/{escape(runs[0].ev['split'])}</h1>",
             f"<p class='meta'>baseline {escape(runs[0].name)} · written "
             f"{time.strftime('%Y-%m-%d %H:%M')}</p>",
             f"<table id='compare'><tr><th class='l'>run</th>{head}</tr>{''.join(rows)}</table>"]
    for r, (fixed, created) in zip(runs[1:], changes):
        parts.append(f"<h2>{escape(r.name)} vs {escape(runs[0].name)}</h2>")
        for word, pairs in (("fixed", fixed), ("created", created)):
            body = "".join(f"<tr><td class='l'>{escape(str(names[y]))}</td><td class='l'>"
                           f"{escape(str(names[j]))}</td><td>{a:,}</td><td>{b:,}</td><td>{b - a:+,}</td></tr>"
                           for y, j, a, b in pairs)
            parts.append(f"<h3>pairs {word}</h3><table class='pairs-{word}'><tr><th class='l'>true class</th>"
                         "<th class='l'>predicted as</th><th>baseline</th><th>this run</th><th>change</th>"
                         f"</tr>{body}</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastlt report",
                                description="Write a run's report.html, or compare runs side by side.")
    p.add_argument("runs", nargs="+", help="run directories (each holds eval.json); several: compare them, "
                   "the first is the baseline")
    p.add_argument("--out", default=None, help="comparison page (default: compare.html beside the first run)")
    p.add_argument("--pairs", type=int, default=10, help="pairs fixed / created to list per run (default 10)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if len(args.runs) == 1:
            write_report(args.runs[0], log=print)
            return 0
        compare_runs(args.runs, args.out, args.pairs, log=print)
    except ReportError as e:
        print(f"fastlt report: {e}", file=sys.stderr)
        return 2
    return 0
