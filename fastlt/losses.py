"""Losses of the two representation-level methods: Balanced Contrastive Learning (ConCutMix) and the
margin metric softmax (text-guided mixup). Formulas: REFERENCE.md §ConCutMix and §LFM.

Both are plain torch: they act on ``[N, D]`` features or ``[B, C]`` cosine logits, so autograd is the
backward pass and the cost is one ``[N, N + C]`` (BCL) or ``[B, C]`` (MMS) matrix — small next to the
backbone. The label-level losses (soft-label CE with logit adjustment) live in ``fastlt.kernels.soft_ce``.

**BCL** (Zhu et al. 2022). Anchors are the ``N`` view embeddings ``z_i`` (two views of every background
image). The *members* are the ``N`` views plus the ``C`` class prototypes ``p_c``, each prototype a member
of its own class ("class-complement": every class is represented in every batch, even one absent from it).
With ``M_c`` the members of class ``c`` and ``A(i) = M_{y_i} \\ {i}`` the anchor's own class without itself,

    den_i = Σ_c  1/|M_c \\ {i}| · Σ_{j ∈ M_c, j ≠ i} exp(z_i·m_j / T)          ("class-averaging")
    L_i   = −1/|A(i)| · Σ_{p ∈ A(i)} log( exp(z_i·m_p / T) / den_i )
    L     = mean_i L_i

Averaging inside each class before summing over classes removes the head classes' dominance of the
denominator: each class contributes one mean term, whatever its batch frequency. ``|A(i)| ≥ 1`` always,
because the anchor's own prototype is a positive.

**MMS** (CLIPood). For a hard label ``y`` the logits get a class-pair margin that grows with the
*dissimilarity* of the text features, ``ℓ_k = (cos_k + λ_m·(1 − s_{y,k})) / T``, and the loss is CE on them;
the target's own margin is ``λ_m·(1 − s_{y,y}) = 0``. Pushing dissimilar classes further than similar ones
keeps the text geometry in the image features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bcl_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    prototypes: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Balanced contrastive loss with class-averaging and class-complement (module docstring).

    ``features``: ``[N, D]`` view embeddings, or ``[B, V, D]`` (V views of B images, flattened view-major
    like ``cat(view_1, …, view_V)``); ``labels``: ``int64[N]`` or ``int64[B]`` (repeated over the views);
    ``prototypes``: ``[C, D]``. Features and prototypes are L2-normalised here (idempotent for inputs that
    already are). Returns the scalar mean over anchors.
    """
    if features.ndim == 3:
        B, V, _ = features.shape
        if labels.shape != (B,):
            raise ValueError(f"bcl_loss: [B={B}, V={V}, D] need labels [B], got {list(labels.shape)}")
        features = features.transpose(0, 1).reshape(B * V, -1)
        labels = labels.repeat(V)
    if features.ndim != 2 or prototypes.ndim != 2 or features.shape[1] != prototypes.shape[1]:
        raise ValueError(
            f"bcl_loss: expected features [N, D] and prototypes [C, D], got {list(features.shape)} "
            f"and {list(prototypes.shape)}"
        )
    if labels.shape != (features.shape[0],):
        raise ValueError(f"bcl_loss: {features.shape[0]} features but labels of shape {list(labels.shape)}")
    if temperature <= 0:
        raise ValueError(f"bcl_loss: temperature must be > 0, got {temperature}")
    N, C = features.shape[0], prototypes.shape[0]
    labels = labels.to(device=features.device, dtype=torch.long)

    # The members are [views | prototypes]; the two blocks are kept apart so the [N, C] prototype block costs
    # one matmul, one subtraction, one scatter and one logsumexp — the masks (self, same class, positives)
    # and the per-member class sizes live in the [N, N] view block only. The dense [N, N + C] formulation
    # (logits, bool masks, int64 sizes, a product with the positives) took 1.6× as long forward + backward at
    # N = 512, C = 8,142, D = 128 on a CPU (1.1× at D = 1,024, where the three matrix products dominate).
    z = F.normalize(features.float(), dim=1)
    zt = z / temperature  # the temperature on the [N, D] side: no [N, C] division, forward or backward
    # |M_c| = views of c + its prototype. Counted with index_add_, not bincount: on CUDA bincount reads the
    # labels' min and max on the host to size its output, a sync in every step.
    class_size = torch.ones(C, dtype=torch.long, device=labels.device)
    class_size.index_add_(0, labels, torch.ones_like(labels))
    # views: class-averaging weight |M_{y_j} \ {i}| (the anchor leaves its own class), self excluded
    logits_v = zt @ z.T  # [N, N]
    same = labels[:, None] == labels[None, :]
    is_self = torch.eye(N, dtype=torch.bool, device=same.device)
    size_v = class_size[labels][None, :] - same.long()
    weighted_v = (logits_v - torch.log(size_v.clamp_min(1).float())).masked_fill(is_self, float("-inf"))
    # prototypes: weight |M_c|, except the anchor's own class, which the anchor leaves (|M_{y_i}| − 1 ≥ 1)
    logits_p = zt @ F.normalize(prototypes.float(), dim=1).T  # [N, C]
    own = logits_p.gather(1, labels[:, None])  # the anchor's own prototype: always a positive
    own_weighted = own - torch.log((class_size[labels] - 1).clamp_min(1).float())[:, None]
    weighted_p = (logits_p - torch.log(class_size.float())).scatter(1, labels[:, None], own_weighted)
    # log den_i = logsumexp_j (logit_ij − log size_ij) over j ≠ i: the weighted sum, computed stably.
    log_den = torch.logaddexp(torch.logsumexp(weighted_v, dim=1), torch.logsumexp(weighted_p, dim=1))
    positive_v = same & ~is_self
    mean_pos_logit = ((logits_v * positive_v).sum(1) + own[:, 0]) / (positive_v.sum(1) + 1)
    return (log_den - mean_pos_logit).mean()


def top2_label(target: torch.Tensor | tuple[torch.Tensor, torch.Tensor], num_classes: int):
    """The two largest entries ``(v0, c0), (v1, c1)`` of a label, as ``w float[B, 2]``, ``idx int64[B, 2]``.

    ``target`` is a hard label ``int64[B]`` (→ ``(1, y), (0, y)``), a dense soft label ``[B, C]``, or a
    sparse one ``(idx int64[B, K], w float[B, K])``; sparse entries naming one class twice are merged first,
    so "largest" means largest total mass of a class.
    """
    if isinstance(target, (tuple, list)):
        idx, w = target
        dense = torch.zeros(idx.shape[0], num_classes, dtype=w.dtype, device=w.device)
        target = dense.scatter_add_(1, idx.long(), w)
    if target.ndim == 1:
        y = target.long()
        one = torch.ones_like(y, dtype=torch.float32)
        return torch.stack([one, torch.zeros_like(one)], 1), torch.stack([y, y], 1)
    if target.ndim != 2 or target.shape[1] != num_classes:
        raise ValueError(f"label must be int64[B], [B, {num_classes}] or (idx, w); got {list(target.shape)}")
    w, idx = torch.topk(target, 2, dim=1)
    return w, idx


def mms_loss(
    cosine_logits: torch.Tensor,
    target: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    text_features: torch.Tensor,
    margin: float,
    temperature: float,
) -> torch.Tensor:
    """Margin metric softmax: ``CE((cos + margin·(1 − S[y])) / temperature, y)``, mean over the batch.

    ``cosine_logits [B, C]``: cosines between image and class text features (no logit scale);
    ``text_features [C, d]``: the class text features with unit rows, so ``S = t·tᵀ`` is their cosine
    similarity; ``target``: a hard label ``int64[B]`` or a mixed one (dense ``[B, C]`` or sparse
    ``(idx, w)``). A mixed label contributes its two largest entries, ``v0·CE_MMS(c0) + v1·CE_MMS(c1)`` — the
    LFM label has exactly two classes, so nothing is dropped there; for wider labels the rest is ignored
    (REFERENCE.md §LFM).

    Only the rows ``S[c]`` of the step's label classes are needed, and they are computed as ``t[c]·tᵀ``
    (``[B, d] × [d, C]``, 2·B·C·d flops a term): the ``[C, C]`` matrix is never formed — 265 MB at
    C = 8,142, which would grow with C² — and the rows cost a small matrix product per step.
    """
    B, C = cosine_logits.shape
    if C < 2:
        raise ValueError(f"mms_loss: needs at least 2 classes, got cosine_logits {list(cosine_logits.shape)}")
    if text_features.ndim != 2 or text_features.shape[0] != C:
        raise ValueError(f"mms_loss: text_features must be [{C}, d], got {list(text_features.shape)}")
    if temperature <= 0:
        raise ValueError(f"mms_loss: temperature must be > 0, got {temperature}")
    w, idx = top2_label(target, C)
    if idx.shape[0] != B:
        raise ValueError(f"mms_loss: {B} logits rows but a label for {idx.shape[0]} rows")
    cos = cosine_logits.float()
    t = text_features.to(device=cos.device, dtype=torch.float32)
    total = cos.new_zeros(B)
    for k in range(2):  # the two CE terms; each needs its own [B, C] margin rows
        c = idx[:, k].to(cos.device)
        logits = (cos + margin * (1.0 - t[c] @ t.T)) / temperature
        ce = torch.logsumexp(logits, dim=1) - logits.gather(1, c[:, None]).squeeze(1)
        total = total + w[:, k].to(cos) * ce
    return total.mean()
