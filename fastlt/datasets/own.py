"""What the converters of one's own images share (``imagefolder``, ``imagelist``): the held-out split, the
check that no image sits in two splits, the group thresholds, and the facts a recipe is chosen from.

**Held-out split.** A source with a train split only (one folder of class folders, or one list) gets a
``val`` split made here: every class gives ``min(N, floor(F · n))`` of its ``n`` images, with
``N = --val-per-class`` (default 50) and ``F = --val-fraction`` (default 0.2). So a large class gives ``N``,
a class of 60 gives 12, and a class of fewer than ``1 / F`` images (fewer than 5 at the default) gives none:
it stays whole in train, and the index's ``held_out`` setting lists it under ``classes_without_val``. Which
images go is a seeded permutation per class (``--seed``; the class's images in path order, then
``default_rng([seed, class])``), so the split is stratified, reproducible and disjoint from train by
construction. ``--imbalance-factor`` then draws its long-tailed subset from what stays in train.
``--val-per-class 0`` makes no held-out split (every image trains; evaluate on another shard).

**One image, one split.** An image whose bytes are those of an image in an earlier split (train, then val,
then test) is a problem of the later entry: a held-out image that was also trained on would inflate every
accuracy. Only files whose sizes occur in two splits are hashed.

**Facts for the recipe.** The index records ``image_sides``: the median short and long side, as stored (after
``--max-resolution``), of up to ``SIDE_SAMPLE`` images of the train split read from their headers. A
recipe for a dataset without a preset is chosen from them (``fastlt.datasets.registry.generic_base``); the
default write mode is ``raw`` for images of one size of at most ``RAW_MAX_SIDE`` pixels (small images are
then trained from memory with the CIFAR pad-crop) and ``jpg`` otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from fastlt.datasets.validate import Job, Problems, Split

VAL_PER_CLASS = 50
VAL_FRACTION = 0.2
SIDE_SAMPLE = 256
RAW_MAX_SIDE = 64  # the resident pipeline's pad-crop limit (fastlt.pipelines.resident.PAD_CROP_MAX_SIZE)
HELD_OUT = "val"


def _fraction(s: str) -> float:
    v = float(s)
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {s}")
    return v


def _count(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a count >= 0, got {s}")
    return v


def _thresholds(s: str) -> tuple[int, int]:
    try:
        few, many = (int(x) for x in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FEW,MANY (two integers, e.g. 20,100), got {s!r}") \
            from None
    if not 1 <= few <= many + 1:
        raise argparse.ArgumentTypeError(f"expected 1 <= FEW <= MANY + 1, got {few},{many}")
    return few, many


def add_own_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("held-out split and groups")
    g.add_argument(
        "--val-per-class",
        type=_count,
        default=None,
        help=f"train-only source: each class gives min(N, floor(F·n)) images to val (default N = "
        f"{VAL_PER_CLASS}; 0: no held-out split, every image trains)",
    )
    g.add_argument(
        "--val-fraction",
        type=_fraction,
        default=None,
        help=f"train-only source: F in that rule (default {VAL_FRACTION}); a class with fewer than 1/F "
        "images gives none and stays whole in train",
    )
    g.add_argument(
        "--seed", type=int, default=0, help="seed of the held-out and long-tailed draws (default 0)"
    )
    g.add_argument(
        "--imbalance-factor",
        type=float,
        default=None,
        help="keep a long-tailed train subset with this n_max / n_min, CIFAR-LT rule (default: keep all)",
    )
    g.add_argument(
        "--group-thresholds",
        type=_thresholds,
        default=None,
        metavar="FEW,MANY",
        help="few: fewer than FEW training images, many: more than MANY (default 20,100, the literature's)",
    )


# ------------------------------------------------------------------------------------------ held-out
def held_out_counts(counts: np.ndarray, per_class: int, fraction: float) -> np.ndarray:
    """int64[C]: how many images each class gives to the held-out split (module docstring)."""
    counts = np.asarray(counts, dtype=np.int64)
    return np.minimum(per_class, np.floor(fraction * counts + 1e-9).astype(np.int64))


def hold_out(
    train: Split, class_names: list[str], per_class: int, fraction: float, seed: int
) -> tuple[Split, Split, dict]:
    """(train, val, record): ``train``'s entries split per class by the held-out rule (module docstring)."""
    C = len(class_names)
    give = held_out_counts(np.bincount(train.labels, minlength=C), per_class, fraction)
    to_val = np.zeros(len(train), dtype=bool)
    for c in np.flatnonzero(give):
        members = np.flatnonzero(train.labels == c)
        members = members[np.argsort([train.source_ids[i] for i in members], kind="stable")]
        chosen = np.random.default_rng([seed, int(c)]).permutation(len(members))[: give[c]]
        to_val[members[chosen]] = True
    val = train.keep(to_val)
    val.name = HELD_OUT
    without = [class_names[c] for c in range(C) if give[c] == 0]
    record = {
        "rule": "each class gives min(val_per_class, floor(val_fraction * n)) of its n images",
        "val_per_class": per_class,
        "val_fraction": fraction,
        "seed": seed,
        "classes_without_val": without,
    }
    return train.keep(~to_val), val, record


def _held_out_note(dataset: str, record: dict, num_classes: int) -> str | None:
    without = record["classes_without_val"]
    if not without:
        return None
    listed = ", ".join(without[:10]) + (f" … ({len(without)} in all)" if len(without) > 10 else "")
    smallest = int(np.ceil(1 / record["val_fraction"] - 1e-9))
    return (
        f"{dataset}: {len(without)} of {num_classes} classes have fewer than {smallest} images and give no "
        f"image to val; they stay whole in train (the index lists them in held_out.classes_without_val): "
        f"{listed}"
    )


# ------------------------------------------------------------------------------- one image, one split
def _digest(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None  # unreadable: the engine reports it with the decoder's words


def check_disjoint(splits: list[Split], problems: Problems) -> None:
    """A problem for every entry whose file has the bytes of an entry of an earlier split (see the module)."""
    sizes: dict[int, list[tuple[int, int]]] = defaultdict(list)  # size -> [(split, entry)]
    for s, split in enumerate(splits):
        for i, rel in enumerate(split.paths or ()):
            try:
                sizes[os.stat(split.root / rel).st_size].append((s, i))
            except OSError:
                pass
    first: dict[str, tuple[int, int]] = {}
    for members in sizes.values():
        if len({s for s, _ in members}) < 2:
            continue
        for s, i in sorted(members):
            split = splits[s]
            digest = _digest(split.root / split.paths[i])
            if digest is None:
                continue
            s0, i0 = first.setdefault(digest, (s, i))
            if s0 != s:
                earlier = splits[s0]
                problems.add(
                    split.where[i],
                    f"the same image as {earlier.name} entry {earlier.where[i0]} (identical bytes): an image "
                    f"may be in one split only",
                    split=split.name,
                    entry=i,
                    source_id=split.source_ids[i],
                )


# -------------------------------------------------------------------------------------- image sizes
def image_sides(split: Split, max_resolution: int | None) -> dict:
    """Median short and long side (as stored) of up to ``SIDE_SAMPLE`` evenly spread train images, from
    their headers; ``uniform`` when all of those have one size. Unreadable files are left to the engine."""
    from PIL import Image

    from fastlt.datasets.images import target_size

    n = len(split)
    picks = np.unique(np.linspace(0, n - 1, min(n, SIDE_SAMPLE)).round().astype(np.int64)) if n else []
    sizes = []
    for i in picks:
        try:
            with Image.open(split.root / split.paths[i]) as im:
                sizes.append(target_size(*im.size, max_resolution))
        except Exception:  # noqa: BLE001 - any unreadable file is the engine's to report
            continue
    if not sizes:
        return {"short": 0, "long": 0, "sampled": 0, "uniform": False}
    arr = np.array(sizes)
    return {
        "short": int(np.median(arr.min(axis=1))),
        "long": int(np.median(arr.max(axis=1))),
        "sampled": len(sizes),
        "uniform": bool(len(set(sizes)) == 1),
    }


def default_write_mode(sides: dict) -> str:
    return "raw" if sides["uniform"] and sides["long"] <= RAW_MAX_SIDE else "jpg"


# ------------------------------------------------------------------------------------------- the job
def dataset_name(args, default_from: Path) -> str:
    """``--name``, else the name of the source folder (``.`` → the current folder's name)."""
    return args.name or Path(os.path.abspath(default_from)).name


def own_job(
    args, name: str, class_names: list[str], splits: list[Split], problems: Problems, settings: dict
) -> Job:
    """The engine's Job for a source of one's own: held-out split (train-only sources), long-tailed subset,
    one-image-one-split check, and the settings the index records (module docstring)."""
    from fastlt.datasets.registry import own_name_problem

    bad_name = own_name_problem(name)
    if bad_name:
        problems.fatal(str(name), bad_name)
    held = None
    given = [f"--{k}" for k in ("val-per-class", "val-fraction") if getattr(args, k.replace("-", "_"))]
    per_class = VAL_PER_CLASS if args.val_per_class is None else args.val_per_class
    fraction = VAL_FRACTION if args.val_fraction is None else args.val_fraction
    if len(splits) == 1 and per_class > 0:
        train, val, held = hold_out(splits[0], class_names, per_class, fraction, args.seed)
        if len(val) == 0:
            problems.fatal(
                settings["source"],
                f"no class has enough images to give any to a held-out split (each gives min({per_class}, "
                f"floor({fraction} · n))); add images, raise --val-fraction, provide a val split, or pass "
                "--val-per-class 0 to convert without one",
            )
        splits = [train, val]
        note = _held_out_note(name, held, len(class_names))
        if note:
            print(note, file=sys.stderr)
    elif given and len(splits) > 1:
        problems.fatal(
            settings["source"],
            f"{' and '.join(given)} make a held-out split from a train-only source, but this one has "
            f"{', '.join(s.name for s in splits[1:])} already",
        )
    if args.imbalance_factor is not None:
        splits[0] = _long_tailed(splits[0], len(class_names), args.imbalance_factor, args.seed)
    check_disjoint(splits, problems)
    sides = image_sides(splits[0], args.max_resolution)
    thresholds = list(args.group_thresholds) if args.group_thresholds else None
    return Job(
        dataset=name,
        class_names=class_names,
        splits=splits,
        problems=problems,
        settings={
            **settings,
            "held_out": held,
            "imbalance_factor": args.imbalance_factor,
            "seed": args.seed,
            "image_sides": sides,
            **({"group_thresholds": thresholds} if thresholds else {}),
        },
        default_write_mode=default_write_mode(sides),
    )


def _long_tailed(train: Split, num_classes: int, imbalance_factor: float, seed: int) -> Split:
    from fastlt.datasets.longtail import cifar_lt_indices

    keep = cifar_lt_indices(train.labels, imbalance_factor, seed, num_classes=num_classes, clip=True)
    mask = np.zeros(len(train), dtype=bool)
    mask[keep] = True
    return train.keep(mask)
