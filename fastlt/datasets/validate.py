"""Check first, write second: the rules every converter shares.

A converter only *reads* its source format into :class:`Split` records (labels, relative paths or
in-memory pixels, and where each entry came from) and reports what it could not read into a
:class:`Problems` collector. The engine (:mod:`fastlt.datasets.engine`) then

1. :func:`check_entries`: stops on problems that make the source unreadable, and checks every label and
   that every path stays inside the dataset root — before any image is decoded;
2. decodes every remaining file entry once, in the worker process that also makes its row, adding a
   problem for each file that does not decode cleanly (:mod:`fastlt.datasets.images`);
3. :func:`settle`: checks that every class still has training images, and refuses the whole conversion,
   listing the first 20 problems (file and line, or JSON id) plus a count, unless ``skip_bad`` is set, in
   which case the bad entries are dropped and recorded in the index's ``skipped`` list;
4. writes the train split first and every other split with the train split's class counts, so that
   many/medium/few always means "how many images of this class the model was trained on".

Nothing appears under a final name before step 4 completes for every split, so a refused conversion
leaves nothing behind.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPORT_LIMIT = 20


class ConversionError(ValueError):
    """The source data is malformed; the message lists what and where. Nothing was written."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the source. ``where`` is ``file:line`` or ``file: images[id=…]``.

    ``split``/``entry`` name the dropped entry (its index in ``Split``) when the problem is about one
    entry; ``skippable`` is false for problems that no ``--skip-bad`` can fix (an unreadable annotation
    file, a class left with no training images).
    """

    where: str
    what: str
    split: str | None = None
    entry: int | None = None
    skippable: bool = True
    source_id: str | None = None

    def line(self) -> str:
        return f"{self.where}: {self.what}"

    def record(self) -> dict:
        d = {"where": self.where, "problem": self.what}
        if self.source_id is not None:
            d["source_id"] = self.source_id
        return d


def _natural_key(where: str) -> list:
    """``train.txt:9`` before ``train.txt:10``; ``images[2]`` before ``images[10]``."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", where)]


class Problems:
    """Collects every problem instead of stopping at the first, so one run shows the user all of them."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(
        self,
        where: str,
        what: str,
        *,
        split: str | None = None,
        entry: int | None = None,
        skippable: bool = True,
        source_id: str | None = None,
    ) -> None:
        self.items.append(Problem(str(where), what, split, entry, skippable, source_id))

    def fatal(self, where: str, what: str) -> None:
        self.add(where, what, skippable=False)

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def report(self, limit: int = REPORT_LIMIT, header: str = "") -> str:
        """The first ``limit`` problems in file-and-line order (not discovery order), plus a count."""
        n = len(self.items)
        lines = [header or f"{n} problem{'s' if n != 1 else ''} in the source data:"]
        ordered = sorted(self.items, key=lambda p: _natural_key(p.where))
        lines += [f"  {p.line()}" for p in ordered[:limit]]
        if n > limit:
            lines.append(f"  ... and {n - limit} more ({n} in all)")
        return "\n".join(lines)

    def raise_if_fatal(self) -> None:
        """Problems that make the source unreadable stop here, before any image is decoded."""
        fatal = [p for p in self.items if not p.skippable]
        if fatal:
            only = Problems()
            only.items = fatal
            raise ConversionError(only.report(header=f"cannot read the source ({len(fatal)} problems):"))


@dataclass
class Split:
    """One split as a converter read it, before validation.

    Exactly one of ``paths`` (relative to ``root``, files decoded on demand) or ``images``
    (``uint8[N,H,W,3]`` already in memory) is set. ``where[i]`` locates entry ``i`` in the source
    (``file:line``, ``file: images[id=…]``, ``data_batch_1[17]``) for error messages.
    """

    name: str
    labels: np.ndarray
    source_ids: list[str]
    where: list[str]
    root: Path | None = None
    paths: list[str] | None = None
    images: np.ndarray | None = None
    skipped: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        n = len(self.labels)
        if len(self.source_ids) != n or len(self.where) != n:
            raise ValueError(f"split {self.name}: labels, source_ids and where differ in length")
        if (self.paths is None) == (self.images is None):
            raise ValueError(f"split {self.name}: give exactly one of paths or images")
        if self.paths is not None and (self.root is None or len(self.paths) != n):
            raise ValueError(f"split {self.name}: file entries need a root and one path per label")

    def __len__(self) -> int:
        return len(self.labels)

    def keep(self, mask: np.ndarray) -> Split:
        idx = np.flatnonzero(mask)
        return Split(
            name=self.name,
            labels=self.labels[idx],
            source_ids=[self.source_ids[i] for i in idx],
            where=[self.where[i] for i in idx],
            root=self.root,
            paths=None if self.paths is None else [self.paths[i] for i in idx],
            images=None if self.images is None else self.images[idx],
            skipped=list(self.skipped),
        )


@dataclass
class Job:
    """What a converter hands the engine: a dataset name, its classes, its splits (train first)."""

    dataset: str
    class_names: list[str]
    splits: list[Split]
    problems: Problems
    settings: dict = field(default_factory=dict)
    default_write_mode: str = "jpg"
    train_split: str = "train"


# ------------------------------------------------------------------------------------------- files
def escapes_root(rel: str) -> bool:
    """True for an absolute path or one whose ``..`` components climb out of the dataset root.

    Decided on the text of the path (not by resolving symlinks): a dataset root may legitimately
    be a tree of symlinks into a shared store, but a split file may not point outside it.
    """
    rel = rel.replace("\\", "/")
    if rel.startswith("/"):
        return True
    if ".." not in rel:  # nothing can climb: the common case, decided without splitting (437k paths)
        return False
    depth = 0
    for part in rel.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def check_paths(split: Split, problems: Problems, skip: set[int] = frozenset()) -> None:
    """Every file entry of ``split`` not in ``skip`` must name a path inside the dataset root."""
    for i, rel in enumerate(split.paths or ()):
        if i not in skip and escapes_root(rel):
            problems.add(
                split.where[i],
                f"path {rel!r} escapes the dataset root {split.root}",
                split=split.name,
                entry=i,
                source_id=split.source_ids[i],
            )


# ------------------------------------------------------------------------------------------ engine
def check_labels(split: Split, num_classes: int, problems: Problems, skip: set[int] = frozenset()) -> None:
    bad = np.flatnonzero((split.labels < 0) | (split.labels >= num_classes))
    for i in (i for i in bad if int(i) not in skip):
        problems.add(
            split.where[i],
            f"label {split.labels[i]} out of range, expected 0..{num_classes - 1}",
            split=split.name,
            entry=int(i),
            source_id=split.source_ids[i],
        )


def bad_entries(job: Job) -> dict[str, set[int]]:
    """Per split, the entries some problem is about."""
    bad = {s.name: set() for s in job.splits}
    for p in job.problems.items:
        if p.entry is not None and p.split in bad:
            bad[p.split].add(p.entry)
    return bad


def check_entries(job: Job) -> None:
    """Step 1: raises :class:`ConversionError` for an unreadable source; records label and path problems.

    An entry the converter already flagged (e.g. no annotation, so no label) is not checked again.
    """
    job.problems.raise_if_fatal()
    if not job.class_names:
        raise ConversionError(f"{job.dataset}: no classes found in the source")
    names = [s.name for s in job.splits]
    if job.train_split not in names:
        raise ConversionError(f"{job.dataset}: no {job.train_split!r} split in the source (found {names})")
    known = bad_entries(job)
    for split in job.splits:
        check_labels(split, len(job.class_names), job.problems, skip=known[split.name])
        check_paths(split, job.problems, skip=known[split.name])


def settle(job: Job, *, skip_bad: bool = False) -> list[Split]:
    """Step 3: ``job``'s splits with bad entries removed (only if ``skip_bad``), in ``job.splits`` order.

    Raises :class:`ConversionError` listing the problems otherwise.
    """
    problems = job.problems
    C = len(job.class_names)
    bad = bad_entries(job)
    # What would survive --skip-bad decides whether a class is left without training images; a class
    # that is empty either way cannot be fixed by skipping, so it is reported as a fatal problem.
    train = next(s for s in job.splits if s.name == job.train_split)
    survive = np.ones(len(train), dtype=bool)
    survive[list(bad[train.name])] = False
    counts = np.bincount(train.labels[survive].clip(0, C - 1), minlength=C)
    for c in np.flatnonzero(counts == 0):
        had = int(np.sum(train.labels == c))
        why = f" (all {had} of its entries are bad)" if had else ""
        problems.add(
            f"{job.dataset}/{train.name}",
            f"class {c} ({job.class_names[c]!r}) has no training images{why}",
            skippable=False,
        )

    if problems and (not skip_bad or any(not p.skippable for p in problems.items)):
        hint = (
            ""
            if not all(p.skippable for p in problems.items)
            else (
                "\nNothing was written. Fix the source, or pass --skip-bad to write the shards without these "
                "entries (they are listed in the index's 'skipped')."
            )
        )
        raise ConversionError(problems.report() + hint)

    out = []
    for split in job.splits:
        mask = np.ones(len(split), dtype=bool)
        mask[list(bad[split.name])] = False
        kept = split.keep(mask)
        kept.skipped = [p.record() for p in problems.items if p.split == split.name]
        if len(kept) == 0:
            raise ConversionError(f"{job.dataset}/{split.name}: no valid entries left to write")
        out.append(kept)
    # Line-level problems that never became an entry (a malformed line) are recorded with their split,
    # or with the train split when the converter could not tell.
    loose = [p.record() for p in problems.items if p.split is None]
    if loose:
        out[[s.name for s in out].index(job.train_split)].skipped.extend(loose)
    return out


# ------------------------------------------------------------------------------------ source files
def is_int(v) -> bool:
    """An integer label or id (JSON ints, numpy ints; not bools, not floats like 3.0). Three calls per iNat
    entry: the exact-type test first (a bool's type is bool, not int)."""
    return type(v) is int or isinstance(v, np.integer)


def read_source_text(path: Path, problems: Problems, what: str = "file") -> str | None:
    """The text of a source file (split list, annotations, names), or None with a fatal problem recorded.

    Read as UTF-8 whatever the locale, without the byte-order mark some editors put first: kept, it would
    become an invisible first character of the first path (then "not found") or a JSON syntax error.
    """
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        problems.fatal(str(path), f"{what} not found")
    except (OSError, UnicodeDecodeError) as e:
        problems.fatal(str(path), f"cannot read {what}: {e}")
    return None


def load_json(path: Path, keys: Sequence[str], problems: Problems):
    """Parse a JSON annotation file; a missing file, bad JSON or missing top-level keys are fatal."""
    import json

    text = read_source_text(path, problems)
    if text is None:
        return None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        problems.fatal(f"{path}:{e.lineno}:{e.colno}", f"malformed JSON: {e.msg}")
        return None
    if not isinstance(doc, dict):
        problems.fatal(
            str(path), f"top level is a {type(doc).__name__}, expected an object with keys {list(keys)}"
        )
        return None
    missing = [k for k in keys if k not in doc]
    if missing:
        problems.fatal(str(path), f"missing key(s) {missing} (expected {list(keys)})")
        return None
    return doc
