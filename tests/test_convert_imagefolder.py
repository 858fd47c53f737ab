"""imagefolder: root/<class>/*.jpg and root/{train,val}/<class>/*.jpg trees."""

from __future__ import annotations

import numpy as np
import pytest

from fastlt.convert import main as convert_main
from fastlt.datasets.longtail import longtail_counts
from fastlt.shards import open_shard
from synth import assert_shard_matches, decode_file, write_imagefolder


def labels_by_path(root, split, classes):
    base = root / split if split else root
    return {p.relative_to(root).as_posix(): classes.index(p.parent.name) for p in base.rglob("*.jpg")}


def test_train_val_tree_raw_mode_is_pixel_exact(tmp_path):
    root = tmp_path / "flowers"
    classes = write_imagefolder(root, {"train": [5, 3, 1], "val": [2, 2, 2]})
    assert (
        convert_main(
            [
                "imagefolder",
                str(root),
                "--out",
                str(tmp_path / "out"),
                "--write-mode",
                "raw",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    shards = {s: open_shard(tmp_path / "out" / "flowers" / f"{s}.beton") for s in ("train", "val")}
    for split, shard in shards.items():
        assert_shard_matches(shard, labels_by_path(root, split, classes), classes, [5, 3, 1])
        for row, rel in enumerate(shard.index.source_ids):
            np.testing.assert_array_equal(shard.decode(row), decode_file(root / rel))


def test_flat_tree_with_imbalance_factor(tmp_path):
    root = tmp_path / "flat"
    classes = write_imagefolder(root, {"": [8, 8, 8]})
    assert (
        convert_main(
            [
                "imagefolder",
                str(root),
                "--out",
                str(tmp_path / "out"),
                "--imbalance-factor",
                "4",
                "--name",
                "flat-lt",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    # The held-out split comes first (each class of 8 gives floor(0.2 · 8) = 1), the long tail from the rest.
    shard = open_shard(tmp_path / "out" / "flat-lt" / "train.beton")
    val = open_shard(tmp_path / "out" / "flat-lt" / "val.beton")
    assert val.index.class_counts == [1, 1, 1]
    assert shard.index.class_counts == longtail_counts(7, 3, 4).tolist() == [7, 3, 1]
    everything = labels_by_path(root, "", classes)
    kept = {s: everything[s] for s in shard.index.source_ids}
    assert_shard_matches(shard, kept, classes, [7, 3, 1])
    assert not set(shard.index.source_ids) & set(val.index.source_ids)


def test_keep_jpeg_stores_source_bytes_and_reencodes_the_rest(tmp_path):
    from PIL import Image

    from synth import tiny_photo

    root = tmp_path / "kept"
    write_imagefolder(root, {"": [2, 2]})
    progressive = root / "class_a" / "prog.jpg"
    Image.fromarray(tiny_photo(0, 50, 0, long_side=60)).save(
        progressive, "JPEG", quality=90, progressive=True
    )
    big = root / "class_b" / "big.jpg"
    Image.fromarray(tiny_photo(0, 51, 1, long_side=90)).save(big, "JPEG", quality=90)
    Image.fromarray(tiny_photo(0, 52, 1, long_side=40)).save(root / "class_b" / "lossless.png")
    out = tmp_path / "out"
    argv = [
        "imagefolder",
        str(root),
        "--out",
        str(out),
        "--keep-jpeg",
        "--max-resolution",
        "64",
        "--workers",
        "1",
        "--val-per-class",
        "0",  # two images a class: everything trains
    ]
    assert convert_main(argv) == 0
    shard = open_shard(out / "kept" / "train.beton")
    assert shard.index.settings["keep_jpeg"] is True
    kept = set()
    for row, rel in enumerate(shard.index.source_ids):
        mode, h, w, data = shard.image_bytes(row)
        src = (root / rel).read_bytes()
        assert mode == "jpg"
        if data.tobytes() == src:
            kept.add(rel)
            np.testing.assert_array_equal(shard.decode(row), decode_file(root / rel))
        else:
            assert max(h, w) <= 64
    # 40-px JPEGs and the progressive one are stored as they are; the 90-px one is shrunk, the PNG re-encoded.
    assert kept == {p for p in shard.index.source_ids if p.endswith(".jpg") and "big" not in p}
    assert "class_a/prog.jpg" in kept


def test_keep_jpeg_needs_jpg_mode(tmp_path, capsys):
    root = tmp_path / "r"
    write_imagefolder(root, {"": [1, 1]})
    rc = convert_main(
        ["imagefolder", str(root), "--out", str(tmp_path / "o"), "--keep-jpeg", "--write-mode", "raw"]
    )
    assert (
        rc == 1
        and "--keep-jpeg stores JPEG files as they are; it needs --write-mode jpg" in capsys.readouterr().err
    )


def test_splits_of_one_conversion_share_an_id_and_a_mix_is_refused(tmp_path):
    from fastlt.shards import ShardError, check_same_conversion

    root = tmp_path / "mix"
    write_imagefolder(root, {"train": [2, 1], "val": [1, 1]})
    out = tmp_path / "out"
    assert convert_main(["imagefolder", str(root), "--out", str(out), "--workers", "1"]) == 0
    first = {s: open_shard(out / "mix" / f"{s}.beton") for s in ("train", "val")}
    check_same_conversion(*first.values())
    assert first["train"].index.settings["splits"] == ["train", "val"]
    # Convert again into another folder and pair its train with the first val.
    assert (
        convert_main(["imagefolder", str(root), "--out", str(out), "--name", "mix2", "--workers", "1"]) == 0
    )
    other = open_shard(out / "mix2" / "train.beton")
    with pytest.raises(ShardError, match="come from different conversions"):
        check_same_conversion(other, first["val"])
