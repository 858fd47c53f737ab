"""kernels.mix: Triton (interpreter) and numba kernels against the torch reference, the reference against the
formulas of REFERENCE.md, the label rules' edge cases, CutMix pixel accounting and argument errors.

Tolerances: fp32 and fp16 outputs are bit-identical across implementations (same fp32 operation order, one
final rounding). bf16 is bit-identical for numba; the Triton *interpreter* truncates fp32 → bf16 instead of
rounding to nearest even, so there it is held to one bf16 ulp (relative 2⁻⁷); compiled Triton is exact
(tests/gpu). λ_y is compared exactly.
"""

import pytest
import torch

from fastlt.kernels import _dispatch, cutmix_boxes, mix_images, mix_labels
from fastlt.kernels.mix import IMAGENET_MEAN, IMAGENET_STD, clip_boxes


def run(backend, interpreter, *args, **kwargs):
    """``mix_images`` on the given backend; Triton goes to the interpreter worker."""
    if backend == "triton":
        return interpreter.apply(mix_images, args, {**kwargs, "backend": "triton"})
    return mix_images(*args, **kwargs, backend=backend)


DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BF16_ULP = 2.0**-7


def _images(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=g)


def _random_mix(batch, n_rows, h, w, seed):
    """Per-sample mode/λ/box/partners, with boxes that run over every edge of the image."""
    g = torch.Generator().manual_seed(seed)
    idx_a = torch.randint(0, n_rows, (batch,), generator=g)
    idx_b = torch.randint(0, n_rows, (batch,), generator=g)
    lam = torch.rand(batch, generator=g)
    mode = torch.randint(0, 3, (batch,), generator=g, dtype=torch.int32)
    y0 = torch.randint(-h // 2, h, (batch,), generator=g)
    x0 = torch.randint(-w // 2, w, (batch,), generator=g)
    boxes = torch.stack(
        [
            y0,
            x0,
            y0 + torch.randint(0, h, (batch,), generator=g),
            x0 + torch.randint(0, w, (batch,), generator=g),
        ],
        1,
    ).to(torch.int32)
    return dict(idx_a=idx_a, idx_b=idx_b, lam=lam, mode=mode, boxes=boxes)


def _assert_matches(out, ref, dtype, backend):
    assert out.images.dtype == dtype and out.images.shape == ref.images.shape
    assert out.images.is_contiguous(memory_format=torch.channels_last)
    if dtype == torch.bfloat16 and backend == "triton":
        torch.testing.assert_close(out.images.float(), ref.images.float(), rtol=BF16_ULP, atol=0)
    else:
        assert torch.equal(out.images, ref.images)
    assert torch.equal(out.lam_y, ref.lam_y)


# ------------------------------------------------------------------------------------------------ kernels


@pytest.mark.parametrize("batch,h,w", [(1, 17, 23), (3, 32, 32), (37, 17, 23), (1, 224, 224)])
@pytest.mark.parametrize("backend", ["triton", "numba"])
def test_kernel_matches_reference(batch, h, w, backend, interpreter):
    images = _images(max(batch, 4), h, w, seed=batch)
    kw = _random_mix(batch, images.shape[0], h, w, seed=h * w + batch)
    counts = torch.tensor([500.0, 20.0, 3.0, 3.0])
    labels = dict(y_a=kw["idx_a"] % 4, y_b=kw["idx_b"] % 4, class_counts=counts)
    for i, dtype in enumerate(DTYPES):
        rule, params = [("mixup", {}), ("lfm", {"alpha": 1.0}), ("remix", {})][i]
        args = dict(kw, out_dtype=dtype, rule=rule, **params, **(labels if rule != "mixup" else {}))
        ref = mix_images(images, images, backend="torch", **args)
        _assert_matches(run(backend, interpreter, images, images, **args), ref, dtype, backend)


@pytest.mark.parametrize("backend", ["triton", "numba"])
def test_plain_normalise(backend, interpreter):
    images = _images(5, 17, 23)
    idx = torch.tensor([4, 0, 0])
    for dtype in DTYPES:
        ref = mix_images(images, idx_a=idx, out_dtype=dtype, backend="torch")
        out = run(backend, interpreter, images, idx_a=idx, out_dtype=dtype)
        _assert_matches(out, ref, dtype, backend)
        assert torch.equal(ref.lam_y, torch.ones(3))


@pytest.mark.parametrize(
    "rule,params", [("cpmix", {"kappa": 0.3}), ("cutmix", {}), ("remix", {"kappa": 2.5})]
)
def test_fused_label_rules_triton(rule, params, interpreter):
    """λ_y from the Triton launch equals mix_labels for the rules not covered above."""
    images = _images(8, 9, 11)
    kw = _random_mix(12, 8, 9, 11, seed=7)
    if rule == "cutmix":
        kw["mode"] = torch.full((12,), 2, dtype=torch.int32)
    counts = torch.tensor([1.0, 7.0, 7.0, 300.0, 0.0, 50.0, 2.0, 9.0])
    labels = dict(y_a=kw["idx_a"], y_b=kw["idx_b"], class_counts=counts)
    out = run("triton", interpreter, images, images, rule=rule, **labels, **params, **kw)
    n_a, n_b = counts[kw["idx_a"]], counts[kw["idx_b"]]
    expect = mix_labels(rule, kw["lam"], n_a, n_b, mode=kw["mode"], boxes=kw["boxes"], size=(9, 11), **params)
    assert torch.equal(out.lam_y, expect)


def test_reference_is_the_formula():
    """The reference against (v/255 − mean)/std computed independently in float64."""
    images = _images(6, 17, 23)
    kw = _random_mix(6, 6, 17, 23, seed=3)
    out = mix_images(images, images, backend="torch", **kw).images.double()
    a, b = images[kw["idx_a"]].double(), images[kw["idx_b"]].double()
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64)
    for i in range(6):
        m = int(kw["mode"][i])
        if m == 0:
            v = a[i]
        elif m == 1:
            lam = float(kw["lam"][i])
            v = lam * a[i] + (1 - lam) * b[i]
        else:
            y0, x0, y1, x1 = clip_boxes(kw["boxes"][i : i + 1], 17, 23)[0].tolist()
            v = a[i].clone()
            v[y0:y1, x0:x1] = b[i][y0:y1, x0:x1]
        expect = ((v / 255 - mean) / std).permute(2, 0, 1)
        torch.testing.assert_close(out[i], expect, rtol=1e-5, atol=1e-5)


def test_index_fusion_equals_gathered_copies(interpreter):
    images = _images(10, 8, 8)
    kw = _random_mix(7, 10, 8, 8, seed=5)
    fused = run("triton", interpreter, images, images, **kw)
    copies = dict(kw)
    ia, ib = copies.pop("idx_a"), copies.pop("idx_b")
    sliced = mix_images(images[ia], images[ib], backend="torch", **copies)
    assert torch.equal(fused.images, sliced.images) and torch.equal(fused.lam_y, sliced.lam_y)


def mix_with_integer_rows(*args, **kwargs):
    """mix_images with the fp32 row shortcut off, so boxes go through the kernel's integer-division branch
    (used only by images of ≥ 2²² pixels, too big for the interpreter). Runs in the interpreter worker."""
    from fastlt.kernels import mix

    limit, mix.FP32_ROW_LIMIT = mix.FP32_ROW_LIMIT, 0
    try:
        return mix_images(*args, **kwargs)
    finally:
        mix.FP32_ROW_LIMIT = limit


def test_integer_row_branch_matches(interpreter):
    images = _images(6, 17, 23)
    kw = _random_mix(6, 6, 17, 23, seed=11)
    kw["mode"] = torch.full((6,), 2, dtype=torch.int32)
    ref = mix_images(images, images, backend="torch", **kw)
    out = interpreter.apply(mix_with_integer_rows, (images, images), dict(kw, backend="triton"))
    _assert_matches(out, ref, torch.float32, "triton")


# ------------------------------------------------------------------------------------------------ CutMix


EDGE_BOXES = [
    (-4, 2, 5, 9),  # over the top edge
    (3, -6, 9, 4),  # over the left edge
    (12, 5, 30, 15),  # over the bottom edge
    (6, 18, 11, 40),  # over the right edge
    (-10, -10, 40, 40),  # covers everything: λ = 0
    (5, 5, 5, 12),  # empty (zero height): λ = 1
    (9, 9, 2, 2),  # inverted: empty after clipping
    (20, 30, 25, 35),  # entirely outside: empty
]


@pytest.mark.parametrize("backend", ["triton", "numba", "torch"])
def test_cutmix_takes_exactly_one_minus_lambda_of_the_pixels(backend, interpreter):
    h, w = 17, 23
    a = _images(len(EDGE_BOXES), h, w, seed=1)
    b = a ^ 0x80  # every channel of every pixel differs from a
    boxes = torch.tensor(EDGE_BOXES, dtype=torch.int32)
    mode = torch.full((len(EDGE_BOXES),), 2, dtype=torch.int32)
    out = run(backend, interpreter, a, b, boxes=boxes, mode=mode)
    from_b = mix_images(b, backend="torch").images
    from_a = mix_images(a, backend="torch").images
    taken = (out.images == from_b).all(1)  # [B, H, W] pixels copied from b
    assert ((out.images == from_a).all(1) ^ taken).all()  # every pixel is exactly a or exactly b
    n_taken = taken.flatten(1).sum(1)
    assert torch.equal(n_taken, torch.round((1 - out.lam_y.double()) * h * w).long())
    clipped = clip_boxes(boxes, h, w)
    area = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    assert n_taken.tolist() == area.tolist() == [5 * 7, 6 * 4, 5 * 10, 5 * 5, h * w, 0, 0, 0]


def test_cutmix_boxes_area_and_correction():
    h, w = 32, 24
    lam = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0] * 20)
    boxes, lam_c = cutmix_boxes(lam, h, w, torch.Generator().manual_seed(0))
    again, lam_again = cutmix_boxes(lam, h, w, torch.Generator().manual_seed(0))
    assert torch.equal(boxes, again) and torch.equal(lam_c, lam_again)  # the generator is the only randomness
    assert boxes.dtype == torch.int32 and lam_c.dtype == torch.float32
    assert ((boxes[:, 0] >= 0) & (boxes[:, 2] <= h) & (boxes[:, 1] >= 0) & (boxes[:, 3] <= w)).all()
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).double()
    torch.testing.assert_close(lam_c.double(), 1 - area / (h * w), rtol=0, atol=1e-7)
    full = boxes[lam == 1.0]
    assert ((full[:, 2] == full[:, 0]) | (full[:, 3] == full[:, 1])).all()  # λ = 1 pastes nothing
    # The box side is round(H·√(1−λ)) × round(W·√(1−λ)); clipping only ever shrinks it.
    side_h = torch.round(h * torch.sqrt(1 - lam.double())).long()
    side_w = torch.round(w * torch.sqrt(1 - lam.double())).long()
    assert (area <= side_h * side_w).all()
    free = (boxes[:, 0] > 0) & (boxes[:, 1] > 0) & (boxes[:, 2] < h) & (boxes[:, 3] < w) & (lam < 1)
    assert free.any()
    assert torch.equal(area[free].long(), (side_h * side_w)[free])


# ------------------------------------------------------------------------------------------------ label rules


def test_mixup_and_cutmix_rules():
    lam = torch.tensor([0.0, 0.3, 1.0])
    assert torch.equal(mix_labels("mixup", lam), lam)
    boxes = torch.tensor([[0, 0, 5, 10], [-5, -5, 5, 5], [0, 0, 10, 10]], dtype=torch.int32)
    # λ_x is ignored for boxed samples: λ comes from the clipped box actually pasted.
    got = mix_labels("cutmix", torch.tensor([0.9, 0.9, 0.9]), boxes=boxes, size=(10, 10))
    assert torch.equal(got, torch.tensor([0.5, 0.75, 0.0]))
    mode = torch.tensor([0, 1, 2], dtype=torch.int32)
    assert torch.equal(
        mix_labels("mixup", lam, mode=mode, boxes=boxes, size=(10, 10)), torch.tensor([1.0, 0.3, 0.0])
    )


def test_remix_rule():
    n_a = torch.tensor([300.0, 300.0, 100.0, 100.0, 50.0, 299.0, 0.0])
    n_b = torch.tensor([100.0, 100.0, 300.0, 300.0, 50.0, 100.0, 0.0])
    lam = torch.tensor([0.4, 0.6, 0.6, 0.4, 0.1, 0.4, 0.2])
    # ratio = κ exactly counts as majority; 299/100 < κ does not; equal counts keep λ; no counts keep λ.
    expect = torch.tensor([0.0, 0.6, 1.0, 0.4, 0.1, 0.4, 0.2])
    assert torch.equal(mix_labels("remix", lam, n_a, n_b), expect)
    assert torch.equal(mix_labels("remix", lam, n_a, n_b, kappa=3.0, tau=0.5), expect)
    # τ = 0 never fires; with κ = 1 equal counts satisfy both tests, so λ snaps to the nearer end.
    assert torch.equal(mix_labels("remix", lam, n_a, n_b, tau=0.0), lam)
    got = mix_labels(
        "remix", torch.tensor([0.3, 0.7]), torch.tensor([10.0, 10.0]), torch.tensor([10.0, 10.0]), kappa=1.0
    )
    assert torch.equal(got, torch.tensor([0.0, 1.0]))


def test_cpmix_rule():
    lam = torch.tensor([0.2, 0.5, 0.9])
    n_a, n_b = torch.tensor([90.0, 10.0, 40.0]), torch.tensor([10.0, 90.0, 40.0])
    assert torch.equal(mix_labels("cpmix", lam, n_a, n_b, kappa=0.0), lam)
    assert torch.equal(mix_labels("cpmix", lam, n_a, n_b, kappa=1.0), torch.tensor([0.1, 0.9, 0.5]))
    torch.testing.assert_close(mix_labels("cpmix", lam, n_a, n_b, kappa=0.5), torch.tensor([0.15, 0.7, 0.7]))


def test_lfm_rule():
    lam = torch.tensor([0.2, 0.9, 0.5, 0.6, 0.6])
    n_a = torch.tensor([900.0, 100.0, 30.0, 300.0, 100.0])
    n_b = torch.tensor([100.0, 900.0, 30.0, 100.0, 300.0])
    # 0.2 − 0.8 → clamped to 0; 0.9 + 0.8 → clamped to 1; equal counts keep λ; ±0.5·α shift otherwise.
    torch.testing.assert_close(mix_labels("lfm", lam, n_a, n_b), torch.tensor([0.0, 1.0, 0.5, 0.1, 1.0]))
    torch.testing.assert_close(
        mix_labels("lfm", lam, n_a, n_b, alpha=0.5), torch.tensor([0.0, 1.0, 0.5, 0.35, 0.85])
    )


def test_unmixed_samples_keep_their_label():
    mode = torch.zeros(3, dtype=torch.int32)
    for rule, params in [("mixup", {}), ("remix", {}), ("cpmix", {"kappa": 1.0}), ("lfm", {})]:
        got = mix_labels(
            rule,
            torch.tensor([0.1, 0.5, 0.9]),
            torch.tensor([1.0, 500.0, 2.0]),
            torch.tensor([500.0, 1.0, 2.0]),
            mode=mode,
            **params,
        )
        assert torch.equal(got, torch.ones(3)), rule


# ------------------------------------------------------------------------------------------------ errors


def test_bad_arguments_name_what_was_expected():
    images = _images(4, 8, 8)
    with pytest.raises(ValueError, match="uint8"):
        mix_images(images.float())
    with pytest.raises(ValueError, match="remix, cpmix, lfm"):
        mix_images(images, images, lam=torch.rand(4), rule="mixmatch")
    with pytest.raises(ValueError, match="its parameters: alpha"):
        mix_labels("lfm", torch.rand(2), torch.ones(2), torch.ones(2), kappa=2.0)
    with pytest.raises(ValueError, match="kappa >= 1"):
        mix_labels("remix", torch.rand(2), torch.ones(2), torch.ones(2), kappa=0.5)
    with pytest.raises(ValueError, match="0 <= kappa <= 1"):
        mix_labels("cpmix", torch.rand(2), torch.ones(2), torch.ones(2), kappa=1.5)
    with pytest.raises(ValueError, match="0-1 units"):
        mix_images(images, mean=(124, 116, 104), std=(58, 57, 57))
    with pytest.raises(ValueError, match="lam must lie"):
        mix_images(images, images, lam=torch.full((4,), 1.5))
    with pytest.raises(ValueError, match="need lam"):
        mix_images(images, images)
    with pytest.raises(ValueError, match="need boxes"):
        mix_images(images, images, mode=torch.full((4,), 2))
    with pytest.raises(ValueError, match=r"idx_b has rows outside \[0, 4\)"):
        mix_images(images, images, lam=torch.rand(2), idx_a=torch.tensor([0, 1]), idx_b=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="y_a, y_b"):
        mix_images(images, images, lam=torch.rand(4), rule="lfm")
    with pytest.raises(ValueError, match="mode must be 0"):
        mix_images(images, images, lam=torch.rand(4), mode=torch.full((4,), 3))
    with pytest.raises(ValueError, match=r"pass boxes .* and size=\(H, W\)"):
        mix_labels("cutmix", torch.rand(2))


@pytest.mark.parametrize("backend", ["triton", "numba"])
def test_unchecked_values_are_clamped(backend, interpreter):
    """check=False (the CUDA default): rows are clamped into range and unknown modes act as none, in every
    kernel alike, so bad values can give a wrong image but never a read out of bounds."""
    images = _images(5, 9, 11)
    kw = _random_mix(4, 5, 9, 11, seed=13)
    kw["idx_a"] = torch.tensor([0, 4, 5, 1000])
    kw["mode"] = torch.tensor([1, 2, 3, -1], dtype=torch.int32)
    out = run(backend, interpreter, images, images, check=False, **kw)
    clamped = dict(kw, idx_a=kw["idx_a"].clamp(max=4), mode=torch.tensor([1, 2, 0, 0], dtype=torch.int32))
    ref = mix_images(images, images, backend="torch", **clamped)
    _assert_matches(out, ref, torch.float32, backend)


def test_dispatch(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv(_dispatch.ENV, raising=False)
    assert _dispatch.pick(cpu, has_numba=True) == "numba"
    assert _dispatch.pick(cpu) == "torch"
    assert _dispatch.pick(cuda, has_numba=True) == "triton"
    assert _dispatch.pick(cuda, "numba", has_numba=True) == "torch"
    monkeypatch.setenv(_dispatch.ENV, "torch")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _dispatch.pick(cuda) == "torch" and _dispatch.pick(cpu, "triton") == "triton"
    monkeypatch.setenv(_dispatch.ENV, "cuda")
    with pytest.raises(ValueError, match="FASTLT_KERNELS='cuda'"):
        _dispatch.pick(cpu)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        _dispatch.pick(cpu, "triton")
