"""Optimiser and learning-rate schedule of a stage group (stages of one group share both)."""

from __future__ import annotations

import math

import torch

from fastlt.methods.base import Stage
from fastlt.recipes import Recipe

# The first warmup step's lr is base·(0 + WARMUP_FLOOR)/warm, never exactly zero: the first step still moves.
WARMUP_FLOOR = 1e-3


def lr_at(recipe: Recipe, stage: Stage, group_epochs: int, t: float) -> float:
    """Learning rate ``t`` epochs (fractional) into a stage group of ``group_epochs`` epochs.

    Linear warmup over ``warmup_epochs``, then the group's schedule: cosine decays to 0 at the
    group's end, multistep multiplies by ``lr_decay`` at each milestone, constant stays.
    """
    base = stage.lr if stage.lr is not None else recipe.lr
    schedule = stage.schedule or recipe.schedule
    warm = stage.warmup_epochs if stage.warmup_epochs is not None else recipe.warmup_epochs
    milestones = stage.milestones if stage.milestones is not None else recipe.milestones
    if warm > 0 and t < warm:
        return base * (t + WARMUP_FLOOR) / warm
    if schedule == "cosine":
        span = max(group_epochs - warm, 1e-9)
        return base * 0.5 * (1 + math.cos(math.pi * min(max(t - warm, 0.0) / span, 1.0)))
    if schedule == "multistep":
        return base * recipe.lr_decay ** sum(t >= m for m in milestones)
    return base


def make_optimizer(recipe: Recipe, params, lr: float, model=None) -> torch.optim.Optimizer:
    """The recipe's optimiser over the trainable ``params``; with ``layer_decay`` < 1, one group per depth of
    ``model`` (:func:`fastlt.optim.layer_decay_groups`, each with its ``lr_scale``)."""
    params = [p for p in params if p.requires_grad]
    if recipe.layer_decay < 1:
        from fastlt.optim import layer_decay_groups

        keep = {id(p) for p in params}
        groups = layer_decay_groups(model, lr, recipe.weight_decay, recipe.layer_decay)
        params = [dict(g, params=[p for p in g["params"] if id(p) in keep]) for g in groups]
        params = [g for g in params if g["params"]]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=recipe.momentum,
            weight_decay=recipe.weight_decay,
            nesterov=recipe.nesterov,
        )
    cls = torch.optim.Adam if recipe.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, weight_decay=recipe.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """``lr`` for every group, times the group's ``lr_scale`` under layer-wise decay."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
