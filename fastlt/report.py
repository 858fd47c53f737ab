"""``report.html``: one self-contained static page per run (opens from disk, no network, no library), and
``fastlt report RUN [RUN ...]``, which rewrites it or compares runs side by side.

    fastlt report runs/inat2018-cpmix                 # (re)write runs/inat2018-cpmix/report.html
    fastlt report runs/digits-lt-bs-s0 runs/digits-lt-cpmix-s0   # compare: group deltas, pairs fixed/created

The page is built from the run directory alone — ``eval.json`` (required), ``metrics.jsonl`` and
``recipe.json`` — so it can be rewritten at any time, also for old runs. Everything it draws costs O(C) or
less: the summary (top-1 and top-5 per group), collapse warnings, curves over epochs (accuracy per group,
loss, data wait, prediction diversity, training confusion pairs), per-class accuracy binned by training count
(log₂ bins, mean and a 95 % confidence band), the many/medium/few error flow, the most confused pairs by name,
accuracy per super-category, how a confusion-learning method's training pairs moved, and a searchable
per-class table (the only part that needs JavaScript). Charts are inline SVG (:mod:`fastlt.svg`).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from html import escape
from pathlib import Path

from fastlt.metrics import GROUPS
from fastlt.svg import Chart, Series, render

REPORT = "report.html"
GROUP_COLORS = {"many": "#1f77b4", "medium": "#ff7f0e", "few": "#d62728", "all": "#222222"}


@dataclass
class RunData:
    """What a report reads from a run directory."""

    name: str
    ev: dict  # eval.json
    lines: list[dict]  # metrics.jsonl ([] for an evaluation outside a training run)
    recipe: dict  # recipe.json ({} when absent)


class ReportError(ValueError):
    """A directory without the files a report needs; the message names the command that makes them."""


def load_run(eval_dir: str | os.PathLike, run_dir: str | os.PathLike | None = None) -> RunData:
    eval_dir = Path(eval_dir)
    run_dir = Path(run_dir) if run_dir is not None else eval_dir
    path = eval_dir / "eval.json"
    if not path.exists():
        raise ReportError(f"{eval_dir}: no eval.json (train the run to its end, or run "
                          f"`fastlt eval --run {run_dir}`)")
    ev = json.loads(path.read_text())
    if "top5" not in ev:
        raise ReportError(f"{path} predates per-image predictions; rewrite it with "
                          f"`fastlt eval --run {run_dir}`")
    metrics = run_dir / "metrics.jsonl"
    lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.exists() else []
    recipe = run_dir / "recipe.json"
    return RunData(run_dir.name, ev, lines, json.loads(recipe.read_text()) if recipe.exists() else {})


def write_report(eval_dir: str | os.PathLike, run_dir: str | os.PathLike | None = None, log=None) -> Path:
    """Write ``<eval_dir>/report.html`` (atomically) from ``eval_dir``'s eval.json and ``run_dir``'s metrics
    and recipe (default: the same directory)."""
    t0 = time.perf_counter()
    data = load_run(eval_dir, run_dir)
    path = Path(eval_dir) / REPORT
    tmp = path.with_name(f".{REPORT}.{os.getpid()}.tmp")
    tmp.write_text(build_page(data), encoding="utf-8")
    os.replace(tmp, path)
    if log:
        log(f"wrote {path} ({time.perf_counter() - t0:.1f} s)")
    return path


# ------------------------------------------------------------------------------------------ page
CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1180px;padding:0 16px;color:#222}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
.meta{color:#666}table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 9px;border:1px solid #ddd;
text-align:right}th{background:#f4f4f4}td.l,th.l{text-align:left}.warn{background:#fff3cd;border:1px solid
#e0b84c;padding:8px 12px;margin:12px 0}.warn b{color:#8a5a00}.charts{display:flex;flex-wrap:wrap;gap:12px}
.chart text{font-size:11px;fill:#333}.chart .ct{font-size:12px;font-weight:600}.grid{stroke:#eee}
.vline{stroke:#999;stroke-dasharray:4 3}.axis{stroke:#999}.diag{background:#e8f4e8}.empty{color:#888}
#class-filter{width:260px;padding:3px}.muted{color:#888}.errors{color:#b00}
"""

PAGE_SCRIPT = """
(function () {
  var data = JSON.parse(document.getElementById("class-data").textContent);
  var cols = ["name", "group", "train", "support", "top1", "top5", "predicted"];
  var key = "train", desc = true, LIMIT = 200;
  var n = data.name.length, order = [];
  for (var i = 0; i < n; i++) order.push(i);
  function cell(v, c) {
    if (v === null) return "<td class='muted'>n/a</td>";
    if (c === "name" || c === "group") {
      var d = document.createElement("td"); d.className = "l"; d.textContent = v; return d.outerHTML;
    }
    return "<td>" + (c === "top1" || c === "top5" ? v.toFixed(1) : v) + "</td>";
  }
  function draw() {
    var q = document.getElementById("class-filter").value.toLowerCase();
    var rows = order.filter(function (i) { return !q || data.name[i].toLowerCase().indexOf(q) >= 0; });
    rows.sort(function (a, b) {
      var x = data[key][a], y = data[key][b];
      if (x === y) return a - b;
      if (x === null) return 1;
      if (y === null) return -1;
      return (x < y ? -1 : 1) * (desc ? -1 : 1);
    });
    var html = rows.slice(0, LIMIT).map(function (i) {
      return "<tr>" + cols.map(function (c) { return cell(data[c][i], c); }).join("") + "</tr>";
    }).join("");
    document.getElementById("class-rows").innerHTML = html;
    document.getElementById("class-count").textContent =
      "showing " + Math.min(LIMIT, rows.length) + " of " + rows.length + " matching classes";
  }
  document.getElementById("class-filter").addEventListener("input", draw);
  Array.prototype.forEach.call(document.querySelectorAll("#class-table th"), function (th) {
    th.addEventListener("click", function () {
      var c = th.getAttribute("data-key");
      desc = c === key ? !desc : c !== "name" && c !== "group";
      key = c; draw();
    });
  });
  draw();
})();
"""

# Shown on the page (and readable with --dump-dom) when a script fails: a page that half-rendered says so.
ERROR_HOOK = """window.addEventListener("error", function (e) {
  var box = document.getElementById("page-errors");
  if (box) box.textContent += "script error: " + e.message + "\\n";
});"""


def build_page(d: RunData) -> str:
    ev = d.ev
    what = f"{d.recipe['dataset']} × {d.recipe['method']}" if d.recipe else ev["dataset"]
    title = f"{what} — {d.name}"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>fastlt report: {escape(title)}</title><style>{CSS}</style>",
        f"<script>{ERROR_HOOK}</script></head><body>",
        "<pre id='page-errors' class='errors'></pre>",
        f"<h1>{escape(title)}</h1>",
        f"<p class='meta'>{escape(_meta_line(d))}</p>",
        _warnings(ev, d.lines),
        _summary(ev),
        _curves(d.lines, present_groups(ev)),
        _by_train_count(ev),
        _flow(ev),
        _pairs(ev),
        _taxonomy(ev),
        _training_pairs(d.lines),
        _class_table(ev),
        f"<script>{PAGE_SCRIPT}</script></body></html>",
    ]
    return "\n".join(p for p in parts if p)


def _meta_line(d: RunData) -> str:
    ev = d.ev
    bits = [f"split {ev['split']}: {ev['num_images']:,} images, {ev['num_classes']:,} classes"]
    if "epoch" in ev:
        bits.append(f"checkpoint {Path(str(ev.get('checkpoint', ''))).name} (epoch {ev['epoch'] + 1})")
    elif "epochs" in ev:
        bits.append(f"{ev.get('checkpoint', 'last.pt')} after {ev['epochs']} epochs")
    if d.recipe:
        bits.append(f"model {d.recipe.get('model')}, seed {d.recipe.get('seed')}")
    bits.append(f"written {time.strftime('%Y-%m-%d %H:%M')}")
    return " · ".join(bits)


def _f(v, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _warnings(ev: dict, lines: list[dict]) -> str:
    out = [f"<div class='warn'><b>Predictions collapse.</b> {escape(w)}</div>" for w in ev["collapse"]]
    flagged = [x["epoch"] + 1 for x in lines if x.get("collapse")]
    if flagged:
        out.append(f"<div class='warn'><b>Collapse flagged</b> at the evaluation of epoch(s) "
                   f"{escape(_ranges(flagged))}.</div>")
    return "\n".join(out)


def _ranges(xs: list[int]) -> str:
    out, start = [], xs[0]
    for a, b in zip(xs, xs[1:] + [None]):
        if b != a + 1:
            out.append(f"{start}" if start == a else f"{start}–{a}")
            start = b
    return ", ".join(out)


def present_groups(ev: dict) -> tuple[str, ...]:
    """The many/medium/few groups that have classes in the split (a dataset of one's own may have one)."""
    return tuple(g for g in GROUPS if g in ev["class_groups"])


def _summary(ev: dict) -> str:
    groups = ev["class_groups"]
    support = ev["per_class_support"]
    shown = present_groups(ev)  # an empty group would be a column of n/a
    n_cls = {g: sum(1 for x in groups if x == g) for g in shown}
    n_img = {g: sum(s for x, s in zip(groups, support) if x == g) for g in shown}
    k = ev["top_k"]
    head = "".join(f"<th>{g}</th>" for g in (*shown, "all", "mean class"))
    keys = (*shown, "all", "mean_class")
    rows = [
        "<tr><th class='l'>top-1 %</th>" + "".join(f"<td><b>{_f(ev[g])}</b></td>" for g in keys) + "</tr>",
        f"<tr><th class='l'>top-{k} %</th>" + "".join(f"<td>{_f(ev['top5'][g])}</td>" for g in keys)
        + "</tr>",
        "<tr><th class='l'>classes</th>" + "".join(f"<td>{n_cls[g]:,}</td>" for g in shown)
        + f"<td>{ev['num_classes']:,}</td><td></td></tr>",
        "<tr><th class='l'>test images</th>" + "".join(f"<td>{n_img[g]:,}</td>" for g in shown)
        + f"<td>{ev['num_images']:,}</td><td></td></tr>",
    ]
    dv = ev["diversity"]
    div = (f"Top-1 predictions cover <b>{dv['predicted_classes']:,}</b> of the {dv['classes_in_split']:,} "
           f"classes in the split; the most-predicted class, <b>{escape(dv['top_class_name'])}</b>, takes "
           f"{100 * dv['top_class_share']:.2f} % of predictions "
           f"({100 * dv['top_class_label_share']:.2f} % of labels); the top 3 take "
           f"{100 * dv['top3_share']:.1f} %, and {dv['classes_for_half']:,} classes take half of all "
           "predictions.")
    return (f"<h2>Summary</h2><table id='summary'><tr><th></th>{head}</tr>{''.join(rows)}</table>"
            f"<p>{div}</p><p class='muted'>Groups by training count: many &gt; 100, medium 20–100, "
            "few &lt; 20 images. Group columns are means of per-class accuracy; all is over images.</p>")


def _curves(lines: list[dict], groups: tuple[str, ...]) -> str:
    if not lines:
        return ""
    ep = [x["epoch"] + 1 for x in lines]
    acc = Chart("test accuracy per group (top-1 %)", "epoch", "%", y_range=(0, 100))
    for g in (*groups, "all"):
        acc.series.append(Series(g, ep, [x.get(g) for x in lines], GROUP_COLORS[g], markers=len(ep) < 30))
    loss = Chart("training loss", "epoch", "loss",
                 series=[Series("train", ep, [x["train_loss"] for x in lines])])
    wait = Chart("data wait (share of epoch time)", "epoch", "%", y_range=(0, 100),
                 series=[Series("wait", ep, [100 * x["data_wait"] for x in lines])])
    charts = [acc, loss, wait]
    if any(x.get("predicted_classes") is not None for x in lines):
        charts.append(Chart("classes ever predicted (top-1)", "epoch", "classes",
                            series=[Series("predicted", ep, [x.get("predicted_classes") for x in lines],
                                           markers=len(ep) < 30)]))
    if any("confusion_distinct" in x for x in lines):
        charts.append(Chart("training confusion pairs (distinct)", "epoch", "pairs",
                            series=[Series("distinct", ep, [x.get("confusion_distinct") for x in lines])]))
    body = "".join(render(c) for c in charts)
    return f"<h2>Over epochs</h2><div class='charts'>{body}</div>"


def count_bins(train_counts, per_class) -> list[dict]:
    """Classes (with test images) binned by training count in powers of two: per bin the count range, the
    number of classes, their mean accuracy and a 95 % normal-approximation band (mean ± 1.96·s/√n)."""
    bins: dict[int, list[float]] = {}
    for n, a in zip(train_counts, per_class):
        if a is not None:
            bins.setdefault(int(math.log2(max(int(n), 1))), []).append(a)
    out = []
    for b in sorted(bins):
        xs = bins[b]
        mean = sum(xs) / len(xs)
        half = None
        if len(xs) > 1:
            sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
            half = 1.96 * sd / math.sqrt(len(xs))
        out.append({"lo": 2**b, "hi": 2 ** (b + 1) - 1, "classes": len(xs), "mean": mean,
                    "low": None if half is None else max(0.0, mean - half),
                    "high": None if half is None else min(100.0, mean + half)})
    return out


def _by_train_count(ev: dict) -> str:
    bins = count_bins(ev["train_class_counts"], ev["per_class_accuracy"])
    if not bins:
        return ""
    xs = [math.sqrt(b["lo"] * (b["hi"] + 1)) for b in bins]  # geometric bin centres
    chart = Chart("per-class top-1 accuracy by training count (mean, 95 % band)", "training images (log)",
                  "%", xlog=True, y_range=(0, 100), vlines=(20, 100), width=700,
                  series=[Series("mean accuracy", xs, [b["mean"] for b in bins], "#1f77b4",
                                 band=([b["low"] for b in bins], [b["high"] for b in bins]), markers=True)])
    rows = "".join(
        f"<tr><td>{b['lo']:,}–{b['hi']:,}</td><td>{b['classes']:,}</td><td>{b['mean']:.1f}</td>"
        f"<td>{_f(b['low'])} – {_f(b['high'])}</td></tr>" for b in bins)
    return ("<h2>Accuracy by training count</h2>" + render(chart)
            + "<table id='count-bins'><tr><th>training images</th><th>classes</th><th>mean top-1 %</th>"
            f"<th>95 % band</th></tr>{rows}</table>")


def _flow(ev: dict) -> str:
    flow = ev["group_flow"]
    shown = [i for i, g in enumerate(GROUPS) if g in present_groups(ev)]
    head = "".join(f"<th>→ {GROUPS[j]}</th>" for j in shown)
    rows = []
    for i in shown:
        g, total = GROUPS[i], sum(flow[i])
        cells = "".join(
            f"<td{' class=diag' if i == j else ''}>{flow[i][j]:,} ({100 * flow[i][j] / total:.1f} %)</td>"
            if total else "<td class='muted'>–</td>" for j in shown)
        rows.append(f"<tr><th class='l'>{g}</th>{cells}<td>{total:,}</td></tr>")
    return ("<h2>Where predictions go: true group → predicted group</h2>"
            f"<table id='group-flow'><tr><th class='l'>true \\ predicted</th>{head}<th>images</th></tr>"
            f"{''.join(rows)}</table><p class='muted'>Rows: the true class's group; columns: the "
            "predicted class's group (the diagonal includes the correct predictions). A long-tailed model's "
            "errors flow toward many.</p>")


def _pairs(ev: dict) -> str:
    cp = ev["confused_pairs"]
    groups, train = ev["class_groups"], ev["train_class_counts"]
    rows = "".join(
        f"<tr><td>{i + 1}</td><td class='l'>{escape(p['true_name'])}</td><td class='l'>{groups[p['true']]} "
        f"({train[p['true']]:,})</td><td class='l'>{escape(p['predicted_name'])}</td><td class='l'>"
        f"{groups[p['predicted']]} ({train[p['predicted']]:,})</td><td>{p['count']:,}</td>"
        f"<td>{100 * p['share_of_true']:.1f}</td></tr>" for i, p in enumerate(cp["top"]))
    return (f"<h2>Most confused pairs</h2><p>{cp['errors']:,} errors over {cp['distinct']:,} distinct "
            "(true, predicted) pairs.</p><table id='confused-pairs'><tr><th>#</th>"
            "<th class='l'>true class</th><th class='l'>group (train n)</th><th class='l'>predicted as</th>"
            "<th class='l'>group (train n)</th><th>images</th><th>% of the true class</th></tr>"
            f"{rows}</table>")


def _taxonomy(ev: dict) -> str:
    out = []
    for level, values in (ev.get("taxonomy") or {}).items():
        rows = "".join(
            f"<tr><td class='l'>{escape(v['name'])}</td><td>{v['classes']:,}</td><td>{v['images']:,}</td>"
            f"<td>{_f(v['mean_class'])}</td><td>{_f(v['top1'])}</td></tr>" for v in values)
        out.append(f"<h2>Accuracy per {escape(level)}</h2><table class='taxonomy'><tr><th class='l'>"
                   f"{escape(level)}</th><th>classes</th><th>test images</th><th>mean per-class top-1 %</th>"
                   f"<th>top-1 % over images</th></tr>{rows}</table>")
    return "".join(out)


def _training_pairs(lines: list[dict]) -> str:
    rec = [x for x in lines if x.get("confusion_top") is not None]
    if not rec:
        return ""
    if len(rec) > 16:  # evenly spaced epochs, always the last
        step = (len(rec) - 1) / 15
        rec = [rec[round(i * step)] for i in range(16)]
    rows = "".join(
        f"<tr><td>{x['epoch'] + 1}</td><td class='l'>{escape(str(x.get('stage', '')))}</td>"
        f"<td>{x['confusion_pairs']:,}</td><td>{x['confusion_distinct']:,}</td><td class='l'>"
        + "; ".join(f"{escape(a)} → {escape(b)} ({n:,})" for a, b, n in x["confusion_top"][:4])
        + "</td></tr>" for x in rec)
    return ("<h2>Training confusions the method learns from</h2><p class='muted'>The recorded "
            "(true, predicted) pairs of the training forward passes (never reset): what CP-Mix draws its "
            "partners from.</p>"
            "<table id='training-pairs'><tr><th>epoch</th><th class='l'>stage</th><th>pairs</th>"
            f"<th>distinct</th><th class='l'>most frequent</th></tr>{rows}</table>")


def _class_table(ev: dict) -> str:
    data = {
        "name": [str(n) for n in ev["class_names"]],
        "group": ev["class_groups"],
        "train": ev["train_class_counts"],
        "support": ev["per_class_support"],
        "top1": ev["per_class_accuracy"],
        "top5": ev["per_class_top5"],
        "predicted": ev["per_class_predicted"],
    }
    blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    titles = (("name", "class"), ("group", "group"), ("train", "train images"), ("support", "test images"),
              ("top1", "top-1 %"), ("top5", f"top-{ev['top_k']} %"), ("predicted", "times predicted"))
    head = "".join(f"<th data-key='{k}' class='{'l' if k in ('name', 'group') else ''}'>{t}</th>"
                   for k, t in titles)
    return ("<h2>Classes</h2><p><input id='class-filter' placeholder='filter by name'> "
            "<span id='class-count' class='muted'></span> <span class='muted'>(click a column to sort)</span>"
            "</p>"
            f"<table id='class-table'><thead><tr>{head}</tr></thead><tbody id='class-rows'></tbody></table>"
            f"<script type='application/json' id='class-data'>{blob}</script>")
