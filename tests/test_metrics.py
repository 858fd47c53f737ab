"""Evaluation summary against hand-computed numbers, the device confusion matrix, the written files."""

import json

import numpy as np
import pytest
import torch

from fastlt.metrics import ConfusionMatrix, summarize, write_eval
from fastlt.shards import SHARD_FORMAT_VERSION, ShardIndex, class_groups


def test_confusion_matrix_counts_pairs():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 0, 1, 2, 2]), torch.tensor([0, 1, 1, 0, 2]))
    cm.update(torch.tensor([2]), torch.tensor([2]))
    want = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    np.testing.assert_array_equal(cm.numpy(), want)


def test_summary_groups_are_means_of_per_class_accuracy():
    # class accuracies: 0 → 3/4, 1 → 1/2, 2 → 0/2, 3 → 2/2 (unbalanced test split on purpose)
    m = np.zeros((4, 4), np.int64)
    m[0, 0], m[0, 1] = 3, 1
    m[1, 1], m[1, 0] = 1, 1
    m[2, 3] = 2
    m[3, 3] = 2
    s = summarize(m, np.array([0, 0, 1, 2]))
    assert s["many"] == pytest.approx(100 * (0.75 + 0.5) / 2)
    assert s["medium"] == pytest.approx(0.0)
    assert s["few"] == pytest.approx(100.0)
    assert s["all"] == pytest.approx(100 * 6 / 10)
    assert s["mean_class"] == pytest.approx(100 * (0.75 + 0.5 + 0 + 1) / 4)
    assert s["per_class"] == pytest.approx([75.0, 50.0, 0.0, 100.0])


def test_empty_group_and_unseen_class_are_none():
    m = np.array([[2, 0], [0, 0]])
    s = summarize(m, np.array([0, 0]))
    assert s["medium"] is None and s["few"] is None
    assert s["per_class"] == [100.0, None] and s["many"] == 100.0


def test_write_eval_files(tmp_path):
    train_counts = [200, 50, 5]
    index = ShardIndex(
        version=SHARD_FORMAT_VERSION,
        dataset="toy",
        split="test",
        num_classes=3,
        class_names=["a", "b", "c"],
        class_counts=[5, 5, 5],
        class_offsets=[0, 5, 10, 15],
        class_groups=class_groups(train_counts),
        train_class_counts=train_counts,
        source_ids=[f"test/{i}.jpg" for i in range(15)],
        settings={},
    )
    index.check_consistent()
    m = np.array([[5, 0, 0], [1, 4, 0], [2, 2, 1]])
    s = summarize(m, np.array([0, 1, 2]))
    write_eval(tmp_path, s, index, m)
    rec = json.loads((tmp_path / "eval.json").read_text())
    assert rec["few"] == pytest.approx(20.0) and rec["per_class_accuracy"] == pytest.approx([100, 80, 20])
    for png in ("confusion.png", "per_class_accuracy.png"):
        data = (tmp_path / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_results_table_cells_are_mean_and_sample_std():
    from fastlt.results import cell, markdown_table

    assert cell([90.0, 92.0, 94.0]) == "92.0 ± 2.0"  # sample std (ddof = 1)
    assert cell([50.0]) == "50.0" and cell([None]) == "n/a"
    t = markdown_table(
        {"bs": [dict(many=1.0, medium=2.0, few=3.0, all=4.0), dict(many=3.0, medium=2.0, few=5.0, all=6.0)]}
    )
    assert t.splitlines()[-1] == "| bs | 2.0 ± 1.4 | 2.0 ± 0.0 | 4.0 ± 1.4 | 5.0 ± 1.4 |"
