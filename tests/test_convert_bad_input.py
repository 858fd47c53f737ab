"""Bad input: every case stops before anything is written and names the file and line (or JSON id).

Most cases use the OLTR format (a split file of ``<path> <label>`` lines over a JPEG tree) because its
lines make the location easy to assert; the JSON and pickle cases use iNat and CIFAR files.
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from fastlt.convert import main as convert_main
from fastlt.datasets.validate import escapes_root, is_int
from fastlt.shards import open_shard
from synth import save_jpeg, tiny_photo, write_cifar, write_inat

GOOD = [f"train/c{c}/img{i}.jpg {c}" for c in range(3) for i in range(3)]  # 9 lines, 3 classes


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad") / "images"
    for line in GOOD:
        rel, c = line.split()
        save_jpeg(root / rel, tiny_photo(0, hash(rel) % 1000, int(c), long_side=24))
    good = (root / "train/c0/img0.jpg").read_bytes()
    (root / "broken").mkdir()
    (root / "broken/truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "broken/garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG at all" * 4)
    (root.parent / "outside.jpg").write_bytes(good)
    return root


def convert(tree, tmp_path, capsys, train_lines, *extra, test_lines=None):
    train = tmp_path / "train.txt"
    train.write_text("\n".join(train_lines) + "\n")
    argv = [
        "imagenet-lt",
        "--root",
        str(tree),
        "--train",
        str(train),
        "--out",
        str(tmp_path / "out"),
        "--workers",
        "1",
        *extra,
    ]
    if test_lines is not None:
        (tmp_path / "test.txt").write_text("\n".join(test_lines) + "\n")
        argv += ["--test", str(tmp_path / "test.txt")]
    rc = convert_main(argv)
    err = capsys.readouterr().err
    return rc, err, train


def assert_refused(rc, err, tmp_path):
    """Exit status 1 and nothing at all under --out: refused before writing."""
    assert rc == 1, err
    out = tmp_path / "out"
    assert not out.exists() or not list(out.rglob("*")), f"something was written: {list(out.rglob('*'))}"
    return err


def test_truncated_jpeg(tree, tmp_path, capsys):
    rc, err, train = convert(tree, tmp_path, capsys, [*GOOD, "broken/truncated.jpg 1"])
    assert_refused(rc, err, tmp_path)
    assert f"{train}:10: " in err and "truncated.jpg: cannot decode image" in err


def test_corrupt_jpeg(tree, tmp_path, capsys):
    rc, err, train = convert(tree, tmp_path, capsys, ["broken/garbage.jpg 0", *GOOD])
    assert_refused(rc, err, tmp_path)
    assert f"{train}:1: " in err and "garbage.jpg: cannot decode image" in err


def test_missing_file(tree, tmp_path, capsys):
    rc, err, train = convert(tree, tmp_path, capsys, [*GOOD[:4], "train/c1/nope.jpg 1", *GOOD[4:]])
    assert_refused(rc, err, tmp_path)
    assert f"{train}:5: " in err and "nope.jpg: file not found" in err


@pytest.mark.parametrize("path", ["../outside.jpg", "train/../../outside.jpg", "/etc/hostname"])
def test_path_escaping_the_root(tree, tmp_path, capsys, path):
    rc, err, train = convert(tree, tmp_path, capsys, [*GOOD, f"{path} 2"])
    assert_refused(rc, err, tmp_path)
    assert f"{train}:10: path {path!r} escapes the dataset root" in err


def test_non_integer_label(tree, tmp_path, capsys):
    rc, err, train = convert(tree, tmp_path, capsys, [*GOOD[:2], "train/c0/img2.jpg zero", *GOOD[3:]])
    assert_refused(rc, err, tmp_path)
    assert f"{train}:3: label 'zero' is not an integer" in err


def test_malformed_line(tree, tmp_path, capsys):
    rc, err, train = convert(tree, tmp_path, capsys, [*GOOD, "train/c0/img0.jpg"])
    assert_refused(rc, err, tmp_path)
    assert f"{train}:10: expected '<relative/path> <integer label>'" in err


@pytest.mark.parametrize("label", ["-1", "3"])
def test_out_of_range_label(tree, tmp_path, capsys, label):
    rc, err, train = convert(
        tree,
        tmp_path,
        capsys,
        GOOD,
        "--num-classes",
        "3",
        test_lines=["train/c0/img0.jpg 0", f"train/c1/img0.jpg {label}"],
    )
    assert_refused(rc, err, tmp_path)
    assert f"test.txt:2: label {label} out of range, expected 0..2" in err


def test_duplicate_entry(tree, tmp_path, capsys):
    rc, err, train = convert(tree, tmp_path, capsys, [*GOOD, GOOD[4]])
    assert_refused(rc, err, tmp_path)
    assert f"{train}:10: duplicate entry 'train/c1/img1.jpg' (first at {train}:5)" in err


def test_class_with_no_training_images(tree, tmp_path, capsys):
    rc, err, _ = convert(
        tree, tmp_path, capsys, GOOD[:6], "--num-classes", "3", test_lines=["train/c2/img0.jpg 2"]
    )
    assert_refused(rc, err, tmp_path)
    assert "class 2 ('class 2') has no training images" in err


def test_class_left_empty_by_bad_entries_cannot_be_skipped(tree, tmp_path, capsys):
    lines = [*GOOD[:6], "train/c2/missing.jpg 2"]
    rc, err, _ = convert(tree, tmp_path, capsys, lines, "--skip-bad")
    assert_refused(rc, err, tmp_path)
    assert "class 2 ('class 2') has no training images (all 1 of its entries are bad)" in err


def test_reports_first_20_problems_and_a_count(tree, tmp_path, capsys):
    missing = [f"train/c0/missing{i}.jpg 0" for i in range(25)]
    rc, err, train = convert(tree, tmp_path, capsys, [*GOOD, *missing])
    assert_refused(rc, err, tmp_path)
    listed = [line for line in err.splitlines() if "file not found" in line]
    assert len(listed) == 20 and f"{train}:10: " in listed[0] and f"{train}:29: " in listed[-1]
    assert "... and 5 more (25 in all)" in err and "--skip-bad" in err


def test_skip_bad_writes_the_rest_and_records_what_it_skipped(tree, tmp_path, capsys):
    lines = [*GOOD, "broken/truncated.jpg 1", "train/c0/gone.jpg 0", "../outside.jpg 2", "x.jpg two"]
    rc, err, train = convert(tree, tmp_path, capsys, lines, "--skip-bad")
    assert rc == 0, err
    shard = open_shard(tmp_path / "out" / "imagenet-lt" / "train.beton")
    assert shard.index.class_counts == [3, 3, 3]
    assert sorted(shard.index.source_ids) == sorted(line.split()[0] for line in GOOD)
    skipped = {s["where"]: s for s in shard.index.skipped}
    assert set(skipped) == {f"{train}:{n}" for n in (10, 11, 12, 13)}
    assert skipped[f"{train}:10"]["source_id"] == "broken/truncated.jpg"
    assert "escapes the dataset root" in skipped[f"{train}:12"]["problem"]
    assert shard.index.settings["skip_bad"] is True


# -------------------------------------------------------------------------------------- iNat JSON
@pytest.fixture
def inat(tmp_path):
    write_inat(tmp_path / "inat", [2, 2], per_class_val=1)
    return tmp_path / "inat"


def edit(path, fn):
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc, indent=1))


def convert_inat(inat, tmp_path, capsys, *extra):
    rc = convert_main(["inat2018", str(inat), "--out", str(tmp_path / "out"), "--workers", "1", *extra])
    return assert_refused(rc, capsys.readouterr().err, tmp_path)


def test_malformed_json_names_line_and_column(inat, tmp_path, capsys):
    text = (inat / "val2018.json").read_text().splitlines()
    assert text[0] == "{"
    text.insert(2, ' "oops": ,')  # line 3: a key without a value
    (inat / "val2018.json").write_text("\n".join(text))
    err = convert_inat(inat, tmp_path, capsys)
    assert f"{inat / 'val2018.json'}:3:10: malformed JSON: Expecting value" in err


def test_json_missing_top_level_key(inat, tmp_path, capsys):
    edit(inat / "train2018.json", lambda d: d.pop("annotations"))
    err = convert_inat(inat, tmp_path, capsys)
    assert f"{inat / 'train2018.json'}: missing key(s) ['annotations']" in err


def test_json_entry_missing_key(inat, tmp_path, capsys):
    edit(inat / "train2018.json", lambda d: d["images"][1].pop("file_name"))
    err = convert_inat(inat, tmp_path, capsys)
    assert f"{inat / 'train2018.json'}: images[1]: missing key(s) ['file_name']" in err


def test_annotation_for_unknown_image(inat, tmp_path, capsys):
    edit(
        inat / "train2018.json",
        lambda d: d["annotations"].append({"id": 77, "image_id": 123456, "category_id": 100}),
    )
    err = convert_inat(inat, tmp_path, capsys)
    assert (
        f"{inat / 'train2018.json'}: annotations[4] (id=77, image_id=123456): annotation for an unknown image"
        in err
    )


def test_annotation_with_unknown_category(inat, tmp_path, capsys):
    edit(inat / "val2018.json", lambda d: d["annotations"][0].update(category_id=42))
    err = convert_inat(inat, tmp_path, capsys)
    assert "val2018.json: annotations[0]" in err and "category_id 42 is not one of the 2 categories" in err


def test_duplicate_image_id_and_annotation(inat, tmp_path, capsys):
    def dup(d):
        d["images"].append(dict(d["images"][0], file_name="train_val2018/x.jpg"))
        d["annotations"].append(dict(d["annotations"][0], id=999))

    edit(inat / "train2018.json", dup)
    err = convert_inat(inat, tmp_path, capsys)
    assert "train2018.json: images[4] (id=5000): duplicate image id (first at" in err
    assert "train2018.json: annotations[4] (id=999, image_id=" in err and "duplicate annotation" in err


def test_image_without_annotation(inat, tmp_path, capsys):
    edit(inat / "val2018.json", lambda d: d["annotations"].pop())
    err = convert_inat(inat, tmp_path, capsys)
    assert "val2018.json: images[" in err and "image has no annotation" in err


# -------------------------------------------------------------------------------------- CIFAR pickles
def test_cifar_out_of_range_and_non_integer_labels(tmp_path, capsys):
    src = write_cifar(tmp_path / "c", hundred=True, per_class_train=4, per_class_test=2, num_classes=3)
    d = pickle.loads((src.root / "train").read_bytes())
    d["fine_labels"][2] = 7
    d["fine_labels"][5] = "cat"
    (src.root / "train").write_bytes(pickle.dumps(d, protocol=2))
    rc = convert_main(
        ["cifar100-lt", str(src.root), "--out", str(tmp_path / "out"), "--imbalance-factor", "2"]
    )
    err = assert_refused(rc, capsys.readouterr().err, tmp_path)
    assert f"{src.root / 'train'}[2]: label 7 out of range, expected 0..2" in err
    assert f"{src.root / 'train'}[5]: label 'cat' is not an integer" in err


def test_cifar_missing_meta_key_and_bad_shape(tmp_path, capsys):
    src = write_cifar(tmp_path / "c", hundred=False, per_class_train=4, per_class_test=2, num_classes=3)
    d = pickle.loads((src.root / "test_batch").read_bytes())
    d[b"data"] = d[b"data"][:, :100]
    (src.root / "test_batch").write_bytes(pickle.dumps(d, protocol=2))
    rc = convert_main(["cifar10-lt", str(src.root), "--out", str(tmp_path / "out")])
    err = assert_refused(rc, capsys.readouterr().err, tmp_path)
    assert f"{src.root / 'test_batch'}: data: is uint8[6, 100], expected uint8[N, 3072]" in err
    (src.root / "batches.meta").write_bytes(pickle.dumps({"num_vis": 3072}, protocol=2))
    rc = convert_main(["cifar10-lt", str(src.root), "--out", str(tmp_path / "out")])
    err = assert_refused(rc, capsys.readouterr().err, tmp_path)
    assert f"{src.root / 'batches.meta'}: missing key 'label_names'" in err


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path, capsys):
    src = write_cifar(tmp_path / "c", hundred=True, per_class_train=2, per_class_test=1, num_classes=2)
    (src.root / "meta").write_bytes(pickle.dumps({"fine_label_names": ["a", "b"], "x": _Evil()}, protocol=2))
    rc = convert_main(["cifar100-lt", str(src.root), "--out", str(tmp_path / "out")])
    err = assert_refused(rc, capsys.readouterr().err, tmp_path)
    assert (
        f"{src.root / 'meta'}: not a readable CIFAR pickle" in err and "refusing to load posix.system" in err
    )


def test_imagefolder_unknown_val_class_and_empty_train_class(tmp_path, capsys):
    root = tmp_path / "folder"
    for rel in ("train/a/0.jpg", "train/b/1.jpg", "val/a/2.jpg", "val/zebra/3.jpg"):
        save_jpeg(root / rel, tiny_photo(0, 1, 0, long_side=16))
    (root / "train" / "c").mkdir()
    rc = convert_main(["imagefolder", str(root), "--out", str(tmp_path / "out"), "--workers", "1"])
    err = assert_refused(rc, capsys.readouterr().err, tmp_path)
    assert f"{root / 'val/zebra/3.jpg'}: class folder 'zebra' is not one of the 3 train classes" in err
    assert "class 2 ('c') has no training images" in err


def test_missing_val_json_suggests_train_only(inat, tmp_path, capsys):
    (inat / "val2018.json").unlink()
    err = convert_inat(inat, tmp_path, capsys)
    assert f"{inat / 'val2018.json'}: file not found (pass --splits train" in err
    rc = convert_main(
        ["inat2018", str(inat), "--splits", "train", "--out", str(tmp_path / "out"), "--workers", "1"]
    )
    assert rc == 0 and open_shard(tmp_path / "out" / "inat2018" / "train.beton").index.class_counts == [2, 2]


def test_report_is_in_line_order_whatever_check_found_it(tree, tmp_path, capsys):
    # Line 10 is malformed (found while parsing), line 2 is missing (found later, by the file check).
    lines = [GOOD[0], "train/c0/absent.jpg 0", *GOOD[1:], "oops"]
    rc, err, train = convert(tree, tmp_path, capsys, lines)
    assert_refused(rc, err, tmp_path)
    assert err.index(f"{train}:2: ") < err.index(f"{train}:11: ")


@pytest.mark.parametrize(
    "rel, escapes",
    [
        ("a/b.jpg", False),
        ("./a//b.jpg", False),
        ("a/../b.jpg", False),
        ("a/b/../../c.jpg", False),
        ("...", False),  # a name, not a climb
        ("..a/b..jpg", False),
        ("..", True),
        ("../a.jpg", True),
        ("a/../../b.jpg", True),
        ("a\\..\\..\\b.jpg", True),  # backslashes are separators too
        ("/abs/a.jpg", True),
        ("\\abs\\a.jpg", True),
    ],
)
def test_escapes_root_decides_on_the_text_of_the_path(rel, escapes):
    assert escapes_root(rel) is escapes


@pytest.mark.parametrize("value", [0, 7, -1, np.int64(3), np.uint8(1), np.int32(-2)])
def test_integer_ids_and_labels_are_ints(value):
    assert is_int(value)


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 3.0, np.float32(1), "3", None, [1]])
def test_bools_floats_and_strings_are_not_integer_labels(value):
    assert not is_int(value)
