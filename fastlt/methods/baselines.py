"""The classic long-tailed baselines: plain CE, Balanced Softmax, LDAM-DRW, and the three pair-mixing methods.

Formulas (REFERENCE.md §Losses, §Mixing rules); z are the logits, n_c the training counts:

- ``ce``        L = CE(z, y)
- ``bs``        L = CE(z + log n, y)                         (Ren et al. 2020; raw z at test time)
- ``ldam-drw``  L = CE_w(s·(cos − m_y·e_y), y), m_c = m_max · n_c^(−1/4) / max_k n_k^(−1/4), cosine classifier
                with scale s; from ``drw_epoch`` on the class weights w_c = (1−β)/(1−β^{n_c}), normalised to
                Σ_c w_c = C (before it, β = 0 gives w_c = 1). CE_w is the weighted mean Σ w_y·ℓ / Σ w_y.
- ``mixup``     x = λ·x_a + (1−λ)·x_b, λ ~ Beta(α, α), label weight λ_y = λ
- ``cutmix``    x_b pasted into x_a inside a box of area ≈ (1−λ)·H·W; λ_y = 1 − clipped box area / (H·W)
- ``remix``     Mixup pixels, λ_y = 0 if n_a/n_b ≥ κ and λ < τ, 1 if n_a/n_b ≤ 1/κ and 1−λ < τ, else λ

The mixing methods draw the partner ``b`` instance-uniformly (plan policy ``pair``: segments ``main``
+ ``b``). With ``mix_per_sample`` false (the papers' convention) one λ — and for CutMix one box — serves
the whole batch.
Mixed batches have no un-mixed forward pass, so they report no logits for the confusion counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastlt.methods.base import (
    Method,
    Stage,
    StepOutput,
    draw_beta,
    draw_boxes,
    pair_cross_entropy,
    register,
    repeat_rows,
)


def _main(batch):
    s = batch.segment("main")
    return batch.images[s], batch.labels[s]


@register
class CE(Method):
    name = "ce"

    def loss(self, model, batch, ctx):
        x, y = _main(batch)
        logits = model(ctx.normalize(x))
        return StepOutput(F.cross_entropy(logits.float(), y), logits, y)


def balanced_softmax(logits: torch.Tensor, y: torch.Tensor, log_counts: torch.Tensor) -> torch.Tensor:
    """CE(z + log n, y): the softmax of the training distribution, whose argmax of z is balanced."""
    return F.cross_entropy(logits.float() + log_counts, y)


@register
class BalancedSoftmax(Method):
    name = "bs"

    def loss(self, model, batch, ctx):
        x, y = _main(batch)
        logits = model(ctx.normalize(x))
        return StepOutput(balanced_softmax(logits, y, ctx.priors.log_counts), logits, y)


def ldam_margins(counts: torch.Tensor, max_m: float) -> torch.Tensor:
    m = counts.float().pow(-0.25)
    return m * (max_m / m.max())


def drw_weights(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """Effective-number weights (1−β)/(1−β^n), normalised to sum to C; all ones for β = 0."""
    w = (1.0 - beta) / (1.0 - torch.pow(torch.as_tensor(beta, dtype=torch.float64), counts.double()))
    return (w / w.sum() * counts.numel()).float()


@register
class LDAMDRW(Method):
    name = "ldam-drw"
    # LDAM always trains a cosine classifier at scale ldam_s: `classifier` and `cosine_scale` are not read.
    reads = frozenset({"ldam_max_m", "ldam_s", "drw_epoch", "drw_beta"})

    def build_model(self):
        from fastlt.models import build_model

        r = self.recipe
        # The cosine classifier's scale is LDAM's s, so model(x) = s·cos at test time and the margin is s·m.
        return build_model(
            r.model,
            self.num_classes,
            classifier="cosine",
            cosine_scale=r.ldam_s,
            width=r.model_width,
            pretrained=r.pretrained or None,
        )

    def loss(self, model, batch, ctx):
        x, y = _main(batch)
        logits = model(ctx.normalize(x)).float()
        r = self.recipe
        margin = r.ldam_s * ldam_margins(ctx.priors.counts, r.ldam_max_m)
        adjusted = logits - F.one_hot(y, ctx.num_classes) * margin[y].unsqueeze(1)
        weight = drw_weights(ctx.priors.counts, r.drw_beta) if ctx.epoch >= r.drw_epoch else None
        return StepOutput(F.cross_entropy(adjusted, y, weight=weight), logits, y)


class _PairMix(Method):
    """Shared engine of Mixup / CutMix / Remix: instance-uniform partner; only the pixel/label rule varies."""

    rule = "mixup"
    boxes = False
    reads = Method.reads | {"mix_alpha", "mix_per_sample"}

    def stages(self):
        return (Stage("train", self.recipe.epochs, plan="pair"),)

    def rule_params(self) -> dict:
        return {}

    def draw(self, stage, plan, gen):
        """λ per row (one λ for the batch unless ``mix_per_sample``); CutMix adds a box per row."""
        r = self.recipe
        B = len(plan.rows_of("main"))
        lam = draw_beta(gen, r.mix_alpha, B if r.mix_per_sample else 1)
        out = {"main:lam": lam if r.mix_per_sample else repeat_rows(lam, B)}
        if self.boxes:
            boxes = draw_boxes(gen, lam, r.image_size)
            out["main:box"] = boxes if r.mix_per_sample else repeat_rows(boxes, B)
        return out

    def loss(self, model, batch, ctx):
        sa, sb = batch.segment("main"), batch.segment("b")
        y_a, y_b = batch.labels[sa], batch.labels[sb]
        mixed = ctx.mix(
            batch.images[sa],
            batch.images[sb],
            batch.extra("main:lam"),
            y_a=y_a,
            y_b=y_b,
            rule=self.rule,
            boxes=batch.extra("main:box") if self.boxes else None,
            **self.rule_params(),
        )
        logits = model(mixed.images)
        loss = pair_cross_entropy(logits, y_a, y_b, mixed.lam_y)
        return StepOutput(loss)


@register
class Mixup(_PairMix):
    name = "mixup"


@register
class CutMix(_PairMix):
    name = "cutmix"
    rule = "cutmix"
    boxes = True


@register
class Remix(_PairMix):
    name = "remix"
    rule = "remix"
    reads = _PairMix.reads | {"remix_kappa", "remix_tau"}

    def rule_params(self):
        return {"kappa": self.recipe.remix_kappa, "tau": self.recipe.remix_tau}
