"""cifar10-lt / cifar100-lt from synthetic pickles in the real on-disk format."""

from __future__ import annotations

import numpy as np
import pytest

from fastlt.convert import main as convert_main
from fastlt.datasets.longtail import cifar_lt_indices, longtail_counts
from fastlt.shards import open_shard
from synth import assert_shard_matches, write_cifar

C, PER_TRAIN, PER_TEST, IF = 5, 40, 6, 10


@pytest.fixture(scope="module", params=[False, True], ids=["cifar10", "cifar100"])
def converted(request, tmp_path_factory):
    hundred = request.param
    tmp = tmp_path_factory.mktemp("cifar100-" if hundred else "cifar10-")
    src = write_cifar(tmp / "src", hundred, PER_TRAIN, PER_TEST, C)
    cmd = "cifar100-lt" if hundred else "cifar10-lt"
    rc = convert_main(
        [cmd, str(src.root), "--out", str(tmp / "out"), "--imbalance-factor", str(IF), "--workers", "1"]
    )
    assert rc == 0
    shards = {s: open_shard(tmp / "out" / cmd / f"{s}.beton") for s in ("train", "test")}
    return src, shards, hundred


def source_rows(src, files):
    """source id (``file[i]``) -> (label, pixels) over the given pickle files."""
    out = {}
    for f in files:
        for i, y in enumerate(src.labels[f]):
            out[f"{f}[{i}]"] = (y, src.files[f][i])
    return out


def test_train_follows_the_long_tail_rule_and_test_stays_balanced(converted):
    src, shards, hundred = converted
    train, test = shards["train"].index, shards["test"].index
    assert train.class_counts == longtail_counts(PER_TRAIN, C, IF).tolist()
    assert test.class_counts == [PER_TEST] * C
    assert train.settings["imbalance_factor"] == IF and train.settings["write_mode"] == "raw"


def test_rows_labels_names_and_pixels_match_the_pickles(converted):
    src, shards, hundred = converted
    train_files = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    test_files = ["test"] if hundred else ["test_batch"]
    train_counts = shards["train"].index.class_counts
    for split, files in (("train", train_files), ("test", test_files)):
        shard = shards[split]
        rows = source_rows(src, files)
        kept = {s: rows[s][0] for s in shard.index.source_ids}
        if split == "test":
            assert len(kept) == len(rows)
        assert_shard_matches(shard, kept, src.class_names, train_counts)
        for row, sid in enumerate(shard.index.source_ids):
            np.testing.assert_array_equal(shard.decode(row), rows[sid][1])  # raw: byte-exact


def test_train_subset_is_the_reference_draw(converted):
    src, shards, hundred = converted
    files = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    ids = [f"{f}[{i}]" for f in files for i in range(len(src.labels[f]))]
    labels = np.concatenate([src.labels[f] for f in files])
    # Reference rule written out: seed once, per class shuffle and keep the first n_c.
    np.random.seed(0)
    expected = []
    for c, n in enumerate(longtail_counts(PER_TRAIN, C, IF)):
        idx = np.flatnonzero(labels == c)
        np.random.shuffle(idx)
        expected += [ids[i] for i in idx[:n]]
    assert shards["train"].index.source_ids == expected
    np.testing.assert_array_equal(cifar_lt_indices(labels, IF, seed=0), [ids.index(s) for s in expected])
