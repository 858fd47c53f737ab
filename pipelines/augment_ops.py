"""Batched image operations on uint8 ``[N, 3, H, W]`` tensors, one parameter per row, on any device.

Each function is the batched form of a ``torchvision.transforms.v2.functional`` kernel on uint8 tensors
(timm's ``SolarizeAdd`` for the one operation torchvision lacks, Pillow's forms of three others for timm's
RandAugment): the same arithmetic in the same order, so for the same parameters a row comes out as the
reference makes that image, bit for bit (``tests/test_augment_ops.py``). Parameters are per row (``float64``
factors are rounded to float32 as torchvision rounds a Python float). Inputs are never modified; ``x`` may be
a channels-last view (a pipeline's NHWC batch permuted), outputs keep its memory format.

Rounding rules that decide exactness (torchvision's): a blend ``r·a + (1 − r)·b`` is one fused multiply-add
(``addcmul``) truncated to uint8; grayscale is ``0.2989·R + 0.587·G + 0.114·B`` floored where it is blended
and truncated where it is the output; blur, sharpness and geometric resampling round to nearest.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "brightness", "contrast", "saturation", "hue", "grayscale", "gaussian_blur", "sharpness", "posterize",
    "solarize", "solarize_add", "autocontrast", "equalize", "invert", "affine", "inverse_affine",
    "saturation_pil", "contrast_pil", "autocontrast_pil",
    "pad_crop_flip", "update_rows",
]


def update_rows(x: torch.Tensor, rows: np.ndarray, fn) -> None:
    """``x[rows] = fn(x[rows], rows)`` for the rows a bool mask selects (nothing when it selects none); ``fn``
    also gets the selected row indices (int64 numpy) to pick their parameters."""
    idx = np.flatnonzero(rows)
    if len(idx):
        t = torch.from_numpy(idx).to(x.device)
        x[t] = fn(x[t], idx)


def _rows(values, x: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Per-row parameters as a ``[N, 1, 1, 1]`` tensor on ``x``'s device."""
    return torch.as_tensor(np.asarray(values), dtype=dtype).to(x.device).view(-1, 1, 1, 1)


def _to_uint8(y: torch.Tensor) -> torch.Tensor:
    return y.clamp_(0, 255).to(torch.uint8)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """float32 ``[N, 1, H, W]``: 0.2989·R + 0.587·G + 0.114·B, accumulated as torchvision does."""
    r, g, b = x.unbind(1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor) -> torch.Tensor:
    """uint8 ``trunc(clamp(f·x + (1 − f)·other))`` per row; ``other`` float32, broadcast against ``x``."""
    f = np.asarray(factor, dtype=np.float64)
    scaled = x.float().mul_(_rows(f, x))
    return _to_uint8(torch.addcmul(scaled, other.expand_as(scaled), _rows(1.0 - f, x).expand_as(scaled)))


# ---------------------------------------------------------------------------------------------- colour
def brightness(x: torch.Tensor, factor) -> torch.Tensor:
    return _to_uint8(x.float().mul_(_rows(factor, x)))


def saturation(x: torch.Tensor, factor) -> torch.Tensor:
    return _blend(x, _luma(x).floor_(), factor)


def contrast(x: torch.Tensor, factor) -> torch.Tensor:
    mean = _luma(x).floor_().mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, factor)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Three equal channels of the truncated luma (``rgb_to_grayscale(num_output_channels=3)``)."""
    return _luma(x).to(torch.uint8).expand_as(x).contiguous(memory_format=_format(x))


def _format(x: torch.Tensor) -> torch.memory_format:
    nhwc = x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if nhwc else torch.contiguous_format


def _rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """float ``[N, 3, H, W]`` in [0, 1] → (h, s, v), h in [0, 1) (Pillow's conversion, as torchvision)."""
    r, g, _ = img.unbind(1)
    lo, hi = torch.aminmax(img, dim=1)
    flat = hi == lo
    spread = hi - lo
    ones = torch.ones_like(hi)
    s = spread / torch.where(flat, ones, hi)
    rc, gc, bc = ((hi.unsqueeze(1) - img) / torch.where(flat, ones, spread).unsqueeze(1)).unbind(1)
    not_r = hi != r
    is_g = hi == g
    h = (bc - gc).mul_(~not_r)
    h = h.add_((rc + 2.0).sub_(bc).mul_(is_g & not_r))
    h = h.add_((gc + 4.0).sub_(rc).mul_(not_r & ~is_g))
    h = h.mul_(1.0 / 6.0).add_(1.0).fmod_(1.0)
    return torch.stack((h, s, hi), dim=1)


# For sector i = floor(6h) mod 6, which of (v, p, q, t) each of R, G, B takes.
_SECTORS = ((0, 2, 1, 1, 3, 0), (3, 0, 0, 2, 1, 1), (1, 1, 3, 0, 0, 2))


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv.unbind(1)
    h6 = h * 6
    sector = torch.floor(h6)
    frac = h6.sub_(sector)
    sector = sector.to(torch.int32).remainder_(6)
    sf = s * frac
    one_minus_s = 1.0 - s
    q = (1.0 - sf).mul_(v).clamp_(0.0, 1.0)
    t = sf.add_(one_minus_s).mul_(v).clamp_(0.0, 1.0)
    p = one_minus_s.mul_(v).clamp_(0.0, 1.0)
    vpqt = torch.stack((v, p, q, t), dim=1)
    select = torch.tensor(_SECTORS, dtype=torch.long, device=hsv.device)[:, sector].movedim(0, 1)
    return vpqt.gather(1, select)


def hue(x: torch.Tensor, factor) -> torch.Tensor:
    """Rotate the hue by ``factor`` ∈ [−0.5, 0.5] of a turn (through float HSV, as torchvision)."""
    hsv = _rgb_to_hsv(x.float().mul_(1.0 / 255))
    h, s, v = hsv.unbind(1)
    h = h.add(_rows(factor, x).view(-1, 1, 1)).remainder_(1.0)
    rgb = _hsv_to_rgb(torch.stack((h, s, v), dim=1))
    return rgb.mul_(255 + 1.0 - 1e-3).to(torch.uint8)


# ---------------------------------------------------------------------------------------------- Pillow's
# timm's RandAugment runs Pillow's ImageEnhance / ImageOps, whose colour, contrast and autocontrast round
# otherwise than torchvision's: an integer luma, an integer contrast mean, Image.blend's trunc(d + f·(x − d)).
def _pil_luma(x: torch.Tensor) -> torch.Tensor:
    """int32 ``[N, 1, H, W]``: Pillow's RGB → L, ``(19595·R + 38470·G + 7471·B + 2¹⁵) >> 16``."""
    r, g, b = x.to(torch.int32).unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 32768) >> 16).unsqueeze(1)


def _pil_blend(degenerate: torch.Tensor, x: torch.Tensor, factor) -> torch.Tensor:
    """``Image.blend(degenerate, x, f)`` on uint8: float32 ``d + f·(x − d)``, clipped, truncated."""
    d = degenerate.float()
    return _to_uint8(x.float().sub_(d).mul_(_rows(factor, x)).add_(d))


def saturation_pil(x: torch.Tensor, factor) -> torch.Tensor:
    """``ImageEnhance.Color(img).enhance(f)``."""
    return _pil_blend(_pil_luma(x), x, factor)


def contrast_pil(x: torch.Tensor, factor) -> torch.Tensor:
    """``ImageEnhance.Contrast(img).enhance(f)``: toward the luma's mean rounded to an integer."""
    luma = _pil_luma(x)
    mean = luma.sum(dim=(-3, -2, -1), keepdim=True).double().div_(luma[0].numel())
    return _pil_blend(mean.add_(0.5).floor_(), x, factor)


def autocontrast_pil(x: torch.Tensor) -> torch.Tensor:
    """``ImageOps.autocontrast(img)``: per channel ``int(v·255/(hi − lo) − lo·255/(hi − lo))`` in double."""
    xd = x.double()
    lo = xd.amin(dim=(-2, -1), keepdim=True)
    hi = xd.amax(dim=(-2, -1), keepdim=True)
    scale = torch.full_like(lo, 255.0).div_((hi - lo).clamp_(min=1.0))  # a true division, as Python's
    out = _to_uint8(xd.mul(scale).add_(-lo * scale).trunc_())
    return torch.where(hi > lo, out, x)


def invert(x: torch.Tensor) -> torch.Tensor:
    return x.bitwise_not()


def posterize(x: torch.Tensor, bits) -> torch.Tensor:
    """Keep the ``bits`` high bits of every value (0 bits: black; 8: unchanged)."""
    b = np.asarray(bits, dtype=np.int64)
    mask = ((1 << b) - 1) << (8 - b)
    return x & _rows(mask.astype(np.uint8), x, torch.uint8)


def solarize(x: torch.Tensor, threshold) -> torch.Tensor:
    """Invert every value ≥ ``threshold`` (a threshold above 255 changes nothing)."""
    return torch.where(x >= _rows(threshold, x), x.bitwise_not(), x)


def solarize_add(x: torch.Tensor, add, threshold: int = 128) -> torch.Tensor:
    """timm's SolarizeAdd: values below ``threshold`` gain ``add`` (saturating at 255), the rest stay."""
    raised = (x.to(torch.int16) + _rows(add, x, torch.int16)).clamp_(max=255).to(torch.uint8)
    return torch.where(x < threshold, raised, x)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Stretch every channel of every image to [0, 255] (a flat channel is left as it is)."""
    xf = x.float()
    lo = xf.amin(dim=(-2, -1), keepdim=True)
    hi = xf.amax(dim=(-2, -1), keepdim=True)
    flat = hi == lo
    inv_scale = (hi - lo).mul_(1.0 / 255)
    lo = lo.masked_fill(flat, 0.0)
    inv_scale = inv_scale.masked_fill(flat, 1.0)
    return _to_uint8(xf.sub_(lo).div_(inv_scale))


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per channel with Pillow's lookup table.

    For a channel with histogram ``n`` and ``step = (pixels − n[last used value]) // 255``:
    ``lut[v] = (step // 2 + Σ_{u<v} n[u]) // step`` (clamped to 255); ``step == 0`` leaves the channel
    as it is.
    """
    N, C, H, W = x.shape
    flat = x.reshape(N * C, H * W).long()
    hist = torch.zeros((N * C, 256), dtype=torch.int64, device=x.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat))
    cum = hist.cumsum(1)
    last = cum.argmax(1, keepdim=True)  # the first bin reaching the total: the largest value present
    step = (H * W - hist.gather(1, last)).div_(255, rounding_mode="floor")
    below = torch.cat([torch.zeros_like(cum[:, :1]), cum[:, :-1]], 1)
    lut = (below + step // 2).div_(step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
    out = lut.gather(1, flat).to(torch.uint8).view(N, C, H, W)
    keep = (step == 0).view(N, C, 1, 1)
    return torch.where(keep, x, out.contiguous(memory_format=_format(x)))


# ---------------------------------------------------------------------------------------------- filters
def gaussian_blur(x: torch.Tensor, sigma, kernel_size: int) -> torch.Tensor:
    """Gaussian blur of standard deviation ``sigma`` (per row) with a ``kernel_size`` square kernel, reflect
    padding, rounded: torchvision's kernel ``softmax(−(t/σ)²)`` over ``t = linspace(±(k−1)/(2√2))``."""
    N, C, H, W = x.shape
    k = int(kernel_size)
    lim = (k - 1) / (2.0 * math.sqrt(2.0))
    t = torch.linspace(-lim, lim, steps=k, device=x.device)
    s = torch.as_tensor(np.asarray(sigma), dtype=torch.float32).to(x.device).view(-1, 1)
    k1 = torch.softmax(t.div(s).pow(2).neg(), dim=1)  # [N, k]
    k2 = (k1.unsqueeze(2) * k1.unsqueeze(1)).repeat_interleave(C, dim=0).unsqueeze(1)  # [N·C, 1, k, k]
    padded = F.pad(x.float().reshape(1, N * C, H, W), [k // 2] * 4, mode="reflect")
    out = F.conv2d(padded, k2, groups=N * C).view(N, C, H, W)
    return out.round_().to(torch.uint8).contiguous(memory_format=_format(x))


_SMOOTH = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0


def sharpness(x: torch.Tensor, factor) -> torch.Tensor:
    """Blend the inside of the image with its 3×3 smoothing (Pillow's SMOOTH filter); borders stay."""
    N, C, H, W = x.shape
    if H <= 2 or W <= 2:
        return x.clone()
    out = x.float().contiguous()
    kernel = _SMOOTH.to(x.device).expand(C, 1, 3, 3)
    smooth = F.conv2d(out, kernel, groups=C).round_()
    inside = out[..., 1:-1, 1:-1]
    f = np.asarray(factor, dtype=np.float64)
    inside.copy_(torch.addcmul(inside, smooth.sub_(inside), _rows(1.0 - f, x).expand_as(smooth)))
    return _to_uint8(out).contiguous(memory_format=_format(x))


# ---------------------------------------------------------------------------------------------- geometry
def inverse_affine(center, angle: float, translate, shear) -> list[float]:
    """The 2×3 matrix mapping output to input pixel coordinates for ``rotate(angle)`` (degrees,
    counter-clockwise) after ``shear`` (degrees, x and y) about ``center``, then ``translate`` — the
    inverse of ``T·C·R·Sh·C⁻¹`` (scale 1; coordinates relative to the image centre, as torchvision)."""
    rot = math.radians(angle)
    sx, sy = math.radians(shear[0]), math.radians(shear[1])
    cx, cy = center
    tx, ty = translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -(a * math.tan(sx) + math.sin(rot))
    c = math.sin(rot - sy) / math.cos(sy)
    d = math.cos(rot) - c * math.tan(sx)
    m = [d, -b, 0.0, -c, a, 0.0]  # the rotation-shear block has determinant 1
    m[2] += cx - m[0] * (cx + tx) - m[1] * (cy + ty)
    m[5] += cy - m[3] * (cx + tx) - m[4] * (cy + ty)
    return m


def affine(x: torch.Tensor, matrices, mode: str = "nearest", fill=(0, 0, 0)) -> torch.Tensor:
    """Resample every row through its own inverse matrix (``[N, 6]``, from :func:`inverse_affine`).

    ``mode``: ``nearest`` or ``bilinear`` (torchvision's tensor modes) or ``bicubic`` (``grid_sample``'s,
    A = −0.75). Points outside the image take ``fill``: a ones-channel resampled with the image says how much
    of each output pixel came from inside (nearest: all or nothing; otherwise a blend toward ``fill``).
    """
    N, C, H, W = x.shape
    theta = torch.as_tensor(np.asarray(matrices), dtype=torch.float32).to(x.device).view(N, 2, 3)
    xs = torch.linspace((1.0 - W) * 0.5, (W - 1.0) * 0.5, steps=W, device=x.device)
    ys = torch.linspace((1.0 - H) * 0.5, (H - 1.0) * 0.5, steps=H, device=x.device)
    ones = torch.ones(1, 1, device=x.device)
    base = torch.stack(torch.broadcast_tensors(xs[None, :], ys[:, None], ones), -1)
    scale = torch.tensor([0.5 * W, 0.5 * H], device=x.device)
    grid = base.view(1, H * W, 3).expand(N, -1, -1).bmm(theta.transpose(1, 2).div(scale))
    img = torch.cat([x.float(), torch.ones((N, 1, H, W), device=x.device)], dim=1)
    out = F.grid_sample(img, grid.view(N, H, W, 2), mode=mode, padding_mode="zeros", align_corners=False)
    pixels, inside = out[:, :C], out[:, C:]
    fill_t = torch.tensor(fill, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    if mode == "nearest":
        pixels = torch.where(inside < 0.5, fill_t.expand_as(pixels), pixels)
    else:
        pixels = pixels.sub_(fill_t).mul_(inside).add_(fill_t)
    return _to_uint8(pixels.round_()).contiguous(memory_format=_format(x))


def pad_crop_flip(x: torch.Tensor, offsets, flips, pad: int) -> torch.Tensor:
    """torchvision ``RandomCrop(S, padding=pad)`` then ``RandomHorizontalFlip`` for every row, as one gather.

    Output pixel ``(i, j)`` of row k reads input pixel ``(dy_k − pad + i, dx_k − pad + j)`` (column mirrored
    for flipped rows), or a zero pixel appended after the data where that falls in the padding: the padded
    image is never built. ``offsets``: int ``[N, 2]`` (dy, dx) in ``[0, 2·pad]``.
    """
    N, C, H, W = x.shape
    dev = x.device
    pixels = torch.cat([x.permute(0, 2, 3, 1).reshape(-1, C), x.new_zeros(1, C)])
    off = torch.as_tensor(np.asarray(offsets), dtype=torch.int64).to(dev)
    iy = off[:, :1] - pad + torch.arange(H, device=dev)  # [N, H] input row of each output row
    ix = off[:, 1:] - pad + torch.arange(W, device=dev)  # [N, W] input column of each output column
    ix = torch.where(torch.as_tensor(np.asarray(flips), dtype=torch.bool).to(dev)[:, None], ix.flip(1), ix)
    inside = ((iy >= 0) & (iy < H))[:, :, None] & ((ix >= 0) & (ix < W))[:, None, :]
    row = torch.arange(N, device=dev)[:, None, None] * (H * W)
    flat = row + iy.clamp(0, H - 1)[:, :, None] * W + ix.clamp(0, W - 1)[:, None, :]
    flat = torch.where(inside, flat, N * H * W)
    out = pixels.index_select(0, flat.reshape(-1)).view(N, H, W, C)
    return out.permute(0, 3, 1, 2)
