"""``imagefolder``: your own images in class folders, as torchvision's ``ImageFolder`` reads them.

Two layouts, told apart automatically:

* ``ROOT/<class>/*`` — one folder: the converter makes the held-out ``val`` split itself, stratified and
  seeded (``--val-per-class N``, ``--val-fraction F``: each class gives min(N, floor(F·n)) images; a class
  too small to give one stays whole in train and the index lists it in held_out.classes_without_val);
* ``ROOT/train/<class>/*`` with ``ROOT/val/<class>/*`` and/or ``ROOT/test/<class>/*`` — the torchvision /
  timm convention: each folder is a split.

Classes are the train split's folder names, sorted (label = position), which is torchvision's rule; a
class folder in val/test that train does not have is an error. Files are taken by extension (torchvision's
list, any case) from anywhere below a class folder; hidden files and folders are ignored. The dataset is
named after ROOT (``--name`` to choose). ``--imbalance-factor`` keeps a long-tailed subset of train with the
CIFAR-LT rule (``n_max`` = the largest class; a class smaller than its quota keeps all it has).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fastlt.datasets.own import add_own_arguments, dataset_name, own_job
from fastlt.datasets.validate import Job, Problems, Split

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")


def class_dirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def list_split(name: str, folder: Path, root: Path, classes: list[str], problems: Problems) -> Split:
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for cdir in class_dirs(folder):
        files = sorted(
            p
            for p in (folder / cdir).rglob("*")
            if p.is_file()
            and p.suffix.lower() in IMG_EXTENSIONS
            and not any(part.startswith(".") for part in p.relative_to(folder / cdir).parts)
        )
        if cdir not in index:
            for f in files:
                rel = f.relative_to(root).as_posix()
                problems.add(
                    str(f),
                    f"class folder {cdir!r} is not one of the {len(classes)} train classes",
                    split=name,
                    source_id=rel,
                )
            continue
        for f in files:
            paths.append(f.relative_to(root).as_posix())
            labels.append(index[cdir])
    return Split(
        name,
        np.array(labels, dtype=np.int64),
        list(paths),
        [str(root / p) for p in paths],
        root=root,
        paths=paths,
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", type=Path, help="ROOT/<class>/*.jpg, or ROOT/{train,val,test}/<class>/*.jpg")
    add_own_arguments(p)


def build(args) -> Job:
    root = Path(args.root)
    problems = Problems()
    if not root.is_dir():
        problems.fatal(str(root), "not a directory")
        problems.raise_if_fatal()
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if "train" not in split_dirs:
        if split_dirs:
            problems.fatal(str(root), f"has {sorted(split_dirs)} folders but no train/")
            problems.raise_if_fatal()
        split_dirs = {"train": root}
    classes = class_dirs(split_dirs["train"])
    if not classes:
        problems.fatal(str(split_dirs["train"]), "no class folders")
        problems.raise_if_fatal()
    splits = [list_split(s, d, root, classes, problems) for s, d in split_dirs.items()]
    layout = "split folders" if len(split_dirs) > 1 else "class folders"
    settings = {"source": str(root), "layout": layout}
    return own_job(args, dataset_name(args, root), classes, splits, problems, settings)
