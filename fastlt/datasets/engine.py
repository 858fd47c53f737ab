"""Run a converter's :class:`~fastlt.datasets.validate.Job`: one strict decode per image, in the worker
process that validates it and makes its row; all splits published together.

1. :func:`~fastlt.datasets.validate.check_entries` — an unreadable source stops here; labels and paths
   are checked; nothing is decoded or written yet.
2. Per split, train first, entries in class order: ``--workers`` forked processes each read a file, decode
   it once (strict libjpeg-turbo, DCT-scaled), shrink it to the exact size and encode it
   (:func:`fastlt.datasets.images.file_row`); the finished rows come back in order, at most a few per
   worker in flight (bounded memory), and this process only lays them out in the split's temporary
   ``.beton`` (:mod:`fastlt.beton_writer`). A file that fails becomes a problem named by its file and line
   or JSON id, with the decoder's words. Without ``--skip-bad``, the first problem stops the writing: the
   remaining files are only validated, so that the refusal lists every problem.
3. :func:`~fastlt.datasets.validate.settle` refuses the conversion (every temporary removed, and the
   output folders if this run made them) or, with ``--skip-bad``, drops the bad entries.
4. Each split's file gets its metadata (kept rows only), allocation table, checksum and index, and then
   every split is renamed to its final name at once (:class:`fastlt.shards.Staging`). Interrupted at any
   point before that, a conversion leaves nothing under a final name, and says what it removed.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastlt.datasets import images, resize
from fastlt.datasets.images import Clock, RowSpec
from fastlt.datasets.validate import ConversionError, Job, Problems, Split, bad_entries, check_entries, settle
from fastlt.shards import Shard, Staging, build_index, chunks, shard_paths, sigterm_as_interrupt
from fastlt.workers import WorkerDied, WorkerPool


@dataclass(frozen=True)
class WriteOptions:
    """The knobs every ``tools/convert`` subcommand shares (``--workers`` ... ``--skip-bad``)."""

    out: str | os.PathLike = "data"
    workers: int = 2
    write_mode: str | None = None  # None: the converter's default (raw for 32x32 sets, jpg for photos)
    max_resolution: int | None = None
    jpeg_quality: int = 90
    skip_bad: bool = False
    name: str | None = None  # dataset folder name under ``out``; default the converter's
    keep_jpeg: bool = False  # jpg mode: also store progressive source JPEGs that need no resize as they are
    reencode: bool = False  # jpg mode: re-encode every image, storing no source file as it is

    @property
    def store_source(self) -> str:
        return "any" if self.keep_jpeg else "never" if self.reencode else "baseline"


class ConversionInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a conversion; the message says what was left on disk."""


@dataclass(frozen=True)
class FileRows:
    """The rows of one split's file entries, made in a worker process. ``spec`` None: validate only."""

    root: Path
    spec: RowSpec | None

    def row(self, i: int, rel: str, clock: Clock):
        path = self.root / rel
        if self.spec is None:
            return images.check_file(path, clock)
        return images.file_row(path, self.spec, clock)


def _file_rows(task) -> tuple[list[tuple], tuple[float, float]]:
    """``[(entry, row or None, error or None)]`` and (decode, encode) CPU seconds for one task."""
    rows, entries = task
    clock = Clock()
    out = []
    for i, rel in entries:
        try:
            out.append((i, rows.row(i, rel, clock), None))
        except Exception as e:
            what = images.describe(e)
            if what is None:  # not the file's fault: a bug, which stops the conversion with its traceback
                raise
            out.append((i, None, what))
    return out, (clock.decode_s, clock.encode_s)


@dataclass
class _Progress:
    """Where the conversion is, for the message of an interrupt."""

    phase: str = "checking the source"
    done: int = 0
    total: int = 0
    clock: Clock = field(default_factory=Clock)


def _bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit="img", file=sys.stderr, mininterval=0.5, dynamic_ncols=True, leave=True
    )


def _convert_split(
    split: Split,
    spec: RowSpec,
    staging: Staging,
    pool: WorkerPool,
    job: Job,
    opts: WriteOptions,
    at: _Progress,
) -> None:
    """Step 2 for one split: every entry not already known bad, in class order, into its temporary file."""
    skip = bad_entries(job)[split.name]
    order = [int(i) for i in np.argsort(split.labels, kind="stable") if int(i) not in skip]
    writer = staging.writer(split.name, len(split))
    at.phase, at.done, at.total = f"converting {staging.dataset}/{split.name}", 0, len(order)
    with _bar(len(order), f"{staging.dataset}/{split.name}: convert") as bar:
        if split.images is not None:  # in memory (CIFAR, digits): nothing to decode
            for i in order:
                writer.add(i, images.pixels_row(split.images[i], spec, at.clock), split.labels[i])
                at.done += 1
                bar.update()
            return
        writing = True  # until a problem turns the rest into validation only (without --skip-bad)

        def tasks():
            for chunk in chunks(order, pool.workers, 16):
                yield FileRows(split.root, spec if writing else None), [(i, split.paths[i]) for i in chunk]

        for results, (decode_s, encode_s) in _imap(pool, tasks(), split):
            at.clock.decode_s += decode_s
            at.clock.encode_s += encode_s
            for i, row, error in results:
                if error is not None:
                    _record(job.problems, split, i, error)
                    writing = writing and opts.skip_bad
                elif row is not None and writing:
                    writer.add(i, row, split.labels[i])
            at.done += len(results)
            bar.update(len(results))


def _imap(pool: WorkerPool, tasks, split: Split):
    try:
        yield from pool.imap(_file_rows, tasks)
    except WorkerDied as e:
        files = [split.paths[i] for _, entries in e.tasks for i, _ in entries]
        raise ConversionError(
            f"{split.name}: {e} while converting one of {len(files)} files under {split.root}, "
            f"{files[0]} … {files[-1]}; nothing was written"
        ) from None


def _record(problems: Problems, split: Split, i: int, error: str) -> None:
    path = str(split.root / split.paths[i])
    # Name the file unless the entry's location already is the file (ImageFolder).
    what = error if split.where[i] == path else f"{path}: {error}"
    problems.add(split.where[i], what, split=split.name, entry=i, source_id=split.source_ids[i])


def _publish(
    job: Job, kept: list[Split], staging: Staging, settings: dict, at: _Progress
) -> dict[str, Shard]:
    """Step 4: finish every split's file and index (train counts define every split's groups), rename all."""
    C = len(job.class_names)
    train_counts = np.bincount(kept[0].labels, minlength=C)
    bad = bad_entries(job)
    for split in kept:
        at.phase = f"finishing {staging.dataset}/{split.name}"
        original = next(s for s in job.splits if s.name == split.name)
        keys = np.array([i for i in range(len(original)) if i not in bad[split.name]], dtype=np.int64)
        order = np.argsort(split.labels, kind="stable")
        if split.skipped:
            print(
                f"{staging.dataset}/{split.name}: skipping {len(split.skipped)} bad entries "
                "(recorded in the index)",
                file=sys.stderr,
            )
        index = build_index(
            staging.dataset,
            split.name,
            job.class_names,
            split.labels[order],
            [split.source_ids[j] for j in order],
            train_counts,
            settings,
            split.skipped,
        )
        staging.finish(split.name, keys[order], index)
    at.phase = "publishing"
    shards = staging.commit()
    for s in shards.values():
        print(
            f"wrote {s.beton_path} ({s.num_rows} rows, {C} classes, {settings['write_mode']})",
            file=sys.stderr,
        )
    return shards


def _new_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, innermost first."""
    missing = []
    for p in (folder, *folder.parents):
        if p.exists():
            break
        missing.append(p)
    return missing


def _interrupted(staging: Staging, at: _Progress, left: list[Path]) -> str:
    """Exactly what an interrupted conversion leaves on disk."""
    if staging.committed:
        return f"interrupted after the conversion completed; {staging.folder} holds its new splits"
    where = f"{at.phase} ({at.done:,} of {at.total:,} images)" if at.total else at.phase
    removed = "removed its temporary files" if not left else f"could not remove {', '.join(map(str, left))}"
    earlier = sorted(
        p.name
        for split in staging.writers
        for p in shard_paths(staging.root, staging.dataset, split)
        if p.exists()
    )
    kept = f" (the earlier {', '.join(earlier)} there are unchanged)" if earlier else ""
    return f"interrupted while {where}; {removed}; nothing new under {staging.folder}{kept}"


def run(job: Job, opts: WriteOptions, timings: dict | None = None) -> dict[str, Shard]:
    """Validate and write every split of ``job`` (see the module docstring); returns the shards opened.

    ``timings``, if given, receives ``total_s`` (wall), ``decode_cpu_s`` and ``encode_cpu_s`` (CPU seconds
    of all workers decoding — the validation — and resizing + encoding), and ``parent_cpu_s`` (this
    process: layout, checksums, index).
    """
    write_mode = opts.write_mode or job.default_write_mode
    if opts.keep_jpeg and write_mode != "jpg":
        raise ConversionError("--keep-jpeg stores JPEG files as they are; it needs --write-mode jpg")
    if opts.keep_jpeg and opts.reencode:
        raise ConversionError("--keep-jpeg stores JPEG files as they are, --reencode stores none: pick one")
    spec = RowSpec(write_mode, opts.max_resolution, opts.jpeg_quality, opts.store_source)
    t0, c0 = time.perf_counter(), time.process_time()
    check_entries(job)
    splits = sorted(job.splits, key=lambda s: s.name != job.train_split)
    staging = Staging(opts.out, opts.name or job.dataset)
    made = _new_folders(staging.folder)
    settings = {
        "write_mode": write_mode,
        "max_resolution": opts.max_resolution,
        "jpeg_quality": opts.jpeg_quality,
        **job.settings,
        "skip_bad": opts.skip_bad,
        "keep_jpeg": opts.keep_jpeg,
        "store_source": opts.store_source,
        # One id for all splits of this run: shards.check_same_conversion tells a train split
        # from one conversion apart from a test split left over from another.
        "conversion_id": uuid.uuid4().hex,
        "splits": [s.name for s in splits],
    }
    at = _Progress()
    try:
        with sigterm_as_interrupt():
            resize.warm_up()  # compile the resize kernel once, before the workers fork
            with WorkerPool(opts.workers) as pool:
                for split in splits:
                    _convert_split(split, spec, staging, pool, job, opts, at)
            kept = settle(job, skip_bad=opts.skip_bad)
            kept.sort(key=lambda s: s.name != job.train_split)
            shards = _publish(job, kept, staging, settings, at)
    except KeyboardInterrupt:
        left = staging.abort()
        for folder in made:
            if not staging.committed:
                _rmdir(folder)
        raise ConversionInterrupted(_interrupted(staging, at, left)) from None
    except BaseException:
        staging.abort()
        for folder in made:
            _rmdir(folder)
        raise
    if timings is not None:
        timings.update(
            total_s=time.perf_counter() - t0,
            decode_cpu_s=at.clock.decode_s,
            encode_cpu_s=at.clock.encode_s,
            parent_cpu_s=time.process_time() - c0,
        )
    return shards


def _rmdir(folder: Path) -> None:
    """Remove a folder this run made, if nothing else was put in it meanwhile."""
    try:
        folder.rmdir()
    except OSError:
        pass
