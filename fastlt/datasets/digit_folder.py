"""A folder of images to try "your own data" on: scikit-learn's handwritten digits as long-tailed PNG files.

    python -m fastlt.datasets.digit_folder own-demo/digits [--n-max 170] [--imbalance-factor 10]

writes ``ROOT/<digit name>/<i>.png`` ("zero" … "nine"), 32×32 RGB like digits-lt, with the long-tailed
profile ``n_c = int(n_max · IF^(−c/9))`` (170 … 17 images by default, 700 in all): the layout a user's own
photos come in, made offline from real data. ``make demo-own`` converts, trains, predicts and exports it;
the own-data tests use it with a few images per class.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from fastlt.datasets.digits import upscale
from fastlt.datasets.longtail import longtail_counts

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def write_digit_folder(
    root: str | Path, n_max: int = 170, imbalance_factor: float = 10.0, seed: int = 0, size: int = 32
) -> dict[str, int]:
    """Write the folder (module docstring); returns {class name: images written}."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    counts = longtail_counts(n_max, len(NAMES), imbalance_factor)
    rng = np.random.default_rng(seed)
    written = {}
    for c, name in enumerate(NAMES):
        members = np.flatnonzero(d.target == c)
        if counts[c] > len(members):
            raise ValueError(f"digit {c} has {len(members)} images, fewer than the {counts[c]} asked for")
        chosen = rng.permutation(members)[: counts[c]]
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, pixels in zip(chosen, upscale(d.images[chosen], size)):
            Image.fromarray(pixels).save(folder / f"{i:04d}.png")
        written[name] = int(counts[c])
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fastlt.datasets.digit_folder", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("root", type=Path, help="folder to write ROOT/<class>/*.png into")
    p.add_argument("--n-max", type=int, default=170, help="images of the largest class (default 170)")
    p.add_argument("--imbalance-factor", type=float, default=10.0, help="n_max / n_min (default 10)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    written = write_digit_folder(args.root, args.n_max, args.imbalance_factor, args.seed)
    listing = ", ".join(f"{name} {n}" for name, n in written.items())
    print(f"wrote {sum(written.values())} images into {args.root}/<class>/: {listing}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
