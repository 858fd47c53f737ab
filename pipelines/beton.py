"""Random access to a shard's stored images: FFCV's own ``Reader`` for the metadata, a memory map for the
bytes.

FFCV stores one metadata record per row (``mode`` jpg/raw, ``width``, ``height``, ``data_ptr``) and an
allocation table mapping every data pointer to its byte size. Row ``r``'s payload is therefore ``mmap[data_ptr
: data_ptr + size]``: JPEG bytes for ``mode == jpg``, ``uint8[h, w, 3]`` pixels for ``raw``. This is how the
dali and torch pipelines read the very same ``.beton`` the ffcv pipeline reads — one shard format, no second
copy of the data.

The object is cheap to pickle (arrays only; the memory map is reopened lazily in each process), so DataLoader
workers and DALI callbacks can hold one.
"""

from __future__ import annotations

import os

import numpy as np

from fastlt.shards import IMAGE_FIELD, LABEL_FIELD, ShardError

JPG, RAW = 0, 1  # FFCV's RGBImageField modes


class BetonImages:
    """Per-row image metadata and payloads of one ``.beton``."""

    def __init__(self, path: str | os.PathLike):
        from ffcv.reader import Reader

        self.path = str(path)
        reader = Reader(self.path)
        names = list(reader.handlers)
        for key in (IMAGE_FIELD, LABEL_FIELD):
            if key not in names:
                raise ShardError(f"{self.path}: field {key!r} not found; the file has fields {names}")
        meta = reader.metadata
        img = meta[f"f{names.index(IMAGE_FIELD)}"]
        self.modes = np.ascontiguousarray(img["mode"]).astype(np.uint8)
        self.heights = np.ascontiguousarray(img["height"]).astype(np.int64)
        self.widths = np.ascontiguousarray(img["width"]).astype(np.int64)
        self.ptrs = np.ascontiguousarray(img["data_ptr"]).astype(np.uint64)
        self.labels = np.ascontiguousarray(meta[f"f{names.index(LABEL_FIELD)}"]).astype(np.int64)
        table = reader.alloc_table
        order = np.argsort(table["ptr"])
        sorted_ptrs = table["ptr"][order]
        pos = np.searchsorted(sorted_ptrs, self.ptrs)
        if np.any(pos >= len(sorted_ptrs)) or np.any(sorted_ptrs[np.minimum(pos, len(pos) - 1)] != self.ptrs):
            raise ShardError(
                f"{self.path}: an image pointer is missing from the allocation table (corrupt file?)"
            )
        self.sizes = table["size"][order][pos].astype(np.int64)
        self._mm: np.memmap | None = None

    def __len__(self) -> int:
        return len(self.modes)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_mm"] = None
        return state

    @property
    def mmap(self) -> np.memmap:
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._mm

    def is_jpeg(self, row: int) -> bool:
        return int(self.modes[row]) == JPG

    def payload(self, row: int) -> np.ndarray:
        """uint8 view of row's stored bytes (JPEG stream, or raw pixels flattened)."""
        p = int(self.ptrs[row])
        return self.mmap[p : p + int(self.sizes[row])]

    def pixels(self, row: int) -> np.ndarray:
        """uint8[h, w, 3] view of a raw-mode row."""
        return self.payload(row).reshape(int(self.heights[row]), int(self.widths[row]), 3)

    def decode(self, row: int) -> np.ndarray:
        """uint8[h, w, 3] of any row (libjpeg-turbo through simplejpeg, OpenCV if simplejpeg is absent)."""
        if not self.is_jpeg(row):
            return np.array(self.pixels(row))
        return decode_jpeg(self.payload(row))


def decode_jpeg(data: np.ndarray, min_height: int = 0, min_width: int = 0) -> np.ndarray:
    """RGB uint8[h, w, 3]; with ``min_height/min_width`` libjpeg-turbo may DCT-scale the decode down."""
    try:
        import simplejpeg
    except ImportError:  # pragma: no cover - simplejpeg is in the bench/dev extras
        import cv2

        img = cv2.imdecode(np.asarray(data), cv2.IMREAD_COLOR)
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    kw = {"min_height": min_height, "min_width": min_width} if (min_height or min_width) else {}
    return simplejpeg.decode_jpeg(memoryview(np.ascontiguousarray(data)), colorspace="RGB", **kw)
