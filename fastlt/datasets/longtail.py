"""Long-tailed subsampling: the exponential profile every LT benchmark uses, and the CIFAR-LT draw.

Cui et al. (2019) made CIFAR long-tailed by keeping ``n_c = int(n_max * IF ** (-c / (C - 1)))`` images of
class ``c`` (``IF = n_max / n_min``): class 0 keeps all ``n_max`` and class ``C-1`` keeps ``n_max / IF``, with
the counts falling geometrically in between (each step multiplies by ``IF ** (-1 / (C - 1))``). ``int``
truncates, which is why the published train sizes (REFERENCE.md) are what they are; rounding would give
different totals, so the truncation is part of the rule.
"""

from __future__ import annotations

import numpy as np


def longtail_counts(n_max: int, num_classes: int, imbalance_factor: float) -> np.ndarray:
    """int64[C]: images kept per class, ``int(n_max * IF ** (-c / (C - 1)))`` for c = 0..C-1."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if imbalance_factor < 1:
        raise ValueError(f"imbalance factor must be >= 1 (n_max / n_min), got {imbalance_factor}")
    if num_classes == 1:
        return np.array([int(n_max)], dtype=np.int64)
    c = np.arange(num_classes, dtype=np.float64)
    # Evaluate in Python floats one class at a time: identical to the reference rule bit for bit
    # (numpy's vectorised power can differ in the last ulp, which int() would turn into an off-by-one).
    return np.array(
        [int(n_max * float(imbalance_factor) ** (-float(ci) / (num_classes - 1))) for ci in c], dtype=np.int64
    )


def cifar_lt_indices(
    labels: np.ndarray,
    imbalance_factor: float,
    seed: int = 0,
    n_max: int | None = None,
    *,
    num_classes: int | None = None,
    clip: bool = False,
) -> np.ndarray:
    """Indices of the CIFAR-LT train subset, in the reference order (REFERENCE.md §CIFAR-LT).

    ``np.random.seed(seed)`` once, then for each class in label order: shuffle that class's indices and
    keep the first ``n_c``. ``n_max`` defaults to the size of the largest class (5000 / 500 for the real
    CIFAR-10 / -100). A class with fewer images than its quota is an error, or keeps all it has with
    ``clip`` (an ImageFolder that was not balanced to begin with). The legacy global generator is used
    on purpose: it makes the subset identical to the one the published numbers were trained on. Its
    state is restored afterwards.
    """
    labels = np.asarray(labels, dtype=np.int64)
    C = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    per_class = [np.flatnonzero(labels == c) for c in range(C)]
    n_max = max(len(p) for p in per_class) if n_max is None else int(n_max)
    counts = longtail_counts(n_max, C, imbalance_factor)
    if clip:
        counts = np.minimum(counts, [len(p) for p in per_class])
    short = [c for c in range(C) if len(per_class[c]) < counts[c]]
    if short:
        c = short[0]
        raise ValueError(
            f"class {c} has {len(per_class[c])} images but the long-tailed profile (n_max={n_max}, "
            f"IF={imbalance_factor}) asks for {counts[c]}"
        )
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        keep = []
        for c in range(C):
            idx = per_class[c].copy()
            np.random.shuffle(idx)
            keep.append(idx[: counts[c]])
    finally:
        np.random.set_state(state)
    return np.concatenate(keep)
