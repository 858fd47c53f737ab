"""numba CPU fast path of the colour operations of :mod:`fastlt.pipelines.augment_ops`, in place on NHWC.

One parallel task per image runs that image's operations in their drawn order, each one pass over its pixels
while they sit in cache — where the torch reference makes a dozen full-batch float temporaries per operation
(the colour jitter's hue alone ~40). A run of colour-jitter operations works on the image as three float32
planes, converted once, each operation a branch-free loop that LLVM vectorises (the hue's masked sums and
sector gathers become selects). The arithmetic is the reference's, in float32, in the same order: a fused
multiply-add of the reference (its blends, its luma) is computed exactly in float64 and rounded once to
float32; a contrast mean is an exact sum of integer lumas divided in float32 (exact as long as the sum stays
below 2²⁴, i.e. images up to 65,793 pixels — 256 × 256); ``tests/test_augment_ops.py`` checks both paths
agree bit for bit, on photographs and on all 64³ colours of a grid over [0, 255]. The dispatcher of
``fastlt.kernels`` chooses: numba for CPU tensors unless ``FASTLT_KERNELS=torch``; CUDA tensors always take
the torch ops.
"""

from __future__ import annotations

import numpy as np
import torch

from fastlt.kernels._dispatch import numba, pick, prange

# Operation codes of :func:`run_ops` (−1: nothing in that slot) and what each one's factor is.
NONE, BRIGHTNESS, CONTRAST, SATURATION, HUE, GRAYSCALE = -1, 0, 1, 2, 3, 4  # factor, hue shift
POSTERIZE, SOLARIZE, SOLARIZE_ADD, INVERT = 5, 6, 7, 8  # bits kept, threshold, amount added
AUTOCONTRAST, AUTOCONTRAST_PIL, EQUALIZE, SATURATION_PIL, CONTRAST_PIL, SHARPNESS = 9, 10, 11, 12, 13, 14
AFFINE_NEAREST, AFFINE_BILINEAR, AFFINE_BICUBIC = 15, 16, 17  # the slot's matrix and fill (:func:`run_ops`)
# Rough CPU µs of each code on a 224 px image (NONE first): rows run most costly first, so the last images
# the two threads take are cheap ones and neither waits long for the other.
_COST = np.array([0, 10, 60, 70, 100, 20, 5, 10, 20, 5, 70, 70, 130, 50, 40, 500, 300, 460, 1100], np.int64)

_R, _G, _B = np.float32(0.2989), np.float32(0.587), np.float32(0.114)
_INV255 = np.float32(1.0 / 255)
_SIXTH = np.float32(1.0 / 6.0)
_TO_BYTE = np.float32(255 + 1.0 - 1e-3)
_ZERO, _ONE, _TWO, _THREE, _FOUR, _FIVE, _SIX, _MAX = (
    np.float32(v) for v in (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 255.0))


def _byte(v):
    """Clamp to [0, 255] and truncate, as ``clamp_(0, 255).to(torch.uint8)``."""
    return np.uint8(min(max(v, _ZERO), _MAX))


# ---------------------------------------------------------------------------------------------- colour jitter
# The colour jitter's ops run on one image as three float32 planes holding its uint8 values (exact integers),
# each op one branch-free loop over a plane that LLVM vectorises; an op's output is truncated back to an
# integer, so every plane value is the byte the reference's op returns. float64 is used where the reference
# fuses a multiply-add (its blends, its luma): the product of two float32 values is exact in float64, and the
# sum is rounded to float32 once, as the fused operation rounds it.
def _to_planes(flat, R, G, B):
    """``flat``: the image's interleaved bytes, 1-D (indexing it flat lets the loop vectorise)."""
    for k in range(R.shape[0]):
        R[k] = np.float32(flat[3 * k])
        G[k] = np.float32(flat[3 * k + 1])
        B[k] = np.float32(flat[3 * k + 2])


def _from_planes(R, G, B, flat):
    for k in range(R.shape[0]):
        flat[3 * k] = np.uint8(R[k])
        flat[3 * k + 1] = np.uint8(G[k])
        flat[3 * k + 2] = np.uint8(B[k])


def _clamp_floor(v):
    """The integer ``clamp_(0, 255).to(torch.uint8)`` makes of ``v``, as a float32."""
    return np.floor(min(max(v, _ZERO), _MAX))


def _luma(r, g, b):
    """The reference's ``0.2989·R + 0.587·G + 0.114·B``: a float32 product, then two fused multiply-adds."""
    inner = np.float32(np.float64(g) * np.float64(_G) + np.float64(r * _R))
    return np.float32(np.float64(b) * np.float64(_B) + np.float64(inner))


def _brightness(P, f):
    for k in range(P.shape[0]):
        P[k] = _clamp_floor(P[k] * f)


def _blend(P, f, pull):
    """``fma(other, 1 − f, v·f)`` with ``pull = other·(1 − f)`` (exact in float64), clamped and truncated."""
    for k in range(P.shape[0]):
        P[k] = _clamp_floor(np.float32(pull + np.float64(P[k] * f)))


def _contrast(R, G, B, f, a):
    """Blend toward the mean of the floored luma (an exact integer sum divided in float32)."""
    total = 0
    for k in range(R.shape[0]):
        total += np.int64(np.floor(_luma(R[k], G[k], B[k])))
    pull = np.float64(np.float32(total) / np.float32(R.shape[0])) * np.float64(a)
    _blend(R, f, pull)
    _blend(G, f, pull)
    _blend(B, f, pull)


def _saturation(R, G, B, f, a):
    """Blend toward each pixel's floored luma."""
    a64 = np.float64(a)
    for k in range(R.shape[0]):
        pull = np.float64(np.floor(_luma(R[k], G[k], B[k]))) * a64
        R[k] = _clamp_floor(np.float32(pull + np.float64(R[k] * f)))
        G[k] = _clamp_floor(np.float32(pull + np.float64(G[k] * f)))
        B[k] = _clamp_floor(np.float32(pull + np.float64(B[k] * f)))


def _grayscale(R, G, B):
    for k in range(R.shape[0]):
        v = np.floor(_luma(R[k], G[k], B[k]))
        R[k] = v
        G[k] = v
        B[k] = v


def _hue(R, G, B, shift):
    """The reference's float HSV round trip, its masked sums and sector gathers written as selects."""
    for k in range(R.shape[0]):
        r, g, b = R[k] * _INV255, G[k] * _INV255, B[k] * _INV255
        maxc, minc = max(max(r, g), b), min(min(r, g), b)
        spread = maxc - minc
        flat = spread == _ZERO
        s = spread / (_ONE if flat else maxc)
        d = _ONE if flat else spread
        # bc − gc, (rc + 2) − bc or (gc + 4) − rc, as (x/d + offset) − y/d: two of the three divisions
        x, y, offset = (maxc - b, maxc - g, _ZERO) if maxc == r else (
            (maxc - r, maxc - b, _TWO) if maxc == g else (maxc - g, maxc - r, _FOUR))
        h = ((x / d + offset) - y / d) * _SIXTH + _ONE
        h = h - (_ONE if h >= _ONE else _ZERO)  # in [5/6, 11/6) before: fmod(·, 1) is one exact subtraction
        h = h + shift  # in [−0.5, 1.5): torch.remainder(·, 1) is one exact step either way
        h = h + (-_ONE if h >= _ONE else (_ONE if h < _ZERO else _ZERO))
        h6 = h * _SIX
        sector = np.floor(h6)
        frac = h6 - sector
        sxf = s * frac
        oms = _ONE - s
        q = min(max((_ONE - sxf) * maxc, _ZERO), _ONE)
        t = min(max((sxf + oms) * maxc, _ZERO), _ONE)
        p = min(max(oms * maxc, _ZERO), _ONE)
        i = sector if sector < _SIX else _ZERO  # sector mod 6
        r = maxc if (i == _ZERO or i == _FIVE) else (q if i == _ONE else (t if i == _FOUR else p))
        g = t if i == _ZERO else (maxc if (i == _ONE or i == _TWO) else (q if i == _THREE else p))
        b = p if i <= _ONE else (t if i == _TWO else (q if i == _FIVE else maxc))
        R[k], G[k], B[k] = np.floor(r * _TO_BYTE), np.floor(g * _TO_BYTE), np.floor(b * _TO_BYTE)


def _point(flat, code, f):
    """The value-wise ops on an image's interleaved bytes ``flat``: posterize (keep ``f`` bits), solarize
    (invert ≥ ``f``), solarize-add (add ``f`` below 128, saturating), invert. One branch-free loop each."""
    bits = min(max(int(f), 0), 8)
    mask = np.uint8((((1 << bits) - 1) << (8 - bits)) & 255)
    add = np.int32(f)
    if code == POSTERIZE:
        for k in range(flat.shape[0]):
            flat[k] = flat[k] & mask
    elif code == SOLARIZE:
        for k in range(flat.shape[0]):
            v = flat[k]
            flat[k] = np.uint8(255 - v) if np.float32(v) >= f else v
    elif code == SOLARIZE_ADD:
        for k in range(flat.shape[0]):
            v = flat[k]
            flat[k] = np.uint8(min(255, np.int32(v) + add)) if v < 128 else v
    else:
        for k in range(flat.shape[0]):
            flat[k] = np.uint8(255 - flat[k])


def _apply_luts(flat, lut):
    """``flat[3k + c] = lut[c, flat[3k + c]]``."""
    for k in range(flat.shape[0] // 3):
        flat[3 * k] = lut[0, flat[3 * k]]
        flat[3 * k + 1] = lut[1, flat[3 * k + 1]]
        flat[3 * k + 2] = lut[2, flat[3 * k + 2]]


def _autocontrast(flat, pil):
    """Stretch each channel to [0, 255]: torchvision's float32 ``(v − lo) / ((hi − lo)·(1/255))``, or Pillow's
    double ``int(v·s − lo·s)``, ``s = 255 / (hi − lo)``; a flat channel stays."""
    lo0 = lo1 = lo2 = np.uint8(255)  # scalars, not arrays: the min / max reductions vectorise
    hi0 = hi1 = hi2 = np.uint8(0)
    for k in range(flat.shape[0] // 3):
        lo0, hi0 = min(lo0, flat[3 * k]), max(hi0, flat[3 * k])
        lo1, hi1 = min(lo1, flat[3 * k + 1]), max(hi1, flat[3 * k + 1])
        lo2, hi2 = min(lo2, flat[3 * k + 2]), max(hi2, flat[3 * k + 2])
    lo = np.array([lo0, lo1, lo2], np.int64)
    hi = np.array([hi0, hi1, hi2], np.int64)
    lut = np.empty((3, 256), np.uint8)
    for c in range(3):
        inv = np.float32(hi[c] - lo[c]) * _INV255
        scale = 255.0 / max(hi[c] - lo[c], 1)
        offset = -lo[c] * scale
        for v in range(256):
            if hi[c] <= lo[c]:
                lut[c, v] = v
            elif pil:
                lut[c, v] = min(max(int(v * scale + offset), 0), 255)
            else:
                lut[c, v] = _byte((np.float32(v) - np.float32(lo[c])) / inv)
    _apply_luts(flat, lut)


def _equalize(flat):
    """Pillow's histogram equalisation per channel (``augment_ops.equalize``)."""
    n = flat.shape[0] // 3
    hist = np.zeros((3, 256), np.int64)
    for k in range(n):
        for c in range(3):
            hist[c, flat[3 * k + c]] += 1
    lut = np.empty((3, 256), np.uint8)
    for c in range(3):
        top = 255
        while hist[c, top] == 0:
            top -= 1
        step = (n - hist[c, top]) // 255
        below = 0
        for v in range(256):
            lut[c, v] = v if step == 0 else min((below + step // 2) // max(step, 1), 255)
            below += hist[c, v]
    _apply_luts(flat, lut)


def _pil_luma(r, g, b):
    return (np.int32(r) * 19595 + np.int32(g) * 38470 + np.int32(b) * 7471 + 32768) >> 16


def _blend_pil(flat, f, contrast):
    """Pillow's ``Image.blend(d, img, f)``: float32 ``(v − d)·f + d``, toward the integer luma of each pixel
    (colour) or its rounded mean (contrast)."""
    n = flat.shape[0] // 3
    if contrast:
        total = 0
        for k in range(n):
            total += _pil_luma(flat[3 * k], flat[3 * k + 1], flat[3 * k + 2])
        d = np.float32(np.floor(total / n + 0.5))
        for k in range(flat.shape[0]):
            flat[k] = _byte((np.float32(flat[k]) - d) * f + d)
        return
    for k in range(n):
        d = np.float32(_pil_luma(flat[3 * k], flat[3 * k + 1], flat[3 * k + 2]))
        flat[3 * k] = _byte((np.float32(flat[3 * k]) - d) * f + d)
        flat[3 * k + 1] = _byte((np.float32(flat[3 * k + 1]) - d) * f + d)
        flat[3 * k + 2] = _byte((np.float32(flat[3 * k + 2]) - d) * f + d)


def _sharpness(img, a):
    """Blend the inside toward the 3×3 smoothing (weights 1, centre 5, over 13) with weight ``a = 1 − f``. The
    smoothing is rounded from its exact integer form: a sum of integers over 13 is never half-way between two
    integers, so torch's float32 convolution rounds to the same value. Row by row on the flat bytes, keeping
    the horizontal sums of three source rows (a row is summed before the row above it is overwritten), so the
    loops vectorise and the scratch is three rows, not a copy of the image."""
    H, W = img.shape[0], img.shape[1]
    if H <= 2 or W <= 2:
        return
    flat = img.reshape(H * W * 3)
    n, stride = 3 * (W - 2), 3 * W
    sums = np.empty((3, n), np.int32)  # horizontal sums of three, of rows i − 1, i, i + 1 (by i mod 3)
    _row_sums(flat, 0, sums[0])
    _row_sums(flat, stride, sums[1])
    a64 = np.float64(a)
    for i in range(1, H - 1):
        _row_sums(flat, (i + 1) * stride, sums[(i + 1) % 3])
        above, here, below = sums[(i - 1) % 3], sums[i % 3], sums[(i + 1) % 3]
        base = i * stride + 3
        for k in range(n):
            v = np.int32(flat[base + k])
            total = above[k] + here[k] + below[k] + np.int32(4) * v
            # round(total / 13), never a tie: (2·total + 13) // 26 as a multiply and shift (exact below 6,644)
            smooth = ((np.int32(2) * total + np.int32(13)) * np.int32(40330)) >> np.int32(20)
            # fma(smooth − v, a, v): the product is exact in float64, rounded to float32 once
            flat[base + k] = _byte(np.float32(np.float64(smooth - v) * a64 + np.float64(v)))


def _row_sums(flat, start, out):
    """``out[k]``: the sum of the bytes of three horizontally neighbouring pixels, channel ``k mod 3``."""
    for k in range(out.shape[0]):
        out[k] = np.int32(flat[start + k]) + np.int32(flat[start + k + 3]) + np.int32(flat[start + k + 6])


def _jitter_op(R, G, B, code, f, a):
    if code == BRIGHTNESS:
        _brightness(R, f)
        _brightness(G, f)
        _brightness(B, f)
    elif code == CONTRAST:
        _contrast(R, G, B, f, a)
    elif code == SATURATION:
        _saturation(R, G, B, f, a)
    elif code == HUE:
        _hue(R, G, B, f)
    else:
        _grayscale(R, G, B)


def _byte_op(pixels, code, f, a):
    """An op on the interleaved uint8 pixels ``[H, W, 3]`` of one image (indexed flat: loops vectorise)."""
    flat = pixels.reshape(pixels.shape[0] * pixels.shape[1] * 3)
    if POSTERIZE <= code <= INVERT:
        _point(flat, code, f)
    elif code == AUTOCONTRAST or code == AUTOCONTRAST_PIL:
        _autocontrast(flat, code == AUTOCONTRAST_PIL)
    elif code == EQUALIZE:
        _equalize(flat)
    elif code == SATURATION_PIL or code == CONTRAST_PIL:
        _blend_pil(flat, f, code == CONTRAST_PIL)
    elif code == SHARPNESS:
        _sharpness(pixels, a)


def _color_image(pixels, codes, factors, comps, mats, fills, planes):
    """One image's ops in slot order; a run of colour-jitter ops works on ``planes`` (float32 ``[3, H·W]``
    scratch), converted once; an affine slot resamples through ``mats[slot]`` with ``fills[slot]``."""
    n = pixels.shape[0] * pixels.shape[1]
    flat = pixels.reshape(3 * n)
    R, G, B = planes[0], planes[1], planes[2]
    planar = False
    for slot in range(codes.shape[0]):
        code = codes[slot]
        if code == NONE:
            continue
        if code >= AFFINE_NEAREST:
            if planar:
                _from_planes(R, G, B, flat)
                planar = False
            _affine_image(pixels, mats[slot], code - AFFINE_NEAREST, fills[slot], planes)
            continue
        if code <= GRAYSCALE and not planar:
            _to_planes(flat, R, G, B)
        elif code > GRAYSCALE and planar:
            _from_planes(R, G, B, flat)
        planar = code <= GRAYSCALE
        if planar:
            _jitter_op(R, G, B, code, factors[slot], comps[slot])
        else:
            _byte_op(pixels, code, factors[slot], comps[slot])
    if planar:
        _from_planes(R, G, B, flat)


# ---------------------------------------------------------------------------------------------- geometry
NEAREST, BILINEAR, BICUBIC = 0, 1, 2
_A = np.float32(-0.75)  # grid_sample's bicubic coefficient
_HALF = np.float32(0.5)


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


def _round_byte_f(v):
    """Rounded half to even and clamped, as ``round_()`` then ``clamp_(0, 255)``."""
    return min(max(np.rint(v), _ZERO), _MAX)


def _round_byte(v):
    return np.uint8(_round_byte_f(v))


def _nearest_row(src, dst, i, X, Y, fill):
    """Nearest samples of output row ``i`` at source coordinates ``X``, ``Y``; outside: all fill."""
    for j in range(X.shape[0]):
        x, y = int(np.rint(X[j])), int(np.rint(Y[j]))
        inside = 0 <= x < src.shape[1] and 0 <= y < src.shape[0]
        for c in range(3):
            dst[i, j, c] = _round_byte(np.float32(src[y, x, c]) if inside else fill[c])


def _grid_row(i, H, W, m, X, Y):
    """Source coordinates of output row ``i`` (``grid_sample``'s unnormalisation, align_corners=False); ``m``
    holds the inverse matrix divided by the half sides. Branch-free: vectorised."""
    yc = np.float32(i) - np.float32((H - 1) * 0.5)
    for j in range(W):
        xc = np.float32(j) - np.float32((W - 1) * 0.5)
        X[j] = (((xc * m[0] + yc * m[1]) + m[2] + _ONE) * np.float32(W) - _ONE) * _HALF  # exact as / 2
        Y[j] = (((xc * m[3] + yc * m[4]) + m[5] + _ONE) * np.float32(H) - _ONE) * _HALF


def _weights_row(T, first, WT, cubic, limit):
    """Split coordinates ``T`` into the first tap (``first``, int32, kept within ``±limit`` so a far-away
    sample stays wholly outside) and the taps' weights ``WT[0:4]``. Vectorised: ``cubic`` is branched on
    outside the loops."""
    if cubic:
        for j in range(T.shape[0]):
            f = np.floor(T[j])
            WT[0, j], WT[1, j], WT[2, j], WT[3, j] = _cubic_weights(T[j] - f)
            first[j] = np.int32(min(max(f, -limit), limit)) - 1
    else:
        for j in range(T.shape[0]):
            f = np.floor(T[j])
            WT[0, j], WT[1, j] = _ONE - (T[j] - f), T[j] - f
            first[j] = np.int32(min(max(f, -limit), limit))


def _row4(S, k, w0, w1, w2, w3):
    return S[k] * w0 + S[k + 1] * w1 + S[k + 2] * w2 + S[k + 3] * w3


def _col4(S, k, W, wx0, wx1, wx2, wx3, wy0, wy1, wy2, wy3):
    """Bicubic sample with the whole 4 × 4 stencil inside: rows first, then the column (``grid_sample``'s
    order)."""
    return ((_row4(S, k, wx0, wx1, wx2, wx3) * wy0 + _row4(S, k + W, wx0, wx1, wx2, wx3) * wy1)
            + _row4(S, k + 2 * W, wx0, wx1, wx2, wx3) * wy2) + _row4(S, k + 3 * W, wx0, wx1, wx2, wx3) * wy3


def _col2(S, k, W, wx0, wx1, wy0, wy1):
    return (S[k] * wx0 + S[k + 1] * wx1) * wy0 + (S[k + W] * wx0 + S[k + W + 1] * wx1) * wy1


def _edge_sample(S0, S1, S2, x0, y0, taps, H, W, WX, WY, j):
    """A sample whose stencil crosses the border: taps outside count zero (``grid_sample``'s zero padding),
    in the same order as the inside paths (each row across, then the rows down)."""
    r = g = b = inside = _ZERO
    for dy in range(taps):
        y = y0 + dy
        if y < 0 or y >= H:
            continue
        cr = cg = cb = ci = _ZERO
        for dx in range(taps):
            x = x0 + dx
            if x < 0 or x >= W:
                continue
            w, k = WX[dx, j], y * W + x
            cr, cg, cb, ci = cr + S0[k] * w, cg + S1[k] * w, cb + S2[k] * w, ci + w
        wy = WY[dy, j]
        r, g, b, inside = r + cr * wy, g + cg * wy, b + cb * wy, inside + ci * wy
    return r, g, b, inside


def _sample_row(S0, S1, S2, X0, Y0, WX, WY, H, W, cubic, out):
    """Bilinear or bicubic samples of one output row into ``out[0:4]`` (r, g, b, inside weight)."""
    taps = 4 if cubic else 2
    for j in range(X0.shape[0]):
        x0, y0 = X0[j], Y0[j]
        if 0 <= x0 and x0 + taps <= W and 0 <= y0 and y0 + taps <= H:
            k = y0 * W + x0
            wx0, wx1, wy0, wy1 = WX[0, j], WX[1, j], WY[0, j], WY[1, j]
            if cubic:
                wx2, wx3, wy2, wy3 = WX[2, j], WX[3, j], WY[2, j], WY[3, j]
                across = ((wx0 + wx1) + wx2) + wx3
                out[0, j] = _col4(S0, k, W, wx0, wx1, wx2, wx3, wy0, wy1, wy2, wy3)
                out[1, j] = _col4(S1, k, W, wx0, wx1, wx2, wx3, wy0, wy1, wy2, wy3)
                out[2, j] = _col4(S2, k, W, wx0, wx1, wx2, wx3, wy0, wy1, wy2, wy3)
                out[3, j] = ((across * wy0 + across * wy1) + across * wy2) + across * wy3
            else:
                across = wx0 + wx1
                out[0, j] = _col2(S0, k, W, wx0, wx1, wy0, wy1)
                out[1, j] = _col2(S1, k, W, wx0, wx1, wy0, wy1)
                out[2, j] = _col2(S2, k, W, wx0, wx1, wy0, wy1)
                out[3, j] = across * wy0 + across * wy1
        else:
            r, g, b, inside = _edge_sample(S0, S1, S2, x0, y0, taps, H, W, WX, WY, j)
            out[0, j], out[1, j], out[2, j], out[3, j] = r, g, b, inside


def _put_row(flat, i, out, fill):
    """Blend each sample toward the fill by its inside weight, round and clamp, then interleave the bytes into
    row ``i`` of the image's ``flat`` bytes. Two vectorised loops (one fused loop does not vectorise)."""
    W = out.shape[1]
    for c in range(3):
        P, inside, f = out[c], out[3], fill[c]
        for j in range(W):
            P[j] = _round_byte_f(_blend_fill(P[j], f, inside[j], False))
    _from_planes(out[0], out[1], out[2], flat[3 * i * W : 3 * (i + 1) * W])


def _affine_image(dst, t, mode, fill, planes):
    """Resample one image in place, row by row: its source coordinates and tap weights in vectorised loops,
    the taps from float planes of the source (the 4 × 4 or 2 × 2 stencil without bounds checks where it lies
    inside), the fill blend and rounding vectorised again."""
    H, W = dst.shape[0], dst.shape[1]
    m = np.empty(6, np.float32)
    for k in range(6):
        m[k] = t[k] / np.float32(0.5 * (W if k < 3 else H))
    X, Y = np.empty(W, np.float32), np.empty(W, np.float32)
    if mode == NEAREST:
        src = dst.copy()
        for i in range(H):
            _grid_row(i, H, W, m, X, Y)
            _nearest_row(src, dst, i, X, Y, fill)
        return
    flat = dst.reshape(3 * H * W)
    S0, S1, S2 = planes[0], planes[1], planes[2]
    _to_planes(flat, S0, S1, S2)
    X0, Y0 = np.empty(W, np.int32), np.empty(W, np.int32)
    WX, WY, out = np.zeros((4, W), np.float32), np.zeros((4, W), np.float32), np.empty((4, W), np.float32)
    limit = np.float32(max(H, W) + 8)
    for i in range(H):
        _grid_row(i, H, W, m, X, Y)
        _weights_row(X, X0, WX, mode == BICUBIC, limit)
        _weights_row(Y, Y0, WY, mode == BICUBIC, limit)
        _sample_row(S0, S1, S2, X0, Y0, WX, WY, H, W, mode == BICUBIC, out)
        _put_row(flat, i, out, fill)


def _run_images(x, rows, codes, factors, comps, mats, fills, scratch):
    """Image ``rows[k]`` with the ``k``-th parameters, one parallel iteration each (taken one at a time by
    whichever thread is free: :func:`run_ops` sets the chunk size to 1); each thread works in its own float
    planes ``scratch[thread]``, allocated once a call (a fresh 600 KB buffer an image is page faults)."""
    for k in prange(rows.shape[0]):
        _color_image(x[rows[k]], codes[k], factors[k], comps[k], mats[k], fills[k],
                     scratch[numba.get_thread_id()])


if numba is not None:
    # error_model="numpy": no zero-division checks (every divisor here is guarded), so loops can vectorise
    _inline = numba.njit(inline="always", cache=True, nogil=True, error_model="numpy")
    _byte, _clamp_floor, _luma, _pil_luma = (_inline(f) for f in (_byte, _clamp_floor, _luma, _pil_luma))
    _helper = numba.njit(cache=True, nogil=True, error_model="numpy")
    _to_planes, _from_planes, _brightness, _blend, _contrast, _saturation, _grayscale, _hue, _point, \
        _apply_luts, _autocontrast, _equalize, _blend_pil, _sharpness, _row_sums, _jitter_op, _byte_op = (
            _helper(f) for f in (_to_planes, _from_planes, _brightness, _blend, _contrast, _saturation,
                                 _grayscale, _hue, _point, _apply_luts, _autocontrast, _equalize, _blend_pil,
                                 _sharpness, _row_sums, _jitter_op, _byte_op))
    _cubic_weights, _blend_fill, _round_byte_f, _round_byte, _row4, _col4, _col2, _edge_sample = (
        _inline(f) for f in (_cubic_weights, _blend_fill, _round_byte_f, _round_byte, _row4, _col4, _col2,
                             _edge_sample))
    _nearest_row, _grid_row, _weights_row, _sample_row, _put_row, _affine_image, _color_image = (
        _helper(f) for f in (_nearest_row, _grid_row, _weights_row, _sample_row, _put_row, _affine_image,
                             _color_image))
    _run_images = numba.njit(parallel=True, cache=True, nogil=True, error_model="numpy")(_run_images)


def enabled(x: torch.Tensor) -> bool:
    """Whether :func:`run_ops` serves tensors like ``x`` (CPU, numba installed, not overridden)."""
    return x.device.type == "cpu" and pick(x.device, has_numba=numba is not None) == "numba"


class Slotted:
    """An augmentation op that can run as :func:`run_ops` slots. ``slots(x, p)`` gives its codes, factors,
    matrices and fills per row; on tensors :func:`enabled` serves, :meth:`apply` is one :func:`run_ops` pass
    over them (and ``Augmentation`` runs the slots of a step's segments together), elsewhere the op's
    torch path ``apply_torch``."""

    def apply(self, x: torch.Tensor, p: dict[str, np.ndarray]) -> None:
        if enabled(x):  # numba, in place: every row's ops in one parallel pass
            run_ops(x, np.arange(len(x)), *self.slots(x, p))
        else:
            self.apply_torch(x, p)


def run_ops(x: torch.Tensor, rows: np.ndarray, codes: np.ndarray, factors: np.ndarray,
            matrices: np.ndarray | None = None, fills: np.ndarray | None = None) -> None:
    """Run ``codes[k, slot]`` (the constants above; ``NONE`` skips) with ``factors[k, slot]`` on row
    ``rows[k]`` of ``x``, slot after slot, in place, every row in one parallel pass; an ``AFFINE_*`` slot
    resamples through ``matrices[k, slot]`` (the 6 numbers of :func:`fastlt.pipelines.augment_ops.affine`)
    filling with ``fills[k, slot]`` (RGB). ``x``: uint8 ``[N, 3, H, W]`` on NHWC memory (a pipeline batch
    permuted); ``rows`` distinct.

    The affine slots sample as ``grid_sample`` does (zero padding, align_corners=False, bicubic A = −0.75,
    taps summed across each stencil row, then down, as its CPU kernel does); the grid arithmetic is not
    torch's matrix product, so a value can differ from the torch path by one grey level where the result sits
    on a rounding boundary."""
    nhwc = x.permute(0, 2, 3, 1)
    if not nhwc.is_contiguous():
        raise ValueError("augment_numba works in place on NHWC memory; got a tensor laid out otherwise")
    codes = np.asarray(codes, dtype=np.int8)
    n, slots = codes.shape
    f = np.asarray(factors, dtype=np.float64)
    mats = np.zeros((n, slots, 6)) if matrices is None else matrices
    fills = np.zeros((n, slots, 3)) if fills is None else fills
    order = np.argsort(-_COST[codes.astype(np.int64) + 1].sum(axis=1), kind="stable")
    scratch = np.empty((numba.get_num_threads(), 3, x.shape[2] * x.shape[3]), np.float32)
    chunk = numba.set_parallel_chunksize(1)
    try:
        _run_images(nhwc.numpy(), np.asarray(rows, dtype=np.int64)[order], codes[order],
                    f.astype(np.float32)[order], (1.0 - f).astype(np.float32)[order],
                    np.asarray(mats, dtype=np.float32)[order], np.asarray(fills, dtype=np.float32)[order],
                    scratch)
    finally:
        numba.set_parallel_chunksize(chunk)
