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

Labels and class folders must agree one to one in the train split: a line whose label is not the label of
the other train images in its class folder, or whose folder is not its label's folder, is reported by line
(the majority of a folder's or a label's lines decides). So a typo'd label names its line instead of adding
a class (a label equal to the class count) or merging two. Val/test paths that carry a class folder are
checked against the train classes too; flat ones (Places365 val) are not.

Without ``--num-classes`` the class count is inferred from the train labels that pass those checks: the
labels 0, 1, 2, ... up to the first one no train line has. A train line above that gap is reported by line
(a stray large label, or the images of the missing labels are not listed), never as a list of empty classes.
"""

from __future__ import annotations

import argparse
import json
import re
import unicodedata
from collections import Counter
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
        hidden = invisible(rel)
        if hidden and not (root / rel).exists():
            problems.add(at, f"path {rel!r} not found; it holds invisible characters: {hidden}", split=name,
                         source_id=rel)
            continue
        first[rel] = at
        paths.append(rel)
        labels.append(y)
        where.append(at)
    if not paths:
        problems.fatal(str(path), "no entries")
        return None
    return Split(name, np.array(labels, dtype=np.int64), list(paths), where, root=root, paths=paths)


def invisible(text: str) -> str:
    """The characters of ``text`` a terminal does not show (control and format characters: a byte-order
    mark, a zero-width space, a carriage return ...), named with their positions; "" when there are none."""
    found = [
        f"{unicodedata.name(ch, f'U+{ord(ch):04X}')} at character {i + 1}"
        for i, ch in enumerate(text)
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")
    ]
    return ", ".join(found)


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


def _majority(pairs: list[tuple], side: int) -> dict:
    """For each value on ``side`` of the (label, folder) pairs, the most common value on the other side
    (ties: the first seen)."""
    votes: dict = {}
    for pair in pairs:
        votes.setdefault(pair[side], Counter())[pair[1 - side]] += 1
    return {k: c.most_common(1)[0][0] for k, c in votes.items()}


def check_class_folders(splits: list[Split], key_of, problems: Problems) -> dict[int, str]:
    """label → class folder from the train paths; every line that breaks the one-to-one rule is reported."""
    train = next(s for s in splits if s.name == "train")
    keys = [key_of(rel) for rel in train.paths]
    pairs = [(int(y), k) for y, k in zip(train.labels, keys) if k is not None]
    folder_of, label_of, seen = _majority(pairs, 0), _majority(pairs, 1), Counter(pairs)
    first = {}  # (label, folder) -> where first seen in train
    for i, (y, k) in enumerate(zip(train.labels, keys)):
        first.setdefault((int(y), k), train.where[i])
    for split in splits:
        for i, rel in enumerate(split.paths):
            y, k = int(split.labels[i]), key_of(rel)
            if k is None or (y not in folder_of and split.name != "train"):
                continue
            if folder_of[y] != k:
                home = folder_of[y]
                what = f"label {y} is class {home!r} (at {first[y, home]}) but this path is in {k!r}"
                what += f", the folder of label {label_of[k]}" if k in label_of else ""
            elif split.name == "train" and label_of[k] != y:
                y_k = label_of[k]
                what = (
                    f"label {y}, but the {seen[y_k, k]} other train images in class folder {k!r} have label "
                    f"{y_k} (first at {first[y_k, k]})"
                )
            else:
                continue
            problems.add(split.where[i], what, split=split.name, entry=i, source_id=rel)
    return folder_of


def infer_num_classes(train: Split, problems: Problems) -> int:
    """The labels 0, 1, 2, ... up to the first one no (unflagged) train line has; train lines above that gap
    are reported by line."""
    flagged = {p.entry for p in problems.items if p.split == train.name and p.entry is not None}
    keep = np.ones(len(train), dtype=bool)
    keep[list(flagged)] = False
    used = set(train.labels[keep & (train.labels >= 0)].tolist())
    C = next(c for c in range(len(used) + 1) if c not in used)
    if C == 0 and used:
        problems.fatal(str(train.where[0]).rsplit(":", 1)[0], f"no entry has label 0 (the smallest is "
                       f"{min(used)}); labels count from 0")
        return 0
    for i in np.flatnonzero(keep & (train.labels > C)):
        y = int(train.labels[i])
        gap = f"label {C}" if y == C + 1 else f"labels {C}..{y - 1}"
        problems.add(
            train.where[i],
            f"label {y} lies beyond the labels in use (0..{C - 1}): no train entry has {gap} (the class "
            "count is inferred from the train labels; --num-classes sets it)",
            split=train.name,
            entry=int(i),
            source_id=train.source_ids[i],
        )
    return C


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
    folder_of = check_class_folders(splits, key_of, problems)
    C = args.num_classes or infer_num_classes(splits[0], problems)
    problems.raise_if_fatal()
    if mapping is not None:
        name_of = lambda k: mapping.get(k, k)  # noqa: E731
    names = [name_of(folder_of[c]) if c in folder_of else f"class {c}" for c in range(C)]
    return Job(
        dataset=args.command,
        class_names=names,
        splits=splits,
        problems=problems,
        settings={"source": str(root), **{f"{s}_file": str(f) for s, f in files.items()}, "num_classes": C},
        default_write_mode="jpg",
    )
