"""inat2018: COCO-style JSON + the train_val2018 tree (annotations joined by image_id)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from fastlt.convert import main as convert_main
from fastlt.datasets.synthetic import train_counts, write_inat_like
from fastlt.shards import open_shard
from synth import assert_shard_matches, decode_file, psnr, write_inat

TRAIN_COUNTS = [8, 4, 2]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inat")
    items = write_inat(tmp / "inat", TRAIN_COUNTS)
    out = tmp / "out"
    argv = ["inat2018", str(tmp / "inat"), "--out", str(out), "--workers", "1", "--max-resolution", "32"]
    assert convert_main(argv) == 0
    return tmp, items, {s: open_shard(out / "inat2018" / f"{s}.beton") for s in ("train", "val")}


def test_rows_match_the_json_join(converted):
    tmp, items, shards = converted
    cats = json.loads((tmp / "inat" / "train2018.json").read_text())["categories"]
    label_of_cat = {c["id"]: i for i, c in enumerate(sorted(cats, key=lambda c: c["id"]))}
    names = [c["name"] for c in sorted(cats, key=lambda c: c["id"])]
    for split, shard in shards.items():
        expected = {rel: label_of_cat[cid] for rel, cid in items[split]}
        assert_shard_matches(shard, expected, names, TRAIN_COUNTS)
    # Category ids are not 0..C-1 here, so the label → id map is kept with the shard.
    assert shards["train"].index.settings["category_ids"] == sorted(label_of_cat)


def test_max_resolution_bounds_the_long_side_and_keeps_the_picture(converted):
    tmp, items, shards = converted
    shard = shards["val"]
    for row, rel in enumerate(shard.index.source_ids):
        mode, h, w, _ = shard.image_bytes(row)
        ref = decode_file(tmp / "inat" / rel)
        assert mode == "jpg" and max(h, w) == 32 and abs(h / w - ref.shape[0] / ref.shape[1]) < 0.1
        # The writer shrinks with OpenCV's INTER_AREA (as FFCV does); past that only JPEG loss remains.
        small = cv2.resize(ref, (w, h), interpolation=cv2.INTER_AREA)
        assert psnr(shard.decode(row), small) > 30


def test_synthetic_generator_writes_the_real_layout(tmp_path):
    s = write_inat_like(tmp_path, num_images=24, num_classes=4, seed=3, long_side=(60, 80), workers=1)
    assert (s["train"], s["val"]) == (24, 12)
    doc = json.loads((tmp_path / "train2018.json").read_text())
    assert {"images", "annotations", "categories"} <= doc.keys()
    by_id = {im["id"]: im for im in doc["images"]}
    counts = np.zeros(4, dtype=int)
    for ann in doc["annotations"]:
        im = by_id[ann["image_id"]]
        parts = im["file_name"].split("/")
        assert (
            parts[0] == "train_val2018" and parts[2] == str(ann["category_id"]) and parts[3].endswith(".jpg")
        )
        img = decode_file(tmp_path / im["file_name"])
        assert (img.shape[1], img.shape[0]) == (im["width"], im["height"]) and 60 <= max(img.shape[:2]) <= 80
        counts[ann["category_id"]] += 1
    assert counts.tolist() == train_counts(24, 4, 100).tolist() and counts[0] > counts[-1]
