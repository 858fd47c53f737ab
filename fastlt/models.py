"""Backbones with a features / classifier split.

Every model fastlt trains is a :class:`Classifier`: ``features(x) -> float[B, D]`` then ``classifier(f) ->
logits[B, C]``. Methods that need more heads (projection, prototypes, a text-aligned linear map) wrap the
backbone and keep that split, so the trainer can freeze ``features`` for classifier fine-tuning with one rule.

Backbones (``build_model(name, num_classes, ...)``):

- ``smallnet``   a 4-conv net for 32×32 digits-lt: ~0.1 M parameters, trains in seconds on 2 CPU cores.
- ``resnet32``   the CIFAR ResNet of He et al. 2016 (3 stages × 5 basic blocks, 16/32/64 channels), the
                 backbone every CIFAR-LT paper uses (LDAM, Balanced Softmax, BCL/ConCutMix, CP-Mix).
- ``resnet50`` / ``resnet152`` / ``resnext50``  torchvision definitions; ``pretrained=PATH`` loads a local
                 state dict (nothing downloads). The final ``fc`` is dropped: its job is the classifier's.

Classifiers: ``linear`` (with bias) or ``cosine`` — the normed classifier of LDAM / iNat recipes:
``logits = s · cos(f, w_c)``. With ``scale=None`` it returns raw cosines (LDAM applies ``s`` after its
margin).
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

BACKBONES = ("smallnet", "resnet32", "resnet50", "resnet152", "resnext50")
CLASSIFIERS = ("linear", "cosine")


class CosineClassifier(nn.Module):
    """``s · ⟨f/‖f‖, w_c/‖w_c‖⟩``: logits bounded in [−s, s], so head classes cannot win by weight norm."""

    def __init__(self, in_features: int, num_classes: int, scale: float | None = 30.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        # Uniform in ±1/√D like nn.Linear: the direction is all that matters after normalisation.
        nn.init.uniform_(self.weight, -(in_features**-0.5), in_features**-0.5)
        self.scale = scale

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(f, dim=1) @ F.normalize(self.weight, dim=1).t()
        return cos if self.scale is None else self.scale * cos

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, num_classes={self.weight.shape[0]}, scale={self.scale}"


class Classifier(nn.Module):
    """``backbone`` (→ [B, D]) followed by ``classifier`` (→ [B, C])."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        classifier: str = "linear",
        cosine_scale: float | None = 30.0,
    ):
        super().__init__()
        if classifier not in CLASSIFIERS:
            raise ValueError(f"unknown classifier {classifier!r}; choose from {CLASSIFIERS}")
        self.backbone = backbone
        self.feature_dim = int(feature_dim)
        self.num_classes = int(num_classes)
        self.classifier = (
            nn.Linear(feature_dim, num_classes)
            if classifier == "linear"
            else CosineClassifier(feature_dim, num_classes, cosine_scale)
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# ------------------------------------------------------------------------------------------ small net
def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallNet(nn.Module):
    """32 → 16 → 8 → 4 → global pool; widths w, 2w, 4w, 4w. Enough capacity for digits, cheap on a CPU."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _conv_bn(3, w),
            nn.MaxPool2d(2),
            _conv_bn(w, 2 * w),
            nn.MaxPool2d(2),
            _conv_bn(2 * w, 4 * w),
            nn.MaxPool2d(2),
            _conv_bn(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.out_dim = 4 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


# ------------------------------------------------------------------------------------------ ResNet-32
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        # Projection shortcut (1×1 conv) where the shape changes; the original "option A" zero-pads instead.
        # Both appear in LT code bases; the projection costs 2 k parameters and keeps the module plain.
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet-(6n+2) for 32×32 inputs; n = 5 gives ResNet-32 (0.46 M parameters)."""

    def __init__(self, n: int = 5, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.out_dim = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)


# ------------------------------------------------------------------------------------------ torchvision
class _TorchvisionTrunk(nn.Module):
    """A torchvision ResNet without its ``fc``: pooled features [B, 2048]."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.out_dim = net.fc.in_features
        net.fc = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _torchvision(name: str, pretrained: str | None) -> nn.Module:
    import torchvision.models as tvm

    ctor = {"resnet50": tvm.resnet50, "resnet152": tvm.resnet152, "resnext50": tvm.resnext50_32x4d}[name]
    net = ctor(weights=None)  # never downloads
    if pretrained:
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(f"pretrained weights {pretrained!r}: no such file (want a state dict)")
        state = torch.load(pretrained, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches
            why = str(e).splitlines()[-1].strip()
            raise ValueError(f"{pretrained}: not a {name} state dict ({why})") from None
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise ValueError(
                f"{pretrained}: not a {name} state dict (missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
    return _TorchvisionTrunk(net)


def build_backbone(name: str, *, width: int = 16, pretrained: str | None = None) -> nn.Module:
    """A feature extractor with attribute ``out_dim``."""
    if name == "smallnet":
        return SmallNet(width)
    if name == "resnet32":
        return ResNetCifar(5)
    if name in ("resnet50", "resnet152", "resnext50"):
        return _torchvision(name, pretrained)
    import difflib

    near = difflib.get_close_matches(name, BACKBONES, n=2)
    raise ValueError(
        f"unknown model {name!r}"
        + (f"; did you mean {' or '.join(near)}?" if near else "")
        + f" (choose from {', '.join(BACKBONES)})"
    )


def build_model(
    name: str,
    num_classes: int,
    *,
    classifier: str = "linear",
    cosine_scale: float | None = 30.0,
    width: int = 16,
    pretrained: str | None = None,
) -> Classifier:
    backbone = build_backbone(name, width=width, pretrained=pretrained)
    return Classifier(backbone, backbone.out_dim, num_classes, classifier, cosine_scale)
