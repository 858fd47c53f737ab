"""Optimiser-side helpers: an exponential moving average of the model, layer-wise learning-rate decay groups.

Both follow timm's conventions (``timm.utils.ModelEmaV3``, ``timm.optim.param_groups_layer_decay``) so recipes
taken from timm-trained papers mean the same thing here; neither needs timm installed.

Gradient clipping needs no helper: ``torch.nn.utils.clip_grad_norm_(params, max_norm)`` is timm's default
``--clip-mode norm`` (one global L2 norm over all gradients, scaled down to ``max_norm`` when above it). With
AMP's ``GradScaler`` call ``scaler.unscale_(optimizer)`` first, so the norm is of the true gradients. timm's
other modes are ``torch.nn.utils.clip_grad_value_`` (``value``) and adaptive gradient clipping (``agc``, the
NFNet recipe), which none of the long-tailed methods fastlt implements uses.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import re
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn


def _unwrap(model: nn.Module) -> nn.Module:
    """The module under a DistributedDataParallel / DataParallel or ``torch.compile`` wrapper."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return getattr(model, "_orig_mod", model)  # torch.compile's wrapper keeps the module there


class ModelEma(nn.Module):
    """Exponential moving average of every parameter and buffer: ``ema ← d·ema + (1 − d)·model``.

    timm's ``ModelEmaV3`` semantics. Floating-point state (weights, BatchNorm running statistics) is averaged;
    integer buffers (``num_batches_tracked``) are copied. ``update(model)`` uses the fixed ``decay``;
    ``update(model, step)`` uses the step's decay: ``0`` (a plain copy) for ``step ≤ update_after_step + 1``,
    then ``decay`` — or, with ``use_warmup``, ``1 − (1 + t/warmup_gamma)^−warmup_power`` with
    ``t = step − update_after_step − 1``, clamped to ``[min_decay, decay]`` (γ = 1, power 2/3 reaches 0.999 at
    31.6 k steps; power 3/4 at 10 k). The average lives in ``self.module`` (eval mode, no gradients), on
    ``device`` if given, else where the model is; call it like the model to evaluate the average.
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.9999,
        *,
        min_decay: float = 0.0,
        update_after_step: int = 0,
        use_warmup: bool = False,
        warmup_gamma: float = 1.0,
        warmup_power: float = 2 / 3,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        if not 0.0 <= min_decay <= decay <= 1.0:
            raise ValueError(f"EMA decay must satisfy 0 ≤ min_decay ≤ decay ≤ 1, got {min_decay}, {decay}")
        self.module = copy.deepcopy(_unwrap(model)).eval().requires_grad_(False)
        if device is not None:
            self.module.to(device)
        self.decay, self.min_decay = float(decay), float(min_decay)
        self.update_after_step = int(update_after_step)
        self.use_warmup = bool(use_warmup)
        self.warmup_gamma, self.warmup_power = float(warmup_gamma), float(warmup_power)

    def get_decay(self, step: int | None = None) -> float:
        if step is None:
            return self.decay
        t = max(0, step - self.update_after_step - 1)
        if t <= 0:
            return 0.0
        if not self.use_warmup:
            return self.decay
        warm = 1.0 - (1.0 + t / self.warmup_gamma) ** -self.warmup_power
        return max(min(warm, self.decay), self.min_decay)

    def _pairs(self, model: nn.Module) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        # Matched by name, not by order: a model whose state dict is ordered differently fails loudly.
        src = _unwrap(model).state_dict()
        for name, mine in self.module.state_dict().items():
            yield mine, src[name].detach().to(mine.device)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        d = self.get_decay(step)
        ema, new = [], []
        for mine, theirs in self._pairs(model):
            if mine.is_floating_point():
                ema.append(mine)
                new.append(theirs)
            else:
                mine.copy_(theirs)
        if ema:
            torch._foreach_lerp_(ema, new, 1.0 - d)  # e + (1−d)(m − e) = d·e + (1−d)·m, one fused pass

    @torch.no_grad()
    def set(self, model: nn.Module) -> None:
        """Copy the model's current state (a restart of the average)."""
        for mine, theirs in self._pairs(model):
            mine.copy_(theirs)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


# ------------------------------------------------------------------------------------------ layer decay
_MATCH_PREV_GROUP = 99999.0  # timm: an ordinal ending in 99999 joins the group before it (a ViT's final norm)
_HEAD = (math.inf,)  # timm's ordinal of names no matcher entry claims: the head's group
Matcher = dict | Callable[[str], object]


def _ordinal(name: str, matcher: Matcher) -> tuple[float, ...]:
    """timm's sort key of a parameter name under a ``group_matcher`` spec; unmatched names sort last."""
    if callable(matcher):
        o = matcher(name)
        return tuple(map(float, o)) if isinstance(o, Iterable) else (float(o),)
    for group, spec in enumerate(matcher.values()):
        if spec is None:
            continue
        for pattern, suffix in spec if isinstance(spec, (list, tuple)) else [(spec, None)]:
            m = re.match(pattern, name)
            if m:
                return (float(group), *map(float, m.groups()), *map(float, suffix or ()))
    return _HEAD


def _find_trunk(model: nn.Module, trunk: nn.Module | None) -> tuple[str, nn.Module]:
    for name, m in model.named_modules():
        if (m is trunk) if trunk is not None else name.rpartition(".")[2] in ("backbone", "encoder"):
            return name, m
    raise ValueError("layer decay needs the trunk: the model has no 'backbone' or 'encoder'; pass trunk=")


def _matcher_owner(trunk: nn.Module) -> tuple[str, nn.Module, Matcher] | None:
    """The first module in the trunk with a timm-style ``group_matcher`` that knows its layers."""
    for name, m in trunk.named_modules():
        if callable(getattr(m, "group_matcher", None)):  # an optional protocol: timm models, fastlt backbones
            spec = m.group_matcher(coarse=False)
            if spec is not None:
                return name, m, spec
    return None


def _trunk_depths(trunk: nn.Module) -> tuple[dict[str, int], int]:
    """Depth of each trunk parameter (names relative to the trunk) and the depth of the head."""
    names = [n for n, _ in trunk.named_parameters()]
    found = _matcher_owner(trunk)
    if found is None:
        depth = {n: i // 12 for i, n in enumerate(names)}
        return depth, max(depth.values(), default=-1) + 1
    at, _, spec = found
    inside = at + "." if at else ""
    # The head sorts last; trunk names the matcher does not match (or outside its module) join it, as in timm.
    keys = {n: _ordinal(n.removeprefix(inside), spec) if n.startswith(inside) else _HEAD for n in names}
    ids, lid = {}, -1
    for k in sorted(set(keys.values()) | {_HEAD}):
        if lid < 0 or k[-1] != _MATCH_PREV_GROUP:
            lid += 1
        ids[k] = lid
    return {n: ids[k] for n, k in keys.items()}, ids[_HEAD]


def layer_ids(model: nn.Module, trunk: nn.Module | None = None) -> dict[str, int]:
    """Depth of every parameter for layer-wise lr decay: 0 = stem … ``max`` = head.

    Inside the trunk (``model.backbone`` or ``.encoder`` unless given), timm's ``group_matcher(coarse=False)``
    of the trunk (or of its first submodule that has one) sets the depths: stem, then one per block. Names it
    does not match join the head, as in timm. A trunk without a matcher is cut into groups of 12 parameters in
    registration order (timm's fallback). Everything outside the trunk — classifier, projection and prototype
    heads — is the head.
    """
    prefix, trunk = _find_trunk(model, trunk)
    depth, head = _trunk_depths(trunk)
    full = {(prefix + "." if prefix else "") + n: d for n, d in depth.items()}
    return {n: full.get(n, head) for n, _ in model.named_parameters()}


def layer_decay_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    decay: float,
    *,
    trunk: nn.Module | None = None,
    no_weight_decay: Iterable[str] = (),
) -> list[dict]:
    """Optimiser parameter groups for layer-wise lr decay (BEiT / timm ``param_groups_layer_decay``).

    The head trains at ``lr``, a parameter at depth ``i`` of ``L`` layers at ``lr · decay^(L−1−i)`` (the stem
    at ``lr · decay^(L−1)``). As in timm, 1-D parameters — biases, norm weights — get no weight decay, and
    neither do names matching a ``no_weight_decay`` pattern (fnmatch) or listed by the matcher module's
    ``no_weight_decay()`` (a ViT's position embedding and class token). Each group carries ``lr``,
    ``lr_scale`` (for a schedule that sets ``lr = base · lr_scale``), ``weight_decay`` and a ``name``.
    """
    ids = layer_ids(model, trunk)
    patterns = list(no_weight_decay)
    prefix, trunk = _find_trunk(model, trunk)
    found = _matcher_owner(trunk)
    if found is not None and callable(getattr(found[1], "no_weight_decay", None)):
        at = ".".join(p for p in (prefix, found[0]) if p)
        patterns += [f"{at}.{n}" if at else n for n in found[1].no_weight_decay()]
    top = max(ids.values())
    groups: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        plain = p.ndim <= 1 or any(fnmatch.fnmatch(name, pat) for pat in patterns)
        key = f"layer_{ids[name]}_{'no_decay' if plain else 'decay'}"
        scale = decay ** (top - ids[name])
        g = groups.setdefault(key, dict(name=key, params=[], lr=lr * scale, lr_scale=scale,
                                        weight_decay=0.0 if plain else weight_decay))
        g["params"].append(p)
    return list(groups.values())
