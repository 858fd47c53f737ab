"""Synthetic photographs in the iNaturalist 2018 on-disk layout, for benchmarks and tests.

Loader and converter speed depends on what the JPEGs look like (resolution, entropy, chroma), not on what
they depict. So the images here are real photographs — the ones ``skimage.data`` ships offline — randomly
cropped, rescaled to a long side of 500–800 px (iNat 2018's range), colour-shifted, given mild sensor
noise and saved at quality 90: statistically close to iNat files (≈130 KB each) with nothing to download.

The layout is the real one, so ``tools/convert inat2018`` reads it unchanged::

    <root>/train_val2018/<Supercategory>/<category_id>/<md5>.jpg
    <root>/train2018.json, <root>/val2018.json     COCO style: images, annotations, categories

Train counts follow the exponential long-tail profile (``fastlt.datasets.longtail``) scaled to the
requested number of images; val has ``val_per_class`` images per class (3, like iNat 2018).

    tools/convert synth-inat --out /tmp/inat-synth --images 3000 --classes 100 --workers 2
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import sys
from pathlib import Path

import numpy as np

from fastlt.datasets.longtail import longtail_counts

# Colour photographs first: they are what iNat looks like. The grey textures add variety (made colour
# by the per-class tint).
PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "camera",
    "coins",
    "moon",
    "grass",
    "gravel",
    "brick",
)
SUPERCATEGORIES = (
    "Plantae",
    "Insecta",
    "Aves",
    "Reptilia",
    "Mammalia",
    "Fungi",
    "Amphibia",
    "Mollusca",
    "Animalia",
    "Arachnida",
    "Actinopterygii",
    "Chromista",
    "Protozoa",
)
_GENUS = (
    "Ara",
    "Bel",
    "Cor",
    "Dra",
    "Eri",
    "Fal",
    "Gal",
    "Hel",
    "Ix",
    "Lup",
    "Mor",
    "Nym",
    "Or",
    "Pa",
    "Quer",
    "Ros",
    "Sal",
    "Ter",
    "Ul",
    "Vir",
)
_SUFFIX = ("ia", "us", "ella", "opsis", "anthus", "odes")
_EPITHET = (
    "alba",
    "rubra",
    "minor",
    "major",
    "vulgaris",
    "montana",
    "sylvestris",
    "borealis",
    "australis",
    "elegans",
    "gracilis",
    "maculata",
)

_photos: list[np.ndarray] | None = None


def photos() -> list[np.ndarray]:
    """The base photographs as uint8[H,W,3], loaded once per process (children inherit them by fork)."""
    global _photos
    if _photos is None:
        import skimage.data

        out = []
        for name in PHOTOS:
            img = np.asarray(getattr(skimage.data, name)())
            if img.ndim == 2:
                img = np.repeat(img[..., None], 3, axis=2)
            out.append(np.ascontiguousarray(img[..., :3].astype(np.uint8)))
        _photos = out
    return _photos


def species_name(category_id: int) -> str:
    """A deterministic binomial name, so class names read like iNat's and differ from class to class."""
    g = _GENUS[category_id % len(_GENUS)] + _SUFFIX[(category_id // len(_GENUS)) % len(_SUFFIX)]
    e = _EPITHET[(category_id // (len(_GENUS) * len(_SUFFIX))) % len(_EPITHET)]
    n = category_id // (len(_GENUS) * len(_SUFFIX) * len(_EPITHET))
    return f"{g} {e}" + (f" {n + 1}" if n else "")


def synthetic_photo(
    rng: np.random.Generator,
    long_side: int,
    base: int | None = None,
    tint: np.ndarray | None = None,
    noise: float = 8.0,
) -> np.ndarray:
    """uint8[H,W,3] with max(H, W) == long_side (at most 1024): a random crop of a base photo, resized,
    tinted, noised (Gaussian, ``noise`` grey levels; 8 brings the mean JPEG size at quality 90 near 130 KB).

    The crop keeps 25–100% of the base photo's area at an aspect ratio in [3/4, 4/3] (like a
    RandomResizedCrop), so two images of one class share colours and texture but never pixels.
    """
    from PIL import Image

    if not 1 <= long_side <= 1024:
        raise ValueError(f"long_side must lie in 1..1024, got {long_side}")
    ph = photos()
    src = ph[int(rng.integers(len(ph))) if base is None else base % len(ph)]
    H, W = src.shape[:2]
    area = rng.uniform(0.25, 1.0) * H * W
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    h = int(min(H, max(8, round(np.sqrt(area / ratio)))))
    w = int(min(W, max(8, round(np.sqrt(area * ratio)))))
    y, x = int(rng.integers(H - h + 1)), int(rng.integers(W - w + 1))
    crop = Image.fromarray(src[y : y + h, x : x + w])
    scale = long_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = np.asarray(crop.resize(size, Image.BILINEAR))
    # Colour shift through a per-channel lookup table and noise from a pre-drawn tile: both O(pixels) in
    # integers, ~10x cheaper than drawing fresh float noise for every pixel.
    gain = (tint if tint is not None else np.ones(3)) * rng.uniform(0.85, 1.15, size=3)
    lut = np.clip(np.arange(256)[None, :] * gain[:, None], 0, 255).astype(np.int16)
    out = np.stack([lut[c][img[..., c]] for c in range(3)], axis=-1)
    if noise > 0:
        tile = _noise_tile(noise)
        ny, nx = (int(rng.integers(n - d + 1)) for n, d in zip(tile.shape[:2], out.shape[:2]))
        out += tile[ny : ny + out.shape[0], nx : nx + out.shape[1]]
    return np.clip(out, 0, 255).astype(np.uint8)


_tiles: dict[float, np.ndarray] = {}


def _noise_tile(sigma: float, side: int = 1024) -> np.ndarray:
    """int16[side, side, 3] Gaussian sensor noise, drawn once per process and cropped at random offsets."""
    if sigma not in _tiles:
        rng = np.random.default_rng(12345)
        _tiles[sigma] = np.rint(rng.normal(0.0, sigma, size=(side, side, 3))).astype(np.int16)
    return _tiles[sigma]


def class_tint(seed: int, category_id: int) -> np.ndarray:
    return np.random.default_rng([seed, 1, category_id]).uniform(0.6, 1.4, size=3)


def _write_one(task) -> tuple[int, int]:
    from PIL import Image

    path, seed, i, category_id, long_side, quality = task
    rng = np.random.default_rng([seed, 2, i])
    img = synthetic_photo(rng, long_side, base=category_id, tint=class_tint(seed, category_id))
    Image.fromarray(img).save(path, quality=quality)
    return img.shape[1], img.shape[0]


def write_jpegs(tasks: list[tuple], workers: int, desc: str) -> list[tuple[int, int]]:
    """Run ``_write_one`` over ``tasks`` (path, seed, index, class, long side, quality); (w, h) of each."""
    from tqdm import tqdm

    photos()  # load once, before forking
    _noise_tile(8.0)
    bar = dict(total=len(tasks), desc=desc, unit="img", file=sys.stderr, mininterval=0.5)
    if workers <= 1:
        return [_write_one(t) for t in tqdm(tasks, **bar)]
    with mp.get_context("fork").Pool(workers) as pool:
        return list(tqdm(pool.imap(_write_one, tasks, chunksize=8), **bar))


def train_counts(num_images: int, num_classes: int, imbalance_factor: float) -> np.ndarray:
    """Long-tailed counts summing to exactly ``num_images``, every class at least one image."""
    if num_images < num_classes:
        raise ValueError(f"need at least one image per class: {num_images} images for {num_classes} classes")
    profile = longtail_counts(10**6, num_classes, imbalance_factor).astype(np.float64)
    counts = np.maximum(1, np.floor(profile / profile.sum() * num_images)).astype(np.int64)
    # Hand the remainder (or take the excess) from the head, which keeps the profile's shape.
    counts[0] += num_images - counts.sum()
    if counts[0] < counts[1:].max(initial=0):
        raise ValueError(
            f"{num_images} images are too few for {num_classes} classes at IF {imbalance_factor}"
        )
    return counts


def write_inat_like(
    root: str | os.PathLike,
    num_images: int,
    num_classes: int,
    seed: int = 0,
    *,
    imbalance_factor: float = 100.0,
    val_per_class: int = 3,
    long_side=(500, 800),
    quality: int = 90,
    workers: int = 2,
) -> dict:
    """Write a synthetic iNaturalist-2018-layout dataset under ``root``; returns a summary dict.

    ``num_images`` train images over ``num_classes`` classes (long-tailed, ``imbalance_factor``), plus
    ``val_per_class`` val images per class; long sides uniform in ``long_side`` (inclusive).
    """
    root = Path(root)
    counts = train_counts(num_images, num_classes, imbalance_factor)
    rng = np.random.default_rng([seed, 0])
    categories = [
        {
            "id": c,
            "name": species_name(c),
            "supercategory": SUPERCATEGORIES[c % len(SUPERCATEGORIES)],
            "kingdom": "Animalia" if c % len(SUPERCATEGORIES) not in (0, 5, 11, 12) else "Plantae",
        }
        for c in range(num_classes)
    ]
    splits = {
        "train": np.repeat(np.arange(num_classes), counts),
        "val": np.repeat(np.arange(num_classes), val_per_class),
    }
    summary = {"root": str(root), "classes": num_classes}
    next_id = 0
    for split, labels in splits.items():
        tasks, images, annotations = [], [], []
        for c in labels:
            cat = categories[c]
            name = hashlib.md5(f"{seed}/{next_id}".encode()).hexdigest()
            rel = f"train_val2018/{cat['supercategory']}/{c}/{name}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            side = int(rng.integers(long_side[0], long_side[1] + 1))
            tasks.append((str(root / rel), seed, next_id, int(c), side, quality))
            images.append(
                {"id": next_id, "file_name": rel, "license": 1, "rights_holder": "fastlt synthetic"}
            )
            annotations.append({"id": next_id, "image_id": next_id, "category_id": int(c)})
            next_id += 1
        sizes = write_jpegs(tasks, workers, desc=f"synth-inat {split}")
        for im, (w, h) in zip(images, sizes):
            im["width"], im["height"] = w, h
        doc = {
            "info": {"description": "fastlt synthetic iNat-2018-layout data", "seed": seed},
            "licenses": [{"id": 1, "name": "synthetic", "url": ""}],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        (root / f"{split}2018.json").write_text(json.dumps(doc))
        summary[split] = len(images)
    summary["bytes"] = sum(p.stat().st_size for p in (root / "train_val2018").rglob("*.jpg"))
    return summary


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(p) -> None:
    p.add_argument("--out", required=True, help="dataset root to create")
    p.add_argument("--images", type=int, default=3000, help="train images (default 3000)")
    p.add_argument("--classes", type=int, default=100, help="classes (default 100)")
    p.add_argument("--imbalance-factor", type=float, default=100.0, help="n_max / n_min (default 100)")
    p.add_argument("--val-per-class", type=int, default=3, help="val images per class (default 3)")
    p.add_argument(
        "--long-side",
        type=int,
        nargs=2,
        default=(500, 800),
        metavar=("MIN", "MAX"),
        help="long side in pixels, uniform in [MIN, MAX] (default 500 800)",
    )
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="processes (default 2)")


def main_args(args) -> int:
    s = write_inat_like(
        args.out,
        args.images,
        args.classes,
        args.seed,
        imbalance_factor=args.imbalance_factor,
        val_per_class=args.val_per_class,
        long_side=tuple(args.long_side),
        quality=args.quality,
        workers=args.workers,
    )
    print(f"wrote {s['train']} train + {s['val']} val JPEGs ({s['bytes'] / 2**20:.1f} MiB) under {s['root']}")
    return 0
