"""digits-lt: the embedded default dataset, converted through the real CLI and FFCV writer."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from fastlt.datasets.digits import IMBALANCE_FACTOR, N_MAX, TEST_PER_CLASS, split_indices, upscale
from fastlt.datasets.longtail import longtail_counts
from fastlt.shards import open_shard


@pytest.fixture(scope="module")
def shards(digits_data):
    """The session's digits-lt conversion (conftest.py, through ``fastlt convert digits-lt``)."""
    return {s: open_shard(digits_data / "digits-lt" / f"{s}.beton") for s in ("train", "test")}


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_train_is_long_tailed_with_every_group(shards):
    idx = shards["train"].index
    assert idx.class_counts == longtail_counts(N_MAX, 10, IMBALANCE_FACTOR).tolist()
    assert idx.class_counts == [134, 103, 80, 62, 48, 37, 28, 22, 17, 13]
    assert idx.class_groups.count("many") == 2 and idx.class_groups.count("few") == 2
    assert idx.class_groups.count("medium") == 6
    assert idx.class_offsets == [0, *np.cumsum(idx.class_counts).tolist()]
    assert idx.class_names == [str(d) for d in range(10)]


def test_test_split_is_balanced_and_grouped_by_train_counts(shards):
    test, train = shards["test"].index, shards["train"].index
    assert test.class_counts == [TEST_PER_CLASS] * 10
    assert test.train_class_counts == train.class_counts
    assert test.class_groups == train.class_groups


def test_rows_match_the_source_label_and_pixels_byte_exact(shards, digits):
    ref = upscale(digits.images)
    for split, shard in shards.items():
        ids = np.array([int(s) for s in shard.index.source_ids])
        stored = shard.stored_labels()
        np.testing.assert_array_equal(stored, digits.target[ids], err_msg=split)
        np.testing.assert_array_equal(stored, shard.labels)
        for row in range(shard.num_rows):
            mode, h, w, _ = shard.image_bytes(row)
            assert (mode, h, w) == ("raw", 32, 32)
            np.testing.assert_array_equal(shard.decode(row), ref[ids[row]])


def test_train_and_test_are_disjoint(shards):
    train = set(shards["train"].index.source_ids)
    test = set(shards["test"].index.source_ids)
    assert not train & test
    assert len(train) == shards["train"].num_rows and len(test) == 400


def test_split_is_seeded(digits):
    a = split_indices(digits.target, seed=0)
    b = split_indices(digits.target, seed=0)
    c = split_indices(digits.target, seed=1)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_upscale_keeps_the_digit_and_its_range(digits):
    img = upscale(digits.images[:1])[0]
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert (img[..., 0] == img[..., 2]).all()
    # 4x bilinear upscaling keeps the 8x8 mean (up to edge effects and rounding).
    assert abs(img[..., 0].mean() - digits.images[0].mean() * 255 / 16) < 6
