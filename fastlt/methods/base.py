"""The method interface: a method is a list of stages, a plan producer per stage, and a loss.

A method is built from the recipe and the training split's index (``Method(recipe, index, cache_dir)``). The
trainer (``fastlt/train.py``) has no per-method code and never names a method or a stage. For every step it
asks the stage's producer for a :class:`~fastlt.pipelines.plan.StepPlan`, has the pipeline load it into a
``Batch`` (uint8 NHWC on device), and calls ``method.loss(model, batch, ctx)``. Everything a loss may need
from the trainer is on the :class:`StepContext`: the stage, the epoch and step, and the
:class:`~fastlt.runtime.Runtime` (device, image dtype, normalisation, class priors as device buffers, the
fused normalise/mix kernel). The loss's randomness (λ, permutations, CutMix boxes, coins) is not drawn in the
step: :meth:`Method.draw` draws it with the plan, on the producer thread, from a generator seeded by (seed,
epoch, step), and the loss reads it from the batch (``batch.extra("main:lam")`` on the device,
``batch.plan.extras`` on the host), so a step never copies a value from the host or waits for one. The loss
returns a :class:`StepOutput`, whose ``logits``/``labels`` of the un-mixed main segment give the train
accuracy and, for a method that ``consumes_feedback``, the mispredicted (y, ŷ) pairs the trainer hands back
to that method's producers.

Stages are data (:class:`Stage`): CP-Mix is ``erm → cpmix → finetune``; each stage names its plan policy,
trainable set, optimiser group and the ``loss`` variant and ``params`` its loss reads, so no code compares
stage names. A method owns its state (CP-Mix: the confusion counts) and checkpoints it with
:meth:`Method.state_dict`.

To add a method::

    @register
    class MyMethod(Method):
        name = "mine"
        reads = frozenset({"mine_alpha"})       # the method's own recipe keys
        def loss(self, model, batch, ctx):
            x = ctx.normalize(batch.images[batch.segment("main")])
            ...
            return StepOutput(loss, logits, labels)

and add its name and module to ``fastlt.methods.METHODS``.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn as nn

from fastlt.methods import METHODS
from fastlt.names import did_you_mean

if TYPE_CHECKING:  # pragma: no cover
    from fastlt.pipelines.plan import Batch, StepPlan
    from fastlt.recipes import Recipe
    from fastlt.runtime import Runtime
    from fastlt.shards import ShardIndex

_CLASSES: dict[str, type[Method]] = {}  # registered method classes, by name
# A last, partial batch is kept only with at least this many rows per rank: BatchNorm in train mode needs two
# samples, and under DDP every rank must get some of every batch (all ranks run the same steps).
MIN_ROWS_PER_RANK = 2


# ---------------------------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class Stage:
    """One phase of training.

    ``plan``       the plan-producer policy of ``fastlt.producers`` ('erm', 'pair', 'cpmix', 'balanced',
                   'concutmix', 'lfm') — what rows a step loads.
    ``trainable``  'all', 'classifier' (backbone frozen, BN statistics frozen too) or a name the method's
                   :meth:`Method.trainable_parameters` understands.
    ``group``      stages sharing a group share one optimiser and one LR schedule spanning their epochs;
                   a new group starts a fresh optimiser (e.g. the classifier fine-tune).
    ``lr``, ``schedule``, ``warmup_epochs``, ``milestones`` override the recipe's for this group
    (None: the recipe's).
    ``loss``       which of the method's objectives this stage trains with (the method's own vocabulary).
    ``params``     the stage's loss parameters (e.g. LFM's label-shift α), read-only.
    """

    name: str
    epochs: int
    plan: str = "erm"
    trainable: str = "all"
    group: str = "main"
    lr: float | None = None
    schedule: str | None = None
    warmup_epochs: int | None = None
    milestones: tuple[int, ...] | None = None
    batch_size: int | None = None
    loss: str = "main"
    params: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))


def stage_at(stages: Iterable[Stage], epoch: int) -> tuple[int, Stage]:
    """(index, stage) that owns 0-based ``epoch``."""
    start = 0
    stages = list(stages)
    for i, s in enumerate(stages):
        if epoch < start + s.epochs:
            return i, s
        start += s.epochs
    raise ValueError(f"epoch {epoch} is past the last stage (total {start} epochs)")


def stage_start(stages: Iterable[Stage], index: int) -> int:
    return sum(s.epochs for s in list(stages)[:index])


def group_span(stages, index: int) -> tuple[int, int]:
    """(first epoch, number of epochs) of the group that stage ``index`` belongs to (consecutive stages)."""
    stages = list(stages)
    g = stages[index].group
    lo = index
    while lo > 0 and stages[lo - 1].group == g:
        lo -= 1
    hi = index
    while hi + 1 < len(stages) and stages[hi + 1].group == g:
        hi += 1
    return stage_start(stages, lo), sum(s.epochs for s in stages[lo : hi + 1])


# ---------------------------------------------------------------------------------------------- context
@dataclass
class StepContext:
    """What a loss may read. One is built per step by the trainer."""

    runtime: Runtime
    stage: Stage
    epoch: int  # 0-based epoch
    step: int  # global step (over the whole run)

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def priors(self):
        return self.runtime.priors

    @property
    def num_classes(self) -> int:
        return self.runtime.priors.num_classes

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return self.runtime.normalize(images)

    def mix(self, a, b, lam, **kw):
        """:meth:`fastlt.runtime.Runtime.mix` (normalise + mix pixels + label weights in one pass)."""
        return self.runtime.mix(a, b, lam, **kw)


@dataclass
class StepOutput:
    """``loss``: scalar; ``logits``/``labels``: un-mixed main samples (train accuracy, feedback pairs)."""

    loss: torch.Tensor
    logits: torch.Tensor | None = None
    labels: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------- method
class Method:
    """Base class: defaults give plain ERM with one stage and a linear/cosine classifier from the recipe.

    ``reads``  the method-specific recipe keys this method uses. A key that some *other* method reads and this
               one does not is reported when given on the command line (it would be silently ignored).
    ``consumes_feedback``  the trainer gathers each step's mispredicted (y, ŷ) pairs and hands them to this
               method's producers only when this is true.
    """

    name: ClassVar[str] = ""
    reads: ClassVar[frozenset[str]] = frozenset({"classifier", "cosine_scale"})
    consumes_feedback: ClassVar[bool] = False

    def __init__(self, recipe: Recipe, index: ShardIndex, cache_dir: str | Path | None = None):
        """``index``: the training split's index (classes, counts, offsets); ``cache_dir``: where the method
        may cache data derived from the split (the shard's folder), None for no cache."""
        self.recipe = recipe
        self.index = index
        self.cache_dir = None if cache_dir is None else Path(cache_dir)

    @property
    def num_classes(self) -> int:
        return self.index.num_classes

    # -- stages -------------------------------------------------------------------------------------
    def stages(self) -> tuple[Stage, ...]:
        return (Stage("train", self.recipe.epochs, plan="erm"),)

    # -- model --------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """The network. Override to wrap the backbone with extra heads; keep ``features``/``classifier``."""
        from fastlt.models import build_model

        r = self.recipe
        return build_model(
            r.model,
            self.num_classes,
            classifier=r.classifier,
            cosine_scale=r.cosine_scale,
            width=r.model_width,
            pretrained=r.pretrained or None,
        )

    def compile_model(self, model: nn.Module) -> None:
        """``torch.compile``, in place, what :meth:`loss` calls (recipe key ``compile``): here the whole
        forward. In place (``nn.Module.compile``), so parameter names and checkpoints do not change. The
        loss stays eager: its [B, C] work is already one fused kernel (the soft CE) or one library call."""
        model.compile()

    def trainable_parameters(self, model: nn.Module, stage: Stage) -> list[nn.Parameter]:
        if stage.trainable == "all":
            return [p for p in model.parameters()]
        if stage.trainable == "classifier":
            return list(model.classifier.parameters())
        raise ValueError(
            f"method {self.name!r} has no trainable set {stage.trainable!r} (stage {stage.name!r})"
        )

    def set_train_mode(self, model: nn.Module, stage: Stage) -> None:
        """``model.train()``, but a frozen backbone keeps its BatchNorm statistics (eval mode)."""
        model.train()
        keep = {id(p) for p in self.trainable_parameters(model, stage)}
        for m in model.modules():
            own = list(m.parameters(recurse=False))
            if own and not any(id(p) in keep for p in own) and isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()

    # -- data ---------------------------------------------------------------------------------------
    def producer(self, stage: Stage, *, first_epoch: int, first_step: int, world: int = 1):
        """The stage's plan producer (``fastlt.producers``), made once per stage, anchored at global step
        ``first_step`` = the first step of epoch ``first_epoch``. The trainer uses ``steps_per_epoch`` and
        ``make_plan(step)``; when the method consumes feedback, ``apply(payload)`` folds finished steps'
        pairs into the method's state. ``world``: DDP ranks (each takes a slice of every batch)."""
        from fastlt.producers import make_producer

        r = self.recipe
        return make_producer(
            stage.plan,
            self.index.offsets,
            batch_size=stage.batch_size or r.batch_size,
            seed=r.seed,
            drop_last=r.drop_last,
            min_last=MIN_ROWS_PER_RANK * world,
            max_steps=r.steps_per_epoch or None,
            first_epoch=first_epoch,
            first_step=first_step,
            draws=functools.partial(self.draw, stage),
            **self.producer_options(stage),
        )

    def draw(self, stage: Stage, plan: StepPlan, gen: torch.Generator) -> dict[str, np.ndarray]:
        """The step's randomness for :meth:`loss`, drawn with the global ``plan`` on the producer thread from
        ``gen`` (seeded by the step): ``{"segment:name": one value per row of the segment, "name": one value
        for the step}`` (``fastlt.pipelines.plan``). Default: nothing."""
        return {}

    def producer_options(self, stage: Stage) -> dict[str, Any]:
        """Policy inputs of the stage's producer beyond the main batch (CP-Mix's counts, LFM's neighbours)."""
        return {}

    # -- loss ---------------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:  # pragma: no cover
        raise NotImplementedError

    def eval_logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits at test time (raw: no prior added)."""
        return model(x)

    # -- method-owned state (model weights live in the model; this is for anything else) ------------
    def epoch_stats(self) -> dict[str, Any]:
        """Numbers about the method's own state for the epoch's metrics line (CP-Mix: confusion pairs)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def register(cls: type[Method]) -> type[Method]:
    if cls.name not in METHODS:
        raise ValueError(f"{cls.__name__}: name {cls.name!r} is not in fastlt.methods.METHODS")
    if cls.name in _CLASSES and _CLASSES[cls.name] is not cls:
        old = _CLASSES[cls.name].__name__
        raise ValueError(f"method {cls.name!r} registered twice ({old}, {cls.__name__})")
    _CLASSES[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        hint = did_you_mean(name, METHODS)
        raise ValueError(f"unknown method {name!r}{hint} (known: {', '.join(sorted(METHODS))})")
    importlib.import_module(METHODS[name])
    return _CLASSES[name]


def method_keys() -> frozenset[str]:
    """Every method-specific recipe key (the union of all methods' ``reads``)."""
    return frozenset().union(*(get_method(n).reads for n in METHODS))


def unread_keys(method: str, keys: Iterable[str]) -> list[str]:
    """The ``keys`` that some method reads but ``method`` does not: given to it, they would do nothing."""
    mine = get_method(method).reads
    return sorted(k for k in set(keys) & method_keys() if k not in mine)


# ---------------------------------------------------------------------------------------------- shared draws
# Each is a pure function of the generator's state, in a fixed order of calls, so a method's draws of a step
# are a function of (seed, epoch, step) and the global batch's shape.
def draw_beta(gen: torch.Generator, alpha: float, n: int) -> np.ndarray:
    """float32[n] ~ Beta(α, α) (α ≤ 0 gives λ = 1: no mixing, and draws nothing)."""
    if alpha <= 0:
        return np.ones(n, np.float32)
    # torch's Beta/Gamma samplers take no generator; numpy's Beta seeded from ours keeps λ a pure function of
    # the step seed.
    s = int(torch.randint(0, 2**62, (1,), generator=gen).item())
    return np.random.default_rng(s).beta(alpha, alpha, size=n).astype(np.float32)


def draw_permutation(gen: torch.Generator, n: int) -> np.ndarray:
    """int64[n], a uniform permutation of 0..n−1 (stored under ``"segment:perm"``, it is cut per rank)."""
    return torch.randperm(n, generator=gen).numpy()


def draw_coin(gen: torch.Generator, p: float) -> np.ndarray:
    """bool[1]: heads with probability p."""
    return np.array([bool(torch.rand((), generator=gen).item() < p)])


def draw_boxes(gen: torch.Generator, lam: np.ndarray, size: int) -> np.ndarray:
    """CutMix boxes for target λ on ``size``×``size`` images, int32[n, 4]. The mix kernel derives the label's
    λ from the box it pastes (after clipping), so the target λ is not returned."""
    from fastlt.kernels.mix import cutmix_boxes

    return cutmix_boxes(torch.from_numpy(lam), size, size, generator=gen)[0].numpy()


def repeat_rows(value: np.ndarray, n: int) -> np.ndarray:
    """One draw for the whole batch as one value per row (``[1, …] → [n, …]``)."""
    return np.repeat(value[:1], n, axis=0)


# ---------------------------------------------------------------------------------------------- shared losses
def pair_cross_entropy(
    logits: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    lam_y: torch.Tensor,
    logit_adjust: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over the batch of −λ_y·log p(y_a) − (1−λ_y)·log p(y_b), p = softmax(z + logit_adjust).

    The mixed label has two non-zero entries, so it goes to the sparse soft-label kernel as
    ``idx [B, 2] = (y_a, y_b)``, ``w [B, 2] = (λ_y, 1 − λ_y)``: no dense ``[B, C]`` target is built. The
    logits go in as they are (bf16 under CUDA autocast: the kernel reads bf16 and accumulates in fp32, so no
    fp32 copy of the [B, C] logits is made).
    """
    from fastlt.kernels.soft_ce import soft_cross_entropy

    lam_y = lam_y.to(torch.float32)
    idx = torch.stack([y_a, y_b], 1)
    w = torch.stack([lam_y, 1.0 - lam_y], 1)
    return soft_cross_entropy(logits, idx, w, logit_adjust=logit_adjust)
