"""ConCutMix: CutMix with semantically rectified labels, on top of Balanced Contrastive Learning (BCL).

REFERENCE.md §ConCutMix. One step loads four segments of the same length B (``fastlt.sampling`` policy
``concutmix``): ``main`` (background images A, instance-uniform), ``view1`` and ``view2`` (the same rows as
``main``: the pipelines give every repeat of a row its own random crop and augmentation, which is what makes
them two contrastive views) and ``fg`` (foreground images B, class-balanced: class uniform, then an image
uniform in the class). Each segment arrives augmented by its own policy (recipe key ``augment``, run by the
pipeline for every method alike): the presets give ``main`` and ``fg`` the released classification transform
and the views the released contrastive one (CIFAR: ``autoaugment-cifar`` / ``simclr-cifar``; ImageNet-LT,
iNat, Places-LT: ``randaugment`` / ``simclr``), digits-lt keeps ``crop-flip``.

Per step:

1. With probability ``ccm_cutmix_prob`` the batch is CutMixed: one ``λ ~ U(0, 1)`` per batch, one box of
   area ``(1 − λ)·H·W`` with a uniform centre, clipped to the image; ``λ`` is recomputed from the clipped box
   and the *area label* is ``λ·y_A + (1 − λ)·y_B``.
2. One forward pass over ``[classification images | view1 | view2]`` (BatchNorm sees all three, as in the
   released code); the projection head gives ``u`` for every image, the prototype head maps the classifier
   weights to the class prototypes ``P``.
3. After epoch ``l_d_warm`` the area label of a CutMix batch is *rectified* (:func:`rectified_label`) from
   the distances between ``u`` of the mixed image and the prototypes.
4. ``L = α·LA-CE(logits, label) + β·BCL(views, y_A, P)``, LA-CE = soft-label CE with ``τ_LA·log π`` added to
   the logits in training only.

Released code vs paper vs fastlt:

- Followed from the released code (the paper is silent or less specific): the rectified label is computed
  from the *unnormalised* projection of the CutMix image and the unnormalised prototypes; rectification starts
  at 0-based epoch ``> l_d_warm``; one λ and one box per batch; a single forward over the three image sets.
- fastlt's own: exactly k classes at the top-k threshold (:func:`semantic_label`) and γ clamped to [0, 1]
  (:func:`label_confidence`) — both identical to the released behaviour at its settings. One prototype per
  class on every dataset, as the released ImageNet-LT / iNat runs build them: the released CIFAR runs omit
  ``--use_norm``, so their prototype head maps the columns of a linear classifier's weight (one "prototype"
  per feature dimension, and CIFAR-100's contrastive loss fails there with a size mismatch). CutMix boxes of
  side ``round(H·√(1 − λ))`` (the released ``rand_bbox`` truncates the side and cuts ``2·⌊side/2⌋`` around the
  centre: even sides only) and the learning rate set every step (the released code sets it once per epoch).
- Places-LT has no released settings: its preset reuses the ImageNet-LT values and says so in its source.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastlt.losses import bcl_loss
from fastlt.methods.base import Method, Stage, StepOutput, draw_boxes, draw_coin, register, repeat_rows
from fastlt.topk import topk_lowest_index

SEGMENTS = ("main", "view1", "view2", "fg")  # the layout of a `concutmix` plan (fastlt.sampling)


def _as_counts(class_counts, like: torch.Tensor) -> torch.Tensor:
    n = torch.as_tensor(class_counts, dtype=torch.float32, device=like.device)
    return n.clamp_min(1.0)  # a class without training images counts as one image: logs stay finite


def label_confidence(area_label, class_counts, omega: float) -> torch.Tensor:
    """γ = ω·log(Σ_c ỹ_area,c·n_c) / Σ_c log n_c, clamped to [0, 1]; ``float32[B]``.

    ``area_label``: dense ``[B, C]`` or sparse ``(idx int64[B, K], w float[B, K])``.

    Bounds. ``Σ_c ỹ_c·n_c`` is an average of class counts (the label sums to 1), so it lies in
    ``[n_min, n_max]`` and its log in ``[log n_min, log n_max]`` — never negative because ``n_c ≥ 1``. With
    the released settings γ is far below 1 (CIFAR-100-LT IF100: ω = 20/255, Σ log n ≈ 391, γ ≤ 0.08·6.2/391 ≈
    0.001), but nothing in the formula bounds it above: few classes or a large ω give γ > 1 and the final
    label ``γ·ŷ_sem + (1 − γ)·ỹ_area`` would stop being a distribution (negative area weights). fastlt clamps
    γ to [0, 1] so the label is always a convex combination; the clamp never binds at the released settings.
    When every class has one image, ``Σ log n_c = 0`` and so is the numerator: γ = 0 (pure area label).
    """
    if isinstance(area_label, (tuple, list)):
        idx, w = area_label
        n = _as_counts(class_counts, w)
        mean_count = (w.float() * n[idx.long()]).sum(1)
    else:
        n = _as_counts(class_counts, area_label)
        mean_count = area_label.float() @ n
    denom = n.log().sum().clamp_min(torch.finfo(torch.float32).tiny)
    return (omega * mean_count.clamp_min(1.0).log() / denom).clamp(0.0, 1.0)


def semantic_label(u: torch.Tensor, prototypes: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ŷ_sem of REFERENCE.md as a sparse label ``(idx int64[B, k], w float32[B, k])``, rows summing to 1.

    ``s_c = 1/‖u − P_c‖₂`` (Euclidean, no temperature); the k largest are kept and L1-normalised.

    Ties at the top-k threshold: exactly k classes are kept, equal scores ordered by class index (what a
    stable descending sort gives; :func:`fastlt.topk.topk_lowest_index`), so the label has a fixed width —
    the trainer's sparse soft CE needs one. The released code keeps *every* class whose score equals the
    k-th largest, which can give more than k entries; with continuous features exact ties need two
    identical prototypes, so the two rules agree in practice.
    A feature that coincides with a prototype (distance 0) has its distance floored at 1e-12 instead of
    dividing by zero; it then takes all the semantic mass, the limit of the formula.
    """
    C = prototypes.shape[0]
    if not 1 <= topk <= C:
        raise ValueError(f"concutmix topk must lie in [1, num_classes={C}], got {topk}")
    dist = torch.cdist(u.float(), prototypes.float())  # [B, C]
    score = dist.clamp_min(1e-12).reciprocal()
    # The stable sort's first k columns, at the cost of a top-k (fastlt.topk): 0.3 s → 0.02 s per step at
    # B = 512, C = 8,142 on a CPU.
    score, idx = topk_lowest_index(score, topk)
    return idx, score / score.sum(1, keepdim=True)


@torch.no_grad()
def rectified_label(
    u: torch.Tensor,
    prototypes: torch.Tensor,
    area_label,
    class_counts,
    topk: int,
    omega: float,
):
    """The ConCutMix label ``ỹ = γ·ŷ_sem + (1 − γ)·ỹ_area`` (no gradient flows through it).

    ``u [B, D]``: projection-head outputs of the CutMix images; ``prototypes [C, D]``: the prototype head
    applied to the classifier weights (the caller passes the *unnormalised* head outputs, as the released code
    does); ``area_label``: dense ``[B, C]`` or sparse ``(idx int64[B, K], w float[B, K])`` (CutMix: K = 2,
    ``(y_A, y_B)`` with weights ``(λ, 1 − λ)``); ``class_counts``: training counts ``n_c`` (``[C]``).

    Returns the label in the representation it was given: dense ``float32[B, C]``, or sparse
    ``(idx int64[B, topk + K], w float32[B, topk + K])`` — the top-k semantic classes weighted ``γ·ŷ_sem``
    followed by the area entries weighted ``(1 − γ)·w``. A class may appear in both parts; soft CE sums
    them, which is the dense label. See :func:`label_confidence` (γ and its clamp) and
    :func:`semantic_label` (top-k ties).
    """
    gamma = label_confidence(area_label, class_counts, omega)[:, None]  # [B, 1]
    sem_idx, sem_w = semantic_label(u.detach(), prototypes.detach(), topk)
    if isinstance(area_label, (tuple, list)):
        idx, w = area_label
        out_idx = torch.cat([sem_idx, idx.long().to(sem_idx.device)], dim=1)
        out_w = torch.cat([gamma * sem_w, (1.0 - gamma) * w.float()], dim=1)
        return out_idx, out_w
    dense = (1.0 - gamma) * area_label.float()
    return dense.scatter_add_(1, sem_idx, gamma * sem_w)


# ------------------------------------------------------------------------------------------------ method
@register
class ConCutMix(Method):
    """ConCutMix on a BCL model (module docstring). Recipe keys: ``ccm_*``."""

    name = "concutmix"
    reads = Method.reads | {
        "ccm_alpha", "ccm_beta", "ccm_temperature", "ccm_feat_dim", "ccm_tau_la", "ccm_topk", "ccm_omega",
        "ccm_l_d_warm", "ccm_cutmix_prob",
    }

    def stages(self):
        return (Stage("train", self.recipe.epochs, plan="concutmix"),)

    def build_model(self):
        from fastlt.heads import BCLModel

        r, C = self.recipe, self.num_classes
        if not 1 <= r.ccm_topk <= C:  # fail now, not at epoch l_d_warm
            raise ValueError(f"recipe key 'ccm_topk' must lie in [1, {C}] (the number of classes), "
                             f"got {r.ccm_topk}")
        return BCLModel(super().build_model(), r.ccm_feat_dim)

    def compile_model(self, model):
        """The loss calls ``model.features`` and the heads separately: compile the backbone they share."""
        model.base.backbone.compile()

    def draw(self, stage, plan, gen):
        """A coin for CutMix (``ccm_cutmix_prob``); when heads, one λ ~ U(0, 1) and one box for the whole
        batch (the released code). Labels use the λ of the box actually pasted after clipping, which the mix
        kernel returns as λ_y."""
        coin = draw_coin(gen, self.recipe.ccm_cutmix_prob)
        if not coin[0]:
            return {"cutmix": coin}
        B = len(plan.rows_of("main"))
        lam = torch.rand(1, generator=gen).numpy()
        boxes = draw_boxes(gen, lam, self.recipe.image_size)
        return {"cutmix": coin, "main:lam": repeat_rows(lam, B), "main:box": repeat_rows(boxes, B)}

    def loss(self, model, batch, ctx):
        r = self.recipe
        main, view1, view2, fg = (batch.segment(n) for n in SEGMENTS)
        y_a = batch.labels[main]
        B = y_a.numel()
        cutmix = bool(batch.plan.extras["cutmix"][0])  # decided on the host, with the plan
        if cutmix:
            y_b = batch.labels[fg]
            mixed = ctx.mix(batch.images[main], batch.images[fg], batch.extra("main:lam"), y_a=y_a, y_b=y_b,
                            rule="cutmix", boxes=batch.extra("main:box"))
            x_cls = mixed.images
        else:
            x_cls = ctx.normalize(batch.images[main])
        # One forward over [classification | view1 | view2]: BatchNorm sees all three (the released code).
        x = torch.cat([x_cls, ctx.normalize(batch.images[view1]), ctx.normalize(batch.images[view2])])
        feats = model.features(x)
        logits, logits_view, _ = model.classifier(feats).float().split(B)
        u_cls, u1, u2 = model.projection(feats).float().split(B)
        protos = model.prototypes().float()

        adjust = r.ccm_tau_la * ctx.priors.log_prior  # logit adjustment, training only
        if cutmix:
            label = (torch.stack([y_a, y_b], 1), torch.stack([mixed.lam_y, 1.0 - mixed.lam_y], 1))
            if ctx.epoch > r.ccm_l_d_warm:  # 0-based epoch, strictly after l_d_warm (released code)
                label = rectified_label(u_cls, protos, label, ctx.priors.counts, r.ccm_topk, r.ccm_omega)
            from fastlt.kernels.soft_ce import soft_cross_entropy

            ce = soft_cross_entropy(logits, label[0], label[1], logit_adjust=adjust)
        else:
            ce = F.cross_entropy(logits + adjust, y_a)
        bcl = bcl_loss(torch.stack([u1, u2], 1), y_a, protos, r.ccm_temperature)
        loss = r.ccm_alpha * ce + r.ccm_beta * bcl
        # Train accuracy / confusion pairs come from un-mixed images of the background: the classification
        # view itself when the batch is not CutMixed, the first contrastive view when it is.
        shown = logits_view if cutmix else logits
        return StepOutput(loss, shown.detach(), y_a)
