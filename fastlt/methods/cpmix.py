"""CP-Mix (Mix from Failure: Confusion-Pairing Mixup), as specified in REFERENCE.md §CP-Mix.

Stages (data, see :meth:`CPMix.stages`):

1. ``erm``      the first ``cpmix_start_epoch`` epochs (default −1: round(2/3 · epochs)):
                Balanced-Softmax ERM, L = CE(z + log n, y). The trainer records every mispredicted
                (y, ŷ) of this ordinary forward pass into the confusion counts K (never reset).
2. ``cpmix``    the remaining epochs: each plan also holds a CP-mix batch ``cp_a``/``cp_b`` of B_m pairs
                drawn by the confusion sampler (class i uniform over the label set, partner j ∝ K[i, j],
                one image of each uniformly). The objective is

                    L = L_BS(main) + η · [ CE_soft(CP-mix(cp_a, cp_b)) + CE_soft(mixup(main, main[π])) ]

                with π an explicit permutation drawn from the step's generator, λ_x ~ Beta(α, α) per sample,
                and the same label rule for both mixed terms (fastlt's reconstruction of the paper's rule):
                λ_y = (1 − κ)·λ_x + κ·n_b/(n_a + n_b). Pairs are still recorded from the main batch.
3. ``finetune`` ``finetune_epochs`` epochs with the backbone (and its BatchNorm statistics) frozen, a fresh
                optimiser on the classifier (lr ``finetune_lr``, cosine), class-balanced plans and plain CE:
                the batches are already balanced, so adding log n as well would correct the prior twice.

The three forward passes of stage 2 are one concatenated forward (one BatchNorm batch over all of them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastlt.methods.base import (
    Method,
    Stage,
    StepOutput,
    draw_beta,
    draw_permutation,
    pair_cross_entropy,
    register,
)
from fastlt.methods.baselines import balanced_softmax
from fastlt.metrics import training_pairs

# The objectives of the three stages (Stage.loss).
BALANCED_SOFTMAX, CPMIX, PLAIN_CE = "balanced-softmax", "bs+cp-mix+mixup", "ce"


def cpmix_start(recipe) -> int:
    """First epoch of the mixing stage: ``cpmix_start_epoch``, or round(2/3 · epochs) when it is −1."""
    if recipe.cpmix_start_epoch >= 0:
        return recipe.cpmix_start_epoch
    return int(round(2 * recipe.epochs / 3))


@register
class CPMix(Method):
    name = "cpmix"
    reads = Method.reads | {
        "cpmix_alpha", "cpmix_eta", "cpmix_kappa", "cpmix_batch_size", "cpmix_fallback", "cpmix_start_epoch",
        "finetune_epochs", "finetune_lr",
    }
    # Every stage's un-mixed forward pass records its mispredicted (y, ŷ) into K (never reset).
    consumes_feedback = True

    def __init__(self, recipe, index, cache_dir=None):
        super().__init__(recipe, index, cache_dir)
        from fastlt.sampling import ConfusionCounts

        self.counts = ConfusionCounts(self.num_classes)  # K, sparse: O(C + nnz)

    def stages(self):
        r = self.recipe
        start = min(cpmix_start(r), r.epochs)
        stages = [
            Stage("erm", start, plan="erm", loss=BALANCED_SOFTMAX),
            Stage("cpmix", r.epochs - start, plan="cpmix", loss=CPMIX),
            Stage(
                "finetune",
                r.finetune_epochs,
                plan="balanced",
                trainable="classifier",
                group="finetune",
                lr=r.finetune_lr,
                schedule="cosine",
                warmup_epochs=0,
                milestones=(),
                loss=PLAIN_CE,
            ),
        ]
        return tuple(s for s in stages if s.epochs > 0)

    def producer_options(self, stage):
        r = self.recipe
        opts = {"counts": self.counts}  # every stage's producer folds the pairs into K
        if stage.plan == "cpmix":
            opts.update(mix_batch_size=r.cpmix_batch_size or None, fallback=r.cpmix_fallback)
        return opts

    def epoch_stats(self):
        """K's total, its distinct pairs and the most frequent pairs by name: CP-Mix's targets, per epoch."""
        return training_pairs(self.counts, self.index.class_names)

    def state_dict(self):
        return {"counts": self.counts.state_dict()}

    def load_state_dict(self, state):
        self.counts.load_state_dict(state["counts"])

    def draw(self, stage, plan, gen):
        """The cpmix stage: λ per confusion pair, then the same-batch partners and their λ."""
        if stage.loss != CPMIX:
            return {}
        a = self.recipe.cpmix_alpha
        cp_lam = draw_beta(gen, a, len(plan.rows_of("cp_a")))
        perm = draw_permutation(gen, len(plan.rows_of("main")))
        return {"cp_a:lam": cp_lam, "main:perm": perm, "main:lam": draw_beta(gen, a, len(perm))}

    def loss(self, model, batch, ctx):
        r = self.recipe
        sm = batch.segment("main")
        x, y = batch.images[sm], batch.labels[sm]
        if ctx.stage.loss == PLAIN_CE:
            logits = model(ctx.normalize(x))
            return StepOutput(F.cross_entropy(logits.float(), y), logits, y)
        if ctx.stage.loss == BALANCED_SOFTMAX:
            logits = model(ctx.normalize(x))
            return StepOutput(balanced_softmax(logits, y, ctx.priors.log_counts), logits, y)

        # stage cpmix: ERM term + CP-mix batch + same-batch mixup, one forward
        sa, sb = batch.segment("cp_a"), batch.segment("cp_b")
        ya, yb = batch.labels[sa], batch.labels[sb]
        B, Bm = y.numel(), ya.numel()
        cp = ctx.mix(
            batch.images[sa],
            batch.images[sb],
            batch.extra("cp_a:lam"),
            y_a=ya,
            y_b=yb,
            rule="cpmix",
            kappa=r.cpmix_kappa,
        )
        perm = batch.extra("main:perm")  # a permutation of this rank's main rows
        mu = ctx.mix(
            x,
            x,
            batch.extra("main:lam"),
            idx_b=perm,
            y_a=y,
            y_b=y[perm],
            rule="cpmix",
            kappa=r.cpmix_kappa,
        )
        logits = model(torch.cat([ctx.normalize(x), cp.images, mu.images]))
        l_main, l_cp, l_mu = logits.split([B, Bm, B])
        erm = balanced_softmax(l_main, y, ctx.priors.log_counts)
        cp_loss = pair_cross_entropy(l_cp, ya, yb, cp.lam_y)
        mu_loss = pair_cross_entropy(l_mu, y, y[perm], mu.lam_y)
        loss = erm + r.cpmix_eta * (cp_loss + mu_loss)
        return StepOutput(loss, l_main, y)
