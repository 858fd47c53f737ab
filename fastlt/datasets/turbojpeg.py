"""libjpeg-turbo through its TurboJPEG C API (ctypes): the library FFCV's own loader decodes shards with.

Conversion needs three things from it that Python bindings do not all give together:

* strict decoding — ``TJFLAG_STOPONWARNING`` makes every libjpeg warning (premature end of data, extraneous
  bytes before a marker, a bad Huffman code) an error, reported in libjpeg's words;
* DCT-scaled decoding — asking for ``ceil(side / f)`` pixels makes libjpeg reduce by f in the inverse DCT;
* decoding to and encoding from YUV planes, which skips chroma upsampling and colour conversion on the way
  in, and colour conversion and chroma downsampling on the way out: when an image is shrunk and re-encoded,
  its planes are shrunk instead of its RGB pixels (about a third of the cost at 512 px).

Why conversion scales by 1/2, 1/4 and 1/8 only, and encodes with the accurate DCT (measured with libjpeg-turbo
2.1.5 on 500-800 px q90 photographs, per image): the library offers every n/8, but on x86-64 only the full,
4x4 and 2x2 inverse DCTs have SIMD code (``jsimd_idct_islow_avx2``, ``jsimd_idct_4x4_sse2``, ...); 3/8 and
5/8-7/8 run libjpeg's plain C. Decoding at 6/8 instead of 1 for a 512 px target costs 1.96 ms instead of
1.50 and saves 0.18 ms of resizing; 3/8 instead of 1/2 for 256 px is no faster (1.33 against 1.29 ms).
``TJFLAG_FASTDCT`` does not make the q90 encode faster (0.56 against 0.53 ms at 512 px: the accurate forward
DCT has AVX2 code) and costs 0.1-0.15 dB of luma PSNR, so it is not used.

Every function raises :class:`TurboJPEGError` on any failure. Handles are made per process, on first use,
so that forked workers never share one, and replaced after a failure.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from ctypes import POINTER, byref, c_char_p, c_int, c_ulong, c_void_p
from dataclasses import dataclass

import numpy as np

TJSAMP_444, TJSAMP_422, TJSAMP_420, TJSAMP_GRAY, TJSAMP_440, TJSAMP_411 = range(6)
TJPF_RGB, TJPF_RGBX, TJPF_GRAY, TJPF_CMYK = 0, 2, 6, 11
COLORSPACES = ("RGB", "YCbCr", "Gray", "CMYK", "YCCK")  # TJCS_* in order
TJFLAG_ACCURATEDCT = 4096
TJFLAG_STOPONWARNING = 8192
STRICT = TJFLAG_ACCURATEDCT | TJFLAG_STOPONWARNING
PIXEL_SIZE = {TJPF_RGB: 3, TJPF_RGBX: 4, TJPF_GRAY: 1, TJPF_CMYK: 4}


class TurboJPEGError(ValueError):
    """libjpeg-turbo refused the data; the message is libjpeg's."""


@functools.cache
def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("turbojpeg")
    if name is None:
        raise ImportError(
            "libturbojpeg not found: it is the JPEG library FFCV is built against (Debian/Ubuntu: "
            "apt install libturbojpeg0)"
        )
    lib = ctypes.CDLL(name)
    u8p, ip = c_char_p, POINTER(c_int)
    signatures = {
        "tjInitDecompress": ([], c_void_p),
        "tjInitCompress": ([], c_void_p),
        "tjDecompressHeader3": ([c_void_p, u8p, c_ulong, ip, ip, ip, ip], c_int),
        "tjDecompress2": ([c_void_p, u8p, c_ulong, c_void_p, c_int, c_int, c_int, c_int, c_int], c_int),
        "tjDecompressToYUVPlanes": (
            [c_void_p, u8p, c_ulong, POINTER(c_void_p), c_int, ip, c_int, c_int],
            c_int,
        ),
        "tjCompress2": (
            [
                c_void_p,
                c_void_p,
                c_int,
                c_int,
                c_int,
                c_int,
                POINTER(c_void_p),
                POINTER(c_ulong),
                c_int,
                c_int,
                c_int,
            ],
            c_int,
        ),
        "tjCompressFromYUVPlanes": (
            [
                c_void_p,
                POINTER(c_void_p),
                c_int,
                ip,
                c_int,
                c_int,
                POINTER(c_void_p),
                POINTER(c_ulong),
                c_int,
                c_int,
            ],
            c_int,
        ),
        "tjPlaneWidth": ([c_int, c_int, c_int], c_int),
        "tjPlaneHeight": ([c_int, c_int, c_int], c_int),
        "tjGetErrorStr2": ([c_void_p], c_char_p),
        "tjFree": ([c_void_p], None),
        "tjDestroy": ([c_void_p], c_int),
    }
    for fn, (args, res) in signatures.items():
        getattr(lib, fn).argtypes = args
        getattr(lib, fn).restype = res
    return lib


_HANDLES: dict[int, tuple] = {}


def _handles() -> tuple:
    """(decompressor, compressor) of this process."""
    pid = os.getpid()
    if pid not in _HANDLES:
        lib = _lib()
        _HANDLES.clear()  # a forked child drops its parent's (they are freed with the parent)
        _HANDLES[pid] = (lib.tjInitDecompress(), lib.tjInitCompress())
    return _HANDLES[pid]


def _check(status: int, handle) -> None:
    if status != 0:
        _fail(_lib().tjGetErrorStr2(handle).decode(errors="replace"))


def _fail(message: str):
    """Raise, after replacing this process's handles: libjpeg-turbo 2.1 can leave a handle that failed
    unusable (the next, valid, file then reads as "tables only" or "Bogus marker length")."""
    for h in _HANDLES.pop(os.getpid(), ()):
        _lib().tjDestroy(h)
    raise TurboJPEGError(message)


@dataclass(frozen=True)
class Header:
    width: int
    height: int
    subsampling: int  # TJSAMP_*
    colorspace: str  # one of COLORSPACES


def header(data: bytes) -> Header:
    d, _ = _handles()
    w, h, samp, cs = c_int(), c_int(), c_int(), c_int()
    _check(_lib().tjDecompressHeader3(d, data, len(data), byref(w), byref(h), byref(samp), byref(cs)), d)
    if w.value < 1 or h.value < 1:  # TurboJPEG's reading of a stream without a frame: "tables only"
        _fail("no frame header: not a JPEG image (at most a tables-only JPEG stream)")
    return Header(w.value, h.value, samp.value, COLORSPACES[cs.value])


def scaled(side: int, f: int) -> int:
    """libjpeg's size of a side decoded at 1/f: rounded up."""
    return -(-side // f)


def decode(data: bytes, head: Header, f: int, pixel_format: int) -> np.ndarray:
    """uint8[h, w, channels]: ``data`` decoded strictly at 1/f scale."""
    d, _ = _handles()
    w, h = scaled(head.width, f), scaled(head.height, f)
    out = np.empty((h, w, PIXEL_SIZE[pixel_format]), np.uint8)
    _check(_lib().tjDecompress2(d, data, len(data), out.ctypes.data, w, 0, h, pixel_format, STRICT), d)
    return out


def plane_shape(component: int, width: int, height: int, subsampling: int) -> tuple[int, int]:
    """(rows, columns) of plane ``component`` (0 Y, 1 Cb, 2 Cr) of a width x height YUV image."""
    lib = _lib()
    return lib.tjPlaneHeight(component, height, subsampling), lib.tjPlaneWidth(component, width, subsampling)


def _planes_args(planes: list[np.ndarray]):
    ptrs = (c_void_p * 3)(*[p.ctypes.data for p in planes], *[None] * (3 - len(planes)))
    strides = (c_int * 3)(*[p.shape[1] for p in planes], *[0] * (3 - len(planes)))
    return ptrs, strides


def decode_planes(data: bytes, head: Header, f: int) -> list[np.ndarray]:
    """The Y (and Cb, Cr) planes of ``data``, decoded strictly at 1/f scale, in its own subsampling."""
    d, _ = _handles()
    w, h = scaled(head.width, f), scaled(head.height, f)
    n = 1 if head.subsampling == TJSAMP_GRAY else 3
    planes = [np.empty(plane_shape(i, w, h, head.subsampling), np.uint8) for i in range(n)]
    ptrs, strides = _planes_args(planes)
    _check(_lib().tjDecompressToYUVPlanes(d, data, len(data), ptrs, w, strides, h, STRICT), d)
    return planes


def _jpeg_bytes(status: int, handle, buf: c_void_p, size: c_ulong) -> bytes:
    try:
        _check(status, handle)
        return ctypes.string_at(buf, size.value)
    finally:
        if buf:
            _lib().tjFree(buf)


def encode(pixels: np.ndarray, quality: int, subsampling: int = TJSAMP_420) -> bytes:
    """JPEG of uint8[h, w, 3 (RGB) or 4 (RGBX)] pixels (accurate DCT)."""
    _, c = _handles()
    pixels = np.ascontiguousarray(pixels)
    h, w, channels = pixels.shape
    fmt = {3: TJPF_RGB, 4: TJPF_RGBX}[channels]
    buf, size = c_void_p(), c_ulong(0)
    status = _lib().tjCompress2(
        c, pixels.ctypes.data, w, 0, h, fmt, byref(buf), byref(size), subsampling, quality, TJFLAG_ACCURATEDCT
    )
    return _jpeg_bytes(status, c, buf, size)


def encode_planes(planes: list[np.ndarray], width: int, height: int, subsampling: int, quality: int) -> bytes:
    """JPEG of YUV planes shaped as :func:`plane_shape` gives for ``subsampling`` (accurate DCT)."""
    _, c = _handles()
    planes = [np.ascontiguousarray(p) for p in planes]
    ptrs, strides = _planes_args(planes)
    buf, size = c_void_p(), c_ulong(0)
    status = _lib().tjCompressFromYUVPlanes(
        c, ptrs, width, strides, height, subsampling, byref(buf), byref(size), quality, TJFLAG_ACCURATEDCT
    )
    return _jpeg_bytes(status, c, buf, size)
