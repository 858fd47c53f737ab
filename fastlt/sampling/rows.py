"""The shard's row space and the two row-level partner policies (instance-uniform, class-balanced).

A class-indexed shard stores class ``c`` in rows ``offsets[c]:offsets[c+1]``, so "an image of class c" is one
integer draw: every policy of :mod:`fastlt.sampling` is a class-level draw followed by the row draw defined
here. The *label set* is the classes that own at least one row of the shard (a class with no rows cannot be
drawn).
"""

from __future__ import annotations

import numpy as np


def check_offsets(offsets, name: str = "class_offsets") -> np.ndarray:
    """int64[C+1] class offsets of a class-sorted shard: 0 first, non-decreasing, at least one row."""
    o = np.asarray(offsets)
    if o.ndim != 1 or o.shape[0] < 2 or not np.issubdtype(o.dtype, np.integer):
        raise ValueError(f"{name}: expected a 1-D integer array of C+1 ≥ 2 offsets, got shape {o.shape} "
                         f"dtype {o.dtype}")
    o = o.astype(np.int64)
    if o[0] != 0:
        raise ValueError(f"{name}[0] = {o[0]}, expected 0")
    bad = np.flatnonzero(np.diff(o) < 0)
    if bad.size:
        raise ValueError(f"{name} decreases at class {bad[0]} ({o[bad[0]]} → {o[bad[0] + 1]})")
    if o[-1] == 0:
        raise ValueError(f"{name}: the shard has no rows")
    return np.ascontiguousarray(o)


def class_of_rows(offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Class of each row of a class-sorted shard (the c with offsets[c] ≤ row < offsets[c+1])."""
    return np.searchsorted(offsets, rows, side="right").astype(np.int64) - 1


def _uniform_index(x: np.ndarray, n: int) -> np.ndarray:
    return np.minimum((x * n).astype(np.int64), n - 1)


class _RowSpace:
    """The shard's row space: offsets, class sizes and the label set (classes that own rows).

    Every policy adds ``pairs(rng, n=None, anchors=None) -> (row_a, row_b)``: ``n`` pairs with anchors drawn
    the policy's way, or one partner per given anchor row.
    """

    def __init__(self, offsets):
        self.offsets = check_offsets(offsets)
        self.num_classes = self.offsets.shape[0] - 1
        self.num_rows = int(self.offsets[-1])
        self.sizes = np.diff(self.offsets)
        self.label_set = np.flatnonzero(self.sizes > 0).astype(np.int64)

    def uniform_rows(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return _uniform_index(rng.random(n), self.num_rows)

    def rows_in(self, classes: np.ndarray, x: np.ndarray) -> np.ndarray:
        """A row uniform within each class (classes must own rows)."""
        sizes = self.sizes[classes]
        return self.offsets[classes] + np.minimum((x * sizes).astype(np.int64), sizes - 1)

    def balanced_rows(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Class uniform over the label set, then a row uniform within it."""
        x = rng.random((2, n))
        classes = self.label_set[_uniform_index(x[0], self.label_set.shape[0])]
        return self.rows_in(classes, x[1])

    def anchor_rows(self, rng: np.random.Generator, n: int | None, anchors, draw) -> np.ndarray:
        """The given anchor rows (checked), or ``draw(rng, n)``."""
        if anchors is not None:
            return self.check_rows(anchors, "anchors")
        if n is None or n < 0:
            raise ValueError(f"{type(self).__name__}.pairs: give n ≥ 0 draws or explicit anchor rows")
        return draw(rng, int(n))

    def check_rows(self, rows, name: str) -> np.ndarray:
        r = np.ascontiguousarray(rows, dtype=np.int64).ravel()
        if r.size and (r.min() < 0 or r.max() >= self.num_rows):
            bad = r[(r < 0) | (r >= self.num_rows)][0]
            raise ValueError(f"{name}: row {bad} outside the shard's [0, {self.num_rows})")
        return r



class InstanceUniform(_RowSpace):
    """Mixup/CutMix/Remix: the partner is a row uniform over the whole shard (so classes ∝ n_c)."""

    def pairs(self, rng: np.random.Generator, n: int | None = None, anchors=None):
        a = self.anchor_rows(rng, n, anchors, self.uniform_rows)
        return a, self.uniform_rows(rng, a.shape[0])


class ClassBalanced(_RowSpace):
    """ConCutMix foreground / classifier fine-tuning: class uniform over the label set, row uniform in it."""

    def pairs(self, rng: np.random.Generator, n: int | None = None, anchors=None):
        a = self.anchor_rows(rng, n, anchors, self.balanced_rows)
        return a, self.balanced_rows(rng, a.shape[0])

