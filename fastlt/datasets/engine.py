"""Run a converter's :class:`~fastlt.datasets.validate.Job`: validate everything, then write every split.

Every converter shares this; a converter only decides how its source format is read.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastlt.datasets.images import decode, storable_jpeg
from fastlt.datasets.validate import ConversionError, Job, Split, resolve
from fastlt.shards import ArraySource, ImageSource, Shard, write_shard


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
    keep_jpeg: bool = False  # jpg mode: store source JPEGs that need no resize byte for byte


class FileSource(ImageSource):
    """Images decoded from files under ``root`` on demand, inside FFCV's writer processes.

    With ``max_resolution`` set, JPEGs are decoded DCT-scaled to the smallest power-of-two reduction
    that still leaves the long side at or above ``max_resolution`` (:func:`fastlt.datasets.images.decode`);
    FFCV then resizes the rest of the way with ``INTER_AREA``. Decode cost falls with the square of the
    reduction, and no detail is lost that the final resize would have kept.
    """

    def __init__(
        self,
        root: Path,
        paths: list[str],
        labels,
        source_ids,
        max_resolution: int | None = None,
        sizes: np.ndarray | None = None,
        keep_jpeg: bool = False,
    ):
        super().__init__(labels, source_ids)
        self.root = Path(root)
        self.paths = list(paths)
        self.max_resolution = max_resolution
        self.sizes = sizes  # (width, height) per entry, from validation
        self.keep_jpeg = keep_jpeg

    def _raw_bytes(self) -> np.ndarray | None:
        """Raw RGB bytes of every image as written (after the ``max_resolution`` shrink)."""
        if self.sizes is None or len(self.sizes) == 0:
            return None
        w, h = self.sizes[:, 0].astype(np.float64), self.sizes[:, 1].astype(np.float64)
        if self.max_resolution:
            r = np.minimum(1.0, self.max_resolution / np.maximum(1, np.maximum(w, h)))
            w, h = np.ceil(w * r), np.ceil(h * r)
        return (w * h * 3).astype(np.int64)

    def total_bytes(self) -> int | None:
        raw = self._raw_bytes()
        return None if raw is None else int(raw.sum())

    def max_item_bytes(self) -> int | None:
        # The largest row in raw mode; write_shard's page sizing adds headroom for JPEG rows.
        raw = self._raw_bytes()
        return None if raw is None else int(raw.max())

    def load(self, i: int):
        if self.keep_jpeg:
            kept = storable_jpeg(self.root / self.paths[i], self.max_resolution)
            if kept is not None:
                return kept
        return decode(self.root / self.paths[i], self.max_resolution)


def source_for(split: Split, max_resolution: int | None, keep_jpeg: bool = False) -> ImageSource:
    if split.images is not None:
        return ArraySource(split.images, split.labels, split.source_ids)
    return FileSource(
        split.root, split.paths, split.labels, split.source_ids, max_resolution, split.sizes, keep_jpeg
    )


def run(job: Job, opts: WriteOptions, timings: dict | None = None) -> dict[str, Shard]:
    """Validate ``job`` (raising ``ConversionError`` with the problem list) and write its shards.

    ``timings``, if given, receives ``validate_s`` and ``write_s`` (wall seconds of the two phases).
    """
    if opts.keep_jpeg and (opts.write_mode or job.default_write_mode) != "jpg":
        raise ConversionError("--keep-jpeg stores JPEG files as they are; it needs --write-mode jpg")
    t0 = time.perf_counter()
    splits = resolve(job, workers=opts.workers, skip_bad=opts.skip_bad)
    t1 = time.perf_counter()
    dataset = opts.name or job.dataset
    C = len(job.class_names)
    write_mode = opts.write_mode or job.default_write_mode
    # Train first: its counts define every split's many/medium/few groups.
    splits.sort(key=lambda s: s.name != job.train_split)
    train_counts = np.bincount(splits[0].labels, minlength=C)
    conversion_id = uuid.uuid4().hex
    shards = {}
    for split in splits:
        if split.skipped:
            print(
                f"{dataset}/{split.name}: skipping {len(split.skipped)} bad entries (recorded in the index)",
                file=sys.stderr,
            )
        shards[split.name] = write_shard(
            opts.out,
            dataset,
            split.name,
            source_for(split, opts.max_resolution, opts.keep_jpeg),
            job.class_names,
            train_class_counts=train_counts,
            write_mode=write_mode,
            max_resolution=opts.max_resolution,
            jpeg_quality=opts.jpeg_quality,
            workers=opts.workers,
            skipped=split.skipped,
            settings={
                **job.settings,
                "skip_bad": opts.skip_bad,
                "keep_jpeg": opts.keep_jpeg,
                # One id for all splits of this run: shards.check_same_conversion tells a train split
                # from one conversion apart from a test split left over from another.
                "conversion_id": conversion_id,
                "splits": [s.name for s in splits],
            },
        )
        s = shards[split.name]
        print(f"wrote {s.beton_path} ({s.num_rows} rows, {C} classes, {write_mode})", file=sys.stderr)
    if timings is not None:
        timings.update(validate_s=t1 - t0, write_s=time.perf_counter() - t1)
    return shards
