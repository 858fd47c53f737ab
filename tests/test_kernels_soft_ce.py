"""kernels.soft_ce: the reference against F.cross_entropy and gradcheck, the Triton (interpreter) and numba
kernels against the reference, forward and backward, including duplicate indices, logit adjustment and class
weights.

Tolerances (Triton or numba vs reference): fp32 logits — loss rtol 1e-5, gradient atol 1e-6 (the kernels sum
exp in another order than torch's logsumexp); bf16/fp16 logits — both read the same rounded logits and work
in fp32, so the loss keeps rtol 1e-5; the gradient is rounded once to the logits' dtype, so it is held to one
ulp of that dtype.
"""

import pytest
import torch
import torch.nn.functional as F

from fastlt.kernels import soft_cross_entropy
from fastlt.kernels.soft_ce import soft_ce_reference


def _problem(B, C, K, seed, dtype=torch.float32, duplicates=True):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, C, generator=g, dtype=torch.float64) * 4).to(dtype)
    idx = torch.randint(0, C, (B, K), generator=g)
    if duplicates and K > 1:
        idx[:, -1] = idx[:, 0]  # a pair of two images of one class
    w = torch.rand(B, K, generator=g)
    w = w / w.sum(1, keepdim=True)
    adjust = torch.log(torch.randint(1, 500, (C,), generator=g).double()).to(torch.float32) * 0.9
    cw = torch.rand(C, generator=g) + 0.25
    return logits, idx, w, adjust, cw


def fwd_bwd(backend, logits, idx, w, adjust, cw, reduction):
    """Loss and gradient with respect to the logits (module level so the interpreter worker can import it)."""
    z = logits.clone().requires_grad_(True)
    loss = soft_cross_entropy(z, idx, w, adjust, cw, reduction, backend=backend)
    (loss.sum() if reduction == "none" else loss).backward()
    return loss.detach(), z.grad


def _run(backend, interpreter, *args):
    if backend == "triton":
        return interpreter.apply(fwd_bwd, (backend, *args))
    return fwd_bwd(backend, *args)


# ------------------------------------------------------------------------------------------------ reference


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reference_one_hot_matches_weighted_cross_entropy(reduction):
    logits, idx, _, adjust, cw = _problem(11, 7, 1, seed=1)
    y = idx[:, 0]
    got = soft_ce_reference(logits, idx, torch.ones(11, 1), adjust, cw, reduction)
    expect = F.cross_entropy(logits + adjust, y, weight=cw, reduction=reduction)
    torch.testing.assert_close(got, expect, rtol=1e-6, atol=1e-6)
    plain = soft_ce_reference(logits, y[:, None], torch.ones(11, 1), reduction=reduction)
    torch.testing.assert_close(plain, F.cross_entropy(logits, y, reduction=reduction), rtol=1e-6, atol=1e-6)


def test_reference_soft_labels_match_dense_probability_targets():
    logits, idx, w, adjust, _ = _problem(9, 100, 2, seed=2)
    dense = torch.zeros(9, 100).scatter_add_(1, idx, w)  # test-only densification, duplicates add up
    got = soft_ce_reference(logits, idx, w, adjust)
    torch.testing.assert_close(got, F.cross_entropy(logits + adjust, dense), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_reference_gradcheck_float64(reduction):
    logits, idx, w, adjust, cw = _problem(3, 7, 3, seed=3, dtype=torch.float64)
    z = logits.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t: soft_ce_reference(t, idx, w.double(), adjust.double(), cw.double(), reduction), (z,)
    )
    assert torch.autograd.gradcheck(
        lambda t: soft_ce_reference(t, idx, w.double(), reduction=reduction), (z,)
    )


def test_torch_row_passes_gradcheck_float64():
    """backend 'torch' (CPU auto) is its own autograd Function: its analytic backward against finite
    differences (gradcheck also backpropagates through one graph several times)."""
    logits, idx, w, adjust, cw = _problem(3, 7, 3, seed=3, dtype=torch.float64)
    z = logits.requires_grad_(True)
    for reduction in ("mean", "sum", "none"):
        assert torch.autograd.gradcheck(
            lambda t, r=reduction: soft_cross_entropy(t, idx, w.double(), adjust.double(), cw.double(), r,
                                                      backend="torch"), (z,))
        assert torch.autograd.gradcheck(
            lambda t, r=reduction: soft_cross_entropy(t, idx, w.double(), reduction=r, backend="torch"), (z,))


# ------------------------------------------------------------------------------------------------ Triton


@pytest.mark.parametrize(
    "B,C,K,reduction,weighted",
    [
        (1, 7, 1, "mean", True),
        (3, 7, 2, "none", False),
        (37, 100, 2, "mean", True),
        (37, 100, 2, "sum", False),
        (3, 100, 31, "none", True),
        (1, 8142, 31, "mean", True),
        (3, 8142, 2, "mean", False),
        (1, 8142, 1, "sum", True),
    ],
)
@pytest.mark.parametrize("backend", ["triton", "numba", "torch"])
def test_kernel_matches_reference_fp32(B, C, K, reduction, weighted, backend, interpreter):
    logits, idx, w, adjust, cw = _problem(B, C, K, seed=B * C + K)
    args = (logits, idx, w, adjust if weighted else None, cw if weighted else None, reduction)
    loss, grad = _run(backend, interpreter, *args)
    z = logits.clone().requires_grad_(True)
    ref_loss = soft_ce_reference(z, *args[1:])
    (ref_grad,) = torch.autograd.grad(ref_loss.sum(), z)
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32 and loss.shape == ref_loss.shape
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_low_precision_logits(dtype, interpreter):
    logits, idx, w, adjust, cw = _problem(5, 100, 2, seed=4, dtype=dtype)
    loss, grad = _run("triton", interpreter, logits, idx, w, adjust, cw, "mean")
    ref_loss, ref_grad = _run("torch", interpreter, logits, idx, w, adjust, cw, "mean")
    assert grad.dtype == dtype
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    # One ulp of the dtype (2^-7 bf16, 2^-10 fp16 relative): the interpreter truncates to bf16 where torch and
    # compiled Triton round to nearest.
    ulp = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}[dtype]
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=ulp, atol=1e-6)


@pytest.mark.parametrize("backend", ["triton", "numba", "torch"])
def test_duplicate_indices_accumulate(backend, interpreter):
    logits, idx, _, adjust, cw = _problem(4, 7, 1, seed=5)
    split = (torch.cat([idx, idx, idx], 1), torch.tensor([[0.2, 0.3, 0.5]]).expand(4, 3).contiguous())
    once = (idx, torch.ones(4, 1))
    for reduction in ("mean", "none"):
        a = _run(backend, interpreter, logits, *split, adjust, cw, reduction)
        b = _run(backend, interpreter, logits, *once, adjust, cw, reduction)
        torch.testing.assert_close(a[0], b[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(a[1], b[1], rtol=1e-6, atol=1e-7)


def test_gradient_is_softmax_minus_target(interpreter):
    """The analytic gradient, built densely here only to check the kernel: (W·p − scatter(w·cw)) / ΣW."""
    logits, idx, w, adjust, cw = _problem(6, 7, 2, seed=6)
    _, grad = _run("triton", interpreter, logits, idx, w, adjust, cw, "mean")
    ww = w * cw[idx]
    p = torch.softmax(logits + adjust, 1)
    expect = (ww.sum(1, keepdim=True) * p - torch.zeros(6, 7).scatter_add_(1, idx, ww)) / ww.sum()
    torch.testing.assert_close(grad, expect, rtol=1e-5, atol=1e-7)


def test_hard_labels_as_vectors_and_zero_weights(interpreter):
    logits, idx, *_ = _problem(4, 7, 1, seed=7)
    y = idx[:, 0]
    loss = interpreter.apply(soft_cross_entropy, (logits, y, torch.ones(4)), {"backend": "triton"})
    torch.testing.assert_close(loss, F.cross_entropy(logits, y), rtol=1e-5, atol=1e-6)
    zero = interpreter.apply(
        soft_cross_entropy, (logits, y, torch.zeros(4)), dict(reduction="none", backend="triton")
    )
    assert torch.equal(zero, torch.zeros(4))


def test_bad_arguments(interpreter):
    logits, idx, w, adjust, cw = _problem(3, 7, 2, seed=8)
    with pytest.raises(ValueError, match=r"outside \[0, 7\)"):
        soft_cross_entropy(logits, idx + 7, w)
    with pytest.raises(ValueError, match="shaped like idx"):
        soft_cross_entropy(logits, idx, w[:, :1])
    with pytest.raises(ValueError, match="int64 \\[3, K\\]"):
        soft_cross_entropy(logits, idx[:2], w[:2])
    with pytest.raises(ValueError, match="reduction must be one of mean, sum, none"):
        soft_cross_entropy(logits, idx, w, reduction="avg")
    with pytest.raises(ValueError, match=r"logit_adjust must be a float vector of shape \[7\]"):
        soft_cross_entropy(logits, idx, w, logit_adjust=adjust[:5])
    with pytest.raises(ValueError, match="class_weight"):
        soft_cross_entropy(logits, idx, w, class_weight=torch.ones(7, dtype=torch.int64))
    with pytest.raises(ValueError, match="backend='torch'"):
        interpreter.apply(soft_cross_entropy, (logits.double(), idx, w), {"backend": "triton"})
