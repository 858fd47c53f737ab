"""Class-indexed shards: one FFCV ``.beton`` per split plus ``<split>.index.json``.

Rows are sorted by class, so class ``c`` owns rows ``class_offsets[c]:class_offsets[c+1]``.
That single fact is what lets every sampler draw "an image of class c" with one integer draw
and lets the trainer build its class priors without decoding a single image.

Layout::

    <root>/<dataset>/<split>.beton         FFCV file: ``image`` (RGBImageField), ``label`` (IntField)
    <root>/<dataset>/<split>.index.json    the index described in DESIGN.md §3
    <root>/<dataset>/<split>.verified      cache of the last full checksum (size, mtime_ns, sha256)

Both outputs are written under temporary names in the destination folder and renamed only when
complete, so an interrupted conversion never leaves a ``.beton`` or ``.index.json`` under its final
name. The ``.beton`` is renamed first and the index last: the index is the commit marker, and
``open_shard`` refuses a ``.beton`` that has none.

API: ``write_shard(root, dataset, split, source, class_names, ...)`` with an ``ImageSource``
(``ArraySource`` for in-memory pixels; a source may hand over ``EncodedJPEG`` bytes to store as they
are); ``open_shard(path)`` → ``Shard`` with ``.index`` (``ShardIndex``), ``.reader()`` (FFCV's
``Reader``), and for tests and tools ``.stored_labels()``, ``.image_bytes(row)``, ``.decode(row)``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import multiprocessing
import os
import signal
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SHARD_FORMAT_VERSION = 1
GROUPS = ("many", "medium", "few")
IMAGE_FIELD = "image"
LABEL_FIELD = "label"


class ShardError(ValueError):
    """A shard (or its index) is missing, malformed, or does not match its index."""


def class_groups(train_counts: Sequence[int]) -> list[str]:
    """many if n > 100, few if n < 20, medium otherwise (20..100 inclusive) — REFERENCE.md."""
    out = []
    for n in train_counts:
        n = int(n)
        out.append("many" if n > 100 else ("few" if n < 20 else "medium"))
    return out


def sha256_file(path: str | os.PathLike, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ShardIndex:
    """Everything the trainer needs to know about a split without opening the ``.beton``."""

    version: int
    dataset: str
    split: str
    num_classes: int
    class_names: list[str]
    class_counts: list[int]
    class_offsets: list[int]
    class_groups: list[str]
    train_class_counts: list[int]
    source_ids: list[str]
    settings: dict
    skipped: list[dict] = field(default_factory=list)
    beton_file: str = ""
    beton_size: int = 0
    beton_sha256: str = ""

    # ------------------------------------------------------------------ derived views
    @property
    def num_rows(self) -> int:
        return self.class_offsets[-1]

    @property
    def offsets(self) -> np.ndarray:
        return np.asarray(self.class_offsets, dtype=np.int64)

    @property
    def counts(self) -> np.ndarray:
        return np.asarray(self.class_counts, dtype=np.int64)

    @property
    def train_counts(self) -> np.ndarray:
        return np.asarray(self.train_class_counts, dtype=np.int64)

    @property
    def labels(self) -> np.ndarray:
        """int64[N] label of every row, derived from the offsets (rows are class-sorted)."""
        return np.repeat(np.arange(self.num_classes, dtype=np.int64), self.counts)

    @property
    def group_ids(self) -> np.ndarray:
        """int64[C]: 0 many, 1 medium, 2 few."""
        return np.asarray([GROUPS.index(g) for g in self.class_groups], dtype=np.int64)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict, path: str | os.PathLike = "<index>") -> ShardIndex:
        names = {f for f in cls.__dataclass_fields__}
        required = names - {"skipped", "beton_file", "beton_size", "beton_sha256"}
        missing = sorted(required - d.keys())
        if missing:
            raise ShardError(f"{path}: index is missing keys {missing}")
        unknown = sorted(d.keys() - names)
        if unknown:
            raise ShardError(f"{path}: index has unknown keys {unknown} (written by a newer fastlt?)")
        if d["version"] != SHARD_FORMAT_VERSION:
            raise ShardError(
                f"{path}: index format version {d['version']}, this fastlt reads version "
                f"{SHARD_FORMAT_VERSION}; re-run tools/convert"
            )
        idx = cls(**d)
        idx.check_consistent(path)
        return idx

    def check_consistent(self, path: str | os.PathLike = "<index>") -> None:
        C = self.num_classes
        for key in ("class_names", "class_counts", "class_groups", "train_class_counts"):
            if len(getattr(self, key)) != C:
                raise ShardError(
                    f"{path}: {key} has {len(getattr(self, key))} entries, expected num_classes={C}"
                )
        if len(self.class_offsets) != C + 1:
            raise ShardError(f"{path}: class_offsets has {len(self.class_offsets)} entries, expected {C + 1}")
        offs = self.offsets
        if offs[0] != 0 or np.any(np.diff(offs) != self.counts):
            raise ShardError(f"{path}: class_offsets are not the cumulative sum of class_counts")
        if len(self.source_ids) != self.num_rows:
            raise ShardError(f"{path}: {len(self.source_ids)} source_ids for {self.num_rows} rows")
        bad = [g for g in self.class_groups if g not in GROUPS]
        if bad:
            raise ShardError(f"{path}: unknown class groups {sorted(set(bad))}, expected one of {GROUPS}")


@dataclass(frozen=True)
class Shard:
    """An opened, validated shard."""

    beton_path: Path
    index_path: Path
    index: ShardIndex

    @property
    def num_rows(self) -> int:
        return self.index.num_rows

    @property
    def num_classes(self) -> int:
        return self.index.num_classes

    @property
    def labels(self) -> np.ndarray:
        return self.index.labels

    @property
    def offsets(self) -> np.ndarray:
        return self.index.offsets

    def reader(self):
        """FFCV's own parser of the ``.beton`` (header, field descriptors, metadata, allocation table)."""
        from ffcv.reader import Reader

        return Reader(str(self.beton_path))

    @functools.cached_property
    def _rows(self) -> _RowTable:
        return _RowTable.build(self.reader(), self.beton_path)

    def stored_labels(self) -> np.ndarray:
        """int64[N]: the ``label`` field as stored in the ``.beton`` (the index's ``labels`` is derived
        from the offsets; the two agree for every shard ``write_shard`` made)."""
        return self._rows.labels.copy()

    def image_bytes(self, row: int) -> tuple[str, int, int, np.ndarray]:
        """``(mode, height, width, data)`` of one row: ``data`` is the JPEG file (``mode='jpg'``) or the
        ``uint8[H*W*3]`` pixels (``mode='raw'``), a read-only view of the memory-mapped file."""
        return self._rows.get(int(row))

    def decode(self, row: int) -> np.ndarray:
        """uint8[H, W, 3] RGB pixels of one row (PIL for JPEG rows). For tests and tools, not for training."""
        mode, h, w, data = self.image_bytes(row)
        if mode == "raw":
            return np.array(data).reshape(h, w, 3)
        import io

        from PIL import Image

        with Image.open(io.BytesIO(data.tobytes())) as im:
            return np.asarray(im.convert("RGB"))


@dataclass(frozen=True)
class _RowTable:
    """Where each row's image lives in the ``.beton``: FFCV's metadata gives the start of a row's data,
    and the allocation table (sorted by pointer) gives its size."""

    mm: np.ndarray
    mode: np.ndarray
    height: np.ndarray
    width: np.ndarray
    ptr: np.ndarray
    size: np.ndarray
    labels: np.ndarray

    @classmethod
    def build(cls, reader, path: Path) -> _RowTable:
        from ffcv.fields.rgb_image import IMAGE_MODES

        # FFCV names the metadata columns f0, f1, ... in field order; the names live in field_names.
        meta = reader.metadata
        cols = {name: f"f{i}" for i, name in enumerate(reader.field_names)}
        if IMAGE_FIELD not in cols or LABEL_FIELD not in cols:
            raise ShardError(
                f"{path}: fields {reader.field_names}, expected {IMAGE_FIELD!r} and {LABEL_FIELD!r}"
            )
        img = meta[cols[IMAGE_FIELD]]
        table = np.sort(reader.alloc_table, order="ptr")
        at = np.searchsorted(table["ptr"], img["data_ptr"])
        if np.any(at >= len(table)) or np.any(
            table["ptr"][np.minimum(at, len(table) - 1)] != img["data_ptr"]
        ):
            raise ShardError(f"{path}: a row's data pointer is missing from the allocation table")
        names = {v: k for k, v in IMAGE_MODES.items()}
        return cls(
            mm=np.memmap(path, dtype=np.uint8, mode="r"),
            mode=np.array([names[int(m)] for m in img["mode"]]),
            height=img["height"].astype(np.int64),
            width=img["width"].astype(np.int64),
            ptr=img["data_ptr"].astype(np.int64),
            size=table["size"][at].astype(np.int64),
            labels=meta[cols[LABEL_FIELD]].astype(np.int64),
        )

    def get(self, row: int):
        if not 0 <= row < len(self.ptr):
            raise IndexError(f"row {row} out of range for a shard of {len(self.ptr)} rows")
        p = self.ptr[row]
        return (
            str(self.mode[row]),
            int(self.height[row]),
            int(self.width[row]),
            self.mm[p : p + self.size[row]],
        )


def shard_paths(root: str | os.PathLike, dataset: str, split: str) -> tuple[Path, Path]:
    d = Path(root) / dataset
    return d / f"{split}.beton", d / f"{split}.index.json"


def _resolve(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    name = p.name
    for suffix in (".index.json", ".beton"):
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            return p.with_name(stem + ".beton"), p.with_name(stem + ".index.json")
    raise ShardError(f"{path}: expected a path ending in .beton or .index.json")


def open_shard(path: str | os.PathLike, verify: bool = True) -> Shard:
    """Open ``<split>.beton`` (or its ``.index.json``), refusing a file that does not match its index.

    Size is always checked. The full sha256 is checked when ``verify`` is true, and its result is cached
    in ``<split>.verified`` keyed on (size, mtime_ns) so that opening a 40 GB shard twice costs one hash.
    """
    beton, index_path = _resolve(path)
    if not index_path.exists():
        hint = (
            " (the .beton exists but its index does not: an interrupted conversion?)"
            if beton.exists()
            else ""
        )
        raise ShardError(f"{index_path}: shard index not found{hint}")
    try:
        raw = json.loads(index_path.read_text())
    except json.JSONDecodeError as e:
        raise ShardError(f"{index_path}:{e.lineno}: malformed JSON: {e.msg}") from None
    index = ShardIndex.from_json(raw, index_path)
    if not beton.exists():
        raise ShardError(f"{beton}: shard file not found (its index {index_path.name} exists)")
    st = beton.stat()
    if st.st_size != index.beton_size:
        raise ShardError(
            f"{beton}: size {st.st_size} bytes does not match its index ({index.beton_size} bytes); "
            "the file was modified or truncated — re-run tools/convert"
        )
    if verify:
        stamp = beton.with_suffix(".verified")
        key = _verified_key(st, index.beton_sha256)
        cached = None
        with contextlib.suppress(OSError, json.JSONDecodeError):
            cached = json.loads(stamp.read_text())
        if cached != key:
            digest = sha256_file(beton)
            if digest != index.beton_sha256:
                raise ShardError(
                    f"{beton}: sha256 {digest[:16]}… does not match its index ({index.beton_sha256[:16]}…); "
                    "the file was modified — re-run tools/convert"
                )
            _record_verified(beton, digest)
    return Shard(beton, index_path, index)


def check_same_conversion(*shards: Shard) -> None:
    """Refuse splits written by different conversions (e.g. a re-converted train beside an old test
    split, whose many/medium/few groups came from the old train counts). Shards written before
    conversion ids existed, or by ``write_shard`` directly, carry none and are not compared."""
    ids = {s.beton_path: s.index.settings.get("conversion_id") for s in shards}
    known = {p: i for p, i in ids.items() if i}
    if len(set(known.values())) > 1:
        listing = ", ".join(f"{p} ({i[:8]})" for p, i in known.items())
        raise ShardError(f"these splits come from different conversions: {listing}; re-run tools/convert")
    names = {s.index.class_names == shards[0].index.class_names for s in shards}
    if names != {True}:
        raise ShardError(f"{shards[0].beton_path} and the other splits list different classes")


def _verified_key(st: os.stat_result, sha256: str) -> dict:
    """What ``<split>.verified`` caches: a checksum is trusted again only for the same size and mtime."""
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}


def _record_verified(beton: Path, sha256: str) -> None:
    with contextlib.suppress(OSError):
        _atomic_write_text(beton.with_suffix(".verified"), json.dumps(_verified_key(beton.stat(), sha256)))


# ---------------------------------------------------------------------------------------- writing
@dataclass(frozen=True)
class EncodedJPEG:
    """A JPEG stored as it is — no decode, no re-encode — with its pixel size (for FFCV's metadata).

    An :class:`ImageSource` may return one from ``load`` instead of pixels in jpg mode: conversion then
    costs a file read, and the shard holds the original bytes (no second generation of JPEG loss).
    """

    data: bytes
    height: int
    width: int


def _accepting_encoded(field):
    """``field`` (an ``RGBImageField``) that also stores :class:`EncodedJPEG` values verbatim.

    The method is replaced on the instance, not by subclassing: FFCV identifies a field's type by its
    exact class when it writes the header, and the file must stay an ordinary RGBImageField for every
    reader (FFCV's loader, DALI, ``Shard.decode``).
    """
    from ffcv.fields.rgb_image import IMAGE_MODES

    plain = field.encode

    def encode(destination, image, malloc):
        if not isinstance(image, EncodedJPEG):
            return plain(destination, image, malloc)
        destination["mode"] = IMAGE_MODES["jpg"]
        destination["height"], destination["width"] = image.height, image.width
        destination["data_ptr"], storage = malloc(len(image.data))
        storage[:] = np.frombuffer(image.data, dtype=np.uint8)

    field.encode = encode
    return field


class ImageSource:
    """What a converter hands :func:`write_shard`: labels and ids up front, pixels on demand.

    ``load(i)`` returns the i-th image as ``uint8[H, W, 3]`` (or, in jpg mode, an :class:`EncodedJPEG`
    to store as it is). It runs inside FFCV's writer worker processes, so it must not raise:
    converters validate every entry before writing.
    """

    def __init__(self, labels: Sequence[int], source_ids: Sequence[str]):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.source_ids = [str(s) for s in source_ids]
        if len(self.labels) != len(self.source_ids):
            raise ValueError("labels and source_ids differ in length")
        self.failure_log: Path | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def total_bytes(self) -> int | None:
        """Raw pixel bytes of all images if known without decoding (sizes the writer's pages)."""
        return None

    def max_item_bytes(self) -> int | None:
        return None

    def __getitem__(self, i: int):
        # FFCV 1.0.2's writer waits forever for a worker that raised. Converters validate every entry
        # first, but a file can still change between validation and writing: record the failure in
        # ``failure_log`` (append-only, one line per row; O_APPEND writes of a short line are atomic
        # across processes) and hand the writer a placeholder; write_shard then refuses the file.
        try:
            return self.load(int(i)), int(self.labels[i])
        except Exception as e:
            if self.failure_log is None:
                raise
            with open(self.failure_log, "a") as f:
                f.write(
                    json.dumps({"source_id": self.source_ids[i], "error": f"{type(e).__name__}: {e}"}) + "\n"
                )
            return np.zeros((8, 8, 3), dtype=np.uint8), int(self.labels[i])


class ArraySource(ImageSource):
    """Images already in memory: ``uint8[N, H, W, 3]`` (CIFAR, digits)."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], source_ids: Sequence[str]):
        super().__init__(labels, source_ids)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8[N,H,W,3] images, got {images.dtype}{list(images.shape)}")
        self.images = images

    def load(self, i: int) -> np.ndarray:
        return np.ascontiguousarray(self.images[i])

    def total_bytes(self) -> int:
        return int(self.images.nbytes)

    def max_item_bytes(self) -> int:
        return int(self.images[0].nbytes) if len(self.images) else 0


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; the index is as public as the .beton beside it.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C while writing, so temporary files are cleaned up either way."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_stale_temporaries(folder: Path, split: str) -> None:
    """Temporary files a SIGKILLed conversion left behind never carry a final name; sweep them.

    ``.<split>.beton.<pid>.tmp`` / ``.<split>.failures.<pid>.tmp`` of a process that is still running
    belong to a conversion in progress and are left alone.
    """
    for p in folder.glob(f".{split}.*.tmp"):
        pid = p.name.split(".")[-2]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            p.unlink()


def page_size_for(source: ImageSource, write_mode: str, workers: int) -> int:
    """FFCV page size: every writer process fills its own pages, so a small shard written with FFCV's
    8 MiB default wastes up to ``workers`` × 8 MiB. Use the 2 MiB minimum for small shards. A page
    must hold the largest row, or FFCV's worker raises MemoryError and the writer never returns: size
    it from the largest raw image, with headroom in jpg mode (JPEG of noise at quality 100 can exceed
    the raw size a little)."""
    from ffcv.writer import MIN_PAGE_SIZE

    default = 4 * MIN_PAGE_SIZE
    total = source.total_bytes()
    biggest = source.max_item_bytes() or 0
    if write_mode == "jpg":
        biggest = biggest * 5 // 4 + (64 << 10)
    page = MIN_PAGE_SIZE if total is not None and total < 16 * default * max(1, workers) else default
    while page < biggest:
        page *= 2
    return page


def write_shard(
    root: str | os.PathLike,
    dataset: str,
    split: str,
    source: ImageSource,
    class_names: Sequence[str],
    *,
    train_class_counts: Sequence[int] | None = None,
    write_mode: str = "jpg",
    max_resolution: int | None = None,
    jpeg_quality: int = 90,
    workers: int = 2,
    skipped: Sequence[dict] = (),
    settings: dict | None = None,
) -> Shard:
    """Write ``source`` as a class-sorted shard; return it opened.

    ``train_class_counts`` defines the many/medium/few groups; it defaults to this split's own counts
    (right for the train split; converters pass the train counts when writing val/test).
    """
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    if write_mode not in ("jpg", "raw"):
        raise ValueError(f"write_mode must be 'jpg' or 'raw', got {write_mode!r}")
    C = len(class_names)
    labels = source.labels
    if len(labels) == 0:
        raise ValueError(f"{dataset}/{split}: no images to write")
    if labels.min() < 0 or labels.max() >= C:
        raise ValueError(
            f"{dataset}/{split}: labels must lie in [0, {C}), got [{labels.min()}, {labels.max()}]"
        )
    counts = np.bincount(labels, minlength=C).astype(np.int64)
    train_counts = counts if train_class_counts is None else np.asarray(train_class_counts, dtype=np.int64)
    if len(train_counts) != C:
        raise ValueError(f"train_class_counts has {len(train_counts)} entries, expected {C}")
    # Stable sort: inside a class, rows keep the source order (deterministic, and reproducible ids).
    order = np.argsort(labels, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    folder = Path(root) / dataset
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder, split)
    beton, index_path = shard_paths(root, dataset, split)
    tmp_beton = folder / f".{split}.beton.{os.getpid()}.tmp"

    fields = {
        IMAGE_FIELD: _accepting_encoded(
            RGBImageField(write_mode=write_mode, max_resolution=max_resolution, jpeg_quality=jpeg_quality)
        ),
        LABEL_FIELD: IntField(),
    }
    all_settings = {
        "write_mode": write_mode,
        "max_resolution": max_resolution,
        "jpeg_quality": jpeg_quality,
        **(settings or {}),
    }
    failure_log = folder / f".{split}.failures.{os.getpid()}.tmp"
    source.failure_log = failure_log
    children_before = set(multiprocessing.active_children())
    try:
        with _sigterm_as_interrupt():
            writer = DatasetWriter(
                str(tmp_beton),
                fields,
                num_workers=max(1, int(workers)),
                page_size=page_size_for(source, write_mode, workers),
            )
            writer.from_indexed_dataset(source, indices=order.tolist(), chunksize=64)
            if failure_log.exists():
                failures = [json.loads(line) for line in failure_log.read_text().splitlines() if line]
                shown = "; ".join(f"{f['source_id']}: {f['error']}" for f in failures[:5])
                raise ShardError(
                    f"{dataset}/{split}: {len(failures)} images failed to load while writing "
                    f"(changed since validation?): {shown}; nothing was written"
                )
            index = ShardIndex(
                version=SHARD_FORMAT_VERSION,
                dataset=dataset,
                split=split,
                num_classes=C,
                class_names=[str(n) for n in class_names],
                class_counts=counts.tolist(),
                class_offsets=offsets.tolist(),
                class_groups=class_groups(train_counts),
                train_class_counts=train_counts.tolist(),
                source_ids=[source.source_ids[i] for i in order],
                settings=all_settings,
                skipped=list(skipped),
                beton_file=beton.name,
                beton_size=tmp_beton.stat().st_size,
                beton_sha256=sha256_file(tmp_beton),
            )
            # A stale index must never describe the new file: remove it before the new .beton lands.
            with contextlib.suppress(FileNotFoundError):
                index_path.unlink()
            os.replace(tmp_beton, beton)
            _atomic_write_text(index_path, json.dumps(index.to_json(), indent=1))
            # The checksum was just computed from these bytes: record it so that the open_shard below
            # (and the trainer's first open) need not hash the whole file a second time.
            _record_verified(beton, index.beton_sha256)
    except BaseException:
        # FFCV's writer processes are not daemons and keep writing into the file after the parent
        # was interrupted; stop the ones this call started before removing what they write to.
        for child in set(multiprocessing.active_children()) - children_before:
            child.terminate()
        for child in set(multiprocessing.active_children()) - children_before:
            child.join(timeout=5)
        with contextlib.suppress(OSError):
            tmp_beton.unlink()
        raise
    finally:
        source.failure_log = None
        with contextlib.suppress(OSError):
            failure_log.unlink()
    return open_shard(beton)
