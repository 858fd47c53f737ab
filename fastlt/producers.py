"""Plan producers: one per mixing method, each a function ``make_plan(step) -> StepPlan`` of a global step.

Every producer shares one engine and varies only the policy. The engine is the main batch: rows of a seeded
per-epoch permutation of the shard, ``batch_size`` at a time; the last, partial batch is kept (as the papers'
loaders do) unless ``drop_last``, or unless it is shorter than ``min_last`` rows. The policy adds
named segments drawn by :mod:`fastlt.sampling`:

    plan         segments (layout order)                           partner policy
    -----------  ------------------------------------------------  --------------------------------------
    erm          main (B)                                           —
    pair         main (B) | b (B)                                   InstanceUniform, b[k] pairs main[k]
    cpmix        main (B) | cp_a (B_m) | cp_b (B_m)                 ConfusionPartner over the counts
    concutmix    main (B) | view1 (B) | view2 (B) | fg (B)          views = main rows; fg ClassBalanced
    lfm          main (B) | partner (B)                             TextLocalPartner, partner[k] pairs main[k]
    balanced     main (B, class-balanced)                           ClassBalanced (classifier fine-tuning)

Mixup/CutMix/Remix draw an independent instance-uniform partner per sample (``b``) rather than permuting
the batch: the partner is an explicit row like every other policy's, and it stays on the anchor's rank
when the plan is sharded (segments of equal length are cut at the same boundaries). ConCutMix's views repeat
the main rows; the pipelines give every repeat its own random crop. ``balanced`` epochs have as many steps as
an instance-uniform epoch (each a full batch of B), so a fine-tuning "epoch" sees about as many images as a
training one.

The step's own randomness — the λ, CutMix boxes, permutations and coins its loss uses — is drawn here too, by
the method's ``draws(plan, generator)`` (``Method.draw``), into the plan's extras: the trainer's thread never
draws, and the values reach the device with the batch (pinned, non-blocking) instead of being copied from the
host inside the step, where each copy would wait for the device to drain.

Determinism: all randomness of step ``s`` (epoch ``e``) comes from ``step_seed(seed, e, ·, offset)`` —
offset 1 the epoch permutation, 2 the partner draws, 3 the plan's augmentation seed, ``OFFSET_DRAWS`` the
generator of the step's draws — so a plan is a pure function of (seed, step, sampler state). The only
state is CP-Mix's confusion counts, owned by the method and fed through :meth:`PlanProducer.apply` (the
``apply`` of :class:`~fastlt.pipelines.plan.PlanQueue`); every producer accepts payloads, so an ``erm`` stage
can collect the pairs a later ``cpmix`` stage draws from (pass both the same
:class:`~fastlt.sampling.ConfusionCounts`). A trainer makes one producer per stage; ``max_steps`` caps an
epoch's steps. ``state_dict()`` holds the counts and the settings the stream
depends on; a producer restored from it continues the same stream.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

import numpy as np
import torch

from fastlt.names import did_you_mean
from fastlt.pipelines.plan import StepPlan, step_seed
from fastlt.sampling import (
    ClassBalanced,
    ConfusionCounts,
    ConfusionPartner,
    InstanceUniform,
    TextLocal,
    TextLocalPartner,
    check_offsets,
)

# A method's draws of one step: (global plan, generator) -> extras (``Method.draw``).
Draws = Callable[[StepPlan, torch.Generator], Mapping[str, np.ndarray]]

# step_seed offsets: one independent stream per consumer of a step's randomness.
OFFSET_PERMUTATION, OFFSET_PARTNERS, OFFSET_AUGMENT = 1, 2, 3
OFFSET_DRAWS = 7  # the step's draws for its loss: λ, permutations, CutMix boxes, coins (Method.draw)


def _offsets_of(index) -> np.ndarray:
    """Class offsets from a ShardIndex, a Shard or an offsets array."""
    for attr in ("offsets", "class_offsets"):
        if hasattr(index, attr):
            return check_offsets(getattr(index, attr))
    return check_offsets(index)


class PlanProducer:
    """ERM: the main batch only. Subclasses add segments in :meth:`partners`."""

    plan: ClassVar[str] = "erm"

    def __init__(self, offsets, batch_size: int, seed: int = 0, *, counts: ConfusionCounts | None = None,
                 drop_last: bool = True, min_last: int = 1, max_steps: int | None = None,
                 first_epoch: int = 0, first_step: int = 0, draws: Draws | None = None):
        self.offsets = _offsets_of(offsets)
        self.num_classes = self.offsets.shape[0] - 1
        self.num_rows = int(self.offsets[-1])
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size: expected ≥ 1, got {batch_size}")
        if counts is not None and counts.num_classes != self.num_classes:
            raise ValueError(f"counts cover {counts.num_classes} classes, the shard has {self.num_classes}")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps: expected ≥ 1 or None, got {max_steps}")
        if min_last < 1:
            raise ValueError(f"min_last: expected ≥ 1, got {min_last}")
        self.seed, self.drop_last, self.max_steps = int(seed), bool(drop_last), max_steps
        self.min_last = int(min_last)
        if self.num_rows // self.batch_size == 0 and (drop_last or self.num_rows < self.min_last):
            raise ValueError(f"batch_size {self.batch_size} exceeds the shard's {self.num_rows} rows "
                             f"(drop_last, or fewer than {self.min_last} rows, would leave no step)")
        self.first_epoch, self.first_step = int(first_epoch), int(first_step)
        self.counts = counts
        self.draws = draws
        self._perm_epoch, self._perm = None, None

    # ------------------------------------------------------------------------------------------ schedule
    @property
    def steps_per_epoch(self) -> int:
        """One pass over the shard (``max_steps`` caps it: quick runs and benchmarks)."""
        steps, rest = divmod(self.num_rows, self.batch_size)
        if not self.drop_last and rest >= self.min_last:
            steps += 1  # the last, partial batch
        return steps if self.max_steps is None else min(steps, self.max_steps)

    def epoch_of(self, step: int) -> tuple[int, int]:
        """(epoch, index within the epoch) of a global step."""
        rel = int(step) - self.first_step
        if rel < 0:
            raise ValueError(f"step {step} precedes this producer's first step {self.first_step}")
        e, k = divmod(rel, self.steps_per_epoch)
        return self.first_epoch + e, k

    def permutation(self, epoch: int) -> np.ndarray:
        """The epoch's row order (cached for the current epoch)."""
        if self._perm_epoch != epoch:
            rng = np.random.default_rng(step_seed(self.seed, epoch, 0, OFFSET_PERMUTATION))
            self._perm, self._perm_epoch = rng.permutation(self.num_rows).astype(np.int64), epoch
        return self._perm

    def main_rows(self, epoch: int, k: int, rng: np.random.Generator) -> np.ndarray:
        B = self.batch_size
        return self.permutation(epoch)[k * B:(k + 1) * B]

    # ------------------------------------------------------------------------------------------ plans
    def make_plan(self, step: int) -> StepPlan:
        """The global plan of ``step`` (the PlanQueue shards it per rank), with the step's draws."""
        epoch, k = self.epoch_of(step)
        rng = np.random.default_rng(step_seed(self.seed, epoch, step, OFFSET_PARTNERS))
        main = self.main_rows(epoch, k, rng)
        segments = {"main": main, **self.partners(main, rng)}
        aug = step_seed(self.seed, epoch, step, OFFSET_AUGMENT)
        plan = StepPlan.from_segments(epoch, int(step), seed=aug, **segments)
        if self.draws is None:
            return plan
        # a CPU torch generator: the draws are the ones the losses used to make with torch on the host
        gen = torch.Generator().manual_seed(step_seed(self.seed, epoch, step, OFFSET_DRAWS))
        return plan.with_extras(self.draws(plan, gen))

    def partners(self, main: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {}

    # ------------------------------------------------------------------------------------------ state
    def apply(self, payload) -> None:
        """Fold one finished step's ``(y, yhat)`` (gathered across ranks) into the confusion counts."""
        if payload is None or self.counts is None:
            return
        if isinstance(payload, Mapping):
            y, yhat = payload["y"], payload["yhat"]
        else:
            y, yhat = payload
        self.counts.update(y, yhat)

    def state_dict(self) -> dict:
        return {
            "plan": self.plan,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_rows": self.num_rows,
            "num_classes": self.num_classes,
            "counts": None if self.counts is None else self.counts.state_dict(),
        }

    def load_state_dict(self, state: Mapping) -> None:
        for key in ("plan", "seed", "batch_size", "num_rows", "num_classes"):
            if key not in state:
                raise KeyError(f"plan producer state: missing key {key!r} (has {sorted(state)})")
            mine = getattr(self, key)
            if state[key] != mine:
                raise ValueError(f"plan producer state: {key} is {state[key]!r}, this producer has {mine!r}; "
                                 "the restored stream would differ")
        if state.get("counts") is not None:
            if self.counts is None:
                self.counts = ConfusionCounts(self.num_classes)
            self.counts.load_state_dict(state["counts"])


class PairProducer(PlanProducer):
    """Mixup / CutMix / Remix: ``b[k]`` an instance-uniform partner of ``main[k]``."""

    plan = "pair"

    def __init__(self, offsets, batch_size, seed=0, **kw):
        super().__init__(offsets, batch_size, seed, **kw)
        self.policy = InstanceUniform(self.offsets)

    def partners(self, main, rng):
        return {"b": self.policy.pairs(rng, anchors=main)[1]}


class CPMixProducer(PlanProducer):
    """CP-Mix: ``cp_a``/``cp_b`` are B_m confusion pairs (class i uniform, partner j ∝ K[i, ·])."""

    plan = "cpmix"

    def __init__(self, offsets, batch_size, seed=0, *, mix_batch_size: int | None = None,
                 fallback: str = "instance", counts: ConfusionCounts | None = None, **kw):
        offsets = _offsets_of(offsets)
        counts = ConfusionCounts(offsets.shape[0] - 1) if counts is None else counts
        super().__init__(offsets, batch_size, seed, counts=counts, **kw)
        self.mix_batch_size = self.batch_size if mix_batch_size is None else int(mix_batch_size)
        if self.mix_batch_size < 1:
            raise ValueError(f"mix_batch_size: expected ≥ 1, got {mix_batch_size}")
        self.policy = ConfusionPartner(self.offsets, self.counts, fallback=fallback)

    def partners(self, main, rng):
        a, b = self.policy.pairs(rng, self.mix_batch_size)
        return {"cp_a": a, "cp_b": b}

    def state_dict(self) -> dict:
        extra = {"mix_batch_size": self.mix_batch_size, "fallback": self.policy.fallback}
        return {**super().state_dict(), **extra}

    def load_state_dict(self, state: Mapping) -> None:
        for key, mine in (("mix_batch_size", self.mix_batch_size), ("fallback", self.policy.fallback)):
            if key in state and state[key] != mine:
                raise ValueError(f"plan producer state: {key} is {state[key]!r}, this producer has {mine!r}")
        super().load_state_dict(state)
        self.policy.counts = self.counts


class ConCutMixProducer(PlanProducer):
    """ConCutMix: background ``main``, two contrastive ``view1``/``view2`` of it, class-balanced ``fg``."""

    plan = "concutmix"

    def __init__(self, offsets, batch_size, seed=0, **kw):
        super().__init__(offsets, batch_size, seed, **kw)
        self.policy = ClassBalanced(self.offsets)

    def partners(self, main, rng):
        return {"view1": main, "view2": main, "fg": self.policy.balanced_rows(rng, main.shape[0])}


class LFMProducer(PlanProducer):
    """LFM: ``partner[k]`` from the class text-locally close to ``main[k]``'s class."""

    plan = "lfm"

    def __init__(self, offsets, batch_size, seed=0, *, neighbours: TextLocal, **kw):
        super().__init__(offsets, batch_size, seed, **kw)
        self.policy = TextLocalPartner(self.offsets, neighbours)

    def partners(self, main, rng):
        return {"partner": self.policy.pairs(rng, anchors=main)[1]}


class BalancedProducer(PlanProducer):
    """Classifier fine-tuning: every main row class-balanced (class uniform, then a row uniform in it)."""

    plan = "balanced"

    def __init__(self, offsets, batch_size, seed=0, **kw):
        super().__init__(offsets, batch_size, seed, **kw)
        self.policy = ClassBalanced(self.offsets)

    def main_rows(self, epoch, k, rng):
        return self.policy.balanced_rows(rng, self.batch_size)


PRODUCERS: dict[str, type[PlanProducer]] = {
    p.plan: p for p in (PlanProducer, PairProducer, CPMixProducer, ConCutMixProducer, LFMProducer,
                        BalancedProducer)
}


def make_producer(plan: str, index, batch_size: int, seed: int = 0, *, counts: ConfusionCounts | None = None,
                  mix_batch_size: int | None = None, fallback: str = "instance",
                  neighbours: TextLocal | None = None, **kw) -> PlanProducer:
    """The producer of policy ``plan`` over a shard (``index``: ShardIndex, Shard or class offsets).

    ``counts``: confusion state every producer feeds through ``apply`` (None: nothing collected); ``cpmix``
    draws from it (making its own when None) with ``mix_batch_size`` pairs per step (None: the batch size)
    and ``fallback`` ('instance' | 'redraw') for classes without pairs. ``lfm`` needs ``neighbours`` (a
    :class:`~fastlt.sampling.TextLocal`, e.g. ``TextLocal.from_embeddings(features, tau, k=HEAD_K)``).
    Other keywords (``drop_last``, ``max_steps``, ``first_epoch``, ``first_step``) go to the producer.
    """
    if plan not in PRODUCERS:
        hint = did_you_mean(plan, PRODUCERS, n=2)
        raise ValueError(f"unknown plan {plan!r}{hint} (known: {', '.join(PRODUCERS)})")
    offsets = _offsets_of(index)
    if plan == "cpmix":
        kw.update(mix_batch_size=mix_batch_size, fallback=fallback)
    if plan == "lfm":
        if neighbours is None:
            raise ValueError("plan 'lfm' needs the class neighbours: pass neighbours=TextLocal(...)")
        kw["neighbours"] = neighbours
    return PRODUCERS[plan](offsets, batch_size, seed, counts=counts, **kw)
