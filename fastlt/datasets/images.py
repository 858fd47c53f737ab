"""Reading image files: one decoder for validation and for writing.

JPEGs go through libjpeg-turbo via simplejpeg when it is installed (about twice PIL's speed, and
``strict`` mode turns libjpeg's "premature end of data" warnings into errors); everything else, and any
JPEG simplejpeg will not take (CMYK, arithmetic coding), through PIL. Both use libjpeg's default
(accurate) DCT and fancy upsampling, so they decode a file to the same pixels.

DCT scaling: libjpeg can decode straight to 1/2, 1/4 or 1/8 of the size by dropping high-frequency
coefficients, skipping most of the inverse-DCT and colour conversion work while still entropy-decoding
every block. Validation decodes at 1/8 (every corrupt or truncated block is still read); writing with a
``max_resolution`` decodes at the smallest scale that stays at or above it.
"""

from __future__ import annotations

import math
import os

import numpy as np

JPEG_MAGIC = b"\xff\xd8\xff"

try:
    import simplejpeg
except ImportError:  # an optional speed-up; PIL does everything without it
    simplejpeg = None


def _scaled_size(w: int, h: int, max_resolution: int | None) -> tuple[int, int]:
    """Smallest (w, h) a DCT-scaled decode may return while the long side stays >= max_resolution."""
    if not max_resolution or max(w, h) <= max_resolution:
        return w, h
    r = max_resolution / max(w, h)
    return math.ceil(w * r), math.ceil(h * r)


def dct_factor(w: int, h: int, max_resolution: int | None) -> int:
    """Largest of 1, 2, 4, 8 that keeps the long side >= ``max_resolution`` — the reductions PIL's
    ``draft`` uses. (libjpeg-turbo also offers M/8 scales such as 7/8; those are skipped on purpose: a
    power-of-two reduction followed by FFCV's area resize is the better-behaved filter.)"""
    if not max_resolution:
        return 1
    long_side = max(w, h)
    return next((f for f in (8, 4, 2) if math.ceil(long_side / f) >= max_resolution), 1)


def _pil_decode(path, max_resolution: int | None = None) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.format == "JPEG" and max_resolution:
            im.draft("RGB", _scaled_size(*im.size, max_resolution))
        return np.asarray(im.convert("RGB"))


def decode(path: str | os.PathLike, max_resolution: int | None = None) -> np.ndarray:
    """uint8[H, W, 3] RGB; a JPEG larger than ``max_resolution`` may come back reduced by 2, 4 or 8
    (:func:`dct_factor`), never below ``max_resolution``."""
    if simplejpeg is not None:
        with open(path, "rb") as f:
            data = f.read()
        if data[:3] == JPEG_MAGIC:
            try:
                h, w, _, _ = simplejpeg.decode_jpeg_header(data)
                f = dct_factor(w, h, max_resolution)
                if f == 1:
                    return simplejpeg.decode_jpeg(data, "RGB", strict=False)
                # At least ceil(size / f) and a reduction of at least f: exactly 1/f.
                return simplejpeg.decode_jpeg(
                    data,
                    "RGB",
                    min_height=math.ceil(h / f),
                    min_width=math.ceil(w / f),
                    min_factor=f,
                    strict=False,
                )
            except ValueError:
                pass  # CMYK, arithmetic coding ...: PIL knows more of the zoo
    return _pil_decode(path, max_resolution)


def check(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) if the file decodes for real, else raises (OSError, ValueError, ...).

    Not ``Image.verify()``, which reads headers only and passes a truncated JPEG. The fast path is a
    strict simplejpeg decode at 1/8 scale; a JPEG it rejects gets a second opinion from PIL, which
    tolerates what libjpeg only warns about (extraneous bytes before a marker, common in ImageNet) but
    raises on truncation.
    """
    if simplejpeg is not None:
        with open(path, "rb") as f:
            data = f.read()
        if data[:3] == JPEG_MAGIC:
            try:
                h, w, _, _ = simplejpeg.decode_jpeg_header(data)
                simplejpeg.decode_jpeg(data, "RGB", min_factor=8, strict=True)
                return w, h
            except ValueError:
                pass
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        if im.format == "JPEG":
            im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
        im.load()
    return w, h


def storable_jpeg(path: str | os.PathLike, max_resolution: int | None = None):
    """The file as an :class:`~fastlt.shards.EncodedJPEG` if every reader can take it as it is, else None.

    Kept: JPEGs in YCbCr or greyscale (baseline or progressive) whose long side is within
    ``max_resolution``. CMYK/YCCK JPEGs (TurboJPEG cannot give RGB for them), other formats and
    images that need shrinking are decoded and re-encoded instead.
    """
    from fastlt.shards import EncodedJPEG

    with open(path, "rb") as f:
        data = f.read()
    if data[:3] != JPEG_MAGIC:
        return None
    if simplejpeg is not None:
        try:
            h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            return None
        if colorspace not in ("YCbCr", "Gray"):
            return None
    else:
        from PIL import Image

        with Image.open(path) as im:
            if im.mode not in ("RGB", "L"):
                return None
            w, h = im.size
    if max_resolution and max(w, h) > max_resolution:
        return None
    return EncodedJPEG(data, h, w)
