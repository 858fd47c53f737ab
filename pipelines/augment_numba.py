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

# Operation codes of :func:`color_ops` (−1: nothing in that slot) and what each one's factor is.
NONE, BRIGHTNESS, CONTRAST, SATURATION, HUE, GRAYSCALE = -1, 0, 1, 2, 3, 4  # factor, hue shift
POSTERIZE, SOLARIZE, SOLARIZE_ADD, INVERT = 5, 6, 7, 8  # bits kept, threshold, amount added
AUTOCONTRAST, AUTOCONTRAST_PIL, EQUALIZE, SATURATION_PIL, CONTRAST_PIL, SHARPNESS = 9, 10, 11, 12, 13, 14

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


# The luma's three products by value: R's rounded to float32 (a plain multiply), G's and B's exact in float64
# (the fused multiply-adds add them before rounding). Three lookups then give the reference's luma exactly.
_LUMA_R = (np.arange(256, dtype=np.float32) * _R).astype(np.float32)
_LUMA_G = np.arange(256, dtype=np.float64) * np.float64(_G)
_LUMA_B = np.arange(256, dtype=np.float64) * np.float64(_B)


def _luma(p):
    inner = np.float32(_LUMA_G[p[1]] + np.float64(_LUMA_R[p[0]]))
    return np.float32(_LUMA_B[p[2]] + np.float64(inner))


def _apply_lut(img, lut):
    flat = img.reshape(img.shape[0] * 3)
    for k in range(flat.shape[0]):
        flat[k] = lut[flat[k]]


def _brightness(img, f):
    lut = np.empty(256, np.uint8)
    for v in range(256):
        lut[v] = _byte(np.float32(v) * f)
    _apply_lut(img, lut)


def _blend_gray(img, f, a, mean):
    """Blend toward the floored luma of each pixel (saturation) or toward ``mean`` (contrast, when ≥ 0):
    ``fma(other, a, v·f)`` with the products by value tabulated (exact in float64, as in :func:`_fma`)."""
    scaled = np.empty(256, np.float64)
    toward = np.empty(256, np.float64)
    for v in range(256):
        scaled[v] = np.float64(np.float32(v) * f)
        toward[v] = np.float64(v) * np.float64(a)
    if mean >= _ZERO:
        lut = np.empty(256, np.uint8)
        pull = np.float64(mean) * np.float64(a)
        for v in range(256):
            lut[v] = _byte(np.float32(pull + scaled[v]))
        _apply_lut(img, lut)
        return
    for k in range(img.shape[0]):
        pull = toward[int(np.floor(_luma(img[k])))]
        for c in range(3):
            img[k, c] = _byte(np.float32(pull + scaled[img[k, c]]))


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


def _point(img, code, f):
    """The value-wise ops: posterize (keep ``f`` bits), solarize (invert ≥ ``f``), solarize-add (add ``f``
    below 128, saturating), invert."""
    bits = min(max(int(f), 0), 8)
    mask = np.uint8((((1 << bits) - 1) << (8 - bits)) & 255)
    add = int(f)
    for k in range(img.shape[0]):
        for c in range(3):
            v = img[k, c]
            if code == POSTERIZE:
                img[k, c] = v & mask
            elif code == SOLARIZE:
                if np.float32(v) >= f:
                    img[k, c] = 255 - v
            elif code == SOLARIZE_ADD:
                if v < 128:
                    img[k, c] = min(255, int(v) + add)
            else:
                img[k, c] = 255 - v


def _autocontrast(img, pil):
    """Stretch each channel to [0, 255]: torchvision's float32 ``(v − lo) / ((hi − lo)·(1/255))``, or Pillow's
    double ``int(v·s − lo·s)``, ``s = 255 / (hi − lo)``; a flat channel stays."""
    for c in range(3):
        lo, hi = 255, 0
        for k in range(img.shape[0]):
            lo, hi = min(lo, int(img[k, c])), max(hi, int(img[k, c]))
        if hi <= lo:
            continue
        inv = np.float32(hi - lo) * _INV255
        scale = 255.0 / (hi - lo)
        offset = -lo * scale
        lut = np.empty(256, np.uint8)
        for v in range(256):
            if pil:
                lut[v] = min(max(int(v * scale + offset), 0), 255)
            else:
                lut[v] = _byte((np.float32(v) - np.float32(lo)) / inv)
        for k in range(img.shape[0]):
            img[k, c] = lut[img[k, c]]


def _equalize(img):
    """Pillow's histogram equalisation per channel (``augment_ops.equalize``)."""
    for c in range(3):
        hist = np.zeros(256, np.int64)
        for k in range(img.shape[0]):
            hist[img[k, c]] += 1
        top = 255
        while hist[top] == 0:
            top -= 1
        step = (img.shape[0] - hist[top]) // 255
        if step == 0:
            continue
        lut = np.empty(256, np.uint8)
        below = 0
        for v in range(256):
            lut[v] = min((below + step // 2) // step, 255)
            below += hist[v]
        for k in range(img.shape[0]):
            img[k, c] = lut[img[k, c]]


def _pil_luma(p):
    return (int(p[0]) * 19595 + int(p[1]) * 38470 + int(p[2]) * 7471 + 32768) >> 16


def _blend_pil(img, f, contrast):
    """Pillow's ``Image.blend(d, img, f)``: float32 ``(v − d)·f + d``, toward the integer luma of each pixel
    (colour) or its rounded mean (contrast)."""
    d = np.float32(0.0)
    if contrast:
        total = 0
        for k in range(img.shape[0]):
            total += _pil_luma(img[k])
        d = np.float32(np.floor(total / img.shape[0] + 0.5))
    for k in range(img.shape[0]):
        if not contrast:
            d = np.float32(_pil_luma(img[k]))
        for c in range(3):
            img[k, c] = _byte((np.float32(img[k, c]) - d) * f + d)


def _sharpness(img, a):
    """Blend the inside toward the 3×3 smoothing (weights 1, centre 5, over 13) with weight ``a = 1 − f``. The
    smoothing is rounded from its exact integer form: a sum of integers over 13 is never half-way between two
    integers, so torch's float32 convolution rounds to the same value."""
    H, W = img.shape[0], img.shape[1]
    if H <= 2 or W <= 2:
        return
    src = img.astype(np.int32)
    rows = np.empty((H, W - 2, 3), np.int32)  # horizontal sums of three
    for i in range(H):
        for j in range(W - 2):
            for c in range(3):
                rows[i, j, c] = src[i, j, c] + src[i, j + 1, c] + src[i, j + 2, c]
    pull = np.empty(511, np.float64)  # fma(smooth − v, a, v): the product by value, exact in float64
    for d in range(-255, 256):
        pull[d + 255] = np.float64(d) * np.float64(a)
    for i in range(1, H - 1):
        for j in range(1, W - 1):
            for c in range(3):
                v = src[i, j, c]
                total = rows[i - 1, j - 1, c] + rows[i, j - 1, c] + rows[i + 1, j - 1, c] + 4 * v
                smooth = (2 * total + 13) // 26  # round(total / 13), never a tie
                img[i, j, c] = _byte(np.float32(pull[smooth - v + 255] + np.float64(v)))


def _color_images(x, codes, factors, comps):
    for i in prange(x.shape[0]):
        img = x[i].reshape(x.shape[1] * x.shape[2], 3)
        for slot in range(codes.shape[1]):
            code, f = codes[i, slot], factors[i, slot]
            if code == BRIGHTNESS:
                _brightness(img, f)
            elif code == CONTRAST:
                _blend_gray(img, f, comps[i, slot], _mean_luma(img))
            elif code == SATURATION:
                _blend_gray(img, f, comps[i, slot], np.float32(-1.0))
            elif code == HUE:
                _hue(img, f)
            elif code == GRAYSCALE:
                _grayscale(img)
            elif POSTERIZE <= code <= INVERT:
                _point(img, code, f)
            elif code == AUTOCONTRAST or code == AUTOCONTRAST_PIL:
                _autocontrast(img, code == AUTOCONTRAST_PIL)
            elif code == EQUALIZE:
                _equalize(img)
            elif code == SATURATION_PIL or code == CONTRAST_PIL:
                _blend_pil(img, f, code == CONTRAST_PIL)
            elif code == SHARPNESS:
                _sharpness(x[i], comps[i, slot])


# ---------------------------------------------------------------------------------------------- geometry
NEAREST, BILINEAR, BICUBIC = 0, 1, 2
_A = np.float32(-0.75)  # grid_sample's bicubic coefficient


def _cubic_weights(t):
    """grid_sample's four bicubic weights for fractional offset ``t`` (taps at −1, 0, 1, 2)."""
    a2, a3 = _A + np.float32(2.0), _A + np.float32(3.0)
    u = t + _ONE
    w0 = ((_A * u - np.float32(5.0) * _A) * u + np.float32(8.0) * _A) * u - np.float32(4.0) * _A
    w1 = (a2 * t - a3) * t * t + _ONE
    v = _ONE - t
    w2 = (a2 * v - a3) * v * v + _ONE
    u = np.float32(2.0) - t
    w3 = ((_A * u - np.float32(5.0) * _A) * u + np.float32(8.0) * _A) * u - np.float32(4.0) * _A
    return w0, w1, w2, w3


def _blend_fill(v, f, inside, nearest):
    if nearest:
        return f if inside < np.float32(0.5) else v
    return (v - f) * inside + f


def _put(dst, i, j, r, g, b, inside, fill, nearest):
    """Write one output pixel: the fill where the sample fell outside (nearest: all or nothing; otherwise the
    inside weight blends toward the fill), rounded half to even and clamped."""
    dst[i, j, 0] = np.uint8(min(max(np.rint(_blend_fill(r, fill[0], inside, nearest)), _ZERO), _MAX))
    dst[i, j, 1] = np.uint8(min(max(np.rint(_blend_fill(g, fill[1], inside, nearest)), _ZERO), _MAX))
    dst[i, j, 2] = np.uint8(min(max(np.rint(_blend_fill(b, fill[2], inside, nearest)), _ZERO), _MAX))


def _nearest(src, dst, i, j, ix, iy, fill):
    x, y = int(np.rint(ix)), int(np.rint(iy))
    if 0 <= x < src.shape[1] and 0 <= y < src.shape[0]:
        _put(dst, i, j, np.float32(src[y, x, 0]), np.float32(src[y, x, 1]), np.float32(src[y, x, 2]), _ONE,
             fill, True)
    else:
        _put(dst, i, j, _ZERO, _ZERO, _ZERO, _ZERO, fill, True)


def _interpolated(src, dst, i, j, ix, iy, fill, cubic):
    """Bilinear (2 × 2 taps) or bicubic (4 × 4) sample, taps outside the image counting zero."""
    x0, y0 = int(np.floor(ix)), int(np.floor(iy))
    tx, ty = ix - np.float32(x0), iy - np.float32(y0)
    if cubic:
        wx0, wx1, wx2, wx3 = _cubic_weights(tx)
        wy0, wy1, wy2, wy3 = _cubic_weights(ty)
        first, taps = -1, 4
    else:
        wx0, wx1, wx2, wx3 = _ONE - tx, tx, _ZERO, _ZERO
        wy0, wy1, wy2, wy3 = _ONE - ty, ty, _ZERO, _ZERO
        first, taps = 0, 2
    r = g = b = inside = _ZERO
    for dy in range(taps):
        y = y0 + first + dy
        if y < 0 or y >= src.shape[0]:
            continue
        wy = wy0 if dy == 0 else (wy1 if dy == 1 else (wy2 if dy == 2 else wy3))
        for dx in range(taps):
            x = x0 + first + dx
            if x < 0 or x >= src.shape[1]:
                continue
            w = wy * (wx0 if dx == 0 else (wx1 if dx == 1 else (wx2 if dx == 2 else wx3)))
            r += w * np.float32(src[y, x, 0])
            g += w * np.float32(src[y, x, 1])
            b += w * np.float32(src[y, x, 2])
            inside += w
    _put(dst, i, j, r, g, b, inside, fill, False)


def _affine_image(dst, t, mode, fill):
    H, W = dst.shape[0], dst.shape[1]
    src = dst.copy()
    half_w, half_h = np.float32(0.5 * W), np.float32(0.5 * H)
    a0, a1, a2 = t[0] / half_w, t[1] / half_w, t[2] / half_w
    b0, b1, b2 = t[3] / half_h, t[4] / half_h, t[5] / half_h
    for i in range(H):
        yc = np.float32(i) - np.float32((H - 1) * 0.5)
        for j in range(W):
            xc = np.float32(j) - np.float32((W - 1) * 0.5)
            ix = (((xc * a0 + yc * a1) + a2 + _ONE) * np.float32(W) - _ONE) / np.float32(2.0)
            iy = (((xc * b0 + yc * b1) + b2 + _ONE) * np.float32(H) - _ONE) / np.float32(2.0)
            if mode == NEAREST:
                _nearest(src, dst, i, j, ix, iy, fill)
            else:
                _interpolated(src, dst, i, j, ix, iy, fill, mode == BICUBIC)


def _affine_images(x, rows, theta, modes, fill):
    for k in prange(rows.shape[0]):
        _affine_image(x[rows[k]], theta[k], modes[k], fill)


if numba is not None:
    _inline = numba.njit(inline="always", cache=True, nogil=True)
    _fma, _byte, _luma, _hue_of, _apply_lut = (_inline(f) for f in (_fma, _byte, _luma, _hue_of, _apply_lut))
    _helper = numba.njit(cache=True, nogil=True)
    _pil_luma = _inline(_pil_luma)
    _brightness, _blend_gray, _mean_luma, _grayscale, _hue, _point, _autocontrast, _equalize, _blend_pil, \
        _sharpness = (_helper(f) for f in (_brightness, _blend_gray, _mean_luma, _grayscale, _hue, _point,
                                            _autocontrast, _equalize, _blend_pil, _sharpness))
    _color_images = numba.njit(parallel=True, cache=True, nogil=True)(_color_images)
    _cubic_weights, _blend_fill, _put, _nearest, _interpolated = (
        _inline(f) for f in (_cubic_weights, _blend_fill, _put, _nearest, _interpolated)
    )
    _affine_image = _helper(_affine_image)
    _affine_images = numba.njit(parallel=True, cache=True, nogil=True)(_affine_images)


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


def affine_rows(x: torch.Tensor, rows: np.ndarray, matrices, modes: np.ndarray, fill) -> None:
    """:func:`fastlt.pipelines.augment_ops.affine` of ``x[rows]`` (``modes``: NEAREST / BILINEAR / BICUBIC per
    row), in place, ``x`` uint8 ``[N, 3, H, W]`` on NHWC memory. Same sampling as ``grid_sample`` (zero
    padding, align_corners=False, bicubic A = −0.75); the grid arithmetic is not torch's matrix product, so
    a value can differ from the torch path by one grey level where the result sits on a rounding boundary."""
    nhwc = x.permute(0, 2, 3, 1)
    if not nhwc.is_contiguous():
        raise ValueError("affine_rows works in place on NHWC memory; got a tensor laid out otherwise")
    _affine_images(nhwc.numpy(), np.ascontiguousarray(rows, dtype=np.int64),
                   np.asarray(matrices, dtype=np.float32).reshape(-1, 6),
                   np.ascontiguousarray(modes, dtype=np.int8), np.asarray(fill, dtype=np.float32))
