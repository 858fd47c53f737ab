"""Area (box-filter) resize of RGBX images to an exact size, for shrinking after a DCT-scaled decode.

Each output pixel is the mean of the input area it covers, fractional pixels weighted by their overlap —
the same filter as OpenCV's ``INTER_AREA`` when shrinking (outputs agree within one grey level). OpenCV
runs that filter for non-integer ratios through a generic path that costs ~3 ms for a 700 px photo
shrunk to 512 px, as much as the JPEG decode; this one costs ~0.6 ms:

* the filter is separable, and each pass runs down the rows of a contiguous ``(n, m)`` array, so its inner
  loop is a vectorised multiply-add over ``m`` bytes; the other axis is reached by transposing
  (``cv2.transpose`` of 8- and 4-byte pixels — why the images are RGBX, not RGB);
* weights are 14-bit integers that sum exactly to 1.0 per output, accumulated in int32; the pass between
  the two keeps 8 fractional bits (uint16), so the result is rounded once.
"""

from __future__ import annotations

import cv2
import numba
import numpy as np

WEIGHT_BITS = 14  # an output's weights sum to 1 << WEIGHT_BITS
MID_BITS = 8  # fractional bits of the intermediate (uint16 holds 255 << 8)


@numba.njit(cache=True, nogil=True)
def area_weights(n_in: int, extent: float, n_out: int):
    """Per output ``o``: the first input ``first[o]``, the number of inputs ``count[o]`` and their integer
    weights ``weights[o, :count[o]]`` — the overlap of ``[o*s, (o+1)*s)`` (``s = extent / n_out``) with each
    input pixel, summing to ``1 << WEIGHT_BITS`` (rounding error goes to the largest weight). ``extent``
    (at most ``n_in``) is how much of the input is image: a 1/f-scaled decode of a side that f does not
    divide ends in a partial pixel."""
    s = extent / n_out
    width = min(int(np.ceil(s)) + 1, n_in)
    first = np.zeros(n_out, np.int64)
    count = np.zeros(n_out, np.int64)
    weights = np.zeros((n_out, width), np.int32)
    one = 1 << WEIGHT_BITS
    for o in range(n_out):
        lo, hi = o * s, (o + 1) * s
        i0 = int(np.floor(lo))
        i1 = min(int(np.ceil(hi)), n_in, i0 + width)
        first[o], count[o] = i0, i1 - i0
        total, biggest = 0, 0
        for t in range(i1 - i0):
            overlap = min(hi, i0 + t + 1.0) - max(lo, i0 + t + 0.0)
            w = int(np.round(max(0.0, overlap) / s * one))
            weights[o, t] = w
            total += w
            if w > weights[o, biggest]:
                biggest = t
        weights[o, biggest] += one - total
    return first, count, weights


@numba.njit(cache=True, nogil=True)
def _shrink_rows(src, extent: float, n_out: int, out, shift: int):
    """``out[o] = (sum_t w[o, t] * src[first[o] + t] + half) >> shift`` for every output row ``o``."""
    first, count, weights = area_weights(src.shape[0], extent, n_out)
    m = src.shape[1]
    acc = np.empty(m, np.int32)
    half = np.int32(1 << (shift - 1))
    for o in range(n_out):
        r, w = first[o], weights[o, 0]
        for j in range(m):
            acc[j] = w * np.int32(src[r, j])
        for t in range(1, count[o]):
            r, w = first[o] + t, weights[o, t]
            for j in range(m):
                acc[j] += w * np.int32(src[r, j])
        for j in range(m):
            out[o, j] = (acc[j] + half) >> shift


def area_resize(
    rgbx: np.ndarray, width: int, height: int, extent: tuple[float, float] | None = None
) -> np.ndarray:
    """uint8[height, width, 4]: ``rgbx`` (uint8[H, W, 4]) shrunk by area means. ``extent`` = (x, y) is the
    part of it that is image (default: all of it, W x H); it must cover the output size."""
    h, w, c = rgbx.shape
    ex, ey = (w, h) if extent is None else extent
    if c != 4 or rgbx.dtype != np.uint8:
        raise ValueError(f"expected uint8[H, W, 4], got {rgbx.dtype}{list(rgbx.shape)}")
    if not (width <= ex <= w and height <= ey <= h and width >= 1 and height >= 1):
        raise ValueError(f"area_resize shrinks: {ex}x{ey} of {w}x{h} cannot become {width}x{height}")
    if (width, height) == (w, h):
        return rgbx
    # Along the height first, in place; then along the width, whose columns are the rows of the transposed
    # (already shorter) image; then back. The transposes move the two smallest of the four arrays.
    mid = np.empty((height, w * 4), np.uint16)
    _shrink_rows(np.ascontiguousarray(rgbx).reshape(h, w * 4), float(ey), height, mid, WEIGHT_BITS - MID_BITS)
    cols = cv2.transpose(mid.reshape(height, w, 4))  # uint16[w, height, 4]
    out = np.empty((width, height * 4), np.uint8)
    _shrink_rows(cols.reshape(w, height * 4), float(ex), width, out, WEIGHT_BITS + MID_BITS)
    return cv2.transpose(out.reshape(width, height, 4))  # uint8[height, width, 4]


def warm_up() -> None:
    """Compile (or load from numba's cache) before worker processes fork, so that each need not."""
    area_resize(np.zeros((4, 4, 4), np.uint8), 3, 2)
