"""The CIFAR-LT count rule and draw (REFERENCE.md §CIFAR-LT)."""

from __future__ import annotations

import numpy as np
import pytest

from fastlt.datasets.longtail import cifar_lt_indices, longtail_counts
from fastlt.shards import class_groups


@pytest.mark.parametrize(
    "n_max, C, sizes",
    [(5000, 10, [20431, 13996, 12406, 11203]), (500, 100, [19573, 12608, 10847, 9502])],
    ids=["cifar10", "cifar100"],
)
def test_count_rule_reproduces_the_published_train_sizes(n_max, C, sizes):
    assert [int(longtail_counts(n_max, C, f).sum()) for f in (10, 50, 100, 200)] == sizes


def test_cifar100_if100_groups():
    g = class_groups(longtail_counts(500, 100, 100))
    assert (g.count("many"), g.count("medium"), g.count("few")) == (35, 35, 30)


def test_profile_ends_and_monotone():
    c = longtail_counts(1000, 7, 20)
    assert c[0] == 1000 and c[-1] == 50 and np.all(np.diff(c) <= 0)
    assert longtail_counts(30, 1, 5).tolist() == [30]
    with pytest.raises(ValueError, match="imbalance factor"):
        longtail_counts(10, 3, 0.5)


def test_draw_is_seeded_restores_global_state_and_checks_quota():
    labels = np.repeat(np.arange(4), 50)
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    a = cifar_lt_indices(labels, 10, seed=0)
    assert np.random.random() == before  # the caller's global stream is untouched
    np.testing.assert_array_equal(a, cifar_lt_indices(labels, 10, seed=0))
    assert not np.array_equal(a, cifar_lt_indices(labels, 10, seed=1))
    assert np.bincount(labels[a]).tolist() == longtail_counts(50, 4, 10).tolist()
    with pytest.raises(ValueError, match="class 0 has 50 images"):
        cifar_lt_indices(labels, 10, n_max=60)
    clipped = cifar_lt_indices(labels, 10, n_max=60, clip=True)
    assert np.bincount(labels[clipped])[0] == 50
