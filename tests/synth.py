"""Test-only writers of tiny datasets in each real on-disk format (CIFAR pickles, OLTR split files +
JPEG tree, iNat JSON + tree, ImageFolder), each returning what the converter must reproduce, and an in-memory
image source for write_shard."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fastlt.datasets.synthetic import class_tint, synthetic_photo
from fastlt.shards import ImageSource


def tiny_photo(seed: int, i: int, label: int, long_side: int = 40) -> np.ndarray:
    """A small real-photo crop; a low noise level keeps JPEG re-encoding well above 30 dB."""
    rng = np.random.default_rng([seed, i])
    return synthetic_photo(rng, long_side, base=label, tint=class_tint(seed, label), noise=1.0)


def save_jpeg(path: Path, img: np.ndarray, quality: int = 95) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, "JPEG", quality=quality)


def decode_file(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


class ListSource(ImageSource):
    """Images of any sizes held in a list, for :func:`fastlt.shards.write_shard` (``ArraySource`` needs one
    size for all)."""

    def __init__(self, images: list[np.ndarray], labels):
        super().__init__(labels, [f"image/{i}" for i in range(len(images))])
        self.images = images

    def load(self, i: int) -> np.ndarray:
        return self.images[i]


# --------------------------------------------------------------------------------------------- CIFAR
@dataclass
class Cifar:
    root: Path
    class_names: list[str]
    files: dict[str, np.ndarray] = field(default_factory=dict)  # file -> images uint8[N,32,32,3]
    labels: dict[str, list[int]] = field(default_factory=dict)


def write_cifar(
    root: Path, hundred: bool, per_class_train: int, per_class_test: int, num_classes: int, seed: int = 0
) -> Cifar:
    """CIFAR pickles with the real file names and keys (CIFAR-10: bytes keys, as Python 2 wrote them and
    ``encoding='bytes'`` reads them; CIFAR-100: str keys), data as uint8[N, 3072] R, G, B planes."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    names = [f"thing_{c}" for c in range(num_classes)]
    if hundred:
        layout = {"train": per_class_train, "test": per_class_test}
        label_key, meta_file, meta = (
            "fine_labels",
            "meta",
            {"fine_label_names": names, "coarse_label_names": ["x"]},
        )
    else:
        layout = {
            "data_batch_1": per_class_train // 2,
            "data_batch_2": per_class_train - per_class_train // 2,
            "test_batch": per_class_test,
        }
        layout.update({f"data_batch_{i}": 0 for i in range(3, 6)})
        label_key, meta_file, meta = "labels", "batches.meta", {"label_names": names, "num_vis": 3072}
    out = Cifar(root, names)
    for fname, per_class in layout.items():
        labels = rng.permutation(np.repeat(np.arange(num_classes), per_class)).tolist()
        imgs = rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8)
        data = imgs.transpose(0, 3, 1, 2).reshape(len(labels), 3072)
        d = {"data": data, label_key: labels, "batch_label": fname, "filenames": [f"{i}.png" for i in labels]}
        if not hundred:
            d = {k.encode(): v for k, v in d.items()}
        (root / fname).write_bytes(pickle.dumps(d, protocol=2))
        out.files[fname], out.labels[fname] = imgs, labels
    (root / meta_file).write_bytes(
        pickle.dumps(meta if hundred else {k.encode(): v for k, v in meta.items()}, protocol=2)
    )
    return out


# ---------------------------------------------------------------------------------------------- OLTR
@dataclass
class Oltr:
    root: Path
    split_files: dict[str, Path]
    entries: dict[str, list[tuple[str, int]]]
    class_keys: list[str]


def write_oltr(
    tmp: Path, flavour: str, train_counts: list[int], per_class_eval: int = 2, seed: int = 0
) -> Oltr:
    """An image tree + OLTR-style split files. ImageNet-LT: ``train/<wnid>/<wnid>_<i>.JPEG`` and test
    under ``val/<wnid>/``; Places-LT: ``train/<a-z>/<category>/<i>.jpg`` and a flat ``val_256/`` test."""
    root = tmp / "images"
    C = len(train_counts)
    if flavour == "imagenet":
        keys = [f"n{1440764 + 1000 * c:08d}" for c in range(C)]
    else:
        cats = [
            "airfield",
            "apartment_building/outdoor",
            "bamboo_forest",
            "ice_skating_rink/indoor",
            "zen_garden",
        ]
        keys = [cats[c % len(cats)] + ("" if c < len(cats) else f"_{c}") for c in range(C)]
    entries: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    n = 0
    for c, key in enumerate(keys):
        for split, count in (("train", train_counts[c]), ("val", per_class_eval), ("test", per_class_eval)):
            for _ in range(count):
                if flavour == "imagenet":
                    folder = "val" if split == "test" else "train"
                    rel = f"{folder}/{key}/{key}_{n}.JPEG"
                else:
                    rel = (
                        f"val_256/Places365_val_{n:08d}.jpg"
                        if split == "test"
                        else f"train/{key[0]}/{key}/{n:08d}.jpg"
                    )
                save_jpeg(root / rel, tiny_photo(seed, n, c))
                entries[split].append((rel, c))
                n += 1
    files = {}
    rng = np.random.default_rng(seed)
    for split, items in entries.items():
        order = rng.permutation(len(items))  # split files are not sorted by class
        entries[split] = [items[i] for i in order]
        files[split] = tmp / f"{flavour}_LT_{split}.txt"
        files[split].write_text("".join(f"{p} {y}\n" for p, y in entries[split]))
    return Oltr(root, files, entries, keys)


# ---------------------------------------------------------------------------------------------- iNat
def write_inat(root: Path, train_counts: list[int], per_class_val: int = 2, seed: int = 0) -> dict:
    """The iNat 2018 layout with tiny photos; annotations in a different order from images (the join
    must be by image_id). Returns {split: [(file_name, category_id)]}."""
    C = len(train_counts)
    cats = [
        {
            "id": 100 + 3 * c,
            "name": f"Species {c}",
            "supercategory": ["Plantae", "Aves"][c % 2],
            "kingdom": "Animalia",
        }
        for c in range(C)
    ]
    rng = np.random.default_rng(seed)
    out, n = {}, 0
    for split, counts in (("train", train_counts), ("val", [per_class_val] * C)):
        images, anns, items = [], [], []
        for c, count in enumerate(counts):
            for _ in range(count):
                rel = f"train_val2018/{cats[c]['supercategory']}/{cats[c]['id']}/{n:032x}.jpg"
                img = tiny_photo(seed, n, c)
                save_jpeg(root / rel, img)
                images.append(
                    {"id": 5000 + n, "file_name": rel, "width": img.shape[1], "height": img.shape[0]}
                )
                anns.append({"id": 9000 + n, "image_id": 5000 + n, "category_id": cats[c]["id"]})
                items.append((rel, cats[c]["id"]))
                n += 1
        perm = rng.permutation(len(anns))
        doc = {"info": {}, "images": images, "annotations": [anns[i] for i in perm], "categories": cats}
        (root / f"{split}2018.json").write_text(json.dumps(doc, indent=1))
        out[split] = items
    return out


# --------------------------------------------------------------------------------------- ImageFolder
def write_imagefolder(
    root: Path, counts: dict[str, list[int]], seed: int = 0, ext: str = ".jpg"
) -> list[str]:
    """``root/<split>/<class>/<i>.jpg`` for each split in ``counts`` (or ``root/<class>/`` for the key '')."""
    classes = [f"class_{chr(ord('a') + c)}" for c in range(len(next(iter(counts.values()))))]
    n = 0
    for split, per_class in counts.items():
        for c, count in enumerate(per_class):
            for _ in range(count):
                save_jpeg(root / split / classes[c] / f"{n:05d}{ext}", tiny_photo(seed, n, c))
                n += 1
    return classes


# ------------------------------------------------------------------------------------------- checks
def assert_shard_matches(shard, label_of: dict[str, int], class_names: list[str], train_counts) -> None:
    """Every row's stored label equals its source's label; counts, offsets, groups and names agree."""
    from fastlt.shards import class_groups

    idx = shard.index
    stored = shard.stored_labels()
    np.testing.assert_array_equal(stored, shard.labels)  # rows are class-sorted
    expected = np.array([label_of[s] for s in idx.source_ids])
    np.testing.assert_array_equal(stored, expected)
    assert sorted(idx.source_ids) == sorted(label_of), "every source entry is written exactly once"
    counts = np.bincount(list(label_of.values()), minlength=len(class_names))
    assert idx.class_counts == counts.tolist()
    assert idx.class_offsets == [0, *np.cumsum(counts).tolist()]
    assert idx.class_names == list(class_names)
    assert idx.train_class_counts == list(train_counts)
    assert idx.class_groups == class_groups(train_counts)
