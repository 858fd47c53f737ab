"""``tools/bench step`` at toy size: fastlt's trainer and the reference loop users run today (torchvision
ImageFolder + PIL, timm Mixup) both run, the JSON record holds a row for each with the ratio between them, and
the reference loop really trains. No timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastlt.bench import step
from fastlt.bench.reference_loop import LoopConfig, ReferenceLoop, imagefolder_tree, reference_kind


def loop_config() -> LoopConfig:
    """A tiny CPU run: smallnet at 32 px, batch 8, two classes, loading in the test process."""
    return LoopConfig(model="smallnet", num_classes=2, image_size=32, batch_size=8, workers=0, device="cpu",
                      lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=False, mean=(0.485, 0.456, 0.406),
                      std=(0.229, 0.224, 0.225), mix_alpha=1.0, amp=False, channels_last=False, model_width=8,
                      seed=0, compile=False)


@pytest.fixture(scope="module")
def two_colour_jpegs(tmp_path_factory):
    """16 noisy reddish and 16 noisy bluish JPEGs in a flat folder, with their labels (0 red, 1 blue)."""
    folder = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    files, labels = [], []
    for i in range(32):
        y = i % 2
        pixels = rng.integers(0, 80, (48, 64, 3))
        pixels[..., 2 * y] += 170
        path = folder / f"img{i:02d}.jpg"
        Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)
        files.append(path)
        labels.append(y)
    return files, np.array(labels)


def test_imagefolder_tree_keeps_the_shard_labels(two_colour_jpegs, tmp_path):
    from torchvision import datasets

    files, labels = two_colour_jpegs
    root = imagefolder_tree(files, labels, tmp_path / "tree")
    ds = datasets.ImageFolder(str(root))
    assert len(ds) == len(files)
    by_name = {f.name: int(y) for f, y in zip(files, labels)}
    for path, target in ds.samples:
        assert target == by_name[Path(path).name.split("_", 1)[1]]
    assert imagefolder_tree(files, labels, tmp_path / "tree") == root  # made once, reused


@pytest.mark.parametrize("kind", ["ce", "mixup", "cutmix"])
def test_reference_loop_trains(two_colour_jpegs, tmp_path, kind):
    """Every parameter that gets a gradient moves; on two colour classes the CE loss falls."""
    files, labels = two_colour_jpegs
    root = imagefolder_tree(files, labels, tmp_path / "tree")
    loop = ReferenceLoop(root, kind, loop_config(), steps=4)
    before = [p.detach().clone() for p in loop.model.parameters()]
    epochs = [loop.epoch() for _ in range(5)]
    assert all(t.steps == 4 and t.seconds > 0 and 0 <= t.wait <= t.seconds for t in epochs)
    assert all(np.isfinite(t.loss) for t in epochs)
    changed = [not torch.equal(a, b) for a, b in zip(before, loop.model.parameters())]
    assert all(changed)
    if kind == "ce":
        assert epochs[-1].loss < 0.5 * epochs[0].loss


def test_reference_kind_falls_back_to_ce():
    assert [reference_kind(m) for m in ("ce", "mixup", "cutmix", "cpmix", "concutmix", "lfm", "bs")] == [
        "ce", "mixup", "cutmix", "ce", "ce", "ce", "ce"]
    with pytest.raises(ValueError, match="no reference loop"):
        ReferenceLoop(None, "cpmix", loop_config(), steps=1)


@pytest.fixture(scope="module")
def bench_work(tmp_path_factory):
    """One work folder for the command tests: the synthetic JPEGs and their shard are made once."""
    return tmp_path_factory.mktemp("bench-step")


def test_bench_step_runs_and_writes_fastlt_and_reference_rows(bench_work, tmp_path, capsys):
    out = tmp_path / "out"
    rc = step.main(["--images", "48", "--classes", "4", "--image-size", "32", "--batch-size", "8", "--steps",
                    "2", "--repeats", "1", "--workers", "1", "--methods", "ce,cutmix,cpmix", "--work",
                    str(bench_work), "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "reference cutmix: ImageFolder + PIL DataLoader, fastlt smallnet module, timm Mixup" in printed
    rec = json.loads((out / "step.json").read_text())
    rows, refs = rec["rows"], rec["reference_rows"]
    assert [r["method"] for r in rows] == ["ce", "cutmix", "cpmix"]
    assert [(r["loop"], r["method"]) for r in refs] == [("reference", "ce"), ("reference", "cutmix")]
    for r in rows:
        assert {"steps/s", "img/s", "img/s (loaded)", "data wait", "× reference", "against", "loss",
                "steps/s vs ce", "step time × ce", "epochs timed", "steps/s per epoch"} <= set(r)
        assert len(r["steps/s per epoch"]) == r["epochs timed"] == 1
        ref = next(x for x in refs if x["method"] == reference_kind(r["method"]))
        assert r["× reference"] == pytest.approx(r["img/s"] / ref["img/s"])
        assert r["img/s"] == pytest.approx(8 * r["steps/s"])
    assert rows[2]["against"] == "CE loop (no off-the-shelf cpmix)"
    assert rows[2]["img/s (loaded)"] > rows[2]["img/s"]  # main + CP-Mix pairs are loaded
    for r in refs:
        assert r["steps/s"] > 0 and 0 <= r["data wait"] <= 1 and np.isfinite(r["loss"])
        assert len(r["steps/s per epoch"]) == r["epochs timed"] == 1
        assert "ImageFolder" in r["runs"]


def test_no_reference_keeps_the_fastlt_table(bench_work, tmp_path):
    out = tmp_path / "out"
    rc = step.main(["--images", "48", "--classes", "4", "--image-size", "32", "--batch-size", "8", "--steps",
                    "2", "--repeats", "1", "--workers", "1", "--methods", "ce", "--no-reference", "--work",
                    str(bench_work), "--out", str(out)])
    assert rc == 0
    rec = json.loads((out / "step.json").read_text())
    assert rec["reference_rows"] == [] and "× reference" not in rec["rows"][0]
