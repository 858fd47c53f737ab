"""``imagefolder``: ``root/<class>/<image>`` trees, as torchvision's ``ImageFolder`` reads them.

If ``root`` has ``train/`` (and optionally ``val/``, ``test/``) folders of class folders, each is a split;
otherwise ``root`` itself is the train split. Classes are the train split's folder names, sorted (label =
position), which is torchvision's rule. Files are taken by extension (torchvision's list, any case);
hidden files are ignored. ``--imbalance-factor`` keeps a long-tailed subset of train with the CIFAR-LT
rule (``n_max`` = the largest class; a class smaller than its quota keeps all it has).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fastlt.datasets.longtail import cifar_lt_indices
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
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMG_EXTENSIONS
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
    p.add_argument("root", type=Path, help="root/<class>/*.jpg, or root/{train,val,test}/<class>/*.jpg")
    p.add_argument(
        "--imbalance-factor",
        type=float,
        default=None,
        help="keep a long-tailed train subset with this n_max / n_min (default: keep all)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the long-tailed draw (default 0)")


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
    if args.imbalance_factor is not None:
        train = splits[0]
        keep = cifar_lt_indices(
            train.labels, args.imbalance_factor, args.seed, num_classes=len(classes), clip=True
        )
        mask = np.zeros(len(train), dtype=bool)
        mask[keep] = True
        splits[0] = train.keep(mask)
    return Job(
        dataset=root.name,
        class_names=classes,
        splits=splits,
        problems=problems,
        settings={"source": str(root), "imbalance_factor": args.imbalance_factor, "seed": args.seed},
        default_write_mode="jpg",
    )
