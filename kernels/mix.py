"""Fused mix + normalise + label weights: one pass over the pixels of a mixed batch.

For sample ``i`` of a batch the op reads image ``a[idx_a[i]]`` and its partner ``b[idx_b[i]]`` (uint8, NHWC,
the ``Batch`` layout), mixes them with the sample's own mode and λ, normalises, and writes
``out[i]`` as ``[3, H, W]`` in ``torch.channels_last`` memory format (so the bytes are NHWC, the order they
were read in: input and output offsets coincide and every load and store is contiguous). In the same launch
it writes the sample's label weight ``λ_y`` (label = λ_y·y_a + (1 − λ_y)·y_b).

Semantics (defined by :func:`mix_reference`; the Triton and numba kernels match it bit for bit in every
output dtype — the Triton kernel is launched with FMA contraction off for that reason; only Triton's CPU
*interpreter* rounds fp32 → bf16 by truncation, one bf16 ulp away):

* per-pixel weight of ``a``:  ``w = 1`` for mode 0 (none), ``w = λ_x`` for mode 1 (mixup),
  ``w = 0`` inside the sample's box and ``1`` outside for mode 2 (cutmix);
* mixed value in 0–255 units: ``v = w·a + (1 − w)·b`` in fp32 (for w ∈ {0, 1} this is exactly a or b);
* normalised: ``out = v·scale_c + shift_c`` with ``scale_c = 1/(255·std_c)``, ``shift_c = −mean_c/std_c``:
  that is ``(v/255 − mean_c)/std_c`` with ``mean``/``std`` given **in 0–1 units** (torchvision's convention,
  e.g. ImageNet ``(0.485, 0.456, 0.406)`` / ``(0.229, 0.224, 0.225)``), folded into one multiply-add;
  then rounded once to the output dtype (fp32, bf16 or fp16).
* Boxes are ``int32 [B, 4]`` = ``(y0, x0, y1, x1)``, half-open, pasted from ``b``. They are clipped to the
  image inside the op, so the pasted region is always ``[clip(y0), clip(y1)) × [clip(x0), clip(x1))``;
  an empty box (``y0 == y1``) pastes nothing.
* The pixel λ actually applied: ``λ_pix = 1`` (none), ``λ_x`` (mixup), ``1 − area/(H·W)`` of the clipped
  box (cutmix). Label rules (REFERENCE.md §Mixing rules), all in fp32, with ``n_a, n_b`` the training counts
  of the two classes:

  ========  =====================================================================================
  mixup     λ_y = λ_pix                              (``cutmix`` is the same rule: λ_pix already
  cutmix    λ_y = λ_pix                               is the area-corrected λ for boxed samples)
  remix     λ_y = 0 if n_a ≥ κ·n_b and λ_pix < τ; 1 if κ·n_a ≤ n_b and 1 − λ_pix < τ; else λ_pix
            (κ = 3, τ = 0.5 by default; it moves the label to the minority class of the pair)
  cpmix     λ_y = (1 − κ)·λ_pix + κ·n_b/(n_a + n_b)  (fastlt's reconstruction of CP-Mix; κ ∈ [0, 1],
            default 0.5)
  lfm       λ_y = clamp(λ_pix − α·(n_a − n_b)/(n_a + n_b), 0, 1)   (α = 1 by default)
  ========  =====================================================================================

  Samples with mode 0 are not mixed, so their λ_y is 1 under every rule. A pair with ``n_a + n_b = 0``
  carries no imbalance information and keeps ``λ_y = λ_pix``.

Gather fusion: ``idx_a``/``idx_b`` index rows of ``a``/``b``, so a trainer passes the whole batch twice,
``mix_images(images, images, idx_a=rows_a, idx_b=rows_b, ...)``, and no gathered copy is ever made.
Contiguous slices (``images[plan.segment('a')]``) work just as well and cost nothing either.

Implementations (``kernels/_dispatch.py`` picks): Triton on CUDA — grid (sample, 1024-byte block), one
branch per mode so loads stay vectorised, λ_y from the block-0 program; measured on an H100 at B = 128,
224², bf16 out, all-mixup: 31 µs, ≈ 2.5 TB/s of reads + writes, 87 % of a device copy of the same bytes
(``tools/bench kernels``). numba on CPU — one parallel pass per image row writing fp32 (a bf16/fp16 output
adds one cast). The torch reference is several passes and exists to be read and tested against.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch

from . import _dispatch
from ._dispatch import numba, prange, tl, triton

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NONE, MIXUP, CUTMIX = 0, 1, 2  # per-sample mode codes
# Label-rule codes (see RULES). RULE_PIXEL: λ_y is the pixel λ, the rule of mixup and cutmix alike.
RULE_PIXEL, RULE_REMIX, RULE_CPMIX, RULE_LFM = 0, 1, 2, 3
# Below this many pixels the kernel finds a pixel's row with one fp32 multiply (exact there, see the kernel).
FP32_ROW_LIMIT = 2**22

# Rule name -> (kernel code, default parameters). mixup and cutmix share a code: λ_pix is already right.
RULES: dict[str, tuple[int, dict[str, float]]] = {
    "mixup": (RULE_PIXEL, {}),
    "cutmix": (RULE_PIXEL, {}),
    "remix": (RULE_REMIX, {"kappa": 3.0, "tau": 0.5}),
    "cpmix": (RULE_CPMIX, {"kappa": 0.5}),
    "lfm": (RULE_LFM, {"alpha": 1.0}),
}
_OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class Mixed(NamedTuple):
    images: torch.Tensor  # [B, 3, H, W] channels_last, normalised, out_dtype
    lam_y: torch.Tensor  # float32 [B]: label weight of y_a


# ----------------------------------------------------------------------------------------------------------
# Argument handling shared by every implementation
# ----------------------------------------------------------------------------------------------------------


def rule_params(rule: str, params: dict) -> tuple[int, float, float, float]:
    """Validate ``rule`` and its parameters; returns ``(code, kappa, tau, alpha)`` with defaults filled in."""
    if rule not in RULES:
        raise ValueError(f"unknown mixing rule {rule!r}; expected one of {', '.join(RULES)}")
    code, defaults = RULES[rule]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        valid = ", ".join(defaults) or "none"
        raise ValueError(f"rule {rule!r} takes no parameter {', '.join(unknown)}; its parameters: {valid}")
    p = {**defaults, **{k: float(v) for k, v in params.items()}}
    kappa, tau, alpha = p.get("kappa", 0.0), p.get("tau", 0.0), p.get("alpha", 0.0)
    if rule == "remix" and not (kappa >= 1.0 and 0.0 <= tau <= 1.0):
        raise ValueError(f"remix needs kappa >= 1 and 0 <= tau <= 1, got kappa={kappa}, tau={tau}")
    if rule == "cpmix" and not 0.0 <= kappa <= 1.0:
        raise ValueError(f"cpmix needs 0 <= kappa <= 1, got kappa={kappa}")
    if rule == "lfm" and not alpha >= 0.0:
        raise ValueError(f"lfm needs alpha >= 0, got alpha={alpha}")
    return code, kappa, tau, alpha


def normalize_coefficients(mean, std, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale = 1/(255·std)``, ``shift = −mean/std`` as fp32 [3] tensors on ``device`` (mean/std in 0–1
    units), computed in float64 and rounded once so every implementation uses the same two constants."""
    key = (_channels(mean, "mean"), _channels(std, "std"))
    return _coefficient_tensors(*key, str(torch.device(device)))


def _channels(x, name: str) -> tuple[float, float, float]:
    if isinstance(x, (tuple, list)):  # the usual case, without building a tensor on every call
        values = tuple(float(v) for v in x)
    else:
        values = tuple(float(v) for v in torch.as_tensor(x, dtype=torch.float64).flatten().tolist())
    if len(values) != 3:
        raise ValueError(f"{name} needs 3 channel values, got {len(values)}")
    return values


@functools.lru_cache(maxsize=32)
def _coefficients(mean: tuple, std: tuple) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Python floats holding the fp32 values (exactly representable), for kernels taking scalar arguments."""
    m = torch.tensor(mean, dtype=torch.float64)
    sd = torch.tensor(std, dtype=torch.float64)
    if not bool((sd > 0).all()):
        raise ValueError(f"std must be positive per channel, got {list(std)}")
    if float(m.abs().max()) > 1.0 or float(sd.max()) > 1.0:
        raise ValueError(
            f"mean/std are in 0-1 units (e.g. ImageNet {IMAGENET_MEAN} / {IMAGENET_STD}); "
            f"got mean={list(mean)}, std={list(std)} (divide 0-255 values by 255)"
        )
    scale = (1.0 / (255.0 * sd)).to(torch.float32)
    shift = (-m / sd).to(torch.float32)
    return tuple(scale.tolist()), tuple(shift.tolist())


@functools.lru_cache(maxsize=32)
def _coefficient_tensors(mean: tuple, std: tuple, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    # Cached per device: a host-to-device copy per call would stall the stream for two 12-byte tensors.
    scale, shift = _coefficients(mean, std)
    f32 = dict(dtype=torch.float32, device=device)
    return torch.tensor(scale, **f32), torch.tensor(shift, **f32)


def _check(cond: torch.Tensor, msg: str) -> None:
    # On CPU a plain check is cheap; on CUDA (only with check=True) an async assert avoids a host sync.
    if cond.device.type == "cuda":
        torch._assert_async(cond.all(), msg)
    elif not bool(cond.all()):
        raise ValueError(msg)


def _images(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
        what = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be uint8 [N, H, W, 3] (NHWC, the Batch layout), got {what}")
    return x.contiguous()


def _index(idx, n_rows: int, batch: int | None, name: str, device, check: bool) -> torch.Tensor:
    if idx is None:
        if batch is not None and batch > n_rows:
            raise ValueError(
                f"{name} is None, so sample i reads row i, but only {n_rows} rows for {batch} samples"
            )
        return torch.arange(n_rows if batch is None else batch, device=device)
    idx = torch.as_tensor(idx, device=device)
    if idx.dim() != 1 or idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be an int64 [B] row index, got {idx.dtype} {tuple(idx.shape)}")
    if check and idx.numel():
        _check((idx >= 0) & (idx < n_rows), f"{name} has rows outside [0, {n_rows})")
    return idx.to(torch.int64).contiguous()


def _per_sample(x, batch: int, dtype, name: str, device, default) -> torch.Tensor:
    if x is None:
        return torch.full((batch,), default, dtype=dtype, device=device)
    x = torch.as_tensor(x, device=device)
    if x.dim() == 0:
        x = x.expand(batch)
    if x.shape != (batch,):
        raise ValueError(f"{name} must have shape [{batch}] (one value per sample), got {tuple(x.shape)}")
    return x.to(dtype).contiguous()


def _uses(mode, mode_t: torch.Tensor, code: int, default: int, check: bool) -> bool:
    """Does any sample use mode ``code``? Answered on the host when the caller gave ``mode`` as None (the
    default) or a Python number; a mode *tensor* is read (a device sync on CUDA) only when checking."""
    if mode is None:
        return default == code
    if isinstance(mode, (int, float)):
        return int(mode) == code
    return bool(check) and bool((mode_t == code).any())


def _boxes(boxes, batch: int, device) -> torch.Tensor:
    if boxes is None:
        return torch.zeros((batch, 4), dtype=torch.int32, device=device)
    boxes = torch.as_tensor(boxes, device=device)
    if boxes.shape != (batch, 4) or boxes.is_floating_point():
        raise ValueError(
            f"boxes must be int32 [{batch}, 4] = (y0, x0, y1, x1), got {boxes.dtype} {tuple(boxes.shape)}"
        )
    return boxes.to(torch.int32).contiguous()


def _counts(class_counts, y_a, y_b, batch: int, device, check: bool) -> tuple[torch.Tensor, ...]:
    if class_counts is None or y_a is None or y_b is None:
        raise ValueError(
            "this label rule needs the pair's classes: pass y_a, y_b (int64 [B]) and class_counts [C]"
        )
    counts = torch.as_tensor(class_counts, device=device)
    if counts.dim() != 1:
        raise ValueError(f"class_counts must be [C], got shape {tuple(counts.shape)}")
    counts = counts.to(torch.float32).contiguous()
    if check:
        _check(counts >= 0, "class_counts must be non-negative")
    ys = []
    for name, y in (("y_a", y_a), ("y_b", y_b)):
        y = _per_sample(y, batch, torch.int64, name, device, 0)
        if check:
            _check((y >= 0) & (y < counts.numel()), f"{name} has labels outside [0, {counts.numel()})")
        ys.append(y)
    return counts, ys[0], ys[1]


# ----------------------------------------------------------------------------------------------------------
# Torch reference: the definition of the op
# ----------------------------------------------------------------------------------------------------------


def clip_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Clip ``(y0, x0, y1, x1)`` boxes to the image; an inverted box becomes empty (y1 = y0 / x1 = x0)."""
    y0 = boxes[:, 0].clamp(0, height)
    x0 = boxes[:, 1].clamp(0, width)
    y1 = torch.maximum(boxes[:, 2].clamp(0, height), y0)
    x1 = torch.maximum(boxes[:, 3].clamp(0, width), x0)
    return torch.stack([y0, x0, y1, x1], 1)


def pixel_lambda(lam: torch.Tensor, mode: torch.Tensor, boxes: torch.Tensor, height: int, width: int):
    """The fraction of each output image that comes from ``a``: 1 / λ_x / 1 − clipped box area/(H·W)."""
    c = clip_boxes(boxes, height, width)
    area = ((c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])).to(torch.float32)
    lam_box = 1.0 - area / float(height * width)  # a Python number: no host-to-device copy (exact in fp32)
    one = torch.ones_like(lam)
    return torch.where(mode == CUTMIX, lam_box, torch.where(mode == MIXUP, lam, one))


def label_rule_reference(code: int, lam_pix, mode, n_a, n_b, kappa: float, tau: float, alpha: float):
    """λ_y from the pixel λ and the pair's class counts (fp32, see the module docstring for the table)."""
    f32 = dict(dtype=torch.float32, device=lam_pix.device)
    k, t, a = (torch.tensor(v, **f32) for v in (kappa, tau, alpha))
    one, zero = torch.ones((), **f32), torch.zeros((), **f32)
    if code == RULE_PIXEL:  # mixup / cutmix: the pixel λ, no counts involved
        return torch.where(mode == NONE, one, lam_pix)
    total = n_a + n_b
    safe = torch.where(total > 0, total, one)
    if code == RULE_REMIX:
        to_b = (n_a >= k * n_b) & (lam_pix < t)
        to_a = (k * n_a <= n_b) & ((one - lam_pix) < t)
        lam_y = torch.where(to_b, zero, torch.where(to_a, one, lam_pix))
    elif code == RULE_CPMIX:
        lam_y = (one - k) * lam_pix + k * (n_b / safe)
    else:  # RULE_LFM
        lam_y = (lam_pix - a * ((n_a - n_b) / safe)).clamp(0.0, 1.0)
    lam_y = torch.where(total > 0, lam_y, lam_pix)
    return torch.where(mode == NONE, one, lam_y)


def mix_reference(a, b, idx_a, idx_b, lam, mode, boxes, scale, shift, out_dtype) -> torch.Tensor:
    """Pixels: gather, mix by the per-pixel weight of ``a``, normalise, round once (channels_last)."""
    va = a[idx_a].to(torch.float32)
    if b is None:
        v = va
    else:
        vb = b[idx_b].to(torch.float32)
        _, height, width, _ = va.shape
        c = clip_boxes(boxes, height, width)
        ys = torch.arange(height, device=a.device).view(1, height, 1)
        xs = torch.arange(width, device=a.device).view(1, 1, width)
        inside = (
            (ys >= c[:, 0].view(-1, 1, 1))
            & (ys < c[:, 2].view(-1, 1, 1))
            & (xs >= c[:, 1].view(-1, 1, 1))
            & (xs < c[:, 3].view(-1, 1, 1))
        )
        one = torch.ones((), dtype=torch.float32, device=a.device)
        w_flat = torch.where(mode == MIXUP, lam, one).view(-1, 1, 1)
        w = torch.where((mode == CUTMIX).view(-1, 1, 1), (~inside).to(torch.float32), w_flat).unsqueeze(-1)
        v = w * va + (one - w) * vb
    out = v * scale + shift
    return out.to(out_dtype).permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------------------------------------
# Triton kernel: grid (B, cdiv(H·W·3, BLOCK)); program (i, j) writes BLOCK consecutive bytes' worth of
# outputs of sample i, and program (i, 0) also writes λ_y[i].
# ----------------------------------------------------------------------------------------------------------


if tl is not None:
    # A Triton kernel reads only module globals that are tl.constexpr instances: twins of the codes above.
    _TL_NONE, _TL_MIXUP, _TL_CUTMIX = tl.constexpr(NONE), tl.constexpr(MIXUP), tl.constexpr(CUTMIX)
    _TL_RULE_PIXEL, _TL_RULE_REMIX = tl.constexpr(RULE_PIXEL), tl.constexpr(RULE_REMIX)
    _TL_RULE_CPMIX = tl.constexpr(RULE_CPMIX)


# fmt: off
def _mix_kernel(
    a_ptr, b_ptr, ia_ptr, ib_ptr, lam_ptr, mode_ptr, box_ptr, ya_ptr, yb_ptr, counts_ptr, out_ptr, lamy_ptr,
    s0, s1, s2, t0, t1, t2,  # per-channel scale / shift
    H, W, inv_w, HW3, N_A, N_B, C, kappa, tau, alpha,
    HAS_B: tl.constexpr, RULE: tl.constexpr, SMALL: tl.constexpr, BLOCK: tl.constexpr,
):
# fmt: on
    i = tl.program_id(0)
    j = tl.program_id(1)
    # HW3 = H·W·3 is its own argument so Triton's divisibility specialisation sees it (150528 = 16·9408):
    # row bases are then provably aligned and the byte loads and bf16 stores vectorise.
    offs = j * BLOCK + tl.arange(0, BLOCK)
    m = offs < HW3
    c = offs % 3
    scale = tl.where(c == 0, s0, tl.where(c == 1, s1, s2))
    shift = tl.where(c == 0, t0, tl.where(c == 1, t1, t2))
    # Rows are clamped into the tensors: a bad index can give a wrong image, never a read out of bounds
    # (the CPU path and ``check=True`` raise on it). Row bases in int64: N·H·W·3 can overflow int32.
    ra = tl.minimum(tl.maximum(tl.load(ia_ptr + i), 0), N_A - 1).to(tl.int64) * HW3
    out_ptrs = out_ptr + i.to(tl.int64) * HW3 + offs
    out_ty = out_ptr.dtype.element_ty
    if HAS_B:
        rb = tl.minimum(tl.maximum(tl.load(ib_ptr + i), 0), N_B - 1).to(tl.int64) * HW3
        mode = tl.load(mode_ptr + i)
        lam = tl.load(lam_ptr + i)
        y0 = tl.minimum(tl.maximum(tl.load(box_ptr + 4 * i + 0), 0), H)
        x0 = tl.minimum(tl.maximum(tl.load(box_ptr + 4 * i + 1), 0), W)
        y1 = tl.maximum(tl.minimum(tl.maximum(tl.load(box_ptr + 4 * i + 2), 0), H), y0)
        x1 = tl.maximum(tl.minimum(tl.maximum(tl.load(box_ptr + 4 * i + 3), 0), W), x0)
        # One branch per mode, decided once per program: each keeps its loads uniform (vectorisable), and
        # only boxed samples pay for the integer divisions that recover (y, x).
        if mode == _TL_MIXUP:
            va = tl.load(a_ptr + ra + offs, mask=m, other=0).to(tl.float32)
            vb = tl.load(b_ptr + rb + offs, mask=m, other=0).to(tl.float32)
            v = lam * va + (1.0 - lam) * vb
            tl.store(out_ptrs, (v * scale + shift).to(out_ty), mask=m)
        elif mode == _TL_CUTMIX:
            pix = offs // 3  # division by a constant: a multiply and a shift
            if SMALL:
                # y = ⌊pix/W⌋ through one fp32 multiply instead of an integer division (the kernel's
                # bottleneck for boxed samples). (pix + ½)/W sits ≥ ½/W away from an integer, and the fp32
                # product errs by < 2⁻²³·pix/W, so the floor is exact whenever pix < 2²² (H·W < 4.19 M px).
                y = ((pix.to(tl.float32) + 0.5) * inv_w).to(tl.int32)
            else:
                y = pix // W
            x = pix - y * W
            inside = (y >= y0) & (y < y1) & (x >= x0) & (x < x1)
            # w·a + (1 − w)·b with w ∈ {0, 1} is exactly b inside the box and a outside. Both images are
            # read whole: masking each load by the box would make the masks non-uniform and the loads
            # scalar, which on H100 costs more (52 µs vs ~32 µs at B=128, 224²) than the extra bytes of b.
            va = tl.load(a_ptr + ra + offs, mask=m, other=0).to(tl.float32)
            vb = tl.load(b_ptr + rb + offs, mask=m, other=0).to(tl.float32)
            v = tl.where(inside, vb, va)
            tl.store(out_ptrs, (v * scale + shift).to(out_ty), mask=m)
        else:
            va = tl.load(a_ptr + ra + offs, mask=m, other=0).to(tl.float32)
            tl.store(out_ptrs, (va * scale + shift).to(out_ty), mask=m)
        if j == 0:
            area = ((y1 - y0) * (x1 - x0)).to(tl.float32)
            lam_box = 1.0 - tl.math.div_rn(area, (H * W).to(tl.float32))
            lam_pix = tl.where(mode == _TL_CUTMIX, lam_box, tl.where(mode == _TL_MIXUP, lam, 1.0))
            lam_y = lam_pix
            if RULE != _TL_RULE_PIXEL:
                n_a = tl.load(counts_ptr + tl.minimum(tl.maximum(tl.load(ya_ptr + i), 0), C - 1))
                n_b = tl.load(counts_ptr + tl.minimum(tl.maximum(tl.load(yb_ptr + i), 0), C - 1))
                total = n_a + n_b
                safe = tl.where(total > 0, total, 1.0)
                if RULE == _TL_RULE_REMIX:
                    to_b = (n_a >= kappa * n_b) & (lam_pix < tau)
                    to_a = (kappa * n_a <= n_b) & ((1.0 - lam_pix) < tau)
                    lam_y = tl.where(to_b, 0.0, tl.where(to_a, 1.0, lam_pix))
                elif RULE == _TL_RULE_CPMIX:
                    lam_y = (1.0 - kappa) * lam_pix + kappa * tl.math.div_rn(n_b, safe)
                else:  # RULE_LFM
                    lam_y = lam_pix - alpha * tl.math.div_rn(n_a - n_b, safe)
                    lam_y = tl.minimum(tl.maximum(lam_y, 0.0), 1.0)
                lam_y = tl.where(total > 0, lam_y, lam_pix)
            lam_y = tl.where(mode == _TL_NONE, 1.0, lam_y)
            tl.store(lamy_ptr + i, lam_y)
    else:
        va = tl.load(a_ptr + ra + offs, mask=m, other=0).to(tl.float32)
        tl.store(out_ptrs, (va * scale + shift).to(out_ty), mask=m)


def _mix_triton(
    a, b, idx_a, idx_b, lam, mode, boxes, coeffs, y_a, y_b, counts, code, kappa, tau, alpha, out_dtype,
    block: int = 1024,
):  # fmt: skip
    batch, (height, width) = idx_a.numel(), a.shape[1:3]
    out = torch.empty((batch, height, width, 3), dtype=out_dtype, device=a.device)
    has_b = b is not None
    # With a partner every λ_y is written by the kernel; without one every label stays y_a.
    lam_y = (torch.empty if has_b else torch.ones)(batch, dtype=torch.float32, device=a.device)
    if batch == 0:
        return out, lam_y
    (s0, s1, s2), (t0, t1, t2) = coeffs
    dummy = idx_a  # never dereferenced: the branches that read these pointers are compiled out
    grid = (batch, triton.cdiv(height * width * 3, block))
    _dispatch.jit(_mix_kernel)[grid](
        a, b if has_b else a, idx_a, idx_b if has_b else dummy, lam, mode, boxes,
        y_a if y_a is not None else dummy, y_b if y_b is not None else dummy,
        counts if counts is not None else lam, out, lam_y,
        s0, s1, s2, t0, t1, t2,
        height, width, 1.0 / width, height * width * 3, a.shape[0], (b if has_b else a).shape[0],
        counts.numel() if counts is not None else 1, kappa, tau, alpha,
        HAS_B=has_b, RULE=code, SMALL=height * width < FP32_ROW_LIMIT, BLOCK=block, num_warps=4,
        enable_fp_fusion=False,
    )  # fmt: skip
    return out, lam_y


# ----------------------------------------------------------------------------------------------------------
# numba CPU fast path: one parallel pass per image row, same fp32 operation order as the reference.
# ----------------------------------------------------------------------------------------------------------


def _normalise_span(o, p, scale, shift):
    """``o[k] = p[k]·scale[k] + shift[k]``: none / CutMix spans, a straight copy. Callers pass slices, so
    k runs from 0 and numba can drop its negative-index wraparound test, which would block vectorising."""
    for k in range(o.shape[0]):
        o[k] = np.float32(p[k]) * scale[k] + shift[k]


def _mix_rows(a, b, ia, ib, w_sample, mode, boxes, scale, shift, out, has_b):
    # Rows are handled flat (W·3 values) with the per-channel constants tiled to the row's length, so the
    # inner loops have no channel arithmetic and LLVM vectorises them: 4× faster than a loop over pixels
    # that unrolls the 3 channels, with the same fp32 operations in the same order.
    batch, height, n = out.shape[0], out.shape[1], scale.shape[0]
    one = np.float32(1.0)
    # One task per (sample, row): B·H tasks keep both threads busy even for B = 1.
    for task in prange(batch * height):
        i = task // height
        y = task - i * height
        o = out[i, y].reshape(n)
        # Rows clamped into range like the Triton kernel: with check=False a bad index never reads astray.
        pa = a[min(max(ia[i], 0), a.shape[0] - 1), y].reshape(n)
        rb = min(max(ib[i], 0), b.shape[0] - 1)
        if not has_b or (mode[i] != MIXUP and mode[i] != CUTMIX):  # none (and, unchecked, any other value)
            _normalise_span(o, pa, scale, shift)
        elif mode[i] == MIXUP:
            pb = b[rb, y].reshape(n)
            wa = w_sample[i]
            wb = one - wa
            for k in range(n):
                o[k] = (wa * np.float32(pa[k]) + wb * np.float32(pb[k])) * scale[k] + shift[k]
        else:
            # CutMix (boxes arrive clipped): each pixel is exactly a or b, so the row is three copied spans.
            lo, hi = 0, 0
            if boxes[i, 0] <= y < boxes[i, 2]:
                lo, hi = 3 * boxes[i, 1], 3 * boxes[i, 3]
            pb = b[rb, y].reshape(n)
            _normalise_span(o[:lo], pa[:lo], scale[:lo], shift[:lo])
            _normalise_span(o[lo:hi], pb[lo:hi], scale[lo:hi], shift[lo:hi])
            _normalise_span(o[hi:], pa[hi:], scale[hi:], shift[hi:])


if numba is not None:
    # The helper is compiled first and inlined, so _mix_rows sees a numba function under the same name.
    _normalise_span = numba.njit(inline="always", cache=True, nogil=True)(_normalise_span)
    _mix_rows_jit = numba.njit(parallel=True, cache=True, nogil=True)(_mix_rows)


def _mix_numba(a, b, idx_a, idx_b, lam, mode, boxes, scale, shift, out_dtype):
    batch, (height, width) = idx_a.numel(), a.shape[1:3]
    # numpy allocates large arrays on transparent huge pages (madvise), torch on 4 KiB pages: for a 77 MB
    # output that is the difference between ~20 ms and ~100 ms of first-touch page faults on this machine.
    out = torch.from_numpy(np.empty((batch, height, width, 3), dtype=np.float32))
    if batch:
        has_b = b is not None
        clipped = clip_boxes(boxes, height, width).numpy()
        # The channel constants tiled to one row's W·3 values (see _mix_rows).
        scale_row = np.tile(scale.numpy(), width)
        shift_row = np.tile(shift.numpy(), width)
        _mix_rows_jit(
            a.numpy(), (b if has_b else a).numpy(), idx_a.numpy(), (idx_b if has_b else idx_a).numpy(),
            lam.numpy(), mode.numpy(), clipped, scale_row, shift_row, out.numpy(), has_b,
        )  # fmt: skip
    # Rounding fp32 -> bf16/fp16 afterwards is the reference's single rounding, so results stay identical.
    return out if out_dtype == torch.float32 else out.to(out_dtype)


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------


def mix_images(
    a: torch.Tensor,
    b: torch.Tensor | None = None,
    *,
    idx_a=None,
    idx_b=None,
    lam=None,
    boxes=None,
    mode=None,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    out_dtype: torch.dtype = torch.float32,
    rule: str = "mixup",
    y_a=None,
    y_b=None,
    class_counts=None,
    backend: str | None = None,
    check: bool | None = None,
    **rule_kwargs,
) -> Mixed:
    """Mix, normalise and weigh labels for a batch in one pass. Returns ``Mixed(images, lam_y)``.

    a, b          uint8 ``[N, H, W, 3]`` image stores (may be the same tensor); ``b=None``: normalise only
    idx_a, idx_b  int64 ``[B]``: sample i mixes ``a[idx_a[i]]`` with ``b[idx_b[i]]`` (default: row i)
    lam           float ``[B]`` (or a scalar): λ_x, the weight of ``a`` for mixup samples
    boxes         int32 ``[B, 4]`` ``(y0, x0, y1, x1)`` half-open CutMix boxes (clipped here)
    mode          int ``[B]``: 0 none, 1 mixup, 2 cutmix (default: all mixup, or all cutmix for
                  ``rule='cutmix'``)
    mean, std     per-channel, in 0–1 units
    out_dtype     torch.float32 / bfloat16 / float16; output ``[B, 3, H, W]`` in ``channels_last``
    rule          label rule (``mixup``, ``cutmix``, ``remix``, ``cpmix``, ``lfm``) and its parameters
                  (``kappa``, ``tau``, ``alpha``); rules using class counts need ``y_a``, ``y_b``
                  (int64 ``[B]``) and ``class_counts`` ``[C]`` (training images per class)
    backend       ``None`` (``FASTLT_KERNELS`` or auto), ``'triton'``, ``'numba'``, ``'torch'``
    check         validate index/label/mode/λ values (default: on CPU tensors only — on CUDA each check is a
                  few extra kernel launches per step, as long as the mix itself; the Triton kernel clamps
                  every row and label index into range, so unchecked bad values never read out of bounds)
    """
    code, kappa, tau, alpha = rule_params(rule, rule_kwargs)
    a = _images(a, "a")
    device = a.device
    check = device.type != "cuda" if check is None else bool(check)
    if out_dtype not in _OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {', '.join(map(str, _OUT_DTYPES))}, got {out_dtype}")
    coeffs = (_channels(mean, "mean"), _channels(std, "std"))
    if b is None:
        partnered = (idx_b, lam, boxes, mode)
        if any(x is not None for x in partnered) or code != RULE_PIXEL:
            raise ValueError(
                "b is None (plain normalisation): idx_b, lam, boxes, mode and label rules need a partner b"
            )
        idx_a = _index(idx_a, a.shape[0], None, "idx_a", device, check)
        batch = idx_a.numel()
        lam_t = torch.zeros(batch, dtype=torch.float32, device=device)
        mode_t = torch.zeros(batch, dtype=torch.int32, device=device)
        boxes_t = _boxes(None, batch, device)
        counts = ya = yb = None
    else:
        b = _images(b, "b")
        if b.device != device or b.shape[1:] != a.shape[1:]:
            raise ValueError(
                f"a {tuple(a.shape)} on {a.device} and b {tuple(b.shape)} on {b.device} must share "
                "device and image size"
            )
        if idx_a is None and idx_b is None:
            batch = min(a.shape[0], b.shape[0]) if a.shape[0] == b.shape[0] else -1
            if batch < 0:
                raise ValueError(f"a has {a.shape[0]} rows and b {b.shape[0]}: give idx_a/idx_b to pair them")
        else:
            batch = (idx_a if idx_a is not None else idx_b).shape[0]
        idx_a = _index(idx_a, a.shape[0], batch, "idx_a", device, check)
        idx_b = _index(idx_b, b.shape[0], batch, "idx_b", device, check)
        if idx_a.numel() != idx_b.numel():
            raise ValueError(f"idx_a has {idx_a.numel()} samples and idx_b {idx_b.numel()}")
        default_mode = CUTMIX if rule == "cutmix" else MIXUP
        mode_t = _per_sample(mode, batch, torch.int32, "mode", device, default_mode)
        lam_t = _per_sample(lam, batch, torch.float32, "lam", device, 1.0)
        if check:
            _check(
                (mode_t >= NONE) & (mode_t <= CUTMIX),
                f"mode must be {NONE} (none), {MIXUP} (mixup) or {CUTMIX} (cutmix) per sample",
            )
            _check((lam_t >= 0) & (lam_t <= 1), "lam must lie in [0, 1]")
        if lam is None and _uses(mode, mode_t, MIXUP, default_mode, check):
            raise ValueError("mixup samples need lam (λ_x per sample)")
        if boxes is None and _uses(mode, mode_t, CUTMIX, default_mode, check):
            raise ValueError("cutmix samples need boxes (int32 [B, 4]); see cutmix_boxes()")
        boxes_t = _boxes(boxes, batch, device)
        counts = ya = yb = None
        if code != RULE_PIXEL:
            counts, ya, yb = _counts(class_counts, y_a, y_b, batch, device, check)

    impl = _dispatch.pick(device, backend, has_numba=numba is not None)
    height, width = a.shape[1:3]
    if impl == "triton":
        out, lam_y = _mix_triton(
            a, b, idx_a, idx_b, lam_t, mode_t, boxes_t, _coefficients(*coeffs), ya, yb, counts,
            code, kappa, tau, alpha, out_dtype,
        )  # fmt: skip
        return Mixed(out.permute(0, 3, 1, 2), lam_y)
    scale, shift = _coefficient_tensors(*coeffs, str(device))
    if impl == "numba":
        out = _mix_numba(a, b, idx_a, idx_b, lam_t, mode_t, boxes_t, scale, shift, out_dtype).permute(
            0, 3, 1, 2
        )
    else:
        out = mix_reference(a, b, idx_a, idx_b, lam_t, mode_t, boxes_t, scale, shift, out_dtype)
    if b is None:
        return Mixed(out, torch.ones(idx_a.numel(), dtype=torch.float32, device=device))
    lam_pix = pixel_lambda(lam_t, mode_t, boxes_t, height, width)
    n_a = counts[ya] if counts is not None else None
    n_b = counts[yb] if counts is not None else None
    return Mixed(out, label_rule_reference(code, lam_pix, mode_t, n_a, n_b, kappa, tau, alpha))


def mix_labels(
    rule: str, lam_x, n_a=None, n_b=None, *, mode=None, boxes=None, size=None, **params
) -> torch.Tensor:
    """Label weight λ_y of ``y_a`` per sample (label = λ_y·y_a + (1 − λ_y)·y_b), float32 ``[B]``.

    ``lam_x`` is the pixel λ of mixup samples. For ``rule='cutmix'`` (or samples with ``mode == 2``) λ comes
    from the clipped box actually pasted, ``1 − area/(H·W)``, so ``boxes`` and ``size=(H, W)`` are required.
    ``n_a``/``n_b`` are the two classes' training counts (needed by remix, cpmix and lfm). Parameters:
    remix ``kappa=3, tau=0.5``; cpmix ``kappa=0.5``; lfm ``alpha=1``. Same arithmetic as :func:`mix_images`.
    """
    code, kappa, tau, alpha = rule_params(rule, params)
    lam_x = torch.as_tensor(lam_x, dtype=torch.float32)
    lam_x = lam_x.reshape(-1) if lam_x.dim() else lam_x.reshape(1)
    batch, device = lam_x.numel(), lam_x.device
    default = CUTMIX if rule == "cutmix" else MIXUP
    mode_t = _per_sample(mode, batch, torch.int32, "mode", device, default)
    if boxes is not None and size is not None:
        height, width = size
    elif _uses(mode, mode_t, CUTMIX, default, check=True):
        raise ValueError(
            "cutmix label weights come from the pasted box: pass boxes (int32 [B, 4]) and size=(H, W)"
        )
    else:
        height = width = 1
    lam_pix = pixel_lambda(lam_x, mode_t, _boxes(boxes, batch, device), height, width)
    if code != RULE_PIXEL:
        if n_a is None or n_b is None:
            raise ValueError(f"rule {rule!r} needs the class counts n_a and n_b of each pair")
        n_a = _per_sample(n_a, batch, torch.float32, "n_a", device, 0.0)
        n_b = _per_sample(n_b, batch, torch.float32, "n_b", device, 0.0)
        _check((n_a >= 0) & (n_b >= 0), "class counts n_a, n_b must be non-negative")
    return label_rule_reference(code, lam_pix, mode_t, n_a, n_b, kappa, tau, alpha)


def cutmix_boxes(lam, height: int, width: int, generator: torch.Generator | None = None):
    """Draw one CutMix box per sample for target λ: area ≈ (1 − λ)·H·W, centre uniform over the image, then
    clipped. Returns ``(boxes int32 [B, 4], lam_corrected float32 [B])`` where ``lam_corrected`` is
    ``1 − clipped area/(H·W)`` — the λ the labels must use.

    The box side is ``round(H·√(1−λ))`` × ``round(W·√(1−λ))``, placed with its top-left corner at
    ``centre − side//2`` so an unclipped box has exactly that size. Randomness comes only from ``generator``.
    """
    lam = torch.as_tensor(lam, dtype=torch.float32).reshape(-1)
    if not bool(((lam >= 0) & (lam <= 1)).all()):
        raise ValueError("cutmix_boxes: lam must lie in [0, 1]")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    r = torch.sqrt(1.0 - lam.to(torch.float64)).to(gen_device)
    cut_h = torch.round(height * r).to(torch.int64)
    cut_w = torch.round(width * r).to(torch.int64)
    cy = torch.randint(0, height, (lam.numel(),), generator=generator, device=gen_device)
    cx = torch.randint(0, width, (lam.numel(),), generator=generator, device=gen_device)
    y0, x0 = cy - cut_h // 2, cx - cut_w // 2
    raw = torch.stack([y0, x0, y0 + cut_h, x0 + cut_w], 1).to(torch.int32)
    boxes = clip_boxes(raw, height, width).to(lam.device)
    mode = torch.full_like(lam, CUTMIX, dtype=torch.int32)
    return boxes, pixel_lambda(lam, mode, boxes, height, width)


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NONE",
    "MIXUP",
    "CUTMIX",
    "RULES",
    "Mixed",
    "mix_images",
    "mix_labels",
    "cutmix_boxes",
    "clip_boxes",
    "pixel_lambda",
    "mix_reference",
]
