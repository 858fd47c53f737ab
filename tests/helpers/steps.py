"""One training step at toy size, for the tests that check a method's loss against its formula: a 3-class
long-tailed prior, a tiny model, a hand-labelled batch, the method with its step context, the method's draws
attached to the batch as the producer thread attaches them, and replays of those draws so the expected values
can be recomputed with plain torch."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from fastlt.methods.base import StepContext, get_method
from fastlt.models import Classifier
from fastlt.pipelines.base import extras_to_device
from fastlt.pipelines.plan import Batch, StepPlan
from fastlt.recipes import apply_overrides, preset
from fastlt.runtime import Priors, Runtime
from helpers import train_index

COUNTS = torch.tensor([120.0, 30.0, 4.0])  # many / medium / few
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
H = W = 6


def tiny_model(seed=0, cosine=False):
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Flatten(), nn.Linear(3 * H * W, 5), nn.Tanh())
    return Classifier(body, 5, 3, "cosine" if cosine else "linear", cosine_scale=30.0)


def make_batch(segments: dict, seed=1):
    g = np.random.default_rng(seed)
    plan = StepPlan.from_segments(0, 0, **{k: np.arange(len(v)) for k, v in segments.items()})
    labels = torch.tensor(np.concatenate([np.asarray(v) for v in segments.values()]), dtype=torch.int64)
    images = torch.from_numpy(g.integers(0, 256, (len(labels), H, W, 3), dtype=np.uint8))
    return Batch(plan, torch.arange(len(labels)), images, labels)


def ctx_for(method, stage=None, epoch=0, **over):
    """(the method built on a 3-class index with COUNTS and H×W images, a step context in its stage named
    ``stage``)."""
    over = {"image_size": H, **over}
    r = apply_overrides(preset("digits-lt", method), [(k, str(v)) for k, v in over.items()])
    m = get_method(method)(r, train_index(COUNTS.long().tolist()))
    st = m.stages()[0] if stage is None else next(s for s in m.stages() if s.name == stage)
    runtime = Runtime(device=torch.device("cpu"), priors=Priors(COUNTS), mean=MEAN, std=STD)
    return m, StepContext(runtime, st, epoch, 0)


def with_draws(m, ctx, batch, seed=11):
    """``batch`` with the method's draws for its plan from a generator seeded by ``seed`` (what the producer
    attaches with ``Method.draw``), host copies in ``plan.extras`` and tensors, on the images' device, in
    ``extras``."""
    plan = batch.plan.with_extras(m.draw(ctx.stage, batch.plan, torch.Generator().manual_seed(seed)))
    return Batch(plan, batch.rows, batch.images, batch.labels, extras_to_device(plan, batch.images.device))


def loss_of(m, ctx, batch, model, seed=11):
    """``m.loss`` on ``batch`` with its draws from ``seed``."""
    return m.loss(model, with_draws(m, ctx, batch, seed), ctx)


def norm(u8):
    """(v/255 − mean)/std, NCHW: the normalisation the kernel fuses."""
    x = u8.float().permute(0, 3, 1, 2) / 255.0
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _beta(g, alpha, n):
    s = int(torch.randint(0, 2**62, (1,), generator=g).item())
    return torch.from_numpy(np.random.default_rng(s).beta(alpha, alpha, size=n).astype(np.float32))


def beta_like(ctx_seed, alpha, n):
    """Replays ``draw_beta``: one int from the step generator seeds numpy's Beta."""
    g = torch.Generator().manual_seed(ctx_seed)
    return _beta(g, alpha, n), g


def beta_draws(ctx_seed, alpha, sizes, perm_after_first=None):
    """Replays several ``draw_beta`` calls, with ``draw_permutation(n)`` after the first one."""
    g = torch.Generator().manual_seed(ctx_seed)
    lams, perm = [], None
    for i, n in enumerate(sizes):
        lams.append(_beta(g, alpha, n))
        if i == 0 and perm_after_first:
            perm = torch.randperm(perm_after_first, generator=g)
    return lams, perm
