"""Source image → shard row, with one strict decode per image in the process that validates it.

A JPEG (recognised by its first bytes, whatever its name) goes through libjpeg-turbo — the library FFCV's
loader decodes with, through its TurboJPEG API (:mod:`fastlt.datasets.turbojpeg`) — in strict mode: every
libjpeg warning (premature end of data, extraneous bytes before a marker, a bad Huffman code) is an error,
and a file libjpeg rejects is never handed to a more tolerant decoder. Before decoding, a scan region
overwritten with zeros, which libjpeg can decode without a warning, is refused too
(:func:`fastlt.datasets.jpeg.zero_filled_scan`). Then either

* the source bytes are the row (jpg mode, no resize needed, a baseline YCbCr or greyscale JPEG — see
  :class:`RowSpec`): the one decode is at 1/8 scale, which still entropy-decodes every block, so every
  warning is still seen, while skipping most of the inverse DCT and all of the colour conversion; or
* the image is decoded once, DCT-scaled by the largest of 1/2, 1/4, 1/8 that keeps both sides at or above
  the target (libjpeg drops high-frequency coefficients: a proper low-pass, at a fraction of the cost),
  shrunk the rest of the way to the exact target size with an area filter (:mod:`fastlt.datasets.resize`)
  and encoded once (4:2:0 like OpenCV's default — greyscale stays greyscale — accurate DCT). In jpg mode this
  all happens on YUV planes, so chroma is never upsampled or converted to RGB and back.

Other formats (PNG, ...) are decoded by PIL, which raises on truncated or corrupt data, then shrunk and
encoded the same way from RGB. CMYK/YCCK JPEGs are decoded as CMYK and converted to RGB as PIL converts them
(Adobe polarity, which PIL assumes for every CMYK JPEG), and are always re-encoded.
"""

from __future__ import annotations

import io
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from fastlt.beton_writer import Row
from fastlt.datasets import jpeg, turbojpeg
from fastlt.datasets.resize import area_resize

JPEG_MAGIC = b"\xff\xd8\xff"
# FFCV stores width and height as uint16, and libjpeg-turbo encodes sides up to 65500 pixels.
MAX_SIDE = 65500
STORE_SOURCE = ("baseline", "any", "never")


class ImageRefused(ValueError):
    """The image decodes but cannot be stored (too large, empty). The message is complete."""


class Undecodable(ValueError):
    """The decoder refused the data; the message is its own words."""


@dataclass(frozen=True)
class RowSpec:
    """How rows are made. ``store_source`` (jpg mode, JPEGs that need no resize): 'baseline' stores baseline
    YCbCr/greyscale JPEGs as they are; 'any' progressive ones too (``--keep-jpeg``); 'never' re-encodes every
    image at ``jpeg_quality`` (``--reencode``)."""

    write_mode: str = "jpg"
    max_resolution: int | None = None
    jpeg_quality: int = 90
    store_source: str = "baseline"

    def __post_init__(self) -> None:
        if self.write_mode not in ("jpg", "raw"):
            raise ValueError(f"write_mode must be 'jpg' or 'raw', got {self.write_mode!r}")
        if self.store_source not in STORE_SOURCE:
            raise ValueError(f"store_source must be one of {STORE_SOURCE}, got {self.store_source!r}")


@dataclass
class Clock:
    """CPU seconds spent decoding (the validation) and resizing + encoding (the writing), over images."""

    decode_s: float = 0.0
    encode_s: float = 0.0


def target_size(width: int, height: int, max_resolution: int | None) -> tuple[int, int]:
    """(width, height) as stored: the long side at most ``max_resolution``, the aspect ratio kept (the short
    side rounded to the nearest pixel, at least 1)."""
    long_side = max(width, height)
    if not max_resolution or long_side <= max_resolution:
        return width, height
    r = max_resolution / long_side
    if width >= height:
        return max_resolution, max(1, math.floor(height * r + 0.5))
    return max(1, math.floor(width * r + 0.5)), max_resolution


def dct_factor(width: int, height: int, target_width: int, target_height: int) -> int:
    """The largest of 8, 4, 2 by which the image can be reduced and still cover the target, else 1."""
    for f in (8, 4, 2):
        if width >= target_width * f and height >= target_height * f:
            return f
    return 1


def describe(error: BaseException) -> str | None:
    """What to tell the user about an image that could not be made into a row; None when ``error`` is not
    about the image (a bug must not pass for a bad file, least of all under ``--skip-bad``)."""
    from PIL import Image

    if isinstance(error, FileNotFoundError):
        return "file not found"
    if isinstance(error, IsADirectoryError):
        return "is a directory, expected an image file"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, Image.DecompressionBombError):
        return f"refused as a decompression bomb ({error})"
    if isinstance(error, ImageRefused):
        return str(error)
    if isinstance(error, (Undecodable, turbojpeg.TurboJPEGError)):
        return f"cannot decode image: {error}"
    if isinstance(error, OSError):  # reading the file
        return f"cannot read file: {error.strerror or error}"
    return None


def _check_size(width: int, height: int) -> None:
    from PIL import Image

    if width < 1 or height < 1:
        raise ImageRefused(f"image has size {width}x{height}")
    if max(width, height) > MAX_SIDE:
        raise ImageRefused(f"image is {width}x{height}; the shard format stores sides up to {MAX_SIDE} px")
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)  # PIL's own refusal threshold, applied to JPEGs too
    if limit and width * height > limit:
        raise Image.DecompressionBombError(f"{width * height} pixels, more than {limit}")


def _read(path: str | os.PathLike) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# ------------------------------------------------------------------------------------------------ JPEG
def _jpeg_header(data: bytes) -> turbojpeg.Header:
    """The frame header; refuses sizes the shard cannot hold and zero-filled scan regions."""
    head = turbojpeg.header(data)
    _check_size(head.width, head.height)
    damage = jpeg.zero_filled_scan(data)
    if damage:
        raise Undecodable(damage)
    return head


def _is_cmyk(head: turbojpeg.Header) -> bool:
    return head.colorspace in ("CMYK", "YCCK")


def _validate(data: bytes, head: turbojpeg.Header) -> None:
    """The cheapest strict decode: 1/8 scale, one channel (four for CMYK, which libjpeg cannot make grey).
    Every block is still entropy-decoded, which is where damage shows."""
    turbojpeg.decode(data, head, 8, turbojpeg.TJPF_CMYK if _is_cmyk(head) else turbojpeg.TJPF_GRAY)


def _cmyk_to_rgbx(cmyk: np.ndarray) -> np.ndarray:
    """PIL's conversion: stored values are inverted (Adobe), then R = (255 - C)(255 - K) / 255 with PIL's
    rounding, and likewise G from M and B from Y."""
    ink = 255 - cmyk.astype(np.int32)
    keep = 255 - ink[..., 3:4]
    t = ink[..., :3] * keep + 128
    rgb = keep - (((t >> 8) + t) >> 8)
    rgbx = np.empty(cmyk.shape[:2] + (4,), np.uint8)
    rgbx[..., :3] = np.clip(rgb, 0, 255)
    rgbx[..., 3] = 255
    return rgbx


def check_jpeg(data: bytes) -> tuple[int, int]:
    """(width, height) if libjpeg decodes ``data`` without a warning and its scans are intact, else raises."""
    head = _jpeg_header(data)
    _validate(data, head)
    return head.width, head.height


def _storable(data: bytes, head: turbojpeg.Header, store_source: str) -> bool:
    """Whether the file itself may be the row: every reader (FFCV's TurboJPEG, DALI, PIL) decodes YCbCr and
    greyscale JPEGs to RGB; progressive ones decode 2-3x slower at training time, so only on request."""
    if store_source == "never" or head.colorspace not in ("YCbCr", "Gray"):
        return False
    return store_source == "any" or jpeg.process(data) in jpeg.SEQUENTIAL_HUFFMAN


# Chroma samples per luma pixel, (across, down), of the subsamplings whose planes shrink to 4:2:0 (4:1:1
# chroma is narrower than 4:2:0's: such files take the RGB path).
_CHROMA_STEP = {
    turbojpeg.TJSAMP_444: (1, 1),
    turbojpeg.TJSAMP_422: (2, 1),
    turbojpeg.TJSAMP_420: (2, 2),
    turbojpeg.TJSAMP_440: (1, 2),
    turbojpeg.TJSAMP_GRAY: (1, 1),
}


def _planes_row(
    data: bytes, head: turbojpeg.Header, f: int, size: tuple[int, int], spec: RowSpec, clock: Clock
) -> Row:
    """Decode to YUV planes at 1/f, shrink each plane to the target's 4:2:0 (or greyscale) planes, encode.
    No chroma upsampling, colour conversion or chroma downsampling happens on the way."""
    t0 = time.process_time()
    planes = turbojpeg.decode_planes(data, head, f)
    t1 = time.process_time()
    tw, th = size
    grey = head.subsampling == turbojpeg.TJSAMP_GRAY
    out_samp = turbojpeg.TJSAMP_GRAY if grey else turbojpeg.TJSAMP_420
    shrunk = []
    for i, plane in enumerate(planes):
        (ix, iy), (ox, oy) = (_CHROMA_STEP[head.subsampling], (2, 2)) if i else ((1, 1), (1, 1))
        rows, cols = turbojpeg.plane_shape(i, tw, th, out_samp)
        extent = (head.width / f / ix, head.height / f / iy)
        shrunk.append(area_resize(plane, cols, rows, extent, (tw / ox, th / oy)))
    row = Row("jpg", th, tw, turbojpeg.encode_planes(shrunk, tw, th, out_samp, spec.jpeg_quality))
    clock.decode_s += t1 - t0
    clock.encode_s += time.process_time() - t1
    return row


def _jpeg_row(data: bytes, spec: RowSpec, clock: Clock) -> Row:
    t0 = time.process_time()
    head = _jpeg_header(data)
    tw, th = target_size(head.width, head.height, spec.max_resolution)
    stored = spec.write_mode == "jpg" and (tw, th) == (head.width, head.height)
    if stored and _storable(data, head, spec.store_source):
        _validate(data, head)
        clock.decode_s += time.process_time() - t0
        return Row("jpg", head.height, head.width, data)
    f = dct_factor(head.width, head.height, tw, th)
    clock.decode_s += time.process_time() - t0
    if spec.write_mode == "jpg" and head.colorspace in ("YCbCr", "Gray") and head.subsampling in _CHROMA_STEP:
        return _planes_row(data, head, f, (tw, th), spec, clock)
    t0 = time.process_time()
    if _is_cmyk(head):
        pixels = _cmyk_to_rgbx(turbojpeg.decode(data, head, f, turbojpeg.TJPF_CMYK))
    else:
        pixels = turbojpeg.decode(data, head, f, turbojpeg.TJPF_RGBX)
    clock.decode_s += time.process_time() - t0
    # libjpeg rounds a scaled side up: its last pixel may stand for fewer than f source pixels.
    return _finish(pixels, tw, th, spec, clock, extent=(head.width / f, head.height / f))


# ------------------------------------------------------------------------------------------- other formats
def _pil_decode(data: bytes) -> np.ndarray:
    """uint8[H, W, 3] through PIL (its open already refuses decompression bombs)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            _check_size(*im.size)
            return np.asarray(im.convert("RGB"))
    except (ImageRefused, Image.DecompressionBombError):
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error ... for bad data
        raise Undecodable(str(e) or type(e).__name__) from e


# -------------------------------------------------------------------------------------------------- rows
def _finish(
    pixels: np.ndarray, width: int, height: int, spec: RowSpec, clock: Clock, extent: tuple | None = None
) -> Row:
    """Area-shrink ``pixels`` (uint8[H, W, 3 or 4], whose ``extent`` covers the target) to ``width`` x
    ``height`` and encode them as the row."""
    import cv2

    t0 = time.process_time()
    if pixels.shape[:2] != (height, width):
        if pixels.shape[2] == 3:
            pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2RGBA)
        pixels = area_resize(pixels, width, height, extent)
    if spec.write_mode == "jpg":
        data = turbojpeg.encode(pixels, spec.jpeg_quality)
    else:
        if pixels.shape[2] == 4:
            pixels = cv2.cvtColor(pixels, cv2.COLOR_RGBA2RGB)
        data = np.ascontiguousarray(pixels).tobytes()
    clock.encode_s += time.process_time() - t0
    return Row(spec.write_mode, height, width, data)


def file_row(path: str | os.PathLike, spec: RowSpec, clock: Clock | None = None) -> Row:
    """The row for the image file at ``path``; raises (see :func:`describe`) if it does not decode cleanly."""
    clock = clock if clock is not None else Clock()
    data = _read(path)
    if data[:3] == JPEG_MAGIC:
        return _jpeg_row(data, spec, clock)
    t0 = time.process_time()
    pixels = _pil_decode(data)
    clock.decode_s += time.process_time() - t0
    return _finish(pixels, *target_size(pixels.shape[1], pixels.shape[0], spec.max_resolution), spec, clock)


def check_file(path: str | os.PathLike, clock: Clock | None = None) -> None:
    """Validation alone, for the rest of a conversion that will be refused: the same checks as
    :func:`file_row`, with the cheapest decode that makes them (1/8 scale for JPEGs)."""
    clock = clock if clock is not None else Clock()
    t0 = time.process_time()
    data = _read(path)
    if data[:3] == JPEG_MAGIC:
        check_jpeg(data)
    else:
        _pil_decode(data)
    clock.decode_s += time.process_time() - t0


def pixels_row(pixels: np.ndarray, spec: RowSpec, clock: Clock | None = None) -> Row:
    """The row for in-memory pixels (uint8[H, W, 3])."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected uint8[H, W, 3] pixels, got {pixels.dtype}{list(pixels.shape)}")
    width, height = target_size(pixels.shape[1], pixels.shape[0], spec.max_resolution)
    return _finish(pixels, width, height, spec, clock if clock is not None else Clock())
