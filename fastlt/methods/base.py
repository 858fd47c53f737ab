"""The method interface: a method is a list of stages, a plan producer per stage, and a loss.

The trainer (``fastlt/train.py``) has no per-method code. For every step it asks the method's producer for a
:class:`~fastlt.pipelines.plan.StepPlan`, has the pipeline load it into a ``Batch`` (uint8 NHWC on device),
and calls ``method.loss(model, batch, ctx)``. Everything a method may need from the trainer is on the
:class:`StepContext`: the recipe, the stage, class priors as device tensors, a generator seeded by
(seed, epoch, step), and the fused normalise/mix kernel. The loss returns a :class:`StepOutput`, whose
``logits``/``labels`` of the un-mixed main segment feed the confusion counts (CP-Mix pairs) and the
train accuracy.

Stages are data (:class:`Stage`): CP-Mix is ``erm → cpmix → finetune``; the trainer switches producer,
trainable parameters and optimiser group at stage boundaries, identically for every method.

To add a method::

    @register
    class MyMethod(Method):
        name = "mine"
        def loss(self, model, batch, ctx):
            x = ctx.normalize(batch.images[batch.segment("main")])
            ...
            return StepOutput(loss, logits, labels)

and list its module in ``METHOD_MODULES`` (so ``get_method`` finds it without importing every method).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn as nn

if TYPE_CHECKING:  # pragma: no cover
    from fastlt.pipelines.plan import Batch
    from fastlt.recipes import Recipe
    from fastlt.shards import ShardIndex

# Modules that register methods when imported. A module that is not there yet is skipped.
METHOD_MODULES = (
    "fastlt.methods.baselines",
    "fastlt.methods.cpmix",
    "fastlt.methods.concutmix",
    "fastlt.methods.lfm",
)
METHODS: dict[str, type[Method]] = {}


# ---------------------------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class Stage:
    """One phase of training.

    ``plan``       the plan-producer policy of ``fastlt.sampling`` ('erm', 'pair', 'cpmix', 'balanced',
                   'concutmix', 'lfm') — what rows a step loads.
    ``trainable``  'all', 'classifier' (backbone frozen, BN statistics frozen too) or a name the method's
                   :meth:`Method.trainable_parameters` understands.
    ``group``      stages sharing a group share one optimiser and one LR schedule spanning their epochs;
                   a new group starts a fresh optimiser (e.g. the classifier fine-tune).
    ``lr``, ``schedule``, ``warmup_epochs``, ``milestones`` override the recipe's for this group
    (None: the recipe's).
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


# ---------------------------------------------------------------------------------------------- priors
class Priors(nn.Module):
    """Class statistics of the *training* split as buffers (they follow ``.to(device)``, never train).

    ``counts``     float[C] n_c (a class absent from training counts as 1 so logs stay finite)
    ``log_counts`` float[C] log n_c      — Balanced Softmax adds it to the logits
    ``log_prior``  float[C] log π_c      — logit adjustment adds τ·log π_c
    """

    def __init__(self, train_counts):
        super().__init__()
        n = torch.as_tensor(train_counts, dtype=torch.float32).clamp_min(1.0)
        self.register_buffer("counts", n)
        self.register_buffer("log_counts", n.log())
        self.register_buffer("log_prior", (n / n.sum()).log())

    @property
    def num_classes(self) -> int:
        return int(self.counts.shape[0])


# ---------------------------------------------------------------------------------------------- context
@dataclass
class StepContext:
    """What a loss may read. One is built per step by the trainer."""

    recipe: Recipe
    stage: Stage
    epoch: int  # 0-based epoch
    step: int  # global step (over the whole run)
    device: torch.device
    priors: Priors
    generator: torch.Generator  # CPU generator seeded by step_seed(seed, epoch, step): all loss randomness
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # ×255 inside the kernel
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    dtype: torch.dtype = torch.float32  # image dtype handed to the model (bf16 on CUDA)
    extra: dict[str, Any] = field(default_factory=dict)  # method-owned scratch (e.g. text features)

    @property
    def num_classes(self) -> int:
        return self.priors.num_classes

    # Randomness: drawn on the CPU generator so it is a function of (seed, epoch, step) on any device.
    def beta(self, alpha: float, n: int) -> torch.Tensor:
        """float32[n] ~ Beta(α, α) on the device (α ≤ 0 gives λ = 1: no mixing)."""
        if alpha <= 0:
            return torch.ones(n, device=self.device)
        # torch's Beta/Gamma samplers take no generator; numpy's Beta seeded from ours keeps λ a pure
        # function of the step seed.
        import numpy as np

        s = int(torch.randint(0, 2**62, (1,), generator=self.generator).item())
        lam = np.random.default_rng(s).beta(alpha, alpha, size=n).astype(np.float32)
        return torch.from_numpy(lam).to(self.device)

    def uniform(self, n: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        return (torch.rand(n, generator=self.generator) * (high - low) + low).to(self.device)

    def permutation(self, n: int) -> torch.Tensor:
        """An explicit permutation index (same-batch mixup partner), int64[n] on the device."""
        return torch.randperm(n, generator=self.generator).to(self.device)

    def coin(self, p: float) -> bool:
        return bool(torch.rand((), generator=self.generator).item() < p)

    # Pixels: every image reaches the model through the fused kernel (normalise, optionally mix).
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8[B,H,W,3] → normalised float[B,3,H,W] (channels-last memory), ``self.dtype``."""
        from fastlt.kernels.mix import mix_images

        return mix_images(images, mean=self.mean, std=self.std, out_dtype=self.dtype).images

    def mix(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        lam: torch.Tensor,
        *,
        y_a: torch.Tensor,
        y_b: torch.Tensor,
        rule: str = "mixup",
        boxes: torch.Tensor | None = None,
        idx_a=None,
        idx_b=None,
        **rule_params,
    ):
        """Mix ``a`` with ``b`` (per-sample λ; CutMix when ``boxes`` is given), normalise, and weigh labels
        with ``rule`` (mixup | cutmix | remix | cpmix | lfm, using the training class counts) in one pass.

        Returns ``kernels.mix.Mixed(images, lam_y)``: label = λ_y·y_a + (1 − λ_y)·y_b.
        """
        from fastlt.kernels.mix import CUTMIX, MIXUP, mix_images

        mode = None
        if boxes is not None:
            mode = torch.full((lam.numel(),), CUTMIX, dtype=torch.int32, device=self.device)
        elif rule == "cutmix":
            raise ValueError("rule 'cutmix' needs boxes (see kernels.mix.cutmix_boxes)")
        else:
            mode = torch.full((lam.numel(),), MIXUP, dtype=torch.int32, device=self.device)
        return mix_images(
            a,
            b,
            idx_a=idx_a,
            idx_b=idx_b,
            lam=lam,
            boxes=boxes,
            mode=mode,
            mean=self.mean,
            std=self.std,
            out_dtype=self.dtype,
            rule=rule,
            y_a=y_a,
            y_b=y_b,
            class_counts=self.priors.counts,
            **rule_params,
        )


@dataclass
class StepOutput:
    """``loss``: scalar; ``logits``/``labels``: un-mixed main samples (confusion pairs, train accuracy)."""

    loss: torch.Tensor
    logits: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    stats: dict[str, torch.Tensor | float] = field(default_factory=dict)  # detached: no host sync per step


# ---------------------------------------------------------------------------------------------- method
class Method:
    """Base class: defaults give plain ERM with one stage and a linear/cosine classifier from the recipe."""

    name: ClassVar[str] = ""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe

    # -- stages -------------------------------------------------------------------------------------
    def stages(self) -> tuple[Stage, ...]:
        return (Stage("train", self.recipe.epochs, plan="erm"),)

    # -- model --------------------------------------------------------------------------------------
    def build_model(self, num_classes: int) -> nn.Module:
        """The network. Override to wrap the backbone with extra heads; keep ``features``/``classifier``."""
        from fastlt.models import build_model

        r = self.recipe
        return build_model(
            r.model,
            num_classes,
            classifier=r.classifier,
            cosine_scale=r.cosine_scale,
            width=r.model_width,
            pretrained=r.pretrained or None,
        )

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
    def producer(self, index: ShardIndex, stage: Stage, seed: int, counts=None, **kw):
        """The stage's plan producer (``fastlt.producers``). The trainer uses exactly ``steps_per_epoch`` and
        ``make_plan(step) -> StepPlan`` for global steps ``first_step ..`` of epoch ``first_epoch`` (both
        passed in ``kw``); ``counts`` is the run's shared confusion state. Override to add policy inputs
        (e.g. LFM's text neighbours)."""
        from fastlt.producers import make_producer

        return make_producer(
            stage.plan,
            index,
            batch_size=stage.batch_size or self.recipe.batch_size,
            seed=seed,
            counts=counts,
            recipe=self.recipe,
            **kw,
        )

    # -- loss ---------------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:  # pragma: no cover
        raise NotImplementedError

    def eval_logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits at test time (raw: no prior added)."""
        return model(x)

    # -- method-owned state (e.g. learned prototypes live in the model; this is for anything else) ---
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def register(cls: type[Method]) -> type[Method]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        old = METHODS[cls.name].__name__
        raise ValueError(f"method {cls.name!r} registered twice ({old}, {cls.__name__})")
    METHODS[cls.name] = cls
    return cls


def _load_all() -> None:
    for mod in METHOD_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:  # a real missing dependency inside the module: surface it
                raise


def method_names() -> list[str]:
    _load_all()
    return sorted(METHODS)


def get_method(name: str) -> type[Method]:
    _load_all()
    if name not in METHODS:
        near = difflib.get_close_matches(name, METHODS, n=3)
        hint = f"; did you mean {' or '.join(near)}?" if near else ""
        raise ValueError(f"unknown method {name!r}{hint} (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


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
    ``idx [B, 2] = (y_a, y_b)``, ``w [B, 2] = (λ_y, 1 − λ_y)``: no dense ``[B, C]`` target is built.
    """
    from fastlt.kernels.soft_ce import soft_cross_entropy

    lam_y = lam_y.to(torch.float32)
    idx = torch.stack([y_a, y_b], 1)
    w = torch.stack([lam_y, 1.0 - lam_y], 1)
    return soft_cross_entropy(logits.float(), idx, w, logit_adjust=logit_adjust)
