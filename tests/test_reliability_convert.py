"""Source files a careful user still gets wrong, through ``tools/convert`` in each dataset's real format: a
typo'd label in an ImageNet-LT / Places-LT split file (equal to the class count, or far above it), a UTF-8
byte-order mark, an iNat annotation with an unknown category."""

from __future__ import annotations

import json

import pytest

from fastlt.convert import main as convert_main
from fastlt.shards import open_shard
from synth import save_jpeg, tiny_photo, write_inat, write_oltr

COUNTS = [4, 3, 2]
BOM = "\ufeff"


def convert(args: list[str], out, capsys) -> tuple[int, str]:
    rc = convert_main([*args, "--out", str(out), "--workers", "1"])
    return rc, capsys.readouterr().err


def oltr_args(flavour: str, src, train_file=None) -> list[str]:
    return [f"{flavour}-lt", "--root", str(src.root), "--train", str(train_file or src.split_files["train"])]


def add_image(src, flavour: str, folder_key: str, name: str):
    """A new train image in class folder ``folder_key``; returns its relative path."""
    rel = f"train/{folder_key}/{name}.JPEG" if flavour == "imagenet" else f"train/x/{folder_key}/{name}.jpg"
    save_jpeg(src.root / rel, tiny_photo(0, 999, 0))
    return rel


def append_line(path, line: str) -> int:
    """Append ``line`` to a split file; returns its line number."""
    text = path.read_text()
    path.write_text(text + line + "\n")
    return len(text.splitlines()) + 1


# ------------------------------------------------------------------------------------------ labels
@pytest.mark.parametrize("flavour", ["imagenet", "places"])
def test_a_label_equal_to_the_class_count_names_its_line(flavour, tmp_path, capsys):
    src = write_oltr(tmp_path, flavour, COUNTS, per_class_eval=1)
    key = src.class_keys[0]
    rel = add_image(src, flavour, key, "typo")
    train = src.split_files["train"]
    n = append_line(train, f"{rel} {len(COUNTS)}")  # meant 0: the image is in class 0's folder

    rc, err = convert(oltr_args(flavour, src), tmp_path / "out", capsys)
    assert rc == 1, err
    assert (
        f"{train}:{n}: label 3, but the 4 other train images in class folder {key!r} have label 0 (first at "
        f"{train}:" in err
    )
    assert "has no training images" not in err and not (tmp_path / "out").exists()

    rc, err = convert([*oltr_args(flavour, src), "--skip-bad"], tmp_path / "out", capsys)
    assert rc == 0, err
    shard = open_shard(tmp_path / "out" / f"{flavour}-lt" / "train.beton")
    assert shard.index.num_classes == 3 and shard.index.class_counts == COUNTS
    assert [s["where"] for s in shard.index.skipped] == [f"{train}:{n}"]


def test_a_path_in_another_labels_folder_names_its_line(tmp_path, capsys):
    src = write_oltr(tmp_path, "imagenet", COUNTS, per_class_eval=1)
    rel = add_image(src, "imagenet", src.class_keys[1], "wrong")
    train = src.split_files["train"]
    n = append_line(train, f"{rel} 0")
    rc, err = convert(oltr_args("imagenet", src), tmp_path / "out", capsys)
    assert rc == 1
    assert f"{train}:{n}: label 0 is class {src.class_keys[0]!r} (at {train}:" in err
    assert f"but this path is in {src.class_keys[1]!r}, the folder of label 1" in err


def test_a_stray_large_label_names_its_line(tmp_path, capsys):
    src = write_oltr(tmp_path, "imagenet", COUNTS, per_class_eval=1)
    rel = add_image(src, "imagenet", "n09999999", "n09999999_1")  # a folder of its own: 50 is its only label
    train = src.split_files["train"]
    n = append_line(train, f"{rel} 50")
    rc, err = convert(oltr_args("imagenet", src), tmp_path / "out", capsys)
    assert rc == 1
    said = f"{train}:{n}: label 50 lies beyond the labels in use (0..2): no train entry has labels 3..49"
    assert said in err
    assert "has no training images" not in err
    assert err.count(f"{train}:") == 1  # that line alone, not 47 empty classes


def test_labels_counting_from_1_are_one_message(tmp_path, capsys):
    src = write_oltr(tmp_path, "places", COUNTS, per_class_eval=1)
    train = src.split_files["train"]
    lines = [line.rsplit(" ", 1) for line in train.read_text().splitlines()]
    train.write_text("".join(f"{p} {int(y) + 1}\n" for p, y in lines))
    rc, err = convert(oltr_args("places", src), tmp_path / "out", capsys)
    assert rc == 1
    assert f"{train}: no entry has label 0 (the smallest is 1); labels count from 0" in err


# ------------------------------------------------------------------------------------------ encodings
def test_a_byte_order_mark_is_not_part_of_the_first_path(tmp_path, capsys):
    src = write_oltr(tmp_path, "imagenet", COUNTS, per_class_eval=1)
    train = src.split_files["train"]
    first = train.read_text().splitlines()[0].rsplit(" ", 1)[0]
    train.write_bytes(BOM.encode() + train.read_bytes())  # what Windows Notepad writes

    for extra in ([], ["--skip-bad"]):
        rc, err = convert([*oltr_args("imagenet", src), *extra], tmp_path / "out", capsys)
        assert rc == 0, err
        shard = open_shard(tmp_path / "out" / "imagenet-lt" / "train.beton")
        assert shard.index.class_counts == COUNTS and first in shard.index.source_ids
        assert shard.index.skipped == []


def test_an_invisible_character_inside_a_file_is_named(tmp_path, capsys):
    src = write_oltr(tmp_path, "imagenet", COUNTS, per_class_eval=1)
    train = src.split_files["train"]
    lines = train.read_text().splitlines()
    lines[2] = BOM + lines[2]  # two files concatenated, the second with its mark
    train.write_text("\n".join(lines) + "\n")
    rc, err = convert(oltr_args("imagenet", src), tmp_path / "out", capsys)
    assert rc == 1
    rel = lines[2].rsplit(" ", 1)[0]
    assert (
        f"{train}:3: path {rel!r} not found; it holds invisible characters: ZERO WIDTH NO-BREAK SPACE at "
        "character 1" in err
    )
    rc, err = convert([*oltr_args("imagenet", src), "--skip-bad"], tmp_path / "out", capsys)
    assert rc == 0, err
    skipped = open_shard(tmp_path / "out" / "imagenet-lt" / "train.beton").index.skipped
    assert [s["where"] for s in skipped] == [f"{train}:3"] and "invisible" in skipped[0]["problem"]


def test_inat_json_with_a_byte_order_mark_converts(tmp_path, capsys):
    root = tmp_path / "inat"
    write_inat(root, [2, 2], per_class_val=1)
    for name in ("train2018.json", "val2018.json"):
        (root / name).write_bytes(BOM.encode() + (root / name).read_bytes())
    rc, err = convert(["inat2018", str(root)], tmp_path / "out", capsys)
    assert rc == 0, err


# ------------------------------------------------------------------------------------------ iNat ids
def test_an_unknown_category_is_reported_once(tmp_path, capsys):
    root = tmp_path / "inat"
    write_inat(root, [3, 2], per_class_val=1)
    doc = json.loads((root / "train2018.json").read_text())
    image_id = doc["annotations"][0]["image_id"]
    file_name = next(im["file_name"] for im in doc["images"] if im["id"] == image_id)
    doc["annotations"][0]["category_id"] = 42
    (root / "train2018.json").write_text(json.dumps(doc))

    rc, err = convert(["inat2018", str(root)], tmp_path / "out", capsys)
    assert rc == 1
    about = [line for line in err.splitlines() if f"image_id={image_id}" in line or f"id={image_id})" in line]
    assert len(about) == 1 and "category_id 42 is not one of the 2 categories" in about[0]
    assert "image has no annotation" not in err and "1 problem in the source data" in err

    rc, err = convert(["inat2018", str(root), "--skip-bad"], tmp_path / "out", capsys)
    assert rc == 0, err
    skipped = open_shard(tmp_path / "out" / "inat2018" / "train.beton").index.skipped
    assert [s.get("source_id") for s in skipped] == [file_name]
