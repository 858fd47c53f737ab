"""Model heads of the two representation-level methods, wrapped around any fastlt backbone.

Both wrappers keep the trainer's contract — ``features(x) -> [B, D]``, ``classifier``,
``forward(x) -> logits`` — so the generic rules (``trainable='classifier'`` freezes everything else,
BatchNorm statistics included) apply unchanged.

**BCL** (:class:`BCLModel`, ConCutMix). A *projection head* maps features to the contrastive space,
``u = MLP(f)``; a *prototype head* of the same shape maps each classifier weight row ``w_c`` to its class
prototype ``P_c = MLP'(w_c)``. Tying prototypes to the classifier weights is what lets the contrastive loss
shape the classifier directly (the prototypes get gradients only through the losses, no EMA). The MLP is
``Linear(D, H) → BatchNorm → ReLU → Linear(H, feat_dim)`` with ``H = max(D, 512)`` (512 for CIFAR's 64-d
ResNet-32 features, as in the released code; the feature width for wider backbones).

**Text-aligned classifier** (:class:`TextAlignedModel`, LFM). Logits are cosines between the image embedding
and fixed class text embeddings, ``z_c = ⟨W_I·e/‖W_I·e‖, t_c⟩`` with no logit scale. ``W_I`` is a bias-free
``d×d`` linear map initialised to the identity, so until it trains the logits are those of the encoder alone
— stage 1 trains the encoder with ``W_I = I`` (equivalently unused), stage 2 freezes the encoder and trains
``W_I`` only. The encoder is a CLIP image tower (``d`` = CLIP's embedding width) or a fastlt backbone
followed by a linear projection to the text dimension ``d`` (the projection belongs to the encoder).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def mlp_head(in_dim: int, out_dim: int, hidden: int | None = None) -> nn.Sequential:
    hidden = hidden or max(in_dim, 512)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim))


class BCLModel(nn.Module):
    """A :class:`fastlt.models.Classifier` plus the BCL projection and prototype heads."""

    def __init__(self, base: nn.Module, feat_dim: int):
        super().__init__()
        self.base = base
        self.classifier = base.classifier  # the same module: one set of weights, two names
        D = int(base.feature_dim)
        self.projection = mlp_head(D, feat_dim)
        self.prototype_head = mlp_head(D, feat_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x)

    def classifier_weight(self) -> torch.Tensor:
        """``[C, D]`` weight rows of the linear or cosine classifier (one row per class)."""
        return self.classifier.weight

    def prototypes(self) -> torch.Tensor:
        """Unnormalised class prototypes ``[C, feat_dim]`` (the losses normalise where they need to)."""
        return self.prototype_head(self.classifier_weight())

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One backbone pass: ``(logits [B, C], projections u [B, feat_dim])``."""
        f = self.features(x)
        return self.classifier(f), self.projection(f)


class TextClassifier(nn.Module):
    """``W_I`` (identity-initialised, bias-free) and cosine logits against fixed class text features."""

    def __init__(self, text_features: torch.Tensor):
        super().__init__()
        t = F.normalize(torch.as_tensor(text_features, dtype=torch.float32), dim=1)
        self.register_buffer("text_features", t)  # [C, d], fixed: saved with the model, never trained
        d = t.shape[1]
        self.w_i = nn.Linear(d, d, bias=False)
        with torch.no_grad():
            self.w_i.weight.copy_(torch.eye(d))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.w_i(e.float()), dim=1) @ self.text_features.t()


class TextAlignedModel(nn.Module):
    """``encoder`` (image → ``[B, d]``) followed by :class:`TextClassifier`; logits are cosines in [−1, 1]."""

    def __init__(self, encoder: nn.Module, text_features: torch.Tensor):
        super().__init__()
        self.encoder = encoder
        self.classifier = TextClassifier(text_features)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ProjectedBackbone(nn.Module):
    """A fastlt backbone (``out_dim`` features) and a bias-free linear projection to the text dimension."""

    def __init__(self, backbone: nn.Module, text_dim: int):
        super().__init__()
        self.backbone = backbone
        self.projection = nn.Linear(int(backbone.out_dim), int(text_dim), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.backbone(x))


class ClipImageEncoder(nn.Module):
    """The image tower of an open_clip model: ``[B, 3, S, S]`` → ``[B, d]`` (CLIP's embedding space)."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)
