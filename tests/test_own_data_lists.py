"""imagelist: a list or CSV file per split ('path,label' / 'path label', class indices or names), validated
like the benchmark converters: file and line in every error, nothing written on bad input, --skip-bad."""

from __future__ import annotations

import numpy as np

from fastlt.convert import main as convert_main
from fastlt.shards import open_shard
from synth import save_jpeg, tiny_photo

CLASSES = ["cat", "dog", "fox"]


def images(root, counts):
    """``root/img/<i>.jpg``, ``counts[c]`` of class c; returns [(relative path, class)]."""
    out, n = [], 0
    for c, count in enumerate(counts):
        for _ in range(count):
            rel = f"img/{n:03d}.jpg"
            save_jpeg(root / rel, tiny_photo(0, n, c))
            out.append((rel, c))
            n += 1
    return out


def convert(tmp_path, *argv):
    return convert_main(["imagelist", *argv, "--out", str(tmp_path / "out"), "--workers", "1"])


def test_csv_with_names_and_a_text_list_with_indices(tmp_path):
    root = tmp_path / "zoo"
    entries = images(root, [6, 4, 2])
    train, val = entries[::2], entries[1::2]
    # CSV with a header and quoted paths; the val list uses absolute paths and indices named by --classes
    (root / "train.csv").write_text(
        "path,label\n" + "".join(f'"{p}",{CLASSES[c]}\n' for p, c in train) + "\n# a comment\n"
    )
    (root / "val.txt").write_text("".join(f"{root / p}  {c}\n" for p, c in val))
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    assert convert(tmp_path, "--train", str(root / "train.csv"), "--val", str(root / "val.txt"),
                   "--classes", str(root / "classes.txt")) == 0
    for split, rows in (("train", train), ("val", val)):
        shard = open_shard(tmp_path / "out" / "zoo" / f"{split}.beton")
        label_of = dict(rows)
        np.testing.assert_array_equal(shard.stored_labels(), [label_of[s] for s in shard.index.source_ids])
        assert shard.index.class_names == CLASSES and shard.index.settings["layout"] == "lists"
        assert shard.index.train_class_counts == [3, 2, 1]


def test_names_sorted_from_the_train_list_and_a_held_out_split_without_val(tmp_path):
    root = tmp_path / "names"
    entries = images(root, [10, 5, 5])
    names = ["zebra", "ant", "moth"]  # sorted: ant, moth, zebra
    (root / "train.txt").write_text("".join(f"{p} {names[c]}\n" for p, c in entries))
    assert convert(tmp_path, "--train", str(root / "train.txt")) == 0
    train = open_shard(tmp_path / "out" / "names" / "train.beton").index
    val = open_shard(tmp_path / "out" / "names" / "val.beton").index
    assert train.class_names == ["ant", "moth", "zebra"]
    assert val.class_counts == [1, 1, 2] and train.class_counts == [4, 4, 8]


def test_unknown_class_name_is_named_with_its_line_and_nearest_names(tmp_path, capsys):
    root = tmp_path / "typo"
    entries = images(root, [5, 5, 5])
    (root / "train.csv").write_text("".join(f"{p},{CLASSES[c]}\n" for p, c in entries[:12]))
    (root / "val.csv").write_text("".join(f"{p},{'dgo' if i == 1 else 'cat'}\n" for i, (p, _) in
                                          enumerate(entries[12:])))
    assert convert(tmp_path, "--train", str(root / "train.csv"), "--val", str(root / "val.csv")) == 1
    err = capsys.readouterr().err
    assert f"{root / 'val.csv'}:2: unknown class 'dgo'; did you mean dog?" in err
    assert "Nothing was written" in err and not (tmp_path / "out" / "typo").exists()
    # --skip-bad drops that line and records it in the val index
    argv = ["--train", str(root / "train.csv"), "--val", str(root / "val.csv"), "--skip-bad"]
    assert convert(tmp_path, *argv) == 0
    val = open_shard(tmp_path / "out" / "typo" / "val.beton").index
    assert val.num_rows == 2 and "unknown class 'dgo'" in val.skipped[0]["problem"]


def test_a_label_gap_is_refused(tmp_path, capsys):
    root = tmp_path / "gap"
    entries = images(root, [4, 4])
    (root / "train.txt").write_text("".join(f"{p} {0 if c == 0 else 2}\n" for p, c in entries))
    assert convert(tmp_path, "--train", str(root / "train.txt")) == 1
    err = capsys.readouterr().err
    assert f"{root / 'train.txt'}: label gap: class indices run 0..2, but 1 never appear" in err
    assert "--classes FILE" in err


def test_an_image_in_two_lists_and_a_repeated_line_are_refused(tmp_path, capsys):
    root = tmp_path / "dup"
    entries = images(root, [5, 5])
    lines = [f"{p} {c}\n" for p, c in entries]
    (root / "train.txt").write_text("".join(lines[:8]) + lines[0])
    (root / "val.txt").write_text(lines[8] + lines[9] + lines[3])
    assert convert(tmp_path, "--train", str(root / "train.txt"), "--val", str(root / "val.txt")) == 1
    err = capsys.readouterr().err
    assert f"{root / 'train.txt'}:9: img/000.jpg is listed again (first at {root / 'train.txt'}:1)" in err
    assert (f"{root / 'val.txt'}:3: the same image as train entry {root / 'train.txt'}:4 (identical bytes)"
            in err)


def test_malformed_lines_and_a_missing_list_are_named(tmp_path, capsys):
    root = tmp_path / "bad"
    entries = images(root, [3, 3])
    (root / "train.txt").write_text("".join(f"{p} {c}\n" for p, c in entries) + "lonelypath\n")
    assert convert(tmp_path, "--train", str(root / "train.txt"), "--val", str(root / "nope.txt")) == 1
    err = capsys.readouterr().err
    assert f"{root / 'nope.txt'}: list file not found" in err
    (root / "val.csv").write_text("img/000.jpg,0,extra\n")
    assert convert(tmp_path, "--train", str(root / "train.txt"), "--val", str(root / "val.csv")) == 1
    err = capsys.readouterr().err
    assert f"{root / 'train.txt'}:7: expected 'path,label' or 'path label', got 'lonelypath'" in err
    assert f"{root / 'val.csv'}:1: expected 2 fields (path,label), got 3" in err
