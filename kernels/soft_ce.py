"""Cross-entropy against sparse soft labels, with logit adjustment and class weights, never densified.

A mixed label has a handful of non-zero entries (2 for mixup, up to top-k for ConCutMix's rectified label),
so the target is given sparsely: ``idx int64 [B, K]`` and ``w float [B, K]``, K small. Duplicate indices in a
row are allowed and simply add up (a pair mixing two images of one class gives ``idx = (c, c)``).

Definition (for row b, with ``z' = z + adj`` the adjusted logits and ``cw`` the class weights, 1 if None):

    lse_b   = log Σ_j exp(z'_bj)
    ℓ_b     = Σ_k w_bk · cw[idx_bk] · (lse_b − z'_{b,idx_bk})          (= −Σ_k w_k cw_k log softmax(z')_idx_k)
    W_b     = Σ_k w_bk · cw[idx_bk]

    reduction 'none': ℓ [B];  'sum': Σ_b ℓ_b;
    'mean': Σ_b ℓ_b / Σ_b W_b   with class weights  (for one-hot rows this is exactly
                                                      ``F.cross_entropy(z', y, weight=cw)``: Σ weighted losses
                                                      / Σ weights of the targets),
            Σ_b ℓ_b / B         without              (``F.cross_entropy`` with probability targets).

``adj`` is an additive constant such as ``τ·log π`` (logit adjustment) or ``log n`` (Balanced Softmax); it
and the labels get no gradient. The gradient with respect to the logits, for upstream gradient ``g_b``:

    ∂ℓ_b/∂z_bj = W_b · softmax(z')_bj − Σ_k w_bk cw[idx_bk] [idx_bk = j]

(the derivative of ``lse`` is the softmax; each target term pulls its own logit down). The Triton forward
is an online-softmax pass over the row that saves ``lse`` and ``W``; the backward re-reads the row once and
writes ``g_b · (W_b · p_bj − scatter_j)``, where the scatter is computed per column block as a
``[BLOCK_C, K]`` comparison against the row's indices — every duplicate adds, and no two programs touch
the same element.
Memory: O(B) saved besides the logits, no ``[B, C]`` target, softmax or one-hot tensor. A numba version of
the same two row passes serves fp32 CPU logits on request (``backend='numba'``); the torch reference is the
definition, autograd-differentiable in float64 for gradcheck.

``backend='torch'`` (and ``auto`` on CPU) runs the same math in torch ops, arranged for speed:
``log_softmax`` — one vectorised aten kernel, where the numba rows call a scalar ``exp`` — gives
``ℓ_b = −Σ_k w_k cw_k · log p_{b,idx_k}``; its output is saved and the backward writes
``g_b · (W_b · exp(log p) − scatter)`` into one new buffer. Two ``[B, C]`` buffers at the peak (the
log-probabilities and the gradient) against dense ``F.cross_entropy``'s three (its target besides).
"""

from __future__ import annotations

import numpy as np
import torch

from . import _dispatch
from ._dispatch import numba, prange, tl

REDUCTIONS = ("mean", "sum", "none")
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------------------------------------
# Torch reference
# ----------------------------------------------------------------------------------------------------------


def soft_ce_reference(logits, idx, w, logit_adjust=None, class_weight=None, reduction="mean"):
    """The definition above in plain torch (autograd through logits only); float64-capable for gradcheck."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    z = logits.to(dtype)
    if logit_adjust is not None:
        z = z + logit_adjust.detach().to(dtype)
    lse = torch.logsumexp(z, dim=1, keepdim=True)
    ww = w.detach().to(dtype)
    if class_weight is not None:
        ww = ww * class_weight.detach().to(dtype)[idx]
    rows = (ww * (lse - z.gather(1, idx))).sum(1)
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    # A Python number as divisor: a tensor made from one would be a host-to-device copy on CUDA.
    return rows.sum() / (ww.sum() if class_weight is not None else logits.shape[0])


# ----------------------------------------------------------------------------------------------------------
# Triton kernels: one program per row
# ----------------------------------------------------------------------------------------------------------


def _soft_ce_fwd_kernel(
    z_ptr,
    stride_z,
    adj_ptr,
    idx_ptr,
    w_ptr,
    cw_ptr,
    loss_ptr,
    lse_ptr,
    wsum_ptr,
    C,
    K,
    HAS_ADJ: tl.constexpr,
    HAS_CW: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0)
    z_row = z_ptr + row.to(tl.int64) * stride_z
    # Online softmax: running max m and Σ exp(z − m), rescaled by exp(m_old − m_new) when the max grows.
    m = -float("inf")
    s = 0.0
    for start in range(0, C, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        mask = cols < C
        z = tl.load(z_row + cols, mask=mask, other=-float("inf")).to(tl.float32)
        if HAS_ADJ:
            z += tl.load(adj_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)

    k = tl.arange(0, BLOCK_K)
    mk = k < K
    # Indices are clamped into [0, C): unchecked bad input gives a wrong loss, never a read out of bounds.
    idx = tl.minimum(tl.maximum(tl.load(idx_ptr + row.to(tl.int64) * K + k, mask=mk, other=0), 0), C - 1)
    ww = tl.load(w_ptr + row.to(tl.int64) * K + k, mask=mk, other=0.0).to(tl.float32)
    if HAS_CW:
        ww = ww * tl.load(cw_ptr + idx, mask=mk, other=0.0).to(tl.float32)
    zt = tl.load(z_row + idx, mask=mk, other=0.0).to(tl.float32)
    if HAS_ADJ:
        zt += tl.load(adj_ptr + idx, mask=mk, other=0.0).to(tl.float32)
    tl.store(loss_ptr + row, tl.sum(ww * (lse - zt), axis=0))
    tl.store(lse_ptr + row, lse)
    tl.store(wsum_ptr + row, tl.sum(ww, axis=0))


def _soft_ce_bwd_kernel(
    z_ptr,
    stride_z,
    adj_ptr,
    idx_ptr,
    w_ptr,
    cw_ptr,
    lse_ptr,
    wsum_ptr,
    g_ptr,
    dz_ptr,
    stride_dz,
    C,
    K,
    HAS_ADJ: tl.constexpr,
    HAS_CW: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0)
    z_row = z_ptr + row.to(tl.int64) * stride_z
    dz_row = dz_ptr + row.to(tl.int64) * stride_dz
    lse = tl.load(lse_ptr + row)
    g = tl.load(g_ptr + row)
    g_total = g * tl.load(wsum_ptr + row)
    k = tl.arange(0, BLOCK_K)
    mk = k < K
    idx = tl.minimum(tl.maximum(tl.load(idx_ptr + row.to(tl.int64) * K + k, mask=mk, other=0), 0), C - 1)
    idx = tl.where(mk, idx, -1)
    ww = tl.load(w_ptr + row.to(tl.int64) * K + k, mask=mk, other=0.0).to(tl.float32)
    if HAS_CW:
        ww = ww * tl.load(cw_ptr + idx, mask=mk, other=0.0).to(tl.float32)
    for start in range(0, C, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        mask = cols < C
        z = tl.load(z_row + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_ADJ:
            z += tl.load(adj_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        p = tl.exp(z - lse)
        # Scatter of the targets restricted to this block; masked k carry idx = −1 and never match.
        hit = cols[:, None] == idx[None, :]
        target = tl.sum(tl.where(hit, ww[None, :], 0.0), axis=1)
        dz = g_total * p - g * target
        tl.store(dz_row + cols, dz.to(dz_ptr.dtype.element_ty), mask=mask)


def _blocks(C: int, K: int) -> tuple[int, int]:
    return min(_dispatch.next_pow2(C), 2048), max(2, _dispatch.next_pow2(K))


def _triton_forward(logits, idx, w, adjust, cw, rows, lse, wsum):
    (B, C), K = logits.shape, idx.shape[1]
    block_c, block_k = _blocks(C, K)
    has_adj, has_cw = adjust is not None, cw is not None
    _dispatch.jit(_soft_ce_fwd_kernel)[(B,)](
        logits, logits.stride(0), adjust if has_adj else logits, idx, w, cw if has_cw else w,
        rows, lse, wsum, C, K,
        HAS_ADJ=has_adj, HAS_CW=has_cw, BLOCK_C=block_c, BLOCK_K=block_k, num_warps=8,
    )  # fmt: skip


def _triton_backward(logits, idx, w, adjust, cw, lse, wsum, g, dz):
    (B, C), K = logits.shape, idx.shape[1]
    block_c, block_k = _blocks(C, K)
    has_adj, has_cw = adjust is not None, cw is not None
    _dispatch.jit(_soft_ce_bwd_kernel)[(B,)](
        logits, logits.stride(0), adjust if has_adj else logits, idx, w, cw if has_cw else w,
        lse, wsum, g, dz, dz.stride(0), C, K,
        HAS_ADJ=has_adj, HAS_CW=has_cw, BLOCK_C=block_c, BLOCK_K=block_k, num_warps=8,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# numba CPU fast path: the same two row passes as the Triton kernels, one row per parallel task. Sums are
# accumulated in float64, so results agree with the reference to fp32 rounding, not bit for bit.
# ----------------------------------------------------------------------------------------------------------


def _numba_forward_rows(z, adj, has_adj, idx, w, cw, has_cw, rows, lse, wsum):
    B, C = z.shape
    K = idx.shape[1]
    for r in prange(B):
        # m and the exponent stay in the logits' float32 (expf, not exp: half the cost); the sum is float64.
        m = z[r, 0] + adj[0] if has_adj else z[r, 0]
        for j in range(C):
            v = z[r, j] + adj[j] if has_adj else z[r, j]
            m = max(m, v)
        s = 0.0
        for j in range(C):
            v = z[r, j] + adj[j] if has_adj else z[r, j]
            s += np.exp(v - m)
        lse_r = m + np.log(s)
        acc = 0.0
        total = 0.0
        for k in range(K):
            c = min(max(idx[r, k], 0), C - 1)
            ww = w[r, k] * cw[c] if has_cw else w[r, k]
            zt = z[r, c] + adj[c] if has_adj else z[r, c]
            acc += ww * (lse_r - zt)
            total += ww
        rows[r] = acc
        lse[r] = lse_r
        wsum[r] = total


def _numba_backward_rows(z, adj, has_adj, idx, w, cw, has_cw, lse, wsum, g, dz):
    B, C = z.shape
    K = idx.shape[1]
    for r in prange(B):
        scale = g[r] * wsum[r]
        for j in range(C):
            v = z[r, j] + adj[j] if has_adj else z[r, j]
            dz[r, j] = scale * np.exp(v - lse[r])
        # Sequential within the row, after the dense write: duplicate indices simply add up.
        for k in range(K):
            c = min(max(idx[r, k], 0), C - 1)
            ww = w[r, k] * cw[c] if has_cw else w[r, k]
            dz[r, c] -= g[r] * ww


if numba is not None:
    _numba_forward = numba.njit(parallel=True, cache=True, nogil=True)(_numba_forward_rows)
    _numba_backward = numba.njit(parallel=True, cache=True, nogil=True)(_numba_backward_rows)


def _present(x, like):
    # numba needs an array in every slot; an absent vector is a 1-element placeholder its flag ignores.
    return x.numpy() if x is not None else np.zeros(1, dtype=like.numpy().dtype)


def _numba_forward_launch(logits, idx, w, adjust, cw, rows, lse, wsum):
    _numba_forward(
        logits.numpy(), _present(adjust, w), adjust is not None, idx.numpy(), w.numpy(), _present(cw, w),
        cw is not None, rows.numpy(), lse.numpy(), wsum.numpy(),
    )  # fmt: skip


def _numba_backward_launch(logits, idx, w, adjust, cw, lse, wsum, g, dz):
    _numba_backward(
        logits.numpy(), _present(adjust, w), adjust is not None, idx.numpy(), w.numpy(), _present(cw, w),
        cw is not None, lse.numpy(), wsum.numpy(), g.numpy(), dz.numpy(),
    )  # fmt: skip


_LAUNCH = {
    "triton": (_triton_forward, _triton_backward),
    "numba": (_numba_forward_launch, _numba_backward_launch),
}


def _reduce(ctx, rows: torch.Tensor, wsum: torch.Tensor, weighted: bool, reduction: str) -> torch.Tensor:
    """ℓ [B] → the loss of ``reduction``; keeps what :func:`_row_grads` needs on ``ctx``."""
    ctx.reduction = reduction
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    ctx.denom = wsum.sum() if weighted else float(rows.shape[0])  # no host-to-device copy for a constant
    return rows.sum() / ctx.denom


def _row_grads(ctx, grad: torch.Tensor, B: int, dtype: torch.dtype) -> torch.Tensor:
    """The upstream gradient of each row's ℓ_b, ``dtype[B]`` contiguous (the reduction's derivative)."""
    g = grad.to(dtype)
    if ctx.reduction == "mean":
        g = g / ctx.denom
    return (g if ctx.reduction == "none" else g.expand(B)).contiguous()


class _SoftCrossEntropy(torch.autograd.Function):
    """Row kernels (Triton or numba) for ℓ_b, lse_b, W_b and the gradient; the reductions live here."""

    @staticmethod
    def forward(ctx, logits, idx, w, adjust, cw, reduction, impl):
        B = logits.shape[0]
        f32 = dict(dtype=torch.float32, device=logits.device)
        rows, lse, wsum = torch.empty(B, **f32), torch.empty(B, **f32), torch.empty(B, **f32)
        if B:
            _LAUNCH[impl][0](logits, idx, w, adjust, cw, rows, lse, wsum)
        ctx.save_for_backward(logits, idx, w, adjust, cw, lse, wsum)
        ctx.impl = impl
        return _reduce(ctx, rows, wsum, cw is not None, reduction)

    @staticmethod
    def backward(ctx, grad):
        logits, idx, w, adjust, cw, lse, wsum = ctx.saved_tensors
        B = logits.shape[0]
        g = _row_grads(ctx, grad, B, torch.float32)
        if ctx.impl == "numba":  # numba's arrays: huge-page backed, far fewer first-touch faults on CPU
            dz = torch.from_numpy(np.empty(tuple(logits.shape), dtype=np.float32))
        else:
            dz = torch.empty_like(logits, memory_format=torch.contiguous_format)
        if B:
            _LAUNCH[ctx.impl][1](logits, idx, w, adjust, cw, lse, wsum, g, dz)
        return dz, None, None, None, None, None, None


class _SoftCrossEntropyTorch(torch.autograd.Function):
    """The row passes in torch ops (module docstring): ``log_softmax`` forward, saved for the backward, which
    writes ``exp(log p)·W_b·g_b − scatter`` into one new buffer."""

    @staticmethod
    def forward(ctx, logits, idx, w, adjust, cw, reduction):
        dtype = torch.promote_types(logits.dtype, torch.float32)
        z = logits.to(dtype)
        lp = torch.log_softmax(z if adjust is None else z + adjust.to(dtype), dim=1)
        ww = w.to(dtype) if cw is None else w.to(dtype) * cw.to(dtype)[idx]
        rows = -(ww * lp.gather(1, idx)).sum(1)
        wsum = ww.sum(1)
        ctx.save_for_backward(idx, ww, lp, wsum)
        ctx.grad_dtype = logits.dtype
        return _reduce(ctx, rows, wsum, cw is not None, reduction)

    @staticmethod
    def backward(ctx, grad):
        idx, ww, lp, wsum = ctx.saved_tensors
        g = _row_grads(ctx, grad, lp.shape[0], lp.dtype)
        dz = lp.exp().mul_((g * wsum)[:, None])  # p·W_b·g_b (lp kept: a retained graph may come back)
        dz.scatter_add_(1, idx, -(g[:, None] * ww))  # each target term pulls its logit down; duplicates add
        return dz.to(ctx.grad_dtype), None, None, None, None, None


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------


def _vector(x, C: int, name: str, device) -> torch.Tensor | None:
    if x is None:
        return None
    x = torch.as_tensor(x, device=device)
    if x.shape != (C,) or not x.is_floating_point():
        raise ValueError(
            f"{name} must be a float vector of shape [{C}] (one value per class), got "
            f"{x.dtype} {tuple(x.shape)}"
        )
    return x


def soft_cross_entropy(
    logits: torch.Tensor,
    idx: torch.Tensor,
    w: torch.Tensor,
    logit_adjust: torch.Tensor | None = None,
    class_weight: torch.Tensor | None = None,
    reduction: str = "mean",
    *,
    backend: str | None = None,
    check: bool | None = None,
) -> torch.Tensor:
    """Soft-label cross-entropy of ``logits [B, C]`` against ``(idx int64 [B, K], w float [B, K])``.

    ``logit_adjust [C]`` is added to the logits (``τ·log π``; Balanced Softmax: ``log n``),
    ``class_weight [C]`` weighs each target term by its class; ``reduction`` is ``'mean'`` (Σℓ/ΣW with
    class weights, Σℓ/B without), ``'sum'`` or ``'none'``. The loss is float32 (float64 for float64
    logits); the gradient flows to ``logits`` only and has their dtype.
    See the module docstring for the exact definition. ``check`` validates the class indices (default: on
    CPU only; on CUDA it costs extra launches, and the kernels clamp indices so nothing reads out of bounds).
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        what = (
            f"{logits.dtype} {tuple(logits.shape)}"
            if isinstance(logits, torch.Tensor)
            else type(logits).__name__
        )
        raise ValueError(f"logits must be a float [B, C] tensor, got {what}")
    B, C = logits.shape
    device = logits.device
    idx = torch.as_tensor(idx, device=device)
    w = torch.as_tensor(w, device=device)
    if idx.dim() == 1:  # hard labels: one target of weight 1 per row
        idx = idx[:, None]
    if w.dim() == 1:
        w = w[:, None]
    if idx.dim() != 2 or idx.shape[0] != B or idx.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"idx must be int64 [{B}, K], got {idx.dtype} {tuple(idx.shape)}")
    if w.shape != idx.shape or not w.is_floating_point():
        raise ValueError(
            f"w must be a float tensor shaped like idx {tuple(idx.shape)}, got {w.dtype} {tuple(w.shape)}"
        )
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    if check is None:
        check = device.type != "cuda"
    if check and idx.numel():
        bad = (idx < 0) | (idx >= C)
        if device.type == "cuda":
            torch._assert_async(~bad.any(), "soft_cross_entropy: idx outside [0, C)")
        elif bool(bad.any()):
            raise ValueError(f"idx has class indices outside [0, {C}): {idx[bad][:5].tolist()}")
    logit_adjust = _vector(logit_adjust, C, "logit_adjust", device)
    class_weight = _vector(class_weight, C, "class_weight", device)

    # auto on CPU: the torch-op row passes (module docstring), which tools/bench kernels measures faster than
    # the numba kernel, the autograd reference and dense F.cross_entropy; numba stays as backend='numba'.
    impl = _dispatch.pick(device, backend, has_numba=numba is not None and logits.dtype == torch.float32,
                          cpu_auto="torch")
    if impl == "triton" and logits.dtype not in _TRITON_DTYPES:
        raise ValueError(
            f"the Triton soft_cross_entropy takes {', '.join(map(str, _TRITON_DTYPES))} logits, "
            f"got {logits.dtype} (use backend='torch')"
        )
    if impl == "torch":
        adj = None if logit_adjust is None else logit_adjust.detach()
        cw = None if class_weight is None else class_weight.detach()
        return _SoftCrossEntropyTorch.apply(logits, idx.to(torch.int64), w.detach(), adj, cw, reduction)
    f32 = dict(dtype=torch.float32)
    adj = logit_adjust.detach().to(**f32).contiguous() if logit_adjust is not None else None
    cw = class_weight.detach().to(**f32).contiguous() if class_weight is not None else None
    # Triton reads rows by stride; numba needs a plain C-contiguous array.
    contiguous = logits.stride(1) == 1 if impl == "triton" else logits.is_contiguous()
    return _SoftCrossEntropy.apply(
        logits if contiguous else logits.contiguous(),
        idx.to(torch.int64).contiguous(),
        w.detach().to(**f32).contiguous(),
        adj,
        cw,
        reduction,
        impl,
    )


__all__ = ["soft_cross_entropy", "soft_ce_reference", "REDUCTIONS"]
