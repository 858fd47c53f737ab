"""The shared crop geometry: boxes inside the image, torchvision's distribution, seeded by the plan alone."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastlt.pipelines.transforms import (
    RATIO,
    SCALE,
    center_crop_boxes,
    crop_params,
    dct_scale_denominators,
    pad_crop_params,
    plan_rng,
    random_resized_crop_boxes,
)


def _sizes(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(20, 900, n), rng.integers(20, 900, n)


def test_random_resized_crop_boxes_lie_inside_and_follow_scale_and_ratio():
    H, W = _sizes(4000)
    boxes = random_resized_crop_boxes(H, W, plan_rng(1))
    y, x, h, w = boxes.T
    assert boxes.dtype == np.int32
    assert np.all((y >= 0) & (x >= 0) & (h >= 1) & (w >= 1))
    assert np.all(y + h <= H) and np.all(x + w <= W)
    frac = h * w / (H * W)
    assert frac.max() <= 1.0
    # On images of moderate aspect ratio some try always fits, so the area fraction is U(0.08, 1) up to
    # pixel rounding (mean 0.54; tries with extreme ratios fail and retry, biasing it slightly low) and the
    # crop's aspect ratio lies inside RATIO. Extreme strips fall back to a centred crop (next test).
    moderate = (np.maximum(H, W) < 1.5 * np.minimum(H, W)) & (np.minimum(H, W) > 100)
    assert moderate.sum() > 500
    assert frac[moderate].min() > SCALE[0] * 0.9
    assert 0.45 < frac[moderate].mean() < 0.58
    r = w / h
    assert np.all(r[moderate] > RATIO[0] * 0.95) and np.all(r[moderate] < RATIO[1] * 1.05)


def test_fallback_is_the_centred_crop_with_a_clamped_ratio():
    # A 10×1000 strip: no try of aspect ratio within [3/4, 4/3] fits, so the fallback is centred and
    # takes the full height with width = round(10 * 4/3).
    boxes = random_resized_crop_boxes(np.array([10]), np.array([1000]), plan_rng(3))
    y, x, h, w = boxes[0]
    assert (h, w) == (10, round(10 * RATIO[1]))
    assert (y, x) == (0, (1000 - w) // 2)


def test_params_are_a_pure_function_of_the_seed_and_position():
    H, W = _sizes(64, seed=2)
    a = crop_params(H, W, train=True, seed=11, image_size=32)
    b = crop_params(H, W, train=True, seed=11, image_size=32)
    c = crop_params(H, W, train=True, seed=12, image_size=32)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    # The same image at two positions (two views) gets two independent crops.
    same = crop_params(np.full(8, 500), np.full(8, 400), train=True, seed=5, image_size=32)[0]
    assert len({tuple(r) for r in same}) == 8
    flips = crop_params(np.full(4000, 100), np.full(4000, 100), train=True, seed=0, image_size=32)[1]
    assert 0.45 < flips.mean() < 0.55


@pytest.mark.parametrize(
    ("h", "w", "size", "expected"),
    [
        (32, 32, 32, (0, 0, 32, 32)),  # already at training size: the identity
        (20, 30, 32, (0, 5, 20, 20)),  # smaller than the training size: the centred square, no crop
        # 256x320 at 224: shorter side → round(224/0.875)=256, then a 224 centre square.
        (256, 320, 224, (16, 48, 224, 224)),
        # 500x375 at 224: side = round(375 * 224 / 256) = 328.
        (500, 375, 224, ((500 - 328) // 2, (375 - 328) // 2, 328, 328)),
    ],
)
def test_center_crop_boxes(h, w, size, expected):
    assert tuple(center_crop_boxes(np.array([h]), np.array([w]), size)[0]) == expected


def test_eval_params_never_flip():
    boxes, flips = crop_params(np.array([300, 40]), np.array([200, 40]), train=False, seed=9, image_size=32)
    assert not flips.any()
    assert boxes.shape == (2, 4)


def test_dct_scale_keeps_the_box_at_least_image_size():
    h = np.array([100, 447, 448, 900, 1792, 4000])
    d = dct_scale_denominators(h, h, 224)
    assert d.tolist() == [1, 1, 2, 4, 8, 8]
    assert np.all(h // d >= np.minimum(h, 224))


def test_pad_crop_offsets_cover_the_padding():
    offsets, flips = pad_crop_params(5000, seed=4, pad=4)
    assert offsets.min() == 0 and offsets.max() == 8
    assert abs(offsets.mean() - 4) < 0.2
    assert math.isclose(flips.mean(), 0.5, abs_tol=0.03)
