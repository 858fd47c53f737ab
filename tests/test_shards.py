"""Class-indexed shards: writing through the real FFCV writer, reading rows back, and refusing a shard
that does not match its index."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fastlt.shards import (
    HASH_BLOCK,
    ArraySource,
    ShardError,
    chunks,
    class_groups,
    hash_file,
    open_shard,
    shard_paths,
    write_shard,
)
from synth import psnr, tiny_photo

C = 3
LABELS = np.array([2, 0, 1, 0, 2, 2, 1, 0, 0, 2, 0])  # unsorted on purpose


def images(n, h=24, w=20):
    return np.stack([tiny_photo(7, i, 0, long_side=48)[:h, :w] for i in range(n)])  # short side >= 36


@pytest.fixture(scope="module")
def pixels():
    return images(len(LABELS))


@pytest.fixture(scope="module")
def raw_shard(tmp_path_factory, pixels):
    root = tmp_path_factory.mktemp("shards")
    src = ArraySource(pixels, LABELS, [f"img{i}" for i in range(len(LABELS))])
    shard = write_shard(
        root, "toy", "train", src, ["a", "b", "c"], write_mode="raw", workers=2, settings={"note": "test"}
    )
    return root, shard


def test_rows_are_class_sorted_and_stable(raw_shard):
    _, shard = raw_shard
    idx = shard.index
    expected = np.argsort(LABELS, kind="stable")
    assert idx.source_ids == [f"img{i}" for i in expected]
    assert idx.class_counts == np.bincount(LABELS).tolist() == [5, 2, 4]
    assert idx.class_offsets == [0, 5, 7, 11]
    np.testing.assert_array_equal(shard.stored_labels(), LABELS[expected])
    np.testing.assert_array_equal(shard.labels, LABELS[expected])
    assert idx.class_groups == class_groups([5, 2, 4]) == ["few"] * 3
    assert idx.settings["note"] == "test" and idx.settings["write_mode"] == "raw"


def test_raw_pixels_are_byte_exact(raw_shard, pixels):
    _, shard = raw_shard
    for row, sid in enumerate(shard.index.source_ids):
        mode, h, w, data = shard.image_bytes(row)
        assert (mode, h, w, data.size) == ("raw", 24, 20, 24 * 20 * 3)
        np.testing.assert_array_equal(shard.decode(row), pixels[int(sid[3:])])


def test_jpg_mode_is_faithful_and_groups_follow_train_counts(tmp_path, pixels):
    src = ArraySource(pixels, LABELS, [str(i) for i in range(len(LABELS))])
    shard = write_shard(
        tmp_path,
        "toy",
        "val",
        src,
        ["a", "b", "c"],
        train_class_counts=[150, 50, 10],
        write_mode="jpg",
        jpeg_quality=95,
        workers=1,
    )
    assert shard.index.class_groups == ["many", "medium", "few"]
    assert shard.index.train_class_counts == [150, 50, 10]
    for row, sid in enumerate(shard.index.source_ids):
        assert shard.image_bytes(row)[0] == "jpg"
        assert psnr(shard.decode(row), pixels[int(sid)]) > 30


def test_open_by_either_path_and_reader_agrees(raw_shard):
    root, shard = raw_shard
    beton, index = shard_paths(root, "toy", "train")
    assert open_shard(index).index == shard.index
    r = shard.reader()
    assert r.num_samples == len(LABELS) and r.field_names == ["image", "label"]


def copy_shard(root, dst):
    beton, index = shard_paths(root, "toy", "train")
    dst.mkdir()
    (dst / beton.name).write_bytes(beton.read_bytes())
    (dst / index.name).write_text(index.read_text())
    return dst / beton.name


def test_refuses_a_modified_byte(raw_shard, tmp_path):
    beton = copy_shard(raw_shard[0], tmp_path / "copy")
    open_shard(beton)  # intact copy opens (and caches its checksum)
    data = bytearray(beton.read_bytes())
    data[len(data) // 2] ^= 0xFF
    beton.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"train\.beton: sha256 .* does not match its index"):
        open_shard(beton)


def test_refuses_a_truncated_file(raw_shard, tmp_path):
    beton = copy_shard(raw_shard[0], tmp_path / "copy")
    size = beton.stat().st_size
    with open(beton, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(
        ShardError, match=rf"size {size - 100} bytes does not match its index \({size} bytes\)"
    ):
        open_shard(beton)


def test_refuses_missing_or_bad_index(raw_shard, tmp_path):
    beton = copy_shard(raw_shard[0], tmp_path / "copy")
    index = beton.with_name("train.index.json")
    doc = json.loads(index.read_text())
    index.write_text(json.dumps({**doc, "class_counts": [5, 2, 3]}))
    with pytest.raises(ShardError, match="class_offsets are not the cumulative sum of class_counts"):
        open_shard(beton)
    index.write_text(json.dumps({k: v for k, v in doc.items() if k != "source_ids"}))
    with pytest.raises(ShardError, match=r"index is missing keys \['source_ids'\]"):
        open_shard(beton)
    index.write_text("{ not json")
    with pytest.raises(ShardError, match=r"train\.index\.json:1: malformed JSON"):
        open_shard(beton)
    index.unlink()
    with pytest.raises(ShardError, match="the .beton exists but its index does not"):
        open_shard(beton)


class FlakySource(ArraySource):
    """A file that vanished between validation and writing: its row fails inside FFCV's worker."""

    def load(self, i):
        if self.source_ids[i] == "bad":
            raise FileNotFoundError("gone")
        return super().load(i)


@pytest.mark.timeout(60)
def test_a_row_failing_inside_the_writer_refuses_instead_of_hanging(tmp_path, pixels):
    ids = [f"ok{i}" for i in range(len(LABELS))]
    ids[4] = "bad"
    with pytest.raises(
        ShardError, match=r"toy/train: 1 images failed to load while writing .*bad: FileNotFoundError"
    ):
        write_shard(tmp_path, "toy", "train", FlakySource(pixels, LABELS, ids), ["a", "b", "c"], workers=2)
    assert sorted(p.name for p in (tmp_path / "toy").iterdir()) == []


def test_stale_temporaries_are_swept_and_index_is_world_readable(tmp_path, pixels):
    folder = tmp_path / "toy"
    folder.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = folder / f".train.beton.{int(dead.stdout)}.tmp"  # a pid that has exited
    stale.write_bytes(b"left by a killed run")
    busy = folder / f".train.beton.{os.getppid()}.tmp"  # a live process: a conversion in progress
    busy.write_bytes(b"being written")
    src = ArraySource(pixels[:3], [0, 1, 2], ["a", "b", "c"])
    shard = write_shard(tmp_path, "toy", "train", src, ["a", "b", "c"], write_mode="raw", workers=1)
    assert not stale.exists() and busy.exists()
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(shard.index_path).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_bad_arguments(tmp_path, pixels):
    src = ArraySource(pixels[:2], [0, 3], ["a", "b"])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got \[0, 3\]"):
        write_shard(tmp_path, "toy", "train", src, ["a", "b", "c"])
    with pytest.raises(ValueError, match="write_mode must be 'jpg' or 'raw'"):
        write_shard(tmp_path, "toy", "train", src, ["a", "b", "c", "d"], write_mode="png")
    with pytest.raises(ValueError, match=r"expected uint8\[N,H,W,3\] images"):
        ArraySource(pixels[..., :1], [0], ["a"])
    assert not (tmp_path / "toy").exists() or not list((tmp_path / "toy").glob("*.beton"))


@pytest.mark.parametrize("size", [0, 1, HASH_BLOCK - 1, HASH_BLOCK, 2 * HASH_BLOCK + 3])
def test_hash_file_is_the_sha256_of_the_bytes(tmp_path, size):
    # Hashed through a mapping in HASH_BLOCK pieces: the sizes put the end before, on and past a boundary.
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert hash_file(path) == hashlib.sha256(data).hexdigest()
    assert hash_file(path, "hashing", min_bar_bytes=1) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    "n, workers, most", [(0, 2, 16), (5, 2, 16), (2000, 2, 16), (1000, 8, 64), (7, 1, 3)]
)
def test_chunks_cover_the_items_in_order_shrinking_towards_the_end(n, workers, most):
    pieces = list(chunks(list(range(n)), workers, most))
    assert [i for p in pieces for i in p] == list(range(n))
    sizes = [len(p) for p in pieces]
    assert all(1 <= s <= most for s in sizes) and sizes == sorted(sizes, reverse=True)
    if n >= 8 * workers * most:  # a long split starts with full tasks and ends with single items
        assert sizes[0] == most and sizes[-1] == 1
