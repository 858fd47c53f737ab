"""Backbones with a features / classifier split.

Every model fastlt trains is a :class:`Classifier`: ``features(x) -> float[B, D]`` then ``classifier(f) ->
logits[B, C]``. Methods that need more heads (projection, prototypes, a text-aligned linear map) wrap the
backbone and keep that split, so the trainer can freeze ``features`` for classifier fine-tuning with one rule.

Model names (``build_model(name, num_classes, ...)``):

- ``smallnet``   a 4-conv net for 32×32 digits-lt: ~0.1 M parameters, trains in seconds on 2 CPU cores.
- ``resnet32``   the CIFAR ResNet-32 of the LDAM-DRW release (reused by BCL and ConCutMix), layer for
                 layer: 3 stages × 5 basic blocks (16/32/64 channels), parameter-free "option A" shortcuts,
                 Kaiming-normal initialisation; 464,154 parameters with a 10-class linear head.
- ``resnet50`` / ``resnet152`` / ``resnext50``  the torchvision ResNet-50 / ResNet-152 / ResNeXt-50 (32×4d)
                 of the ImageNet-LT / iNat / Places-LT papers; same as ``tv:resnet50`` etc.
- ``tv:NAME``    any torchvision classification model (``torchvision.models.list_models(module=
                 torchvision.models)``), e.g. ``tv:resnet18``, ``tv:convnext_tiny``, ``tv:vit_b_16``. Its last
                 ``nn.Linear`` (the classifier) is removed; the features are that layer's input.
- ``timm:NAME``  any timm model (``timm.list_models()``), e.g. ``timm:resnet18``,
                 ``timm:vit_small_patch16_224``, built with ``num_classes=0`` (pooled features, no timm head).

torchvision and timm models start from their library's random initialisation; ``pretrained=PATH`` then loads a
local file — a torch state dict (optionally under ``"state_dict"`` or ``"model"``, ``module.`` prefixes
stripped) or a ``.safetensors`` file, in the library's own key names (for ``resnet32``: a checkpoint of the
released CIFAR code, whose key names are fastlt's). Nothing downloads. The checkpoint's classifier keys are
ignored; any other missing, unexpected or mis-shaped key is a ``ValueError`` naming the
file and the first offending keys (so is a missing or unreadable file).

Classifiers: ``linear`` (with bias) or ``cosine`` — the ``NormedLinear`` of the LDAM / BCL / ConCutMix
code: ``logits = s · cos(f, w_c)``. With ``scale=None`` it returns raw cosines (LDAM applies ``s`` after its
margin).
"""

from __future__ import annotations

import difflib
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

BACKBONES = ("smallnet", "resnet32", "resnet50", "resnet152", "resnext50")
CLASSIFIERS = ("linear", "cosine")
# The ImageNet-LT / iNat / Places-LT backbones by their paper names.
TORCHVISION_ALIASES = {"resnet50": "resnet50", "resnet152": "resnet152", "resnext50": "resnext50_32x4d"}


class CosineClassifier(nn.Module):
    """``s · ⟨f/‖f‖, w_c/‖w_c‖⟩``: logits bounded in [−s, s], so head classes cannot win by weight norm.

    The released ``NormedLinear`` stores its weight as ``[D, C]``, draws it uniform(−1, 1) and rescales every
    class column to unit norm. ``weight`` here is the transpose, one row per class (``[C, D]``, the layout of
    ``nn.Linear`` that heads and methods read), filled from the same ``[D, C]`` draw: for one RNG state the
    values are those of the release. The unit norm matters although the forward pass normalises: the
    gradient reaching ``w_c`` scales with ``1/‖w_c‖``, so the initial norm sets the classifier's effective
    learning rate, and BCL's prototype head reads the raw rows.
    """

    def __init__(self, in_features: int, num_classes: int, scale: float | None = 30.0):
        super().__init__()
        w = torch.empty(in_features, num_classes).uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)
        self.weight = nn.Parameter(w.t().contiguous())
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
def kaiming_init(m: nn.Module) -> None:
    """The CIFAR ResNet's initialisation: ``kaiming_normal_``, torch's defaults, on every Conv2d and Linear.

    The defaults are ``mode='fan_in'`` and ``nonlinearity='leaky_relu'`` with ``a=0`` — gain √2, the ReLU
    gain — so ``std = √(2 / fan_in)``. Biases and BatchNorm keep torch's defaults. Use with ``module.apply``.
    """
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(m.weight)


class OptionAShortcut(nn.Module):
    """He et al.'s parameter-free CIFAR shortcut ("option A"): keep every second pixel, zero-pad the channels.

    The channels double where the resolution halves, so ``cout // 4`` zero channels go on each side of the
    ``cin = cout // 2`` input channels.
    """

    def __init__(self, cin: int, cout: int):
        super().__init__()
        if cin + 2 * (cout // 4) != cout:
            raise ValueError(f"option-A shortcut pads cout//4 channels per side: {cin} → {cout} does not fit")
        self.pad = cout // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            if stride != 2:
                raise ValueError(f"option-A shortcut halves the resolution; got stride {stride}")
            self.shortcut = OptionAShortcut(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet-(6n+2) for 32×32 inputs; n = 5 gives ResNet-32 (0.46 M parameters).

    Module names follow the release (``conv1``, ``bn1``, ``layer1``–``layer3``) so its state-dict keys match.
    ``init=False`` leaves torch's default initialisation for a caller that applies :func:`kaiming_init` later.
    """

    def __init__(self, n: int = 5, widths: tuple[int, int, int] = (16, 32, 64), init: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        for i, w in enumerate(widths):
            blocks = [BasicBlock(cin if j == 0 else w, w, 2 if (i > 0 and j == 0) else 1) for j in range(n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            cin = w
        self.out_dim = widths[-1]
        if init:
            self.apply(kaiming_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's layer grouping (stem, then one group per block or per stage) for layer-wise lr decay."""
        return dict(stem=r"^conv1|^bn1", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")


# -------------------------------------------------------------------------------------- torchvision / timm
def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise ValueError(f"pretrained weights {path}: no such file (want a state dict or .safetensors file)")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch and safetensors raise several types for a file of another kind
        why = f"{type(e).__name__}: {e}"
        raise ValueError(f"pretrained weights {path}: not a readable state dict ({why})") from None
    for key in ("state_dict", "model"):  # training checkpoints nest the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"pretrained weights {path}: not a state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_local_weights(net: nn.Module, path: str, arch: str, ignore: tuple[str, ...] = ()) -> None:
    """Load ``path`` into ``net`` strictly, except keys starting with an ``ignore`` prefix (the removed head).

    BatchNorm's ``num_batches_tracked`` counters may be absent (converted weights often lack them).
    """
    state = {k: v for k, v in _read_state_dict(path).items() if not k.startswith(ignore)}
    own = net.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(v.shape)} (want {tuple(own[k].shape)})" for k, v in state.items()
              if k in own and v.shape != own[k].shape]
    problems = [f"{what} {keys[:5]}" for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if keys]
    if problems:
        raise ValueError(f"pretrained weights {path}: not a {arch} state dict ({'; '.join(problems)})")
    net.load_state_dict(state, strict=False)


def _unknown(kind: str, name: str, choices: list[str], hint: str) -> ValueError:
    near = difflib.get_close_matches(name, choices, n=3)
    guess = f"; did you mean {', '.join(near)}?" if near else ""
    return ValueError(f"unknown {kind} model {name!r}{guess} ({hint})")


# googlenet / inception_v3 are built without their auxiliary heads (training would return a tuple); their
# checkpoints carry those heads, which are ignored like the classifier.
_TV_AUX = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}


class _LibraryBackbone(nn.Module):
    """A model from a library, its head removed: ``forward`` returns its ``out_dim`` pooled features."""

    def __init__(self, net: nn.Module, out_dim: int):
        super().__init__()
        self.net = net
        self.out_dim = int(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TorchvisionBackbone(_LibraryBackbone):
    """A torchvision classification model whose final ``nn.Linear`` is an ``nn.Identity``."""

    def group_matcher(self, coarse: bool = False) -> dict | None:
        """timm's ResNet grouping for torchvision ResNets / ResNeXts; None (no known grouping) otherwise."""
        from torchvision.models import ResNet

        if not isinstance(self.net, ResNet):
            return None
        return dict(stem=r"^net\.(conv1|bn1)", blocks=r"^net\.layer(\d+)" + ("" if coarse else r"\.(\d+)"))


def _torchvision(name: str, pretrained: str | None) -> TorchvisionBackbone:
    import torchvision.models as tvm

    known = tvm.list_models(module=tvm)
    if name not in known:
        raise _unknown("torchvision", name, known, "see torchvision.models.list_models(module=tvm)")
    aux_off = {"aux_logits": False, "init_weights": True} if name in _TV_AUX else {}
    net = tvm.get_model(name, weights=None, **aux_off)
    linears = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"torchvision model {name!r} ends in no nn.Linear classifier to replace")
    head_name, head = linears[-1]
    parent, _, attr = head_name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, attr, nn.Identity())
    if pretrained:
        load_local_weights(net, pretrained, f"torchvision {name}", (head_name + ".",) + _TV_AUX.get(name, ()))
    return TorchvisionBackbone(net, head.in_features)


class TimmBackbone(_LibraryBackbone):
    """A timm model built with ``num_classes=0``: ``forward`` returns its pooled pre-logits features."""


def _timm(name: str, pretrained: str | None) -> TimmBackbone:
    import timm

    if not timm.is_model(name):
        raise _unknown("timm", name, timm.list_models(), "see timm.list_models()")
    net = timm.create_model(name, pretrained=False, num_classes=0)  # pretrained=False: never downloads
    head = net.pretrained_cfg.get("classifier") or ()
    head = (head,) if isinstance(head, str) else tuple(head)
    if pretrained:
        load_local_weights(net, pretrained, f"timm {name}", tuple(h + "." for h in head))
    # head_hidden_size is the width entering timm's classifier where a pre-logits layer widens num_features.
    dim = getattr(net, "head_hidden_size", None) or net.num_features
    return TimmBackbone(net, dim)


def _load_cifar(backbone: ResNetCifar, pretrained: str | None) -> ResNetCifar:
    # The release's key names are ours; its head (``linear``: Linear or NormedLinear) is not the backbone's.
    if pretrained:
        load_local_weights(backbone, pretrained, "CIFAR ResNet-32", ("linear.",))
    return backbone


def build_backbone(name: str, *, width: int = 16, pretrained: str | None = None) -> nn.Module:
    """A feature extractor with attribute ``out_dim``."""
    if name == "smallnet":
        if pretrained:
            raise ValueError(f"pretrained weights {pretrained}: smallnet has no pretrained form")
        return SmallNet(width)
    if name == "resnet32":
        return _load_cifar(ResNetCifar(5), pretrained)
    if name in TORCHVISION_ALIASES:
        return _torchvision(TORCHVISION_ALIASES[name], pretrained)
    if name.startswith("tv:"):
        return _torchvision(name.removeprefix("tv:"), pretrained)
    if name.startswith("timm:"):
        return _timm(name.removeprefix("timm:"), pretrained)
    near = difflib.get_close_matches(name, BACKBONES, n=2)
    raise ValueError(
        f"unknown model {name!r}"
        + (f"; did you mean {' or '.join(near)}?" if near else "")
        + f" (choose from {', '.join(BACKBONES)}, tv:NAME for torchvision models, timm:NAME for timm models)"
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
    if name == "resnet32":
        # The release builds every layer (torch's default draws: convolutions, then the head) and only then
        # re-draws conv and linear weights with kaiming_init in module order; NormedLinear keeps its own draw.
        # Built in the same order, one seed gives the release's initial weights.
        model = Classifier(ResNetCifar(5, init=False), 64, num_classes, classifier, cosine_scale)
        model.apply(kaiming_init)
        _load_cifar(model.backbone, pretrained)
        return model
    backbone = build_backbone(name, width=width, pretrained=pretrained)
    return Classifier(backbone, backbone.out_dim, num_classes, classifier, cosine_scale)
