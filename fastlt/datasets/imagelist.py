"""``imagelist``: your own images named by a list or CSV file per split, for data whose folders do not say
the class.

    tools/convert imagelist --train train.csv [--val val.csv] [--test test.csv] [--root DIR] [--classes F]

A line is ``path,label`` or ``path label``: the label is what follows the last comma or the last run of
spaces or tabs, whichever comes later, so a path may hold either as long as the label does not. A ``.csv``
file is read as CSV (quoted fields, an optional header row such as ``path,label``); blank lines and lines
starting with ``#`` are skipped. Paths are relative to ``--root`` (default: the train list's folder);
absolute ones must lie inside it.

The classes are the lines of ``--classes FILE`` (line i names class i), or else come from the train list:

* its labels are all integers: classes 0..C-1 without gaps (an index that no train line uses is an error,
  since its class would have no training image), named by the index itself;
* otherwise its labels are class names: the classes are its names, sorted (as ImageFolder sorts folders).

A label is a class name; where the classes are known by index (``--classes``, or integer train labels) an
integer label that is no class's name is the class's index, so one list may use names and another indices.
A name that is not a class is an error, with the nearest names.

Without ``--val``/``--test`` the held-out ``val`` split is made from the train list, by the rule of
``imagefolder`` (each class gives min(N, floor(F·n)) images; see the options below). The dataset is named
after the root folder (``--name`` to choose). An entry listed twice in one split, or an image in two splits,
is a problem of the later entry (``--skip-bad`` drops it).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import re
from pathlib import Path

import numpy as np

from fastlt.datasets.own import add_own_arguments, dataset_name, own_job
from fastlt.datasets.validate import Job, Problems, Split, read_source_text
from fastlt.names import did_you_mean

LIST_SPLITS = ("train", "val", "test")
HEADER_PATHS = {"path", "file", "filename", "filepath", "image", "image_path", "img"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    for split in LIST_SPLITS:
        p.add_argument(
            f"--{split}",
            type=Path,
            required=split == "train",
            metavar="LIST",
            help=f"{split} list: 'path,label' or 'path label' per line, or a .csv file",
        )
    p.add_argument("--root", type=Path, default=None, help="folder the paths are relative to (default: "
                   "the train list's folder)")
    p.add_argument("--classes", type=Path, default=None, help="class names, one per line: line i names "
                   "class i (default: the train list's names, sorted, or the indices)")
    add_own_arguments(p)


# ------------------------------------------------------------------------------------------ reading
def split_line(line: str) -> tuple[str, str] | None:
    """(path, label) of a ``path,label`` or ``path label`` line, or None when it has no separator."""
    comma = line.rfind(",")
    last_space = re.search(r"\s+\S*$", line)
    space = last_space.start() if last_space else -1
    cut = max(comma, space)
    if cut <= 0:
        return None
    return line[:cut].strip(), line[cut + 1 :].strip()


def read_list(path: Path, problems: Problems) -> list[tuple[str, str, str]]:
    """``[(where, path, label)]`` of a list file; malformed lines become problems."""
    text = read_source_text(path, problems, "list file")
    if text is None:
        return []
    rows = []
    if path.suffix.lower() == ".csv":
        for n, fields in enumerate(csv.reader(io.StringIO(text)), start=1):
            if not fields or not "".join(fields).strip() or fields[0].lstrip().startswith("#"):
                continue
            if len(fields) != 2:
                problems.add(f"{path}:{n}", f"expected 2 fields (path,label), got {len(fields)}")
                continue
            rows.append((f"{path}:{n}", fields[0].strip(), fields[1].strip()))
    else:
        for n, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parsed = split_line(line)
            if parsed is None or not parsed[0] or not parsed[1]:
                problems.add(f"{path}:{n}", f"expected 'path,label' or 'path label', got {line!r}")
                continue
            rows.append((f"{path}:{n}", *parsed))
    if rows and rows[0][1].lower() in HEADER_PATHS and not _is_int(rows[0][2]):
        rows = rows[1:]  # a header row
    return rows


def _is_int(s: str) -> bool:
    return s.lstrip("-").isdigit()


def _relative(p: str, root: Path) -> str:
    """``p`` relative to ``root`` when it is an absolute path inside it; else as written (an absolute path
    outside the root is then refused by the engine's path check, naming its line)."""
    if os.path.isabs(p):
        rel = os.path.relpath(p, root)
        if not rel.startswith(".."):
            return Path(rel).as_posix()
    return p.replace("\\", "/")


# ------------------------------------------------------------------------------------------ classes
def read_class_file(path: Path, problems: Problems) -> list[str]:
    text = read_source_text(path, problems, "classes file")
    names = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            problems.fatal(str(path), f"class {name!r} is listed twice (lines {seen[name] + 1} and {i + 1})")
        seen.setdefault(name, i)
    if text is not None and not names:
        problems.fatal(str(path), "no class names")
    return names


def class_names(train_rows, given: list[str] | None, by_index: bool, where: Path, problems: Problems):
    """The class list (see the module docstring); an index gap is a fatal problem."""
    if not by_index:
        return given if given is not None else sorted({label for _, _, label in train_rows})
    used = sorted({int(label) for _, _, label in train_rows})
    if used and used[0] < 0:
        problems.fatal(str(where), f"label {used[0]} is negative; class indices run 0..C-1")
    C = len(given) if given is not None else (used[-1] + 1 if used else 0)
    gaps = sorted(set(range(C)) - set(used))
    if given is None and gaps:
        listed = ", ".join(map(str, gaps[:10])) + (" …" if len(gaps) > 10 else "")
        problems.fatal(
            str(where),
            f"label gap: class indices run 0..{C - 1}, but {listed} never appear — every class needs "
            "training images; renumber the labels, or name the classes with --classes FILE",
        )
    return given if given is not None else [str(c) for c in range(C)]


def labelled_split(
    name: str, rows, classes: list[str], named_by: str, indices: bool, root: Path, problems: Problems
) -> Split:
    """A :class:`Split` of ``rows``: a label is a class name, or with ``indices`` an integer that is none is
    a class index; an unknown class name or a repeated path is a problem."""
    index = {c: i for i, c in enumerate(classes)}
    labels, paths, where = [], [], []
    first: dict[str, str] = {}
    for at, path, label in rows:
        rel = _relative(path, root)
        if rel in first:
            problems.add(at, f"{rel} is listed again (first at {first[rel]})", source_id=rel, split=name)
            continue
        first[rel] = at
        if label in index:
            c = index[label]
        elif indices and _is_int(label):
            c = int(label)  # one outside 0..C-1 is named by the engine's label check
        else:
            hint = did_you_mean(label, classes)
            problems.add(at, f"unknown class {label!r}{hint} (not one of the {len(classes)} classes of "
                         f"{named_by})", source_id=rel, split=name)
            continue
        labels.append(c)
        paths.append(rel)
        where.append(at)
    return Split(name, np.array(labels, dtype=np.int64), list(paths), where, root=root, paths=paths)


def build(args) -> Job:
    problems = Problems()
    lists = {s: getattr(args, s) for s in LIST_SPLITS if getattr(args, s) is not None}
    root = Path(args.root) if args.root is not None else Path(os.path.abspath(lists["train"])).parent
    if not root.is_dir():
        problems.fatal(str(root), "not a directory (the root the list's paths are relative to)")
    rows = {s: read_list(Path(p), problems) for s, p in lists.items()}
    given = read_class_file(Path(args.classes), problems) if args.classes else None
    problems.raise_if_fatal()
    by_index = bool(rows["train"]) and all(_is_int(label) for _, _, label in rows["train"])
    classes = class_names(rows["train"], given, by_index, lists["train"], problems)
    problems.raise_if_fatal()
    named_by = str(args.classes) if args.classes else str(lists["train"])
    indices = by_index or given is not None
    splits = [labelled_split(s, r, classes, named_by, indices, root, problems) for s, r in rows.items()]
    settings = {"source": str(root), "layout": "lists", "lists": {s: str(p) for s, p in lists.items()}}
    return own_job(args, dataset_name(args, root), classes, splits, problems, settings)
