"""``imagenet-lt`` / ``places-lt``: an image root + the OLTR split files (Liu et al. 2019).

Split files are text, one ``<relative/path> <integer label>`` per line (``ImageNet_LT_train.txt``,
``Places_LT_val.txt`` …); paths are relative to ``--root``. Labels are used as given; the number of
classes is ``--num-classes`` or, by default, the largest train label + 1.

Class names come from the train paths, through one policy per dataset:

* ImageNet-LT: the wnid, the path component shaped ``n########`` (``train/n01440764/n01440764_190.JPEG``);
  with ``--names`` (``LOC_synset_mapping.txt`` lines ``n01440764 tench, Tinca tinca``, or torchvision's
  ``imagenet_class_index.json``) the first readable synonym (``tench``), else the wnid itself.
* Places-LT: the category path (``train/airfield/00004851.jpg`` → ``airfield``;
  ``data_256/a/apartment_building/outdoor/x.jpg`` → ``apartment_building/outdoor``: the leading split
  folder and Places365's one-letter buckets are dropped) with ``/`` and ``_`` turned into spaces.

A label whose train paths disagree on the class folder is reported, line by line. Val/test paths that
carry a class folder are checked against the train classes too; flat ones (Places365 val) are not.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np

from fastlt.datasets.validate import Job, Problems, Split, read_source_text

WNID = re.compile(r"^n\d{8}$")
SPLITS = ("train", "val", "test")


def wnid_key(path: str) -> str | None:
    return next((p for p in PurePosixPath(path).parts[:-1] if WNID.match(p)), None)


def places_key(path: str) -> str | None:
    # Every OLTR path starts with its split's folder (train/, data_256/, val_256/ ...): not part of the
    # category. Places365's one-letter a/ b/ c/ buckets are not either.
    dirs = [d for d in PurePosixPath(path).parts[1:-1] if len(d) > 1]
    return "/".join(dirs) or None


def places_name(key: str) -> str:
    return " ".join(key.replace("/", " ").replace("_", " ").split())


# subcommand → (class key from a path, readable name from a key)
POLICIES: dict[str, tuple[Callable[[str], str | None], Callable[[str], str]]] = {
    "imagenet-lt": (wnid_key, lambda k: k),
    "places-lt": (places_key, places_name),
}


def read_split_file(name: str, path: Path, root: Path, problems: Problems) -> Split | None:
    """Parse ``<path> <label>`` lines; malformed lines and duplicate paths are reported by file:line."""
    text = read_source_text(path, problems, "split file")
    if text is None:
        return None
    paths, labels, where = [], [], []
    first: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        at = f"{path}:{n}"
        if not line.strip():
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            problems.add(at, f"expected '<relative/path> <integer label>', got {line.strip()!r}", split=name)
            continue
        rel, label = parts[0].strip(), parts[1]
        try:
            y = int(label)
        except ValueError:
            problems.add(at, f"label {label!r} is not an integer", split=name, source_id=rel)
            continue
        if rel in first:
            problems.add(at, f"duplicate entry {rel!r} (first at {first[rel]})", split=name, source_id=rel)
            continue
        first[rel] = at
        paths.append(rel)
        labels.append(y)
        where.append(at)
    if not paths:
        problems.fatal(str(path), "no entries")
        return None
    return Split(name, np.array(labels, dtype=np.int64), list(paths), where, root=root, paths=paths)


def read_names(path: Path, problems: Problems) -> dict[str, str]:
    """wnid → readable name from ``LOC_synset_mapping.txt`` or ``imagenet_class_index.json``."""
    text = read_source_text(path, problems, "names file")
    if text is None:
        return {}
    out = {}
    if path.suffix == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            problems.fatal(f"{path}:{e.lineno}:{e.colno}", f"malformed JSON: {e.msg}")
            return {}
        items = doc.values() if isinstance(doc, dict) else doc
        for k, item in enumerate(items):
            if not (isinstance(item, (list, tuple)) and len(item) == 2 and WNID.match(str(item[0]))):
                problems.fatal(f"{path}: entry {k}", f"expected [wnid, name], got {item!r}")
                continue
            out[str(item[0])] = str(item[1]).replace("_", " ")
        return out
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        wnid, _, rest = line.strip().partition(" ")
        if not WNID.match(wnid) or not rest.strip():
            problems.fatal(f"{path}:{n}", f"expected '<wnid> <name>[, <synonym> ...]', got {line.strip()!r}")
            continue
        out[wnid] = rest.split(",")[0].strip()
    return out


def class_names(splits: list[Split], num_classes: int, key_of, name_of, problems: Problems) -> list[str]:
    """One name per label from the train paths; disagreeing paths are reported per line."""
    keys: dict[int, tuple[str, str]] = {}  # label -> (key, where first seen)
    for split in splits:
        for i, (rel, y) in enumerate(zip(split.paths, split.labels)):
            key = key_of(rel)
            if key is None or not 0 <= y < num_classes:
                continue
            if y not in keys:
                if split.name == "train":
                    keys[int(y)] = (key, split.where[i])
                continue
            if keys[y][0] != key:
                problems.add(
                    split.where[i],
                    f"label {y} is class {keys[y][0]!r} (at {keys[y][1]}) but this path is in {key!r}",
                    split=split.name,
                    entry=i,
                    source_id=rel,
                )
    return [name_of(keys[c][0]) if c in keys else f"class {c}" for c in range(num_classes)]


def add_arguments_for(command: str, p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--root", type=Path, required=True, help="image root the split files' paths are relative to"
    )
    for s in SPLITS:
        p.add_argument(
            f"--{s}",
            type=Path,
            default=None,
            required=s == "train",
            help=f"OLTR {s} split file" + (" (required)" if s == "train" else ""),
        )
    p.add_argument("--num-classes", type=int, default=None, help="default: largest train label + 1")
    if command == "imagenet-lt":
        p.add_argument(
            "--names",
            type=Path,
            default=None,
            help="wnid → name file (LOC_synset_mapping.txt or imagenet_class_index.json)",
        )


def build(args) -> Job:
    key_of, name_of = POLICIES[args.command]
    root = Path(args.root)
    problems = Problems()
    if not root.is_dir():
        problems.fatal(str(root), "image root is not a directory")
    files = {s: getattr(args, s) for s in SPLITS if getattr(args, s) is not None}
    splits = [
        s for s in (read_split_file(n, Path(f), root, problems) for n, f in files.items()) if s is not None
    ]
    mapping = read_names(args.names, problems) if getattr(args, "names", None) else None
    problems.raise_if_fatal()
    C = args.num_classes or int(max(0, splits[0].labels.max() + 1))
    if mapping is not None:
        name_of = lambda k: mapping.get(k, k)  # noqa: E731
    names = class_names(splits, C, key_of, name_of, problems)
    return Job(
        dataset=args.command,
        class_names=names,
        splits=splits,
        problems=problems,
        settings={"source": str(root), **{f"{s}_file": str(f) for s, f in files.items()}, "num_classes": C},
        default_write_mode="jpg",
    )
