"""report.html in a real headless browser (Debian's chromium, installed by `make test`), the binned accuracy
curve against a direct computation, and `fastlt report` comparing two digits-lt runs by class name."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fastlt import metrics as M
from fastlt.cli import main as cli
from fastlt.report import count_bins, write_report
from fastlt.shards import open_shard
from fastlt.train import train
from helpers import digits_recipe, eval_json, metrics, quiet

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="module")
def two_runs(digits_data, tmp_path_factory):
    """bs and cpmix (mixing from epoch 2, so its metrics lines name training pairs), 3 short epochs each."""
    runs = tmp_path_factory.mktemp("runs")
    short = ["--epochs", "3", "--steps-per-epoch", "8", "--batch-size", "32"]
    train(digits_recipe(digits_data, "bs", *short, "--name", "bs"), runs, log=quiet)
    train(digits_recipe(digits_data, "cpmix", *short, "--cpmix-start-epoch", "1", "--finetune-epochs", "0",
                        "--name", "cpmix"), runs, log=quiet)
    return runs / "bs", runs / "cpmix"


def render(page: Path, tmp_path: Path) -> tuple[str, str]:
    """(DOM after the page's scripts ran, browser log) of ``page`` opened from disk in headless chromium."""
    exe = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if exe is None:
        pytest.fail("no chromium on PATH: `make setup` installs Debian's chromium for this test")
    profile = tmp_path / f"chromium-{page.stem}"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", "--dump-dom", page.resolve().as_uri()]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout, p.stderr


def assert_clean(dom: str, log: str) -> None:
    """The page reported no script error and logged nothing to the console."""
    assert re.search(r'<pre id="page-errors" class="errors"></pre>', dom), "the page reported a script error"
    console = [ln for ln in log.splitlines() if ":CONSOLE" in ln]
    assert console == [], console


def test_report_renders_in_a_browser_with_every_table(two_runs, tmp_path):
    run = two_runs[1]
    page = run / "report.html"
    assert page.exists()  # written by the training run itself
    dom, log = render(page, tmp_path)
    assert_clean(dom, log)
    for table in ("summary", "count-bins", "group-flow", "confused-pairs", "training-pairs", "class-table"):
        assert f'id="{table}"' in dom, table
    rows = re.search(r'<tbody id="class-rows">(.*?)</tbody>', dom, re.S).group(1)
    assert rows.count("<tr>") == 10  # the script drew one row per class
    assert dom.count("<svg") >= 5  # accuracy, loss, data wait, predicted classes, training pairs, count bins
    ev = eval_json(run)
    top = ev["confused_pairs"]["top"][0]
    assert f"<td class=\"l\">{top['true_name']}</td>" in dom and f"<td>{top['count']}</td>" in dom


def test_collapse_warning_shows_on_the_page(two_runs, digits_data, tmp_path):
    """A planted collapse in a copy of a run's evaluation: the page opens with the warning."""
    run = tmp_path / "collapsed"
    shutil.copytree(two_runs[0], run)
    labels = np.repeat(np.arange(10), 40)
    top1 = np.where(np.arange(400) % 3 == 0, labels, 7)  # two thirds of all predictions on class 7
    p = M.Predictions(np.arange(400), labels, np.stack([top1, (top1 + 1) % 10], 1))
    index = open_shard(digits_data / "digits-lt" / "test.beton").index
    M.write_eval(run, M.summarize(p, index), index, p)
    write_report(run)
    dom, log = render(run / "report.html", tmp_path)
    assert_clean(dom, log)
    assert "Predictions collapse." in dom and "'7' takes" in dom
    assert re.search(r'<tbody id="class-rows">(.*?)</tbody>', dom, re.S).group(1).count("<tr>") == 10


def test_a_dataset_of_one_group_shows_only_that_group(two_runs, tmp_path):
    """Every class few-shot (a dataset of one's own): no many/medium column, curve or flow row of n/a."""
    from fastlt.report import build_page, load_run

    data = load_run(two_runs[0])
    data.ev["class_groups"] = ["few"] * len(data.ev["class_groups"])
    page = build_page(data)
    summary = re.search(r"<table id='summary'>(.*?)</table>", page, re.S).group(1)
    flow = re.search(r"<table id='group-flow'>(.*?)</table>", page, re.S).group(1)
    assert "<th>few</th>" in summary and "<th>many</th>" not in summary and "<th>medium</th>" not in summary
    assert "→ few" in flow and "→ many" not in flow and "→ medium" not in flow
    assert ">many<" not in page.split("<h2>Accuracy by training count</h2>")[0].split("<h2>Summary</h2>")[1]


def test_count_bins_match_a_direct_computation():
    train = [1, 2, 3, 5, 7, 8, 100, 120, 130, 1000]
    acc = [0.0, 50.0, None, 100.0, 20.0, 40.0, 60.0, 80.0, 70.0, 90.0]
    bins = count_bins(train, acc)
    assert [(b["lo"], b["hi"], b["classes"]) for b in bins] == [(1, 1, 1), (2, 3, 1), (4, 7, 2), (8, 15, 1),
                                                              (64, 127, 2), (128, 255, 1), (512, 1023, 1)]
    b = bins[2]  # 5 and 7 training images: accuracies 100 and 20
    half = 1.96 * np.std([100.0, 20.0], ddof=1) / np.sqrt(2)
    assert b["mean"] == 60.0 and b["low"] == pytest.approx(max(0.0, 60 - half)) and b["high"] == 100.0
    assert bins[0]["low"] is None  # one class: no band


def test_fastlt_report_compares_two_runs_by_class_name(two_runs, tmp_path, capsys):
    bs, cp = two_runs
    out = tmp_path / "compare.html"
    assert cli(["report", str(bs), str(cp), "--out", str(out), "--pairs", "5"]) == 0
    text = capsys.readouterr().out
    names = eval_json(bs)["class_names"]
    a, b = M.Predictions.load(bs / "predictions.npz"), M.Predictions.load(cp / "predictions.npz")
    ka, ca = M.pair_counts(a.labels, a.top1, 10)
    kb, cb = M.pair_counts(b.labels, b.top1, 10)
    count_a, count_b = dict(zip(ka.tolist(), ca.tolist())), dict(zip(kb.tolist(), cb.tolist()))
    delta = {k: count_b.get(k, 0) - count_a.get(k, 0) for k in set(count_a) | set(count_b)}
    fixed = sorted((k for k in delta if delta[k] < 0), key=lambda k: (delta[k], k))[:5]
    created = sorted((k for k in delta if delta[k] > 0), key=lambda k: (-delta[k], k))[:5]
    assert fixed and created
    for word, keys in (("fixed", fixed), ("created", created)):
        for k in keys:
            y, j = divmod(k, 10)
            was, now = count_a.get(k, 0), count_b.get(k, 0)
            line = f"  {word:<7} {names[y]} → {names[j]}: {was} → {now} ({delta[k]:+d})"
            assert line in text.splitlines(), line
    delta_all = eval_json(cp)["all"] - eval_json(bs)["all"]
    assert f"({delta_all:+.1f})" in text
    dom, log = render(out, tmp_path)
    assert_clean(dom, log)
    assert 'class="pairs-fixed"' in dom and 'class="pairs-created"' in dom


def test_fastlt_report_rewrites_a_run_report_and_names_what_is_missing(two_runs, tmp_path, capsys):
    bs = two_runs[0]
    (bs / "report.html").unlink()
    assert cli(["report", str(bs)]) == 0
    assert (bs / "report.html").exists() and "wrote" in capsys.readouterr().out
    assert cli(["report", str(tmp_path)]) == 2
    assert f"fastlt eval --run {tmp_path}" in capsys.readouterr().err


def test_metrics_lines_carry_the_group_flow_and_the_training_pairs(two_runs):
    bs, cp = two_runs
    for rec in metrics(bs):
        assert sum(map(sum, rec["group_flow"])) == 400 and rec["top5_all"] >= rec["all"]
        assert "confusion_top" not in rec  # bs learns nothing from confusions
    recs = metrics(cp)
    names = set(eval_json(cp)["class_names"])
    assert all(0 < x["confusion_distinct"] <= x["confusion_pairs"] for x in recs)
    assert all(a in names and b in names and n > 0 for x in recs for a, b, n in x["confusion_top"])


def test_tensorboard_streams_each_metrics_line(digits_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = digits_recipe(digits_data, "bs", "--epochs", "2", "--steps-per-epoch", "4", "--tensorboard", "true",
                      "--name", "tb")
    train(r, tmp_path, log=quiet)
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    lines = metrics(tmp_path / "tb")
    for tag, key in (("test/all", "all"), ("train/loss", "train_loss"), ("test/top5_all", "top5_all")):
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert got == [(x["epoch"] + 1, pytest.approx(x[key], rel=1e-6)) for x in lines], tag
    flow = lines[-1]["group_flow"][2]
    few_to_many = [e.value for e in events.Scalars("flow/few_to_many")][-1]
    assert few_to_many == pytest.approx(100 * flow[0] / sum(flow), rel=1e-6)
