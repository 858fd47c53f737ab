"""FFCV ``.beton`` files laid out by one process from finished rows (encoded JPEG bytes or raw pixels).

FFCV's own ``DatasetWriter`` decodes, resizes and encodes inside its worker processes; fastlt's converter
does that work once, in the process that validates each image, so what is left is layout, and one writer
does it. The file is FFCV's format, byte for byte what its ``Reader`` and loaders expect::

    header | field descriptors | metadata (one record per row) | data pages | allocation table

with the fields ``image`` (``RGBImageField``: mode jpg/raw, width, height, data pointer) and ``label``
(``IntField``). Metadata space is reserved for ``capacity`` rows and only the rows of :meth:`finish` are
recorded, so a split may drop entries found bad while it was written.

Pages: FFCV's process-cache loader reads a row from the single page that holds it, so no row may cross a
multiple of the page size. Rows are packed in order and a row that would cross a boundary starts on the next
page. A row larger than the page doubles the page size; boundaries of the doubled size are a subset of the
old ones, so rows already written still sit within one page.

Rows go to the file with one ``pwrite`` each. (Starting the writeback early, ``sync_file_range`` every
16 MB, took the final ``fsync`` from ~0.08 s to ~0.01 s for 118 MB but cost the writing process as much
time in :meth:`add`: not done.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

# The two fields of a fastlt .beton, in FFCV's field order (the shard layout; fastlt.shards re-exports them).
IMAGE_FIELD = "image"
LABEL_FIELD = "label"
PAGE_SIZE = 1 << 23  # FFCV's default, 8 MiB
MAX_PAGE_SIZE = 1 << 31  # the header stores the page size as uint32, a power of two
# FFCV's RGBImageField modes (ffcv.fields.rgb_image.IMAGE_MODES): that is a numba typed dict, and its first
# read from Python compiles a lookup for ~0.6 s in every converting process.
IMAGE_MODES = {"jpg": 0, "raw": 1}


def _pwrite(fd: int, data, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n


@dataclass(frozen=True)
class Row:
    """One image as stored: ``mode`` 'jpg' (``data`` is a JPEG file) or 'raw' (``uint8[h*w*3]`` RGB)."""

    mode: str
    height: int
    width: int
    data: bytes


class BetonWriter:
    """Append rows with :meth:`add`, each under a key in ``[0, capacity)`` (an entry of the split, in any
    order), then :meth:`finish` with the keys of the rows to record, in row order, and :meth:`sync`."""

    def __init__(self, path: str | os.PathLike, capacity: int, page_size: int = PAGE_SIZE):
        from ffcv.fields import IntField, RGBImageField
        from ffcv.types import CURRENT_VERSION, TYPE_ID_HANDLER, FieldDescType, HeaderType, get_metadata_type

        fields = {IMAGE_FIELD: RGBImageField(), LABEL_FIELD: IntField()}
        self.metadata_type = get_metadata_type(list(fields.values()))
        self.header = np.zeros(1, dtype=HeaderType)[0]
        self.header["version"] = CURRENT_VERSION
        self.header["num_fields"] = len(fields)
        descriptors = np.zeros(len(fields), dtype=FieldDescType)
        type_ids = {handler: type_id for type_id, handler in TYPE_ID_HANDLER.items()}
        for d, (name, field) in zip(descriptors, fields.items()):
            d["type_id"] = type_ids[type(field)]
            d["name"][: len(name)] = np.frombuffer(name.encode("ascii"), dtype="<u1")
            d["arguments"][:] = field.to_binary()[0]
        self.metadata_start = HeaderType.itemsize + descriptors.nbytes
        self.page_size = page_size
        self.pos = self.metadata_start + max(0, int(capacity)) * self.metadata_type.itemsize
        self.capacity = int(capacity)
        # Per key: where its data went and what the metadata says (ptr -1: not added).
        self.placed = np.zeros((self.capacity, 6), dtype=np.int64)
        self.placed[:, 0] = -1
        self.file = open(path, "wb", buffering=0)
        self.fd = self.file.fileno()
        _pwrite(self.fd, self.header.tobytes() + descriptors.tobytes(), 0)

    def add(self, key, row: Row, label: int) -> None:
        size = len(row.data)
        while size > self.page_size:
            if self.page_size >= MAX_PAGE_SIZE:
                raise ValueError(f"a {size}-byte row exceeds FFCV's largest page ({MAX_PAGE_SIZE} bytes)")
            self.page_size *= 2
        if size and self.pos // self.page_size != (self.pos + size - 1) // self.page_size:
            self.pos = -(-self.pos // self.page_size) * self.page_size  # start of the next page
        _pwrite(self.fd, row.data, self.pos)
        self.placed[key] = (self.pos, size, IMAGE_MODES[row.mode], row.height, row.width, label)
        self.pos += size

    def finish(self, keys) -> None:
        """Record the rows of ``keys``, in that order; :meth:`sync` then makes the file durable."""
        from ffcv.types import ALLOC_TABLE_TYPE

        keys = np.asarray(keys, dtype=np.int64)
        ptr, size, mode, height, width, label = self.placed[keys].T
        if np.any(ptr < 0):
            raise ValueError(f"rows {keys[ptr < 0][:5].tolist()} were never added")
        meta = np.zeros(len(keys), dtype=self.metadata_type)
        image_col, label_col = self.metadata_type.names
        for name, values in zip(("mode", "width", "height", "data_ptr"), (mode, width, height, ptr)):
            meta[image_col][name] = values
        meta[label_col] = label
        table = np.zeros(len(keys), dtype=ALLOC_TABLE_TYPE)
        table["sample_id"], table["ptr"], table["size"] = np.arange(len(keys)), ptr, size
        self.header["num_samples"] = len(keys)
        self.header["page_size"] = self.page_size
        self.header["alloc_table_ptr"] = self.pos
        _pwrite(self.fd, table.tobytes(), self.pos)
        _pwrite(self.fd, meta.tobytes(), self.metadata_start)
        _pwrite(self.fd, self.header.tobytes(), 0)

    def sync(self) -> None:
        """Make the finished file durable and close it (before it is renamed to its final name)."""
        os.fsync(self.fd)
        self.file.close()

    def close(self) -> None:
        self.file.close()
