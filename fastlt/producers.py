"""Plan producers: one per mixing method, each a function ``make_plan(step) -> StepPlan`` of a global step.

Every producer shares one engine and varies only the policy. The engine is the main batch: rows of a seeded
per-epoch permutation of the shard, ``batch_size`` at a time (``drop_last`` for training). The policy adds
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
an instance-uniform epoch (``num_rows // B``), so a fine-tuning "epoch" sees as many images as a training one.

Determinism: all randomness of step ``s`` (epoch ``e``) comes from ``step_seed(seed, e, ·, offset)`` —
offset 1 the epoch permutation, 2 the partner draws, 3 the plan's augmentation seed — so a plan is a pure
function of (seed, step, sampler state). The only state is CP-Mix's confusion counts, fed through
:meth:`PlanProducer.apply` (the ``apply`` of :class:`~fastlt.pipelines.plan.PlanQueue`); every producer
accepts payloads, so an ``erm`` stage can collect the pairs a later ``cpmix`` stage draws from (pass both the
same :class:`~fastlt.sampling.ConfusionCounts`). ``state_dict()`` holds the counts and the settings the stream
depends on; a producer restored from it continues the same stream.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from fastlt.pipelines.plan import StepPlan, step_seed
from fastlt.sampling import (
    HEAD_K,
    ClassBalanced,
    ConfusionCounts,
    ConfusionPartner,
    InstanceUniform,
    TextLocal,
    TextLocalPartner,
    check_offsets,
)

OFFSET_PERMUTATION, OFFSET_PARTNERS, OFFSET_AUGMENT = 1, 2, 3


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
                 drop_last: bool = True, first_epoch: int = 0, first_step: int = 0):
        self.offsets = _offsets_of(offsets)
        self.num_classes = self.offsets.shape[0] - 1
        self.num_rows = int(self.offsets[-1])
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size: expected ≥ 1, got {batch_size}")
        if drop_last and self.batch_size > self.num_rows:
            raise ValueError(f"batch_size {self.batch_size} exceeds the shard's {self.num_rows} rows "
                             "(drop_last would leave no step)")
        if counts is not None and counts.num_classes != self.num_classes:
            raise ValueError(f"counts cover {counts.num_classes} classes, the shard has {self.num_classes}")
        self.seed, self.drop_last = int(seed), bool(drop_last)
        self.first_epoch, self.first_step = int(first_epoch), int(first_step)
        self.counts = counts
        self._perm_epoch, self._perm = None, None

    # ------------------------------------------------------------------------------------------ schedule
    @property
    def steps_per_epoch(self) -> int:
        if self.drop_last:
            return self.num_rows // self.batch_size
        return -(-self.num_rows // self.batch_size)

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

    def main_rows(self, epoch: int, k: int) -> np.ndarray:
        B = self.batch_size
        return self.permutation(epoch)[k * B:(k + 1) * B]

    # ------------------------------------------------------------------------------------------ plans
    def make_plan(self, step: int) -> StepPlan:
        """The global plan of ``step`` (the PlanQueue shards it per rank)."""
        epoch, k = self.epoch_of(step)
        rng = np.random.default_rng(step_seed(self.seed, epoch, step, OFFSET_PARTNERS))
        main = self.main_rows(epoch, k)
        segments = {"main": main, **self.partners(main, rng)}
        aug = step_seed(self.seed, epoch, step, OFFSET_AUGMENT)
        return StepPlan.from_segments(epoch, int(step), seed=aug, **segments)

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


ErmProducer = PlanProducer


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

    def make_plan(self, step: int) -> StepPlan:
        epoch, _ = self.epoch_of(step)
        rng = np.random.default_rng(step_seed(self.seed, epoch, step, OFFSET_PARTNERS))
        main = self.policy.balanced_rows(rng, self.batch_size)
        aug = step_seed(self.seed, epoch, step, OFFSET_AUGMENT)
        return StepPlan.from_segments(epoch, int(step), seed=aug, main=main)


PRODUCERS: dict[str, type[PlanProducer]] = {
    p.plan: p for p in (PlanProducer, PairProducer, CPMixProducer, ConCutMixProducer, LFMProducer,
                        BalancedProducer)
}


def make_producer(plan: str, index, batch_size: int, seed: int = 0, counts: ConfusionCounts | None = None,
                  recipe=None, *, neighbours: TextLocal | None = None, text_features=None,
                  **kw) -> PlanProducer:
    """The producer of policy ``plan`` over a shard (``index``: ShardIndex, Shard or class offsets).

    ``counts`` is shared confusion state (every producer feeds it through ``apply``; ``cpmix`` draws from it,
    making its own when None). Recipe fields read when present: ``cpmix_batch_size`` (B_m; 0/None: B),
    ``cpmix_fallback`` ('instance' | 'redraw'), ``lfm_tau`` (0.05), ``lfm_k`` (head size of the exact
    text-local table, default HEAD_K = 256). LFM needs ``neighbours`` (a TextLocal) or ``text_features``
    (float[C, d]).
    Other keywords (``drop_last``, ``first_epoch``, ``first_step``) go to the producer.
    """
    if plan not in PRODUCERS:
        near = difflib.get_close_matches(str(plan), PRODUCERS, n=2)
        hint = f"; did you mean {' or '.join(near)}?" if near else ""
        raise ValueError(f"unknown plan {plan!r}{hint} (known: {', '.join(PRODUCERS)})")
    offsets = _offsets_of(index)
    r = recipe
    if plan == "cpmix":
        kw.setdefault("mix_batch_size", getattr(r, "cpmix_batch_size", None) or None)
        kw.setdefault("fallback", getattr(r, "cpmix_fallback", None) or "instance")
    if plan == "lfm":
        if neighbours is None:
            if text_features is None:
                raise ValueError("plan 'lfm' needs the class similarities: pass neighbours=TextLocal(...) or "
                                 "text_features=float[C, d] class text embeddings")
            tau, k = getattr(r, "lfm_tau", 0.05), getattr(r, "lfm_k", None) or HEAD_K
            neighbours = _text_local(text_features, tau, k, np.diff(offsets) > 0)
        kw["neighbours"] = neighbours
    return PRODUCERS[plan](offsets, batch_size, seed, counts=counts, **kw)


_TEXT_CACHE: dict[tuple, TextLocal] = {}


def _text_local(features, tau, k, allowed) -> TextLocal:
    """Exact TextLocal (head of k + rejection tail) of the class features, cached: the trainer makes a
    producer per epoch, and C similarity rows are worth scanning once."""
    f = np.ascontiguousarray(_numpy(features), dtype=np.float64)
    key = (hashlib.sha1(f.tobytes()).hexdigest(), f.shape, float(tau), int(k),
           hashlib.sha1(np.packbits(allowed).tobytes()).hexdigest())
    if key not in _TEXT_CACHE:
        _TEXT_CACHE.clear()  # one run, one text table
        _TEXT_CACHE[key] = TextLocal.from_embeddings(f, tau=tau, k=k, allowed=allowed)
    return _TEXT_CACHE[key]


def _numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor, possibly on the GPU
        return a.detach().float().cpu().numpy()
    return np.asarray(a)
