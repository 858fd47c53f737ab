"""Augmentation policies: each operation against torchvision v2 / timm for the parameters it drew, the
distributions of those parameters, the crop stage, and the seed → pixels contract (determinism, DDP ranks).

"Same drawn parameters": fastlt draws a row's parameters as arrays (:meth:`draw`); the reference transform
is then run on that row with exactly those parameters — torchvision's ``transform(inpt, params)`` for
ColorJitter / RandomGrayscale / GaussianBlur, AutoAugment's own per-op function with the drawn sub-policy,
signs and magnitude bins, timm's op functions with the drawn levels. Distribution tests use fixed seeds and
bounds several standard errors wide: deterministic, and a wrong distribution fails them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T
from PIL import Image

from fastlt.pipelines import augment_ops as ops
from fastlt.pipelines.augment import POLICIES, Augmentation, ColorJitter, GaussianBlur, Grayscale
from fastlt.pipelines.autoaugment import CIFAR10_POLICY, RAND_OPS, AutoAugment, RandAugment
from fastlt.pipelines.plan import StepPlan
from fastlt.pipelines.transforms import PAD_CROP, RESIZED, pad_crop_params, train_crops, train_params
from fastlt.recipes import AUGMENT_POLICIES, PLAN_SEGMENTS, RecipeError, split_augment
from helpers import photo_crops

N = 32


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """uint8 [N, 3, 40, 48] photograph crops, NHWC memory."""
    return photo_crops(N, 40, 48, seed=5)


def _applied(op, x: torch.Tensor, params: dict) -> torch.Tensor:
    y = x.permute(0, 2, 3, 1).clone().permute(0, 3, 1, 2)
    op.apply(y, params)
    return y


# ------------------------------------------------------------------------------------------- vs torchvision
@pytest.mark.parametrize("kernels", ["numba", "torch"])
def test_color_jitter_is_torchvisions_for_the_drawn_parameters(photos, kernels, monkeypatch):
    monkeypatch.setenv("FASTLT_KERNELS", kernels)
    op = ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8)
    p = op.draw(np.random.default_rng(0), N)
    out = _applied(op, photos, p)
    ref = T.ColorJitter(0.4, 0.4, 0.4, 0.1)
    for i in range(N):
        b, c, s, h = (float(v) for v in p["factors"][i])
        params = dict(fn_idx=torch.from_numpy(p["order"][i]), brightness_factor=b, contrast_factor=c,
                      saturation_factor=s, hue_factor=h)
        expected = ref.transform(photos[i], params) if p["on"][i] else photos[i]
        assert torch.equal(out[i], expected), i


@pytest.mark.parametrize("kernels", ["numba", "torch"])
def test_grayscale_and_blur_are_torchvisions_for_the_drawn_parameters(photos, kernels, monkeypatch):
    monkeypatch.setenv("FASTLT_KERNELS", kernels)
    gray = Grayscale(0.5)
    p = gray.draw(np.random.default_rng(1), N)
    out = _applied(gray, photos, p)
    for i in range(N):
        expected = T.RandomGrayscale(1.0).transform(photos[i], {"num_input_channels": 3}) if p["on"][i] \
            else photos[i]
        assert torch.equal(out[i], expected), i
    blur = GaussianBlur()
    p = blur.draw(np.random.default_rng(2), N)
    out = _applied(blur, photos, p)
    for i in range(N):
        s = float(p["sigma"][i])
        expected = T.GaussianBlur(13, (0.1, 2.0)).transform(photos[i], {"sigma": [s, s]}) if p["on"][i] \
            else photos[i]
        assert torch.equal(out[i], expected), i


@pytest.mark.parametrize("kernels", ["numba", "torch"])
def test_autoaugment_cifar10_is_torchvisions_for_the_drawn_subpolicies(photos, kernels, monkeypatch):
    """Row by row: torchvision's own AutoAugment op function, at the magnitude of the drawn bin and sign."""
    monkeypatch.setenv("FASTLT_KERNELS", kernels)
    op = AutoAugment(fill=(128, 128, 128))
    p = op.draw(np.random.default_rng(3), N)
    out = _applied(op, photos, p)
    ref = T.AutoAugment(T.AutoAugmentPolicy.CIFAR10, fill=[128, 128, 128])
    H, W = photos.shape[-2:]
    assert [tuple(s) for s in ref._policies] == [tuple(s) for s in CIFAR10_POLICY]
    for i in range(N):
        image = photos[i]
        for k, (name, prob, bin_) in enumerate(CIFAR10_POLICY[p["sub"][i]]):
            if not p["u"][i, k] <= prob:
                continue
            table, signed = ref._AUGMENTATION_SPACE[name]
            mags = table(10, H, W)
            m = float(mags[bin_]) if mags is not None else 0.0
            m = -m if signed and p["neg"][i, k] else m
            image = ref._apply_image_or_video_transform(image, name, m, "nearest", ref._fill)
        assert torch.equal(out[i], image), (i, CIFAR10_POLICY[p["sub"][i]])


# ---------------------------------------------------------------------------------------------- vs timm
def _timm_args(name: str, level: float, sign: float, width: int, height: int) -> tuple:
    """timm's level → argument rules (timm.data.auto_augment), at a fixed sign."""
    return {
        "Rotate": (sign * level * 30.0,), "ShearX": (sign * level * 0.3,), "ShearY": (sign * level * 0.3,),
        "TranslateXRel": (sign * level * 0.45,), "TranslateYRel": (sign * level * 0.45,),
        "Posterize": (int(level * 4),), "Solarize": (min(256, int(level * 256)),),
        "SolarizeAdd": (min(128, int(level * 110)),), "Color": (level * 1.8 + 0.1,),
        "Contrast": (level * 1.8 + 0.1,), "Brightness": (level * 1.8 + 0.1,),
        "Sharpness": (level * 1.8 + 0.1,),
    }.get(name, ())


# Mean |Δ| per image against timm's Pillow op for the same argument. Photometric ops are Pillow's exactly. The
# geometric ones resample through torch's grid_sample, which cannot be Pillow's: its bicubic has A = −0.75
# (Pillow −0.5), and a sample point within half a pixel outside the image blends toward the fill where Pillow
# clamps to the edge pixel (and a point beyond that is all fill in both). On these 40 × 48 crops the rim is a
# large share of the pixels; measured maxima: rotate 2.2, shear 1.4 / 1.9, translate 1.5 / 1.4 grey levels.
GEOMETRIC_TOLERANCE = 3.0


@pytest.mark.parametrize("kernels", ["numba", "torch"])
@pytest.mark.parametrize("name", RAND_OPS)
def test_randaugment_ops_follow_timm_for_the_drawn_levels(photos, name, kernels, monkeypatch):
    from timm.data.auto_augment import NAME_TO_OP

    monkeypatch.setenv("FASTLT_KERNELS", kernels)

    op = RandAugment()
    rng = np.random.default_rng(6)
    p = op.draw(rng, N)
    p["op"][:] = RAND_OPS.index(name)  # every row runs this op in both layers' first slot only
    p["u"][:, 0], p["u"][:, 1] = 0.0, 1.0
    out = _applied(op, photos, p)
    H, W = photos.shape[-2:]
    diffs = []
    for i in range(N):
        pil = Image.fromarray(photos[i].permute(1, 2, 0).numpy())
        level, sign = p["m"][i, 0] / 10.0, -1.0 if p["neg"][i, 0] else 1.0
        resample = Image.BICUBIC if p["bicubic"][i, 0] else Image.BILINEAR
        args = _timm_args(name, level, sign, W, H)
        ref = NAME_TO_OP[name](pil, *args, fillcolor=op.fill, resample=resample)
        diffs.append(np.abs(out[i].permute(1, 2, 0).numpy().astype(int) - np.asarray(ref).astype(int)).mean())
    geometric = name in ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
    assert max(diffs) <= (GEOMETRIC_TOLERANCE if geometric else 0.0), (name, max(diffs))


# ---------------------------------------------------------------------------------------------- distributions
def test_color_jitter_draws_uniform_factors_permutations_and_the_apply_rate():
    n = 24_000
    p = ColorJitter(0.4, 0.3, 0.2, 0.1, p=0.8).draw(np.random.default_rng(7), n)
    f = p["factors"]
    for j, (lo, hi) in enumerate([(0.6, 1.4), (0.7, 1.3), (0.8, 1.2), (-0.1, 0.1)]):
        assert lo <= f[:, j].min() and f[:, j].max() <= hi
        assert abs(f[:, j].mean() - (lo + hi) / 2) < 4 * (hi - lo) / math.sqrt(12 * n)
        assert abs(f[:, j].std() - (hi - lo) / math.sqrt(12)) < 0.01 * (hi - lo)
    assert abs(p["on"].mean() - 0.8) < 4 * math.sqrt(0.16 / n)
    perms, counts = np.unique(p["order"], axis=0, return_counts=True)
    assert len(perms) == 24 and all(sorted(q) == [0, 1, 2, 3] for q in perms)
    chi2 = ((counts - n / 24) ** 2 / (n / 24)).sum()
    assert chi2 < 49.7  # 23 degrees of freedom, p = 0.001


def test_autoaugment_and_randaugment_draw_their_choices_uniformly():
    n = 50_000
    p = AutoAugment().draw(np.random.default_rng(8), n)
    counts = np.bincount(p["sub"], minlength=25)
    assert ((counts - n / 25) ** 2 / (n / 25)).sum() < 51.2  # 24 d.o.f., p = 0.001
    assert abs(p["neg"].mean() - 0.5) < 0.01
    p = RandAugment().draw(np.random.default_rng(9), n)
    counts = np.bincount(p["op"].ravel(), minlength=15)
    assert ((counts - 2 * n / 15) ** 2 / (2 * n / 15)).sum() < 36.1  # 14 d.o.f., p = 0.001
    m = p["m"].ravel()
    # N(10, 0.5) clipped to [0, 10]: half the draws sit at 10, the rest follow the lower half-normal
    assert m.max() == 10.0 and abs((m == 10.0).mean() - 0.5) < 0.01
    below = m[m < 10.0]
    assert abs(below.mean() - (10 - 0.5 * math.sqrt(2 / math.pi))) < 0.01
    for key in ("u", "neg", "bicubic"):
        assert abs(np.asarray(p[key], dtype=float).mean() - 0.5) < 0.01


def test_blur_sigma_is_uniform_and_grayscale_rate_is_p():
    n = 20_000
    p = GaussianBlur().draw(np.random.default_rng(10), n)
    assert 0.1 <= p["sigma"].min() and p["sigma"].max() <= 2.0 and abs(p["sigma"].mean() - 1.05) < 0.01
    assert abs(p["on"].mean() - 0.5) < 0.015
    assert abs(Grayscale(0.2).draw(np.random.default_rng(11), n)["on"].mean() - 0.2) < 0.01


def test_crop_stage_kinds_scales_and_flips():
    n = 6000
    H, W = np.full(n, 300), np.full(n, 400)
    lo, hi = np.where(np.arange(n) < n // 2, 0.08, 0.2), np.ones(n)
    kinds = np.full(n, RESIZED, np.int8)
    c = train_crops(H, W, kinds, (lo, hi), seed=1, image_size=64)
    area = c.boxes[:, 2] * c.boxes[:, 3] / (300 * 400)
    assert area[: n // 2].min() < 0.12 and area[n // 2 :].min() > 0.18  # per-row scale ranges
    # the accepted area fraction follows torchvision's RandomResizedCrop (tries that do not fit are redrawn)
    torch.manual_seed(0)
    image = torch.empty(3, 300, 400)
    tv = [T.RandomResizedCrop.get_params(image, [0.2, 1.0], [3 / 4, 4 / 3]) for _ in range(3000)]
    tv_area = np.array([h * w for _, _, h, w in tv]) / (300 * 400)
    assert abs(area[n // 2 :].mean() - tv_area.mean()) < 0.02 and abs(c.flips.mean() - 0.5) < 0.03
    assert not c.pad.any()
    # one kind for every row: exactly what crop-flip drew before policies existed
    boxes, flips = train_params(H, W, seed=5, image_size=64)
    same = train_crops(H, W, kinds, (np.full(n, 0.08), hi), seed=5, image_size=64)
    assert np.array_equal(same.boxes, boxes) and np.array_equal(same.flips, flips)
    padded = train_crops(np.full(n, 32), np.full(n, 32), np.full(n, PAD_CROP, np.int8), (lo, hi), 5, 32)
    offsets, pad_flips = pad_crop_params(n, 5)
    assert np.array_equal(padded.offsets, offsets) and np.array_equal(padded.pad_flips, pad_flips)
    assert not padded.flips.any() and (padded.boxes == (0, 0, 32, 32)).all()


def test_clip_center_crops_the_centred_square_and_flips_half():
    aug = Augmentation(("clip-center",))
    plan = StepPlan.from_segments(0, 0, seed=1, main=np.arange(4000) % 3)
    H, W = np.array([300, 500, 224]), np.array([500, 300, 224])
    c = aug.crops(plan, H, W, seed=2, image_size=224)
    assert {tuple(b) for b in c.boxes} == {(0, 100, 300, 300), (100, 0, 300, 300), (0, 0, 224, 224)}
    assert abs(c.flips.mean() - 0.5) < 0.03


# ---------------------------------------------------------------------------------------------- seed → pixels
CCM_CIFAR = ("main=autoaugment-cifar", "fg=autoaugment-cifar", "view1=simclr-cifar", "view2=simclr-cifar")
CCM_IMAGENET = ("main=randaugment", "fg=randaugment", "view1=simclr", "view2=simclr")


def _ccm_plan(B: int, seed: int = 3) -> StepPlan:
    main = np.arange(B)
    return StepPlan.from_segments(1, 7, seed=seed, main=main, view1=main, view2=main, fg=(main * 7) % B)


@pytest.mark.parametrize(("spec", "size"), [(CCM_CIFAR, 32), (CCM_IMAGENET, 40)])
def test_ranks_augment_their_rows_as_one_process_does(spec, size):
    """A plan split over 1, 2 or 3 ranks: every rank's rows get the crops and pixels of the single process."""
    aug, plan = Augmentation(spec), _ccm_plan(9)
    rng = np.random.default_rng(0)
    source = torch.from_numpy(rng.integers(0, 256, (4 * 9, size, size, 3), dtype=np.uint8))
    H = W = np.full(9, size)
    crops = aug.crops(plan, H, W, 11, size)
    whole = aug.apply(source.clone(), plan, 11, crops)
    for world in (2, 3):
        for rank in range(world):
            part = plan.shard(rank, world)
            pos = part.global_positions
            c = aug.crops(part, H, W, 11, size)
            assert np.array_equal(c.boxes, crops.boxes[pos]) and np.array_equal(c.flips, crops.flips[pos])
            assert torch.equal(aug.apply(source[pos].clone(), part, 11, c), whole[pos]), (world, rank)


def test_a_plan_loads_the_same_twice_and_differently_with_another_seed():
    aug, plan = Augmentation(CCM_CIFAR), _ccm_plan(16)
    source = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8))
    sizes = np.full(16, 32), np.full(16, 32)

    def load(seed):
        return aug.apply(source.clone(), plan, seed, aug.crops(plan, *sizes, seed, 32))

    a, b, c = load(5), load(5), load(6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the two views of one image differ (independent crops, jitter), and differ from the classification image
    assert not torch.equal(a[16:32], a[32:48]) and not torch.equal(a[:16], a[16:32])


def test_crop_flip_runs_no_operation_and_every_policy_is_known():
    assert set(POLICIES) == set(AUGMENT_POLICIES)
    assert POLICIES["crop-flip"].ops == () and POLICIES["clip-center"].ops == ()
    assert Augmentation().policy("view1").name == "crop-flip"
    assert [Augmentation(CCM_CIFAR).policy(s).name for s in ("main", "view2", "b")] == [
        "autoaugment-cifar", "simclr-cifar", "crop-flip"]
    assert all(p.source for p in POLICIES.values())


def test_every_plan_segment_can_be_given_a_policy():
    """recipes.PLAN_SEGMENTS (what --augment accepts) covers every segment a producer makes."""
    from fastlt.producers import PRODUCERS, make_producer
    from fastlt.sampling import TextLocal

    offsets = np.array([0, 5, 9, 12])
    neighbours = TextLocal.from_embeddings(np.eye(3), tau=0.1, k=2)
    for name in PRODUCERS:
        plan = make_producer(name, offsets, batch_size=4, neighbours=neighbours).make_plan(0)
        assert set(plan.names) <= set(PLAN_SEGMENTS), (name, plan.names)


def test_augment_spec_errors_name_the_problem():
    assert split_augment(("randaugment", "view1=simclr")) == ("randaugment", {"view1": "simclr"})
    assert split_augment(()) == ("crop-flip", {})
    with pytest.raises(RecipeError, match="did you mean simclr"):
        split_augment(("view1=simclrr",))
    with pytest.raises(RecipeError, match="segment 'view1' is given twice"):
        split_augment(("view1=simclr", "view1=crop-flip"))
    with pytest.raises(RecipeError, match="two policies for the unnamed segments"):
        split_augment(("simclr", "randaugment"))
    with pytest.raises(RecipeError, match="did you mean partner"):
        split_augment(("partnr=clip-center",))


def test_operations_leave_rows_whose_coin_says_no_untouched(photos):
    for op in (ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.0), Grayscale(0.0), GaussianBlur(p=0.0)):
        p = op.draw(np.random.default_rng(0), N)
        assert torch.equal(_applied(op, photos, p), photos)
    assert torch.equal(ops.affine(photos, [[1, 0, 0, 0, 1, 0]] * N, "bilinear", (1, 2, 3)), photos)
