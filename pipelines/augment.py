"""Augmentation policies: what each plan segment trains on, as data, run batched on the training device.

A recipe names one policy per plan segment (recipe key ``augment``: ``SEGMENT=POLICY`` entries plus one bare
``POLICY`` for every other segment, default ``crop-flip``). A :class:`Policy` has two parts:

* its **crop**, cut by the pipeline while decoding (``fastlt.pipelines.transforms``): a random resized crop of
  a scale range, the centred square (CLIP's resize + centre crop), or — for images stored at the training size
  — the whole image, pad-cropped here; horizontal flips are drawn with the crop;
* its **operations** after the crop, here, batched over the rows of the segment on the device, on uint8
  (:mod:`fastlt.pipelines.augment_ops`; :mod:`fastlt.pipelines.autoaugment`), the same for all four pipelines.

Every random parameter is a function of the plan's augmentation seed and the row's position in the *global*
plan (``StepPlan.whole`` / ``global_positions``): the crop stage draws over every row of the global plan from
``plan_rng(seed)``; the operations of segment ``i`` draw from ``plan_rng(seed, 1 + i)``, each op in policy
order over the global segment's length; a rank keeps the draws of its own rows. So loading a plan twice,
resuming, or splitting it over any number of DDP ranks gives every row the same pixels.

Each operation has torchvision v2's semantics (``ColorJitter``, ``RandomGrayscale``, ``GaussianBlur``,
``AutoAugment``) or timm's (``rand-n2-m10-mstd0.5``), with ``RandomApply``'s probability where the released
code wraps one in it; a row draws what the per-image transform would draw for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fastlt.pipelines import augment_numba as fast
from fastlt.pipelines import augment_ops as ops
from fastlt.pipelines.autoaugment import AutoAugment, RandAugment
from fastlt.pipelines.plan import StepPlan
from fastlt.pipelines.transforms import (
    CENTER,
    PAD,
    PAD_CROP,
    RESIZED,
    SCALE,
    Crops,
    auto_kinds,
    plan_rng,
    train_crops,
)


# ---------------------------------------------------------------------------------------------- operations
@dataclass(frozen=True)
class ColorJitter(fast.Slotted):
    """``RandomApply([ColorJitter(brightness, contrast, saturation, hue)], p)``: factors uniform in
    ``[max(0, 1 − v), 1 + v]`` (hue: ``[−v, v]``), the four adjustments in a random order per row; a zero
    strength leaves that adjustment out, as torchvision does."""

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    p: float = 1.0

    def draw(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        strengths = (self.brightness, self.contrast, self.saturation)
        factors = [rng.uniform(max(0.0, 1.0 - v), 1.0 + v, n) for v in strengths]
        factors.append(rng.uniform(-self.hue, self.hue, n))
        return {"on": rng.random(n) < self.p, "order": np.argsort(rng.random((n, 4)), axis=1),
                "factors": np.stack(factors, axis=1)}

    def apply_torch(self, x: torch.Tensor, p: dict[str, np.ndarray]) -> None:
        adjust = (ops.brightness, ops.contrast, ops.saturation, ops.hue)
        active = (self.brightness, self.contrast, self.saturation, self.hue)
        for slot in range(4):
            for j in range(4):
                if active[j] > 0:
                    rows = p["on"] & (p["order"][:, slot] == j)
                    ops.update_rows(x, rows, lambda t, i, j=j: adjust[j](t, p["factors"][i, j]))

    def slots(self, x: torch.Tensor, p: dict[str, np.ndarray]):
        """:func:`fastlt.pipelines.augment_numba.run_ops` codes and factors ``[n, 4]``: its codes follow
        torchvision's fn_idx (b, c, s, h)."""
        active = np.array((self.brightness, self.contrast, self.saturation, self.hue)) > 0
        ordered = np.take_along_axis(p["factors"], p["order"], axis=1)
        return np.where(p["on"][:, None] & active[p["order"]], p["order"], fast.NONE), ordered, None, None


@dataclass(frozen=True)
class Grayscale(fast.Slotted):
    """``RandomGrayscale(p)``: three equal channels of the luma."""

    p: float = 0.2

    def draw(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        return {"on": rng.random(n) < self.p}

    def apply_torch(self, x: torch.Tensor, p: dict[str, np.ndarray]) -> None:
        ops.update_rows(x, p["on"], lambda t, i: ops.grayscale(t))

    def slots(self, x: torch.Tensor, p: dict[str, np.ndarray]):
        codes = np.where(p["on"], fast.GRAYSCALE, fast.NONE)[:, None]
        return codes, np.zeros(codes.shape), None, None


@dataclass(frozen=True)
class GaussianBlur:
    """``RandomApply([GaussianBlur(kernel_size, sigma)], p)``, σ uniform in ``sigma``.

    The released code blurs with Pillow's ``GaussianBlur(radius=σ)``, an iterated box filter approximating a
    Gaussian of standard deviation σ; fastlt uses torchvision's exact Gaussian, with a kernel of ±3σ at the
    largest σ (13 taps at σ = 2).
    """

    sigma: tuple[float, float] = (0.1, 2.0)
    kernel_size: int = 13
    p: float = 0.5

    def draw(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        return {"on": rng.random(n) < self.p, "sigma": rng.uniform(self.sigma[0], self.sigma[1], n)}

    def apply(self, x: torch.Tensor, p: dict[str, np.ndarray]) -> None:
        ops.update_rows(x, p["on"], lambda t, i: ops.gaussian_blur(t, p["sigma"][i], self.kernel_size))


# ---------------------------------------------------------------------------------------------- policies
@dataclass(frozen=True)
class Crop:
    """A policy's crop: ``auto`` (pad-crop for images stored at a training size ≤ 64 px, else ``resized``),
    ``resized`` (RandomResizedCrop of ``scale``), ``pad`` (RandomCrop with padding 4 of the whole image) or
    ``center`` (the centred square: CLIP's resize + centre crop). Every kind mirrors half the rows."""

    kind: str
    scale: tuple[float, float] = SCALE


@dataclass(frozen=True)
class Policy:
    name: str
    crop: Crop
    ops: tuple = ()
    source: str = ""


_SIMCLR_JITTER = ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8)
POLICIES: dict[str, Policy] = {p.name: p for p in (
    Policy("crop-flip", Crop("auto"), (),
           "fastlt default: RandomResizedCrop(0.08–1) + flip; RandomCrop(pad 4) + flip for images stored at "
           "the training size ≤ 64 px (the LDAM-DRW / BCL CIFAR baselines)"),
    Policy("crop-flip-jitter", Crop("resized"), (ColorJitter(0.4, 0.4, 0.4, 0.0),),
           "RandomResizedCrop + flip + ColorJitter(0.4, 0.4, 0.4): the ImageNet-LT / iNat training transform "
           "of the decoupling code base (Kang et al. 2020) that several compared works use"),
    Policy("simclr", Crop("resized"), (_SIMCLR_JITTER, Grayscale(0.2)),
           "ConCutMix / BCL released code, ImageNet-LT and iNat contrastive views: RandomResizedCrop + flip "
           "+ ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8 + RandomGrayscale 0.2"),
    Policy("simclr-cifar", Crop("resized", (0.2, 1.0)), (_SIMCLR_JITTER, Grayscale(0.2), GaussianBlur()),
           "ConCutMix / BCL released code, CIFAR contrastive views: RandomResizedCrop(scale 0.2–1) + flip + "
           "ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8 + RandomGrayscale 0.2 + GaussianBlur σ 0.1–2 p 0.5"),
    Policy("autoaugment-cifar", Crop("pad"), (AutoAugment(),),
           "ConCutMix released code, CIFAR classification image: RandomCrop(32, pad 4) + flip + AutoAugment "
           "(CIFAR-10 policy)"),
    Policy("randaugment", Crop("resized"), (ColorJitter(0.4, 0.4, 0.4, 0.0), RandAugment()),
           "ConCutMix / BCL released code, ImageNet-LT and iNat classification image: RandomResizedCrop + "
           "flip + ColorJitter(0.4, 0.4, 0.4, 0) + RandAugment rand-n2-m10-mstd0.5"),
    Policy("clip-center", Crop("center"), (),
           "LFM released code: horizontal flip + CLIP's resize + centre crop (no random resized crop)"),
)}
DEFAULT = ("crop-flip",)
_KINDS = {"resized": RESIZED, "pad": PAD_CROP, "center": CENTER}


class Augmentation:
    """The policies of a training pipeline, one per plan segment (module docstring).

        aug = Augmentation(("main=randaugment", "view1=simclr", "view2=simclr", "randaugment"))
        crops = aug.crops(plan, heights, widths, seed, image_size)   # what the pipeline cuts
        images = aug.apply(images, plan, seed, crops)                # uint8 NHWC, in place
    """

    def __init__(self, spec: Sequence[str] = DEFAULT):
        from fastlt.recipes import split_augment

        default, named = split_augment(tuple(spec))
        self.default = POLICIES[default]
        self.named = {segment: POLICIES[name] for segment, name in named.items()}

    def policy(self, segment: str) -> Policy:
        return self.named.get(segment, self.default)

    def crops(
        self, plan: StepPlan, heights: np.ndarray, widths: np.ndarray, seed: int, image_size: int
    ) -> Crops:
        """The crop, flip and pad-crop of every row of ``plan`` (drawn over its global plan)."""
        whole = plan.whole
        H, W = np.asarray(heights)[whole.rows], np.asarray(widths)[whole.rows]
        kinds = np.empty(len(whole.rows), np.int8)
        lo, hi = np.empty(len(kinds)), np.empty(len(kinds))
        for name, start, stop in whole.segments:
            crop = self.policy(name).crop
            part = slice(start, stop)
            auto = auto_kinds(H[part], W[part], image_size)
            kinds[part] = auto if crop.kind == "auto" else _KINDS[crop.kind]
            lo[part], hi[part] = crop.scale
        return train_crops(H, W, kinds, (lo, hi), seed, image_size).take(plan.global_positions)

    def apply(self, images: torch.Tensor, plan: StepPlan, seed: int, crops: Crops) -> torch.Tensor:
        """Pad-crop the rows that need it, then run each segment's operations; ``images`` uint8[R, S, S, 3],
        modified in place and returned."""
        x = images.permute(0, 3, 1, 2)
        ops.update_rows(
            x, crops.pad, lambda t, i: ops.pad_crop_flip(t, crops.offsets[i], crops.pad_flips[i], PAD)
        )
        whole, positions = plan.whole, plan.global_positions
        pending: list = []  # numba slots of the segments' ops, run together (_run_pending)
        for i, (name, start, stop) in enumerate(plan.segments):
            policy = self.policy(name)
            if not policy.ops or start == stop:
                continue
            _, first, end = whole.segments[i]
            local = positions[start:stop] - first
            rng = plan_rng(seed, 1 + i)
            segment = x[start:stop]
            for op in policy.ops:
                p = {k: v[local] for k, v in op.draw(rng, end - first).items()}
                if isinstance(op, fast.Slotted) and fast.enabled(x):  # later, with every other segment's
                    pending.append((start, *op.slots(segment, p)))
                    continue
                _run_pending(x, pending)  # an op without slots follows its rows' earlier ops
                op.apply(segment, p)
        _run_pending(x, pending)
        return images



def _run_pending(x: torch.Tensor, pending: list) -> None:
    """Run the slots of ``pending`` ``(first row, codes, factors, matrices, fills)`` entries — a segment's ops
    in their order, side by side — over all their rows in one parallel pass (rows of different segments are
    disjoint, so one pass serves them all), then empty it."""
    if not pending:
        return
    by_first: dict[int, list] = {}
    for first, *part in pending:
        by_first.setdefault(first, []).append(part)
    width = max(sum(part[0].shape[1] for part in parts) for parts in by_first.values())
    rows = np.concatenate([first + np.arange(len(parts[0][0])) for first, parts in by_first.items()])
    codes, factors = np.full((len(rows), width), fast.NONE), np.zeros((len(rows), width))
    mats, fills = np.zeros((len(rows), width, 6)), np.zeros((len(rows), width, 3))
    r = 0
    for parts in by_first.values():
        n, col = len(parts[0][0]), 0
        for c, f, m, fl in parts:
            block = (slice(r, r + n), slice(col, col + c.shape[1]))
            codes[block], factors[block] = c, f
            if m is not None:
                mats[block], fills[block] = m, fl
            col += c.shape[1]
        r += n
    busy = (codes != fast.NONE).any(axis=1)
    fast.run_ops(x, rows[busy], codes[busy], factors[busy], mats[busy], fills[busy])
    pending.clear()
