"""numba CPU fast path of the colour operations of :mod:`fastlt.pipelines.augment_ops`, in place on NHWC.

One parallel task per image runs that image's operations in their drawn order, each one pass over its pixels
while they sit in cache — where the torch reference makes a dozen full-batch float temporaries per operation
(the colour jitter's hue alone ~40). The arithmetic is the reference's, in float32, in the same order: a fused
multiply-add of the reference (its blends, its luma) is computed exactly in float64 and rounded once to
float32; a contrast mean is an exact sum of integer lumas divided in float32 (exact as long as the sum stays
below 2²⁴, i.e. images up to 65,793 pixels — 256 × 256); ``tests/test_augment_ops.py`` checks both paths
agree bit for bit. The dispatcher of ``fastlt.kernels`` chooses: numba for CPU tensors unless
``FASTLT_KERNELS=torch``; CUDA tensors always take the torch ops.
"""

from __future__ import annotations

import numpy as np
import torch

from fastlt.kernels._dispatch import numba, pick, prange

# Operation codes of :func:`color_ops` (−1: nothing in that slot).
NONE, BRIGHTNESS, CONTRAST, SATURATION, HUE, GRAYSCALE = -1, 0, 1, 2, 3, 4

_R, _G, _B = np.float32(0.2989), np.float32(0.587), np.float32(0.114)
_INV255 = np.float32(1.0 / 255)
_SIXTH = np.float32(1.0 / 6.0)
_TO_BYTE = np.float32(255 + 1.0 - 1e-3)
_ZERO, _ONE, _TWO, _FOUR, _SIX, _MAX = (np.float32(v) for v in (0.0, 1.0, 2.0, 4.0, 6.0, 255.0))


def _fma(a, b, c):
    """float32 ``a·b + c`` rounded once (the product of two float32 values is exact in float64)."""
    return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


def _byte(v):
    """Clamp to [0, 255] and truncate, as ``clamp_(0, 255).to(torch.uint8)``."""
    return np.uint8(min(max(v, _ZERO), _MAX))


def _luma(p):
    return _fma(np.float32(p[2]), _B, _fma(np.float32(p[1]), _G, np.float32(p[0]) * _R))


def _brightness(img, f):
    for k in range(img.shape[0]):
        for c in range(3):
            img[k, c] = _byte(np.float32(img[k, c]) * f)


def _blend_gray(img, f, a, mean):
    """Blend toward the floored luma of each pixel (saturation) or toward ``mean`` (contrast, when ≥ 0)."""
    for k in range(img.shape[0]):
        other = mean if mean >= _ZERO else np.float32(np.floor(_luma(img[k])))
        for c in range(3):
            img[k, c] = _byte(_fma(other, a, np.float32(img[k, c]) * f))


def _mean_luma(img):
    total = 0.0
    for k in range(img.shape[0]):
        total += np.floor(_luma(img[k]))
    return np.float32(total) / np.float32(img.shape[0])


def _grayscale(img):
    for k in range(img.shape[0]):
        v = np.uint8(_luma(img[k]))
        img[k, 0] = v
        img[k, 1] = v
        img[k, 2] = v


def _hue_of(r, g, b, maxc, spread):
    """Hue in [0, 1) of one pixel (the reference's masked sum: exactly one term is not zero)."""
    d = _ONE if spread == _ZERO else spread
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    if maxc == r:
        h = bc - gc
    elif maxc == g:
        h = (rc + _TWO) - bc
    else:
        h = (gc + _FOUR) - rc
    h = h * _SIXTH + _ONE  # in [5/6, 11/6): fmod(·, 1) is one exact subtraction
    return h - _ONE if h >= _ONE else h


def _hue(img, shift):
    for k in range(img.shape[0]):
        r = np.float32(img[k, 0]) * _INV255
        g = np.float32(img[k, 1]) * _INV255
        b = np.float32(img[k, 2]) * _INV255
        maxc, minc = max(max(r, g), b), min(min(r, g), b)
        spread = maxc - minc
        s = spread / (_ONE if spread == _ZERO else maxc)
        h = _hue_of(r, g, b, maxc, spread) + shift  # in [−0.5, 1.5): torch.remainder(·, 1) is
        if h >= _ONE:  # one exact subtraction above 1 and fmod's identity plus 1 below 0
            h = h - _ONE
        elif h < _ZERO:
            h = h + _ONE
        h6 = h * _SIX
        sector = np.floor(h6)
        frac = h6 - np.float32(sector)
        sxf = s * frac
        oms = _ONE - s
        q = min(max((_ONE - sxf) * maxc, _ZERO), _ONE)
        t = min(max((sxf + oms) * maxc, _ZERO), _ONE)
        p = min(max(oms * maxc, _ZERO), _ONE)
        i = int(sector) % 6
        r, g, b = maxc, p, q  # sector 5
        if i == 0:
            g, b = t, p
        elif i == 1:
            r, g, b = q, maxc, p
        elif i == 2:
            r, g, b = p, maxc, t
        elif i == 3:
            r, g, b = p, q, maxc
        elif i == 4:
            r, b = t, maxc
        img[k, 0] = np.uint8(r * _TO_BYTE)
        img[k, 1] = np.uint8(g * _TO_BYTE)
        img[k, 2] = np.uint8(b * _TO_BYTE)


def _color_images(x, codes, factors, comps):
    for i in prange(x.shape[0]):
        img = x[i].reshape(x.shape[1] * x.shape[2], 3)
        for slot in range(codes.shape[1]):
            code = codes[i, slot]
            if code == BRIGHTNESS:
                _brightness(img, factors[i, slot])
            elif code == CONTRAST:
                _blend_gray(img, factors[i, slot], comps[i, slot], _mean_luma(img))
            elif code == SATURATION:
                _blend_gray(img, factors[i, slot], comps[i, slot], np.float32(-1.0))
            elif code == HUE:
                _hue(img, factors[i, slot])
            elif code == GRAYSCALE:
                _grayscale(img)


if numba is not None:
    _inline = numba.njit(inline="always", cache=True, nogil=True)
    _fma, _byte, _luma, _hue_of = (_inline(f) for f in (_fma, _byte, _luma, _hue_of))
    _helper = numba.njit(cache=True, nogil=True)
    _brightness, _blend_gray, _mean_luma, _grayscale, _hue = (
        _helper(f) for f in (_brightness, _blend_gray, _mean_luma, _grayscale, _hue)
    )
    _color_images = numba.njit(parallel=True, cache=True, nogil=True)(_color_images)


def enabled(x: torch.Tensor) -> bool:
    """Whether :func:`color_ops` serves tensors like ``x`` (CPU, numba installed, not overridden)."""
    return x.device.type == "cpu" and pick(x.device, has_numba=numba is not None) == "numba"


def color_ops(x: torch.Tensor, codes: np.ndarray, factors: np.ndarray) -> None:
    """Run ``codes[i, slot]`` (the constants above) with ``factors[i, slot]`` on row i of ``x`` (uint8
    ``[N, 3, H, W]`` whose memory is NHWC — a pipeline batch permuted), slot after slot, in place."""
    nhwc = x.permute(0, 2, 3, 1)
    if not nhwc.is_contiguous():
        raise ValueError("color_ops works in place on NHWC memory; got a tensor laid out otherwise")
    f = np.asarray(factors, dtype=np.float64)
    _color_images(nhwc.numpy(), np.ascontiguousarray(codes, dtype=np.int8), f.astype(np.float32),
                  (1.0 - f).astype(np.float32))
