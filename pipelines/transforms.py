"""One definition of every pipeline's geometry: crop boxes and flips as plain integer arrays.

All four pipelines (resident, ffcv, dali, torch) call these functions and only differ in *how* they cut a box
out of an image and resize it to ``image_size`` (OpenCV INTER_AREA inside FFCV, DALI's antialiased resize,
PIL's antialiased bilinear, torchvision ``roi_align`` on the device). So for the same plan they crop the same
boxes and flip the same rows; their outputs differ only by decoder/interpolation rounding.

Randomness is a pure function of ``(plan.seed, R)`` and the row's *position* in the plan: the generator is
seeded from ``plan.seed`` alone and every draw is one vectorised array indexed by position. Loading a plan
twice gives identical pixels; a row repeated inside a plan (two views of one image) gets independent crops.

Boxes are ``int32[R, 4]`` = ``(y, x, h, w)`` in source pixels, always inside the image.

Train (``random_resized_crop_boxes``) follows torchvision's RandomResizedCrop: up to ``attempts`` tries of an
area fraction ``s ~ U(scale)`` and a log-uniform aspect ratio ``r``; the crop is ``w = round(sqrt(s·A·r))``,
``h = round(sqrt(s·A/r))``; the first try that fits wins and its corner is uniform over the valid positions.
When none fits, the fallback is the largest centred crop whose aspect ratio lies inside ``ratio``. All tries
are drawn at once, so a batch costs a handful of numpy calls rather than a Python loop per row.

Eval (``center_crop_boxes``) is the standard "resize the shorter side to image_size / crop_fraction, then take
the centre image_size square". Resizing then cropping is the same as cropping the centred square of side
``min(h, w) · crop_fraction`` (exactly: ``min(h, w) · image_size / round(image_size / crop_fraction)``) and
resizing it to image_size, which is the form every pipeline can execute. Images already at or below the
training resolution (CIFAR's 32 px at image_size 32) are not cropped: their box is the centred square of side
``min(h, w)`` — the identity for square images of size image_size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SCALE = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_FRACTION = 0.875
PAD = 4  # pad-crop policy of 32 px data (CIFAR): zero-pad by 4 and take a random image_size crop


def plan_rng(seed: int, stream: int = 0) -> np.random.Generator:
    """The generator of one plan's augmentation; ``stream`` separates independent uses of one seed."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed) & ((1 << 63) - 1), stream])))


def random_resized_crop_boxes(
    heights: np.ndarray,
    widths: np.ndarray,
    rng: np.random.Generator,
    scale: tuple = SCALE,
    ratio: tuple[float, float] = RATIO,
    attempts: int = 10,
) -> np.ndarray:
    """int32[R, 4] (y, x, h, w) RandomResizedCrop boxes for images of the given sizes (see module
    docstring). ``scale``: (low, high), each a number or one value per row."""
    H = np.asarray(heights, dtype=np.float64)
    W = np.asarray(widths, dtype=np.float64)
    R = len(H)
    area = (H * W)[:, None]
    lo, hi = (np.asarray(s, dtype=np.float64)[..., None] for s in scale)
    target = area * rng.uniform(lo, hi, size=(R, attempts))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(R, attempts)))
    cw = np.rint(np.sqrt(target * aspect))
    ch = np.rint(np.sqrt(target / aspect))
    fits = (cw > 0) & (cw <= W[:, None]) & (ch > 0) & (ch <= H[:, None])
    first = fits.argmax(axis=1)  # index of the first try that fits (0 when none does; masked below)
    ok = fits[np.arange(R), first]
    h = ch[np.arange(R), first]
    w = cw[np.arange(R), first]
    # Fallback: the largest centred crop with an aspect ratio inside `ratio` (torchvision's rule).
    in_ratio = W / np.maximum(H, 1)
    fw = np.where(in_ratio < ratio[0], W, np.where(in_ratio > ratio[1], np.rint(H * ratio[1]), W))
    fh = np.where(in_ratio < ratio[0], np.rint(W / ratio[0]), H)
    h = np.where(ok, h, fh)
    w = np.where(ok, w, fw)
    u = rng.random((R, 2))
    y = np.where(ok, np.floor(u[:, 0] * (H - h + 1)), (H - h) // 2)
    x = np.where(ok, np.floor(u[:, 1] * (W - w + 1)), (W - w) // 2)
    return np.stack([y, x, h, w], axis=1).astype(np.int32)


def flips(R: int, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """bool[R]: mirror row k horizontally."""
    return rng.random(R) < p


def center_crop_boxes(
    heights: np.ndarray, widths: np.ndarray, image_size: int, crop_fraction: float = CROP_FRACTION
) -> np.ndarray:
    """int32[R, 4] (y, x, h, w) eval boxes: resize shorter side to image_size/crop_fraction + centre crop."""
    H = np.asarray(heights, dtype=np.int64)
    W = np.asarray(widths, dtype=np.int64)
    short = np.minimum(H, W)
    resized_short = round(image_size / crop_fraction)
    side = np.where(short <= image_size, short, np.rint(short * image_size / resized_short).astype(np.int64))
    side = np.clip(side, 1, short)
    return np.stack([(H - side) // 2, (W - side) // 2, side, side], axis=1).astype(np.int32)


def pad_crop_offsets(R: int, rng: np.random.Generator, pad: int = PAD) -> np.ndarray:
    """int64[R, 2] (dy, dx) in [0, 2·pad]: the corner of the crop inside the zero-padded image."""
    return rng.integers(0, 2 * pad + 1, size=(R, 2))


def train_params(
    heights: np.ndarray, widths: np.ndarray, seed: int, image_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(boxes int32[R,4], flip bool[R]) for a train-mode plan with this seed: RandomResizedCrop + flip."""
    rng = plan_rng(seed)
    boxes = random_resized_crop_boxes(heights, widths, rng)
    return boxes, flips(len(boxes), rng)


def eval_params(heights: np.ndarray, widths: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(boxes int32[R,4], flip bool[R] all False) for eval mode."""
    boxes = center_crop_boxes(heights, widths, image_size)
    return boxes, np.zeros(len(boxes), dtype=bool)


def crop_params(
    heights: np.ndarray, widths: np.ndarray, *, train: bool, seed: int, image_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The boxes and flips of one plan, train or eval: the single entry point the decode pipelines use."""
    if train:
        return train_params(heights, widths, seed, image_size)
    return eval_params(heights, widths, image_size)


def dct_scale_denominators(box_h: np.ndarray, box_w: np.ndarray, image_size: int, max_denominator: int = 8):
    """int32[R]: per row, the largest d in {1, 2, 4, 8} with the box still ≥ image_size on both sides at 1/d.

    libjpeg-turbo can run its inverse DCT at 1/2, 1/4, 1/8 scale, which cuts the IDCT and colour-conversion
    work by d² at no extra cost; the crop is then resized down from an image that is still at least
    image_size, so the output never gets upsampled from a decode that threw detail away.
    """
    short = np.minimum(np.asarray(box_h), np.asarray(box_w))
    d = np.ones(short.shape, dtype=np.int32)
    while True:
        grow = (2 * d <= max_denominator) & (short >= 2 * d * image_size)
        if not grow.any():
            return d
        d = np.where(grow, 2 * d, d)


def pad_crop_params(R: int, seed: int, pad: int = PAD) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64[R,2], flip bool[R]) of the pad-crop + flip policy for a plan with this seed."""
    rng = plan_rng(seed)
    offsets = pad_crop_offsets(R, rng, pad)
    return offsets, flips(R, rng)


# ---------------------------------------------------------------------------------------------- per-row crops
# The crop a training row takes (its policy's, fastlt.pipelines.augment): a random resized crop, the whole
# image for a pad-crop done after decoding, or the centred square (CLIP's resize + centre crop).
RESIZED, PAD_CROP, CENTER = 0, 1, 2
PAD_CROP_MAX_SIZE = 64  # crop-flip pad-crops images stored at the training size up to this size (CIFAR)


def auto_kinds(heights: np.ndarray, widths: np.ndarray, image_size: int) -> np.ndarray:
    """int8[R], the crop of policy crop-flip: pad-crop for images stored at ``image_size`` × ``image_size``
    (at most 64 px: CIFAR, digits-lt), a random resized crop for anything else."""
    at_size = (np.asarray(heights) == image_size) & (np.asarray(widths) == image_size)
    return np.where(at_size & (image_size <= PAD_CROP_MAX_SIZE), PAD_CROP, RESIZED).astype(np.int8)


@dataclass(frozen=True)
class Crops:
    """The crop stage's decisions for the rows of a plan (row k of every array is row k of the plan).

    A pipeline cuts ``boxes`` (y, x, h, w, source pixels) and resizes them to image_size, mirroring the rows
    in ``flips``. Rows in ``pad`` get their whole image (as stored) and are pad-cropped afterwards at the
    ``offsets`` corners, then mirrored where ``pad_flips`` says (crop before flip, as torchvision's
    ``RandomCrop(padding=4)`` then ``RandomHorizontalFlip``).
    """

    boxes: np.ndarray  # int32[R, 4]
    flips: np.ndarray  # bool[R]
    pad: np.ndarray  # bool[R]
    offsets: np.ndarray  # int64[R, 2] (dy, dx) in [0, 2·PAD]
    pad_flips: np.ndarray  # bool[R]

    def take(self, positions: np.ndarray) -> Crops:
        """The crops of the rows at ``positions`` (a rank's rows of a global plan)."""
        parts = (self.boxes, self.flips, self.pad, self.offsets, self.pad_flips)
        return Crops(*(a[positions] for a in parts))


def train_crops(
    heights: np.ndarray,
    widths: np.ndarray,
    kinds: np.ndarray,
    scale: tuple[np.ndarray, np.ndarray],
    seed: int,
    image_size: int,
    pad: int = PAD,
) -> Crops:
    """The crops of one training plan whose rows have these stored sizes, crop ``kinds`` and RandomResizedCrop
    ``scale`` (low, high per row).

    Draws from ``plan_rng(seed)``, each over every row: the pad-crop corners (when some row pad-crops), the
    RandomResizedCrop tries (when some row takes one), then one flip per row. With every row of one kind
    this is exactly :func:`pad_crop_params` or :func:`train_params`, so crop-flip draws what it always drew.
    """
    rng = plan_rng(seed)
    H, W = np.asarray(heights), np.asarray(widths)
    R = len(kinds)
    on_pad = kinds == PAD_CROP
    offsets = pad_crop_offsets(R, rng, pad) if on_pad.any() else np.zeros((R, 2), np.int64)
    boxes = np.stack([np.zeros(R), np.zeros(R), H, W], axis=1).astype(np.int32)  # the whole image
    resized = kinds == RESIZED
    if resized.any():
        boxes[resized] = random_resized_crop_boxes(H, W, rng, scale)[resized]
    centred = kinds == CENTER
    if centred.any():
        boxes[centred] = center_crop_boxes(H, W, image_size, crop_fraction=1.0)[centred]
    flip = flips(R, rng)
    return Crops(boxes, flip & ~on_pad, on_pad, offsets, flip & on_pad)


def eval_crops(heights: np.ndarray, widths: np.ndarray, image_size: int) -> Crops:
    """The deterministic crops of evaluation: :func:`eval_params`, nothing padded or mirrored."""
    boxes, flip = eval_params(heights, widths, image_size)
    R = len(boxes)
    return Crops(boxes, flip, np.zeros(R, bool), np.zeros((R, 2), np.int64), np.zeros(R, bool))
