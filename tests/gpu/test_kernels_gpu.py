"""Compiled Triton kernels on CUDA against the torch references (marker ``gpu``; skipped without CUDA).

Tolerances: the mix kernel runs with FMA contraction off and rounds fp32 → bf16/fp16 to nearest even like
torch, so every output dtype and λ_y must be bit-identical to the reference. soft_cross_entropy: loss rtol
1e-5; gradient atol 1e-6 in fp32 and one ulp of the dtype for bf16/fp16 logits.
"""

import pytest
import torch

from fastlt.kernels import _dispatch, cutmix_boxes, mix_images, soft_cross_entropy

DEV = "cuda"


@pytest.fixture(autouse=True)
def compiled_triton(monkeypatch):
    """These tests are about the compiled kernels: never the interpreter, never a forced backend."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv(_dispatch.ENV, raising=False)


def _batch(B, n_rows, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n_rows, h, w, 3), dtype=torch.uint8, generator=g)
    lam = torch.rand(B, generator=g)
    boxes, _ = cutmix_boxes(lam, h, w, g)
    boxes[::5] -= 7  # some boxes hang over the top/left edges
    kw = dict(
        idx_a=torch.randint(0, n_rows, (B,), generator=g),
        idx_b=torch.randint(0, n_rows, (B,), generator=g),
        lam=lam,
        boxes=boxes,
        mode=torch.randint(0, 3, (B,), generator=g, dtype=torch.int32),
        y_a=torch.randint(0, 10, (B,), generator=g),
        y_b=torch.randint(0, 10, (B,), generator=g),
        class_counts=torch.tensor([900, 300, 300, 100, 40, 20, 10, 5, 2, 1]),
    )
    return images.to(DEV), {k: v.to(DEV) for k, v in kw.items()}


@pytest.mark.parametrize("B,h,w", [(1, 224, 224), (37, 17, 23), (128, 32, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "rule,params", [("mixup", {}), ("remix", {}), ("cpmix", {"kappa": 0.3}), ("lfm", {})]
)
def test_mix_bit_identical_to_reference(B, h, w, dtype, rule, params):
    images, kw = _batch(B, B + 3, h, w, seed=B + h)
    out = mix_images(images, images, out_dtype=dtype, rule=rule, **params, **kw)  # auto → Triton on CUDA
    ref = mix_images(images, images, out_dtype=dtype, rule=rule, backend="torch", **params, **kw)
    assert out.images.is_cuda and out.images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out.images, ref.images)
    assert torch.equal(out.lam_y, ref.lam_y)


def test_plain_normalise_and_cutmix_accounting():
    images, kw = _batch(16, 16, 33, 47, seed=3)
    plain = mix_images(images, out_dtype=torch.bfloat16)
    assert torch.equal(plain.images, mix_images(images, out_dtype=torch.bfloat16, backend="torch").images)
    b = images ^ 0x80
    kw["mode"] = torch.full_like(kw["mode"], 2)
    out = mix_images(images, b, **kw)
    taken = (out.images == mix_images(b, idx_a=kw["idx_b"]).images).all(1).flatten(1).sum(1)
    assert torch.equal(taken, torch.round((1 - out.lam_y.double()) * 33 * 47).long())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,C,K", [(512, 8142, 2), (37, 100, 31), (1, 7, 1)])
def test_soft_ce_matches_reference(dtype, B, C, K):
    g = torch.Generator().manual_seed(B + C + K)
    logits = (torch.randn(B, C, generator=g) * 4).to(DEV, dtype)
    idx = torch.randint(0, C, (B, K), generator=g).to(DEV)
    if K > 1:
        idx[:, -1] = idx[:, 0]
    w = torch.rand(B, K, generator=g).to(DEV)
    adjust = torch.log(torch.randint(1, 500, (C,), generator=g).float()).to(DEV)
    cw = (torch.rand(C, generator=g) + 0.5).to(DEV)
    results = []
    for backend in ("triton", "torch"):
        z = logits.clone().requires_grad_(True)
        loss = soft_cross_entropy(z, idx, w, adjust, cw, backend=backend)
        loss.backward()
        results.append((loss.detach(), z.grad))
    (loss, grad), (ref_loss, ref_grad) = results
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert grad.dtype == dtype
    rtol = {torch.float32: 1e-5, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}[dtype]
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=rtol, atol=1e-6)


def test_unchecked_bad_indices_are_clamped_never_out_of_bounds():
    """On CUDA the value checks are off by default (they would cost as much as the kernel); the kernels clamp
    row, label and class indices into range instead, so bad input gives clamped rows, never a stray read."""
    images, kw = _batch(4, 6, 9, 11, seed=5)
    kw["idx_a"] = torch.tensor([0, 5, 6, 10**6], device=DEV)  # rows 6 and 10⁶ do not exist
    out = mix_images(images, images, **kw)
    ref = mix_images(images, images, backend="torch", **{**kw, "idx_a": kw["idx_a"].clamp(max=5)})
    assert torch.equal(out.images, ref.images)
    logits = torch.randn(3, 7, device=DEV)
    bad = torch.tensor([[9], [2], [7]], device=DEV)
    loss = soft_cross_entropy(logits, bad, torch.ones(3, 1, device=DEV), reduction="none")
    expect = soft_cross_entropy(logits, bad.clamp(max=6), torch.ones(3, 1, device=DEV), reduction="none")
    assert torch.equal(loss, expect)
