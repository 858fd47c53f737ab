"""``digits-lt``: the embedded default dataset, built from scikit-learn's copy of the UCI digits.

``sklearn.datasets.load_digits`` ships 1,797 real handwritten digits (8x8, 17 grey levels, 10 classes,
174..183 per class) inside the package, so fastlt has a real long-tailed dataset with no download.

The split, all from one seeded permutation per class:

* **test**: ``TEST_PER_CLASS = 40`` images of every class (400, balanced), like every LT benchmark's test set.
* **train**: the long-tailed profile ``n_c = int(N_MAX * IF ** (-c / 9))`` with ``N_MAX = 134`` and
  ``IF = 10`` (544 images): 134, 103, 80, 62, 48, 37, 28, 22, 17, 13.

Why these numbers: the groups are many > 100, few < 20 (REFERENCE.md). 134 is the most the smallest
class (174 images, digit 8) has left after 40 go to test, so every class can fill its quota; with
``N_MAX = 134`` an IF of 10 puts two classes above 100 (134, 103), two below 20 (17, 13) and six in
between, so every group has at least two classes to average over. A larger test set would push the second
class under 100; a smaller IF would leave no few classes.

Pixels: the 0..16 grey levels are scaled to 0..255, upscaled 8 → 32 with bilinear interpolation (the
CIFAR resolution, so the same models and crops apply) and repeated to three channels; written raw, so the
shard holds exactly these bytes.
"""

from __future__ import annotations

import numpy as np

from fastlt.datasets.longtail import longtail_counts
from fastlt.datasets.validate import Job, Problems, Split

NAME = "digits-lt"
TEST_PER_CLASS = 40
N_MAX = 134
IMBALANCE_FACTOR = 10.0
SIZE = 32


def upscale(images8: np.ndarray, size: int = SIZE) -> np.ndarray:
    """float[N,8,8] grey levels 0..16 → uint8[N,size,size,3]."""
    from PIL import Image

    grey = np.clip(np.rint(images8 * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    out = np.empty((len(grey), size, size, 3), dtype=np.uint8)
    for i, g in enumerate(grey):
        out[i] = np.asarray(Image.fromarray(g, "L").resize((size, size), Image.BILINEAR))[..., None]
    return out


def split_indices(
    labels: np.ndarray,
    seed: int,
    test_per_class: int = TEST_PER_CLASS,
    n_max: int = N_MAX,
    imbalance_factor: float = IMBALANCE_FACTOR,
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices into ``load_digits``: per class, one seeded permutation; the first
    ``test_per_class`` go to test, the next ``n_c`` to train."""
    C = int(labels.max()) + 1
    counts = longtail_counts(n_max, C, imbalance_factor)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(C):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < test_per_class + counts[c]:
            raise ValueError(
                f"digit {c} has {len(idx)} images, needs {test_per_class} test + {counts[c]} train"
            )
        test.append(idx[:test_per_class])
        train.append(idx[test_per_class : test_per_class + counts[c]])
    return np.concatenate(train), np.concatenate(test)


def add_arguments(p) -> None:
    p.add_argument("--seed", type=int, default=0, help="seed of the per-class split (default 0)")
    p.add_argument(
        "--imbalance-factor",
        type=float,
        default=IMBALANCE_FACTOR,
        help=f"n_max / n_min of the train split (default {IMBALANCE_FACTOR:g}: 2 many, 6 medium, 2 few)",
    )


def build(args) -> Job:
    from sklearn.datasets import load_digits

    d = load_digits()
    labels = d.target.astype(np.int64)
    train, test = split_indices(labels, args.seed, imbalance_factor=args.imbalance_factor)
    images = upscale(d.images)
    splits = [
        Split(
            name, labels[idx], [str(i) for i in idx], [f"load_digits()[{i}]" for i in idx], images=images[idx]
        )
        for name, idx in (("train", train), ("test", test))
    ]
    return Job(
        dataset=NAME,
        class_names=[str(n) for n in d.target_names],
        splits=splits,
        problems=Problems(),
        settings={
            "source": "sklearn.datasets.load_digits",
            "seed": args.seed,
            "imbalance_factor": args.imbalance_factor,
            "n_max": N_MAX,
            "test_per_class": TEST_PER_CLASS,
            "size": SIZE,
        },
        default_write_mode="raw",
    )
