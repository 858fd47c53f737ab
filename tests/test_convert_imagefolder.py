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


# ------------------------------------------------------------------------------ held-out split, layouts
def convert_flat(root, out, name, *extra):
    argv = ["imagefolder", str(root), "--out", str(out), "--name", name, "--workers", "1", *extra]
    return convert_main(argv)


def splits_of(out, name):
    return {s: open_shard(out / name / f"{s}.beton").index for s in ("train", "val")}


def test_held_out_split_is_stratified_seeded_and_disjoint(tmp_path, capsys):
    root = tmp_path / "pets"
    classes = write_imagefolder(root, {"": [40, 12, 6, 3]})
    out = tmp_path / "out"
    assert convert_flat(root, out, "a") == 0 and convert_flat(root, out, "b") == 0
    assert convert_flat(root, out, "c", "--seed", "1") == 0
    a, b, c = (splits_of(out, n) for n in "abc")
    # each class gives min(50, floor(0.2 · n)); the class of 3 gives none and is recorded
    assert a["val"].class_counts == [8, 2, 1, 0] and a["train"].class_counts == [32, 10, 5, 3]
    held = a["train"].settings["held_out"]
    assert held["classes_without_val"] == ["class_d"]
    assert (held["val_per_class"], held["val_fraction"], held["seed"]) == (50, 0.2, 0)
    assert "1 of 4 classes have fewer than 5 images" in capsys.readouterr().err
    train_ids, val_ids = set(a["train"].source_ids), set(a["val"].source_ids)
    assert not train_ids & val_ids and train_ids | val_ids == set(labels_by_path(root, "", classes))
    assert a["val"].source_ids == b["val"].source_ids  # seeded
    assert a["val"].source_ids != c["val"].source_ids and c["val"].class_counts == [8, 2, 1, 0]
    # the val split's groups are those of the train counts
    assert a["val"].class_groups == a["train"].class_groups == ["medium", "few", "few", "few"]
    # N caps a class, F decides the rest
    assert convert_flat(root, out, "d", "--val-per-class", "3", "--val-fraction", "0.5") == 0
    assert splits_of(out, "d")["val"].class_counts == [3, 3, 3, 1]


def test_too_small_for_any_held_out_image_says_what_to_do(tmp_path, capsys):
    root = tmp_path / "tiny"
    write_imagefolder(root, {"": [2, 3]})
    assert convert_flat(root, tmp_path / "out", "tiny") == 1
    err = capsys.readouterr().err
    assert "no class has enough images to give any to a held-out split" in err and "--val-per-class 0" in err
    assert not (tmp_path / "out" / "tiny").exists()
    assert convert_flat(root, tmp_path / "out", "tiny", "--val-per-class", "0") == 0
    assert not (tmp_path / "out" / "tiny" / "val.beton").exists()


def test_split_folders_are_detected_and_a_held_out_rule_is_refused_there(tmp_path, capsys):
    root = tmp_path / "tv"
    write_imagefolder(root, {"train": [4, 3], "val": [1, 1], "test": [2, 2]})
    out = tmp_path / "out"
    assert convert_flat(root, out, "tv") == 0
    for split, counts in (("train", [4, 3]), ("val", [1, 1]), ("test", [2, 2])):
        index = open_shard(out / "tv" / f"{split}.beton").index
        assert index.class_counts == counts and index.settings["layout"] == "split folders"
        assert index.settings["held_out"] is None
    assert convert_flat(root, out, "tv2", "--val-fraction", "0.3") == 1
    assert "--val-fraction make a held-out split from a train-only source, but this one has val, test" in (
        capsys.readouterr().err
    )


def test_an_image_in_two_splits_is_refused_by_name(tmp_path, capsys):
    import shutil

    root = tmp_path / "leak"
    write_imagefolder(root, {"train": [3, 3], "val": [1, 1]})
    leaked = sorted((root / "train" / "class_a").glob("*.jpg"))[0]
    copy = root / "val" / "class_a" / "copy.jpg"
    shutil.copyfile(leaked, copy)
    out = tmp_path / "out"
    assert convert_flat(root, out, "leak") == 1
    err = capsys.readouterr().err
    assert f"{copy}: the same image as train entry {leaked} (identical bytes)" in err
    assert not (out / "leak").exists()
    # --skip-bad keeps it in train and drops the held-out copy, recorded in the val index
    assert convert_flat(root, out, "leak", "--skip-bad") == 0
    val = open_shard(out / "leak" / "val.beton").index
    assert "val/class_a/copy.jpg" not in val.source_ids and val.class_counts == [1, 1]
    assert [s["source_id"] for s in val.skipped] == ["val/class_a/copy.jpg"]


def test_small_images_are_stored_raw_and_their_size_recorded(tmp_path):
    from fastlt.datasets.digit_folder import write_digit_folder

    root = tmp_path / "digits"
    write_digit_folder(root, n_max=10, imbalance_factor=2)
    out = tmp_path / "out"
    assert convert_main(["imagefolder", str(root), "--out", str(out), "--workers", "1"]) == 0
    index = open_shard(out / "digits" / "train.beton").index
    assert index.settings["write_mode"] == "raw"
    sides = {"short": 32, "long": 32, "sampled": index.num_rows, "uniform": True}
    assert index.settings["image_sides"] == sides
    assert index.class_names == sorted(index.class_names) and "seven" in index.class_names


def test_group_thresholds_are_recorded_and_used(tmp_path, capsys):
    from fastlt.shards import class_groups, single_group_note

    root = tmp_path / "g"
    write_imagefolder(root, {"train": [12, 6, 2], "val": [1, 1, 1]})
    out = tmp_path / "out"
    assert convert_flat(root, out, "g", "--group-thresholds", "5,10") == 0
    train = open_shard(out / "g" / "train.beton").index  # opening checks the groups against the thresholds
    assert train.class_groups == ["many", "medium", "few"] == class_groups([12, 6, 2], (5, 10))
    assert train.settings["group_thresholds"] == [5, 10]
    assert single_group_note(train) is None
    assert convert_flat(root, out, "one", "--group-thresholds", "1,100") == 0
    note = single_group_note(open_shard(out / "one" / "val.beton").index)
    assert note.startswith("all 3 classes of one are medium (few < 1 training images, many > 100)")
    with pytest.raises(SystemExit) as e:
        convert_main(["imagefolder", str(root), "--out", str(out), "--group-thresholds", "50,10"])
    assert e.value.code == 2 and "expected 1 <= FEW <= MANY + 1, got 50,10" in capsys.readouterr().err
