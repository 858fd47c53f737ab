"""Class-indexed shards: one FFCV ``.beton`` per split plus ``<split>.index.json``.

Rows are sorted by class, so class ``c`` owns rows ``class_offsets[c]:class_offsets[c+1]``.
That single fact is what lets every sampler draw "an image of class c" with one integer draw
and lets the trainer build its class priors without decoding a single image.

Layout::

    <root>/<dataset>/<split>.beton         FFCV file: ``image`` (RGBImageField), ``label`` (IntField)
    <root>/<dataset>/<split>.index.json    the index described in DESIGN.md §3
    <root>/<dataset>/<split>.verified      cache of the last full checksum (see Verification below)

Both outputs are written under temporary names in the destination folder and renamed only when every
split of the conversion is complete (:class:`Staging`), so an interrupted conversion never leaves a
``.beton`` or ``.index.json`` under its final name. The ``.beton`` files are renamed first and the indexes
last: an index is its split's commit marker, and ``open_shard`` refuses a ``.beton`` that has none. The
``.beton`` itself is laid out by :mod:`fastlt.beton_writer` from finished rows.

API: ``write_shard(root, dataset, split, source, class_names, ...)`` with an ``ImageSource``
(``ArraySource`` for in-memory pixels; a source may hand over ``EncodedJPEG`` bytes to store as they
are; converters go through :mod:`fastlt.datasets.engine` instead); ``open_shard(path)`` → ``Shard``
with ``.index`` (``ShardIndex``), ``.reader()`` (FFCV's ``Reader``), and for tests and tools
``.stored_labels()``, ``.image_bytes(row)``, ``.decode(row)``.

Verification. Every ``open_shard`` checks, cheaply:

* the index against itself: ``index_sha256``, a digest of the rest of its content (written by ``to_json``),
  and its internal consistency (offsets = cumulative counts, groups = those of the train counts, the train
  split's train counts = its own counts), so an edit that keeps the index self-consistent — moving a row
  between classes, reversing the train counts — is refused too;
* the ``.beton`` against the index: its size, and its ``label`` column against the class offsets (FFCV's
  metadata, read without decoding an image);
* the ``.beton``'s sha256, hashed again unless ``<split>.verified`` vouches for it: that cache holds the
  checksum with the size, mtime, inode change time (ctime), inode and device the file had when it was
  hashed. No user-level tool sets ctime (``cp -p``, ``touch -r``, a restore, an edit that puts the mtime
  back all change it), so every change made through the filesystem is hashed again.

The fast check cannot see bytes that change without a write through the filesystem (bit rot on the medium,
a faulty controller or cable, a block-level edit). ``fastlt verify PATH...`` and the recipe key
``full_verify`` (at training start) hash in full whatever the cache says. :func:`check_same_conversion` adds
the cross-split check: the train counts an evaluation split carries equal the train split's class counts.

An index written before ``index_sha256`` existed still opens, with a warning on stderr (once per file and
process): the other checks still apply, but an edit of it cannot be detected; re-converting adds the digest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import mmap
import os
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fastlt.beton_writer import IMAGE_FIELD, IMAGE_MODES, LABEL_FIELD
from fastlt.runlock import pid_alive

SHARD_FORMAT_VERSION = 1
GROUPS = ("many", "medium", "few")
INDEX_DIGEST = "index_sha256"  # the index file's digest of the rest of its content
HASH_BLOCK = 8 << 20  # bytes hashed between progress-bar updates


class ShardError(ValueError):
    """A shard (or its index) is missing, malformed, or does not match its index."""


# (few below, many above): few if n < 20 training images, many if n > 100, medium in between — the
# literature's split (REFERENCE.md). A conversion may set others; its index records them in its settings.
DEFAULT_GROUP_THRESHOLDS = (20, 100)


def class_groups(train_counts: Sequence[int], thresholds: Sequence[int] | None = None) -> list[str]:
    """The group of each class: few if n < ``thresholds[0]``, many if n > ``thresholds[1]``, else medium
    (default :data:`DEFAULT_GROUP_THRESHOLDS`, 20 and 100)."""
    few_below, many_above = DEFAULT_GROUP_THRESHOLDS if thresholds is None else (int(t) for t in thresholds)
    out = []
    for n in train_counts:
        n = int(n)
        out.append("many" if n > many_above else ("few" if n < few_below else "medium"))
    return out


def single_group_note(index: ShardIndex) -> str | None:
    """A sentence saying that every class falls into one group (the other two columns stay empty), or None."""
    groups = set(index.class_groups)
    if len(groups) != 1:
        return None
    few_below, many_above = index.settings.get("group_thresholds") or DEFAULT_GROUP_THRESHOLDS
    return (
        f"all {index.num_classes} classes of {index.dataset} are {groups.pop()} (few < {few_below} training "
        f"images, many > {many_above}), so only that group's column is filled; re-convert with "
        "--group-thresholds FEW,MANY to split them"
    )


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
        """The index file's content: every field, and ``index_sha256`` over them."""
        d = asdict(self)
        d[INDEX_DIGEST] = index_digest(d)
        return d

    @classmethod
    def from_json(cls, d: dict, path: str | os.PathLike = "<index>") -> ShardIndex:
        names = {f for f in cls.__dataclass_fields__}
        required = names - {"skipped", "beton_file", "beton_size", "beton_sha256"}
        missing = sorted(required - d.keys())
        if missing:
            raise ShardError(f"{path}: index is missing keys {missing}")
        unknown = sorted(d.keys() - names - {INDEX_DIGEST})
        if unknown:
            raise ShardError(f"{path}: index has unknown keys {unknown} (written by a newer fastlt?)")
        if d["version"] != SHARD_FORMAT_VERSION:
            raise ShardError(
                f"{path}: index format version {d['version']}, this fastlt reads version "
                f"{SHARD_FORMAT_VERSION}; re-run tools/convert"
            )
        idx = cls(**{k: v for k, v in d.items() if k != INDEX_DIGEST})
        idx.check_consistent(path)
        # Checked after consistency, whose messages are the more specific ones.
        if INDEX_DIGEST not in d:
            _warn_once(
                path,
                f"warning: {path} has no index_sha256 (written before fastlt protected its indexes): an edit "
                "of it cannot be detected; re-run tools/convert to add one",
            )
        elif d[INDEX_DIGEST] != index_digest(d):
            raise ShardError(
                f"{path}: the index was changed after conversion (its content no longer matches its "
                f"{INDEX_DIGEST}); re-run tools/convert"
            )
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
        if self.class_groups != class_groups(self.train_class_counts, self.settings.get("group_thresholds")):
            raise ShardError(f"{path}: class_groups are not the groups of train_class_counts")
        # A conversion lists its splits train first (fastlt.datasets.engine).
        splits = self.settings.get("splits")
        is_train = isinstance(splits, list) and splits[:1] == [self.split]
        if is_train and self.train_class_counts != self.class_counts:
            c = next(c for c, (a, b) in enumerate(zip(self.train_class_counts, self.class_counts)) if a != b)
            raise ShardError(
                f"{path}: the train split's train_class_counts differ from its class_counts (class {c}: "
                f"{self.train_class_counts[c]} vs {self.class_counts[c]})"
            )


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
        names = {v: k for k, v in IMAGE_MODES.items()}  # fastlt's copy: iterating FFCV's compiles (~0.4 s)
        codes = img["mode"].astype(np.int64)
        unknown = sorted(set(np.unique(codes).tolist()) - names.keys())
        if unknown:
            raise ShardError(f"{path}: image modes {unknown} are none of FFCV's {sorted(names)}")
        # Every shard is opened through this table (the label column check): one lookup, not a loop per row.
        lookup = np.array([names.get(c, "") for c in range(int(codes.max(initial=0)) + 1)])
        return cls(
            mm=np.memmap(path, dtype=np.uint8, mode="r"),
            mode=lookup[codes],
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


def open_shard(
    path: str | os.PathLike, verify: bool = True, full: bool = False, progress: bool = False
) -> Shard:
    """Open ``<split>.beton`` (or its ``.index.json``), refusing a file that does not match its index.

    The index (digest, consistency), the file's size and its label column are always checked (see
    Verification in the module docstring). The sha256 is checked when ``verify`` is true, hashing only when
    ``<split>.verified`` does not vouch for the file, and always when ``full`` is true; ``progress`` shows
    a bar while hashing.
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
    if verify or full:
        _check_checksum(beton, st, index, full, progress)
    shard = Shard(beton, index_path, index)
    check_label_column(shard)
    return shard


def _check_checksum(beton: Path, st: os.stat_result, index: ShardIndex, full: bool, progress: bool) -> None:
    stamp = beton.with_suffix(".verified")
    if not full:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(stamp.read_text()) == _verified_key(st, index.beton_sha256):
                return
    digest = hash_file(beton, f"verifying {beton}" if progress else None)
    if digest != index.beton_sha256:
        with contextlib.suppress(OSError):
            stamp.unlink()
        raise ShardError(
            f"{beton}: sha256 {digest[:16]}… does not match its index ({index.beton_sha256[:16]}…); "
            "the file was modified — re-run tools/convert"
        )
    _record_verified(beton, digest)


def check_label_column(shard: Shard) -> None:
    """The ``.beton``'s own ``label`` column must put every row in the class its index's offsets give it.

    The index's labels are derived from its offsets; the file's are written per row. A row moved between
    classes in the index (counts and offsets edited together) disagrees here, whatever the index says.
    """
    try:
        stored = shard.stored_labels()
    except ShardError:
        raise
    except Exception as e:  # FFCV's parser on a file that is not (or no longer) an FFCV file
        raise ShardError(
            f"{shard.beton_path}: cannot read it as an FFCV file ({type(e).__name__}: {e}); check it with "
            "fastlt verify, or re-run tools/convert"
        ) from None
    index = shard.index
    if len(stored) != index.num_rows:
        raise ShardError(
            f"{shard.beton_path}: {len(stored)} rows, but its index describes {index.num_rows}; re-run "
            "tools/convert"
        )
    wrong = np.flatnonzero(stored != index.labels)
    if len(wrong):
        row = int(wrong[0])
        c = int(index.labels[row])
        raise ShardError(
            f"{shard.beton_path}: row {row} ({index.source_ids[row]}) is stored with label "
            f"{int(stored[row])}, but its index puts it in class {c} ({index.class_names[c]!r}); "
            f"{len(wrong)} rows disagree. "
            "The index was changed or belongs to another file — re-run tools/convert"
        )


def check_same_conversion(*shards: Shard) -> None:
    """Refuse splits written by different conversions (e.g. a re-converted train beside an old test
    split, whose many/medium/few groups came from the old train counts). Shards written before
    conversion ids existed, or by ``write_shard`` directly, carry none and are not compared.

    The first shard is the train split: every other split must carry its class counts as its train counts
    (they define the groups evaluation reports and, in the train split, the class priors)."""
    ids = {s.beton_path: s.index.settings.get("conversion_id") for s in shards}
    known = {p: i for p, i in ids.items() if i}
    if len(set(known.values())) > 1:
        listing = ", ".join(f"{p} ({i[:8]})" for p, i in known.items())
        raise ShardError(f"these splits come from different conversions: {listing}; re-run tools/convert")
    names = {s.index.class_names == shards[0].index.class_names for s in shards}
    if names != {True}:
        raise ShardError(f"{shards[0].beton_path} and the other splits list different classes")
    want = shards[0].index.class_counts
    for s in shards[1:]:
        have = s.index.train_class_counts
        if have != want:
            c = next(c for c, (a, b) in enumerate(zip(have, want)) if a != b)
            raise ShardError(
                f"{s.index_path}: its train counts disagree with the class counts of {shards[0].beton_path} "
                f"(class {c}: {have[c]} vs {want[c]}); re-run tools/convert"
            )


def index_digest(doc: dict) -> str:
    """sha256 of an index's content, every key but ``index_sha256``, as canonical JSON (sorted keys, no
    whitespace): the digest survives re-formatting of the file, but no change to a value."""
    body = {k: v for k, v in doc.items() if k != INDEX_DIGEST}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def hash_file(path: str | os.PathLike, desc: str | None = None, min_bar_bytes: int = 0) -> str:
    """sha256 of ``path``; with ``desc``, a progress bar over its bytes on stderr (for files of at least
    ``min_bar_bytes``: hashing a 100 GB split is minutes of reading).

    The file is hashed through a read-only mapping, from the page cache without copying it: ~0.07 s for a
    118 MB split just written, against ~0.10 s reading it in 8 MB blocks (each a fresh buffer)."""
    from tqdm import tqdm

    h = hashlib.sha256()
    size = os.path.getsize(path)
    quiet = desc is None or size < min_bar_bytes
    bar = dict(desc=desc, unit="B", unit_scale=True, file=sys.stderr, mininterval=0.5, dynamic_ncols=True)
    with tqdm(total=size, disable=quiet, leave=False, **bar) as progress:
        if size == 0:  # mmap cannot map an empty file
            return h.hexdigest()
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            m.madvise(mmap.MADV_SEQUENTIAL)
            with memoryview(m) as view:
                for start in range(0, len(view), HASH_BLOCK):
                    h.update(view[start : start + HASH_BLOCK])  # releases the GIL
                    progress.update(min(HASH_BLOCK, size - start))
    return h.hexdigest()


_WARNED: set[str] = set()


def _warn_once(path: str | os.PathLike, message: str) -> None:
    if str(path) not in _WARNED:
        _WARNED.add(str(path))
        print(message, file=sys.stderr)


def _verified_key(st: os.stat_result, sha256: str) -> dict:
    """What ``<split>.verified`` caches: a checksum is trusted again only while the file has the size, mtime,
    inode change time, inode and device it had when hashed. ctime is what a copy, a restore or an edit
    cannot put back: the kernel sets it on every change of the file (content, metadata or name)."""
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "inode": st.st_ino,
        "device": st.st_dev,
        "sha256": sha256,
    }


def _record_verified(beton: Path, sha256: str) -> None:
    with contextlib.suppress(OSError):
        _atomic_write_text(beton.with_suffix(".verified"), json.dumps(_verified_key(beton.stat(), sha256)))


# ---------------------------------------------------------------------------------------- writing
@dataclass(frozen=True)
class EncodedJPEG:
    """A JPEG stored as it is — no decode, no re-encode — with its pixel size (for FFCV's metadata).

    An :class:`ImageSource` may return one from ``load`` instead of pixels: the shard then holds the
    original bytes (no second generation of JPEG loss) as a jpg row.
    """

    data: bytes
    height: int
    width: int


class ImageSource:
    """What :func:`write_shard` writes: labels and ids up front, images on demand.

    ``load(i)`` returns the i-th image as ``uint8[H, W, 3]`` or an :class:`EncodedJPEG` to store as it is.
    With ``workers > 1`` it runs in forked worker processes (the source is inherited, not pickled); an
    image that fails to load makes :func:`write_shard` refuse the whole shard, naming it.
    """

    def __init__(self, labels: Sequence[int], source_ids: Sequence[str]):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.source_ids = [str(s) for s in source_ids]
        if len(self.labels) != len(self.source_ids):
            raise ValueError("labels and source_ids differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int) -> np.ndarray | EncodedJPEG:  # pragma: no cover - abstract
        raise NotImplementedError


class ArraySource(ImageSource):
    """Images already in memory: ``uint8[N, H, W, 3]`` (CIFAR, digits)."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], source_ids: Sequence[str]):
        super().__init__(labels, source_ids)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8[N,H,W,3] images, got {images.dtype}{list(images.shape)}")
        self.images = images

    def load(self, i: int) -> np.ndarray:
        return np.ascontiguousarray(self.images[i])


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
def sigterm_as_interrupt() -> Iterator[None]:
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


DEFERRED = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[list]:
    """SIGINT and SIGTERM wait until the block is done (its list then holds them): the renames that publish
    a conversion happen all or not at all. Python-level handlers are swapped rather than the signals
    blocked, because any thread of the process may be the one the kernel delivers to."""
    received: list = []
    try:
        old = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in DEFERRED}
    except ValueError:  # not the main thread: nothing to defer
        yield received
        return
    try:
        yield received
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def remove_stale_temporaries(folder: Path, split: str) -> None:
    """Temporary files a SIGKILLed conversion left behind never carry a final name; sweep them.

    ``.<split>.beton.<pid>.tmp`` / ``.<split>.index.json.<pid>.tmp`` of a process that is still running
    belong to a conversion in progress and are left alone.
    """
    for p in folder.glob(f".{split}.*.tmp"):
        pid = p.name.split(".")[-2]
        if pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            p.unlink()


def build_index(
    dataset: str,
    split: str,
    class_names: Sequence[str],
    labels: np.ndarray,
    source_ids: Sequence[str],
    train_class_counts: Sequence[int] | None,
    settings: dict,
    skipped: Sequence[dict] = (),
) -> ShardIndex:
    """The index of a split whose rows have ``labels`` (class-sorted) and ``source_ids``, before its file is
    known (``beton_*`` are filled in by :meth:`Staging.finish`). Groups follow ``train_class_counts``
    (default: this split's own counts, right for the train split)."""
    C = len(class_names)
    counts = np.bincount(labels, minlength=C).astype(np.int64)
    train_counts = counts if train_class_counts is None else np.asarray(train_class_counts, dtype=np.int64)
    if len(train_counts) != C:
        raise ValueError(f"train_class_counts has {len(train_counts)} entries, expected {C}")
    return ShardIndex(
        version=SHARD_FORMAT_VERSION,
        dataset=dataset,
        split=split,
        num_classes=C,
        class_names=[str(n) for n in class_names],
        class_counts=counts.tolist(),
        class_offsets=[0, *np.cumsum(counts).tolist()],
        class_groups=class_groups(train_counts, settings.get("group_thresholds")),
        train_class_counts=train_counts.tolist(),
        source_ids=list(source_ids),
        settings=settings,
        skipped=list(skipped),
    )


class Staging:
    """The temporary files of one conversion in ``<root>/<dataset>``, renamed to final names together.

    Per split: ``.<split>.beton.<pid>.tmp`` (from :meth:`writer`) and ``.<split>.index.json.<pid>.tmp``
    (from :meth:`finish`). :meth:`commit` then replaces every split's index and ``.beton`` with SIGINT and
    SIGTERM held back, so a conversion is published as a set or not at all; until then no final name is
    touched. :meth:`abort` removes whatever temporaries exist.
    """

    def __init__(self, root: str | os.PathLike, dataset: str):
        self.root = Path(root)
        self.dataset = dataset
        self.folder = self.root / dataset
        self.writers: dict = {}  # split -> BetonWriter
        self.indexes: dict[str, ShardIndex] = {}
        self.committed = False

    def beton_temporary(self, split: str) -> Path:
        return self.folder / f".{split}.beton.{os.getpid()}.tmp"

    def index_temporary(self, split: str) -> Path:
        return self.folder / f".{split}.index.json.{os.getpid()}.tmp"

    def writer(self, split: str, capacity: int):
        """A :class:`~fastlt.beton_writer.BetonWriter` on the split's temporary ``.beton``."""
        from fastlt.beton_writer import BetonWriter

        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.folder, split)
        self.writers[split] = BetonWriter(self.beton_temporary(split), capacity)
        return self.writers[split]

    def finish(self, split: str, keys: Sequence[int], index: ShardIndex) -> None:
        """Record rows ``keys`` of the split's file, checksum it and stage its index."""
        writer = self.writers[split]
        writer.finish(keys)
        tmp = self.beton_temporary(split)
        beton, _ = shard_paths(self.root, self.dataset, split)
        # The fsync waits on the disk and the checksum reads the page cache: together they take the longer
        # of the two (~0.08 s for 118 MB), not the sum (~0.15 s), at the end of a split, when nothing else
        # runs.
        with ThreadPoolExecutor(1) as thread:
            synced = thread.submit(writer.sync)
            digest = hash_file(tmp, f"{self.dataset}/{split}: checksum", min_bar_bytes=256 << 20)
            synced.result()
        index = dataclasses.replace(
            index, beton_file=beton.name, beton_size=tmp.stat().st_size, beton_sha256=digest
        )
        with open(self.index_temporary(split), "w") as f:
            f.write(json.dumps(index.to_json(), indent=1))
            f.flush()
            os.fsync(f.fileno())
        self.indexes[split] = index

    def commit(self) -> dict[str, Shard]:
        """Publish every finished split; returns them opened. A signal that arrives meanwhile is raised as
        KeyboardInterrupt once all are in place."""
        finals = {s: shard_paths(self.root, self.dataset, s) for s in self.indexes}
        with _signals_deferred() as received:
            # A stale index must never describe a new .beton: all old indexes go before any file lands.
            for _, index_path in finals.values():
                with contextlib.suppress(FileNotFoundError):
                    index_path.unlink()
            for split, (beton, _) in finals.items():
                os.replace(self.beton_temporary(split), beton)
            for split, (_, index_path) in finals.items():
                os.replace(self.index_temporary(split), index_path)
            self.committed = True
        # The checksums were just computed from these bytes: the first open_shard need not hash again.
        for split, (beton, _) in finals.items():
            _record_verified(beton, self.indexes[split].beton_sha256)
        if received:
            raise KeyboardInterrupt(f"signal {received[0]}")
        return {split: open_shard(beton) for split, (beton, _) in finals.items()}

    def abort(self) -> list[Path]:
        """Remove this conversion's temporaries; returns those that could not be removed."""
        left = []
        for writer in self.writers.values():
            writer.close()
        if self.committed:
            return left
        for split in self.writers:
            for tmp in (self.beton_temporary(split), self.index_temporary(split)):
                try:
                    tmp.unlink()
                except FileNotFoundError:
                    pass
                except OSError:
                    left.append(tmp)
        return left


def _source_rows(task) -> list[tuple]:
    """``(i, row, error)`` for the entries of one task of :func:`write_shard` (runs in a worker)."""
    from fastlt.beton_writer import Row
    from fastlt.datasets.images import pixels_row
    from fastlt.workers import inherited

    key, spec, entries = task
    source = inherited(key)
    out = []
    for i in entries:
        try:
            image = source.load(int(i))
            if isinstance(image, EncodedJPEG):
                row = Row("jpg", image.height, image.width, bytes(image.data))
            else:
                row = pixels_row(np.asarray(image), spec)
            out.append((i, row, None))
        except Exception as e:
            out.append((i, None, f"{type(e).__name__}: {e}"))
    return out


def chunks(items: Sequence, workers: int, most: int) -> Iterator[Sequence]:
    """``items`` in order, as the tasks of ``workers`` processes: at most ``most`` items each, fewer towards
    the end (a quarter of each worker's share of what is left), so that the workers finish together instead
    of one waiting on another's last task."""
    at = 0
    while at < len(items):
        size = max(1, min(most, (len(items) - at) // (4 * max(1, workers))))
        yield items[at : at + size]
        at += size


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

    Pixels are shrunk to ``max_resolution`` (area filter) and stored JPEG-encoded at ``jpeg_quality`` or
    raw; :class:`EncodedJPEG` images are stored as they are. ``train_class_counts`` defines the
    many/medium/few groups; it defaults to this split's own counts (right for the train split).
    """
    from fastlt.datasets.images import RowSpec
    from fastlt.workers import WorkerPool, forget, inherit

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
    # Stable sort: inside a class, rows keep the source order (deterministic, and reproducible ids).
    order = np.argsort(labels, kind="stable")
    spec = RowSpec(write_mode, max_resolution, jpeg_quality)
    all_settings = {
        "write_mode": write_mode,
        "max_resolution": max_resolution,
        "jpeg_quality": jpeg_quality,
        **(settings or {}),
    }
    index = build_index(
        dataset,
        split,
        class_names,
        labels[order],
        [source.source_ids[i] for i in order],
        train_class_counts,
        all_settings,
        skipped,
    )
    staging = Staging(root, dataset)
    key = inherit(source)
    try:
        with sigterm_as_interrupt():
            writer = staging.writer(split, len(labels))
            failures = []
            with WorkerPool(workers) as pool:
                for results in pool.imap(_source_rows, ((key, spec, c) for c in chunks(order, workers, 64))):
                    for i, row, error in results:
                        if error is None:
                            writer.add(i, row, labels[i])
                        else:
                            failures.append(f"{source.source_ids[i]}: {error}")
            if failures:
                raise ShardError(
                    f"{dataset}/{split}: {len(failures)} images failed to load while writing — "
                    f"{'; '.join(failures[:5])}; nothing was written"
                )
            staging.finish(split, order, index)
            return staging.commit()[split]
    except BaseException:
        staging.abort()
        raise
    finally:
        forget(key)
