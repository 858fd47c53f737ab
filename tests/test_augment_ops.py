"""The batched uint8 operations against torchvision v2 (timm for SolarizeAdd), row by row, same parameters.

Every operation here is bit-exact: the batch of 12 photograph crops (odd sizes, a channels-last view like a
pipeline batch) goes through fastlt's batched kernel once and through torchvision's functional kernel one
image at a time with the same per-row parameter, and every byte must agree. The numba colour path must agree
with the torch reference byte for byte too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from fastlt.pipelines import augment_numba as fast
from fastlt.pipelines import augment_ops as ops
from helpers import photo_crops


def color_ops(x: torch.Tensor, codes: np.ndarray, factors: np.ndarray) -> None:
    """``run_ops`` of every row of ``x`` (uint8 ``[N, 3, H, W]`` on NHWC memory), slot after slot."""
    fast.run_ops(x, np.arange(len(x)), codes, factors)


def affine_rows(x: torch.Tensor, rows: np.ndarray, matrices, modes: np.ndarray, fill) -> None:
    """One ``AFFINE_*`` slot (``modes``: NEAREST / BILINEAR / BICUBIC per row) on ``x[rows]``."""
    n = len(rows)
    codes = (fast.AFFINE_NEAREST + np.asarray(modes, dtype=np.int64)).reshape(n, 1)
    fills = np.broadcast_to(np.asarray(fill, dtype=np.float32), (n, 1, 3))
    matrices = np.asarray(matrices, dtype=np.float32).reshape(n, 1, 6)
    fast.run_ops(x, rows, codes, np.zeros((n, 1)), matrices, fills)

N = 12


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    """uint8 [N, 3, 37, 45] photograph crops whose memory is NHWC (what a pipeline hands over)."""
    crops = photo_crops(N, 37, 45, seed=0, sources=("astronaut", "chelsea", "coffee"))
    crops[-1] = 77  # a flat image: autocontrast and equalize leave it alone
    return crops


def _per_image(fn, x: torch.Tensor, *params) -> torch.Tensor:
    return torch.stack([fn(x[i], *(float(p[i]) for p in params)) for i in range(len(x))])


def _exact(mine: torch.Tensor, ref: torch.Tensor) -> None:
    assert mine.dtype == torch.uint8 and mine.shape == ref.shape
    diff = (mine.int() - ref.int()).abs()
    differ = int((diff > 0).sum())
    assert differ == 0, f"{differ} of {diff.numel()} values differ (max {int(diff.max())})"


FACTORS = np.random.default_rng(1).uniform(0.0, 2.0, N)


@pytest.mark.parametrize(("name", "reference"), [
    ("brightness", TF.adjust_brightness),
    ("contrast", TF.adjust_contrast),
    ("saturation", TF.adjust_saturation),
    ("sharpness", TF.adjust_sharpness),
])
def test_enhance_ops_are_torchvisions(batch, name, reference):
    _exact(getattr(ops, name)(batch, FACTORS), _per_image(reference, batch, FACTORS))


def test_hue_grayscale_invert_autocontrast_equalize_are_torchvisions(batch):
    shifts = np.linspace(-0.5, 0.5, N)
    _exact(ops.hue(batch, shifts), _per_image(TF.adjust_hue, batch, shifts))
    gray = torch.stack([TF.rgb_to_grayscale(im, num_output_channels=3) for im in batch])
    _exact(ops.grayscale(batch), gray)
    _exact(ops.invert(batch), TF.invert(batch))
    _exact(ops.autocontrast(batch), torch.stack([TF.autocontrast(im) for im in batch]))
    _exact(ops.equalize(batch), torch.stack([TF.equalize(im) for im in batch]))
    assert torch.equal(ops.equalize(batch)[-1], batch[-1])  # flat image: unchanged


def test_posterize_and_solarize_are_torchvisions(batch):
    bits = np.arange(N) % 9
    _exact(ops.posterize(batch, bits), torch.stack([TF.posterize(im, int(b)) for im, b in zip(batch, bits)]))
    thresholds = np.linspace(0, 256, N)  # 256: above every value, nothing changes
    ref = torch.stack([TF.solarize(im, float(t)) if t <= 255 else im for im, t in zip(batch, thresholds)])
    _exact(ops.solarize(batch, thresholds), ref)


def test_solarize_add_is_timms(batch):
    from PIL import Image
    from timm.data.auto_augment import solarize_add

    adds = np.arange(N) * 11
    out = ops.solarize_add(batch, adds)
    for i in range(N):
        pil = Image.fromarray(batch[i].permute(1, 2, 0).numpy())
        assert np.array_equal(out[i].permute(1, 2, 0).numpy(), np.asarray(solarize_add(pil, int(adds[i]))))


def test_gaussian_blur_is_torchvisions(batch):
    sigmas = np.linspace(0.1, 2.0, N)
    ref = torch.stack([TF.gaussian_blur(im, [13, 13], [float(s), float(s)]) for im, s in zip(batch, sigmas)])
    _exact(ops.gaussian_blur(batch, sigmas, 13), ref)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_affine_ops_are_torchvisions_rotate_shear_and_translate(batch, mode):
    H, W = batch.shape[-2:]
    fill = [128, 64, 32]
    interp = TF.InterpolationMode(mode)
    angles = np.linspace(-30, 30, N)
    mats = [ops.inverse_affine([0.0, 0.0], -(a % 360.0), [0.0, 0.0], [0.0, 0.0]) for a in angles]
    ref = torch.stack([TF.rotate(im, float(a), interpolation=interp, fill=fill)
                       for im, a in zip(batch, angles)])
    _exact(ops.affine(batch, mats, mode, fill), ref)
    shears = np.linspace(-0.3, 0.3, N)
    deg = [math.degrees(math.atan(s)) for s in shears]
    mats = [ops.inverse_affine([-W * 0.5, -H * 0.5], 0.0, [0.0, 0.0], [d, 0.0]) for d in deg]
    ref = torch.stack([TF.affine(im, angle=0.0, translate=[0, 0], scale=1.0, shear=[d, 0.0],
                                 interpolation=interp, fill=fill, center=[0, 0])
                       for im, d in zip(batch, deg)])
    _exact(ops.affine(batch, mats, mode, fill), ref)
    shifts = np.arange(N) - N // 2
    mats = [ops.inverse_affine([0.0, 0.0], 0.0, [0.0, float(t)], [0.0, 0.0]) for t in shifts]
    ref = torch.stack([TF.affine(im, angle=0.0, translate=[0, int(t)], scale=1.0, shear=[0.0, 0.0],
                                 interpolation=interp, fill=fill) for im, t in zip(batch, shifts)])
    _exact(ops.affine(batch, mats, mode, fill), ref)


def test_pad_crop_flip_is_random_crop_with_padding_then_flip(batch):
    rng = np.random.default_rng(3)
    offsets, flips = rng.integers(0, 9, (N, 2)), rng.random(N) < 0.5
    out = ops.pad_crop_flip(batch, offsets, flips, 4)
    for i in range(N):
        (dy, dx), H, W = offsets[i], batch.shape[2], batch.shape[3]
        crop = TF.crop(TF.pad(batch[i], [4, 4, 4, 4]), int(dy), int(dx), H, W)
        assert torch.equal(out[i], TF.horizontal_flip(crop) if flips[i] else crop), i


def test_the_numba_colour_path_is_the_torch_reference_byte_for_byte(batch):
    """Every colour op alone, and all five in random per-row orders, on one NHWC batch."""
    if not fast.enabled(batch):
        pytest.skip("numba is not installed or FASTLT_KERNELS forces the torch reference")
    rng = np.random.default_rng(4)
    factors = np.stack([rng.uniform(0.0, 2.0, N), rng.uniform(0.0, 2.0, N), rng.uniform(0.0, 2.0, N),
                        rng.uniform(-0.5, 0.5, N), np.zeros(N)], axis=1)
    torch_ops = (ops.brightness, ops.contrast, ops.saturation, ops.hue, lambda x, f: ops.grayscale(x))
    for code, fn in enumerate(torch_ops):
        mine = batch.permute(0, 2, 3, 1).clone()
        color_ops(mine.permute(0, 3, 1, 2), np.full((N, 1), code), factors[:, code : code + 1])
        _exact(mine.permute(0, 3, 1, 2), fn(batch, factors[:, code]))
    order = np.argsort(rng.random((N, 5)), axis=1)
    codes = np.where(rng.random((N, 5)) < 0.8, order, fast.NONE)
    mine = batch.permute(0, 2, 3, 1).clone()
    color_ops(mine.permute(0, 3, 1, 2), codes, np.take_along_axis(factors, order, axis=1))
    ref = batch.clone()
    for i in range(N):
        for code in codes[i]:
            if code != fast.NONE:
                ref[i : i + 1] = torch_ops[code](ref[i : i + 1], factors[i : i + 1, code])
    _exact(mine.permute(0, 3, 1, 2), ref)


def test_the_numba_colour_jitter_is_the_torch_reference_on_every_colour_of_a_grid():
    """The float-plane jitter kernels against the reference on all 64³ colours of a grid over [0, 255] (and
    a random image), several factors a row: the rounding of every branch of the HSV round trip is reached."""
    if not fast.enabled(torch.zeros(1)):
        pytest.skip("numba is not installed or FASTLT_KERNELS forces the torch reference")
    levels = np.linspace(0, 255, 64).round()
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    noise = np.random.default_rng(7).integers(0, 256, grid.shape)
    images = torch.from_numpy(np.stack([grid, noise]).astype(np.uint8).reshape(2, 512, 512, 3))
    x = images.repeat(4, 1, 1, 1).permute(0, 3, 1, 2)  # 8 rows: 4 factors × (grid, noise)
    factors = {fast.BRIGHTNESS: [0.6, 0.97, 1.03, 1.4], fast.CONTRAST: [0.0, 0.6, 1.2, 2.0],
               fast.SATURATION: [0.0, 0.61, 1.0, 1.4], fast.HUE: [-0.5, -0.1, 0.037, 0.5],
               fast.GRAYSCALE: [0.0] * 4}
    torch_ops = (ops.brightness, ops.contrast, ops.saturation, ops.hue, lambda t, f: ops.grayscale(t))
    for code, f in factors.items():
        f = np.repeat(np.asarray(f, dtype=np.float64), 2)
        mine = x.permute(0, 2, 3, 1).clone()
        color_ops(mine.permute(0, 3, 1, 2), np.full((8, 1), code), f[:, None])
        _exact(mine.permute(0, 3, 1, 2), torch_ops[code](x, f))


def test_the_numba_point_ops_are_the_torch_reference_byte_for_byte(batch):
    """Posterize, solarize, solarize-add, invert, both autocontrasts, equalize, Pillow's colour and contrast,
    sharpness: the numba kernel against the torch kernels, each op on every row."""
    if not fast.enabled(batch):
        pytest.skip("numba is not installed or FASTLT_KERNELS forces the torch reference")
    f = FACTORS
    cases = [
        (fast.POSTERIZE, np.arange(N) % 9, lambda x, a: ops.posterize(x, a.astype(np.int64))),
        (fast.SOLARIZE, np.linspace(0, 256, N), ops.solarize),
        (fast.SOLARIZE_ADD, np.arange(N) * 11.0, lambda x, a: ops.solarize_add(x, a.astype(np.int64))),
        (fast.INVERT, f, lambda x, a: ops.invert(x)),
        (fast.AUTOCONTRAST, f, lambda x, a: ops.autocontrast(x)),
        (fast.AUTOCONTRAST_PIL, f, lambda x, a: ops.autocontrast_pil(x)),
        (fast.EQUALIZE, f, lambda x, a: ops.equalize(x)),
        (fast.SATURATION_PIL, f, ops.saturation_pil),
        (fast.CONTRAST_PIL, f, ops.contrast_pil),
        (fast.SHARPNESS, f, ops.sharpness),
    ]
    for code, arg, reference in cases:
        mine = batch.permute(0, 2, 3, 1).clone()
        color_ops(mine.permute(0, 3, 1, 2), np.full((N, 1), code), arg[:, None])
        _exact(mine.permute(0, 3, 1, 2), reference(batch, arg))


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
def test_the_numba_affine_is_the_torch_path_within_one_grey_level(batch, mode):
    """Same sampling as grid_sample, its own grid arithmetic: a rounding-boundary value may move by one."""
    if not fast.enabled(batch):
        pytest.skip("numba is not installed or FASTLT_KERNELS forces the torch reference")
    H, W = batch.shape[-2:]
    rng = np.random.default_rng(5)
    mats = [ops.inverse_affine([rng.uniform(-W, W) / 2, rng.uniform(-H, H) / 2], rng.uniform(-30, 30),
                               list(rng.uniform(-9, 9, 2)), list(rng.uniform(-15, 15, 2))) for _ in range(N)]
    fill = (124, 116, 104)
    mine = batch.permute(0, 2, 3, 1).clone()
    code = {"nearest": fast.NEAREST, "bilinear": fast.BILINEAR, "bicubic": fast.BICUBIC}[mode]
    affine_rows(mine.permute(0, 3, 1, 2), np.arange(N), mats, np.full(N, code), fill)
    diff = (mine.permute(0, 3, 1, 2).int() - ops.affine(batch, mats, mode, fill).int()).abs()
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 1e-3
