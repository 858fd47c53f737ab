"""Shards changed after conversion, through ``fastlt train`` and ``fastlt verify`` on a copy of digits-lt: a
change that keeps the file's size and mtime, what only a full hash can see, index edits that stay
self-consistent (a row moved between classes, reversed train counts), indexes older than their digest."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from fastlt.shards import _record_verified, class_groups, index_digest, open_shard
from fastlt.train import main as train_main
from fastlt.verify import main as verify_main


@pytest.fixture
def data(digits_data, tmp_path) -> Path:
    """A private copy of the converted digits-lt (train + test), opened once so its .verified caches exist."""
    root = tmp_path / "data"
    shutil.copytree(digits_data / "digits-lt", root / "digits-lt")
    for split in ("train", "test"):
        open_shard(root / "digits-lt" / f"{split}.beton")
    return root


def train(data: Path, *more: str) -> int:
    return train_main([
        "--dataset", "digits-lt", "--method", "bs", "--epochs", "1", "--steps-per-epoch", "1",
        "--eval-every", "0", "--progress", "false", "--data-root", str(data),
        "--runs", str(data.parent / "runs"), "--name", "run", *more,
    ])


def flip_byte_keeping_mtime(path: Path) -> None:
    """One byte changed in place, then the mtime put back: size and mtime as before."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        b = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def edit_index(path: Path, change, redigest: bool = False) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    if redigest:  # as a tool that knows the format would: the digest alone no longer tells
        doc["index_sha256"] = index_digest(doc)
    path.write_text(json.dumps(doc, indent=1))


# ------------------------------------------------------------------------------------------ the .beton
def test_a_change_keeping_size_and_mtime_is_caught(data, capsys):
    beton = data / "digits-lt" / "train.beton"
    flip_byte_keeping_mtime(beton)
    assert train(data) == 2
    assert f"{beton}: sha256 " in capsys.readouterr().err


def test_a_restore_with_cp_p_is_caught(data, tmp_path, capsys):
    beton = data / "digits-lt" / "test.beton"
    backup = tmp_path / "backup.beton"
    shutil.copy2(beton, backup)
    flip_byte_keeping_mtime(backup)  # a bad backup: same size, same mtime as the shard
    shutil.copy2(backup, beton)  # `cp -p backup test.beton`
    assert beton.stat().st_mtime_ns == backup.stat().st_mtime_ns
    assert train(data) == 2
    assert f"{beton}: sha256 " in capsys.readouterr().err


def test_what_the_fast_check_cannot_see_full_verification_does(data, capsys):
    beton = data / "digits-lt" / "train.beton"
    flip_byte_keeping_mtime(beton)
    # Bytes that rot under an unchanged inode leave every stat field as the cache recorded it: here the cache
    # is renewed for the changed file, which is what the fast check then sees.
    _record_verified(beton, open_shard(beton, verify=False).index.beton_sha256)
    open_shard(beton)  # the documented limit: the fast check trusts it

    assert verify_main([str(data), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"FAILED  {beton}: sha256 " in out and f"ok      {data / 'digits-lt' / 'test.beton'}" in out
    assert "1 shard verified, 1 failed" in out
    assert train(data, "--full-verify", "true") == 2
    assert f"{beton}: sha256 " in capsys.readouterr().err
    assert train(data) == 2  # the failed verification dropped the cache: the fast check hashes again


def test_verify_checks_every_shard_below_a_folder(data, capsys):
    assert verify_main([str(data), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("ok      ") == 2 and "2 shards verified, 0 failed" in out
    assert verify_main([str(data / "digits-lt" / "test.beton"), "--no-progress"]) == 0
    assert verify_main([str(data / "nothing-here")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the index
def move_last_row_of_class_0_to_class_1(doc):
    doc["class_counts"][0] -= 1
    doc["class_counts"][1] += 1
    doc["class_offsets"][1] -= 1
    doc["train_class_counts"] = list(doc["class_counts"])
    doc["class_groups"] = class_groups(doc["class_counts"])


def test_a_row_moved_between_classes_is_caught(data, capsys):
    index = data / "digits-lt" / "train.index.json"
    row = json.loads(index.read_text())["class_offsets"][1] - 1
    edit_index(index, move_last_row_of_class_0_to_class_1)
    assert train(data) == 2
    assert f"{index}: the index was changed after conversion" in capsys.readouterr().err

    edit_index(index, lambda doc: None, redigest=True)
    assert train(data) == 2
    err = capsys.readouterr().err
    assert f"train.beton: row {row} (" in err
    assert "is stored with label 0, but its index puts it in class 1" in err
    assert verify_main([str(index), "--no-progress"]) == 1


def reverse_train_counts(doc):
    doc["train_class_counts"] = doc["train_class_counts"][::-1]
    doc["class_groups"] = class_groups(doc["train_class_counts"])


def test_reversed_train_counts_are_caught(data, capsys):
    test_index = data / "digits-lt" / "test.index.json"
    edit_index(test_index, reverse_train_counts)
    assert train(data) == 2
    assert f"{test_index}: the index was changed after conversion" in capsys.readouterr().err

    edit_index(test_index, lambda doc: None, redigest=True)
    assert train(data) == 2
    err = capsys.readouterr().err
    assert f"{test_index}: its train counts disagree with the class counts of " in err
    assert verify_main([str(data), "--no-progress"]) == 1
    assert "its train counts disagree" in capsys.readouterr().out

    train_index = data / "digits-lt" / "train.index.json"
    edit_index(train_index, reverse_train_counts, redigest=True)
    assert train(data) == 2
    assert "the train split's train_class_counts differ from its class_counts" in capsys.readouterr().err


def test_an_index_older_than_its_digest_opens_with_a_warning(data, capsys):
    for split in ("train", "test"):
        edit_index(data / "digits-lt" / f"{split}.index.json", lambda doc: doc.pop("index_sha256"))
    assert train(data) == 0
    err = capsys.readouterr().err
    assert f"warning: {data / 'digits-lt' / 'train.index.json'} has no index_sha256" in err
    assert "re-run tools/convert to add one" in err
    # the other checks still apply to it
    edit_index(data / "digits-lt" / "train.index.json", move_last_row_of_class_0_to_class_1)
    assert verify_main([str(data), "--no-progress"]) == 1
    assert "is stored with label 0, but its index puts it in class 1" in capsys.readouterr().out
