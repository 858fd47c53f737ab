"""StepPlan, Batch and the bounded plan queue: the types that cross the sampler → pipeline → trainer arrows.

A **StepPlan** names the shard rows one training step needs, repeats allowed (two views of one image, the same
tail image drawn twice). Its rows are laid out as named contiguous *segments*:

    rows = [ main (B) | a (B_m) | b (B_m) | ... ]

Segments of equal length that a method pairs element-wise (``a[k]`` with ``b[k]``, a background with its
contrastive views) are *aligned*: splitting a plan across DDP ranks cuts every segment at the same relative
boundaries, so element k of aligned segments always lands on the same rank: partner rows follow their
anchors.

A plan also carries the step's own randomness, drawn with the plan on the producer thread (λ, CutMix boxes,
same-batch permutations, coins): its **extras**. A key ``"segment:name"`` holds one value per row of that
segment (its first axis is the segment's length) and is cut with the segment when the plan is sharded, so a
row keeps its λ on any number of ranks; the name ``perm`` is reserved for a permutation of the segment's own
positions, which sharding restricts to the rank's part (see :func:`induced_permutation`). A key without a
colon is one value for the whole step (e.g. ConCutMix's coin), the same on every rank.

A **Batch** is what a pipeline returns for a plan: ``rows int64[R]``, ``images uint8[R, H, W, 3]`` (NHWC,
the layout every decoder produces and ``kernels.mix`` reads), ``labels int64[R]`` and the plan's extras as
tensors, all on the training device, plus the plan itself so the trainer can slice segments by name and read
the extras' host copies (``plan.extras``) for decisions the host must make.

The **PlanQueue** produces plans on a background thread ahead of the loader, but never more than ``lookahead``
steps ahead of what the trainer has finished. The trainer reports each finished step with a payload (CP-Mix:
the step's mispredicted ``(y, ŷ)`` pairs); the producer thread applies payload ``s − lookahead − 1`` right
before it makes plan ``s``. Because the producer is the only thread that mutates the sampler state, plan ``s``
sees *exactly* the updates of steps ``≤ s − lookahead − 1`` whatever the timing: the plan stream is a pure
function of (seed, step, earlier payloads), and a run resumed from an epoch-boundary checkpoint replays it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np
import torch

# A rank's plan seed is ``seed · RANK_SEED_STRIDE + rank``. Any stride above the largest world size makes that
# one-to-one in (seed, rank), so no two ranks of any step share an augmentation stream (the seed reaches
# SeedSequence whole, never truncated). 1_000_003, the first prime above a million, leaves room for any
# world size; being prime is customary, not needed.
RANK_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class StepPlan:
    """Rows of the shard to load for one step, as named contiguous segments."""

    epoch: int
    step: int
    rows: np.ndarray  # int64[R]
    segments: tuple[tuple[str, int, int], ...]  # (name, start, stop), contiguous, in order, covering rows
    seed: int = 0  # augmentation seed of this step (pipelines derive per-row randomness from it)
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)  # the step's draws (module docstring)
    # Set by shard(): the global plan this rank's part was cut from and where its rows sit in it. Pipelines
    # draw per-row randomness over the global plan (its seed, its rows) and pick this part's rows by
    # position, so a row gets the same crop and augmentation on any number of ranks.
    origin: StepPlan | None = None
    positions: np.ndarray | None = None  # int64[R]

    def __post_init__(self):
        rows = np.ascontiguousarray(self.rows, dtype=np.int64)
        object.__setattr__(self, "rows", rows)
        if self.positions is not None:
            positions = np.ascontiguousarray(self.positions, dtype=np.int64)
            if positions.shape != rows.shape:
                raise ValueError(f"{len(positions)} positions for {len(rows)} rows")
            object.__setattr__(self, "positions", positions)
        pos = 0
        for name, start, stop in self.segments:
            if start != pos or stop < start:
                raise ValueError(f"segment {name!r} [{start}, {stop}) is not contiguous after position {pos}")
            pos = stop
        if pos != len(rows):
            raise ValueError(f"segments cover {pos} rows, plan has {len(rows)}")
        for key, value in self.extras.items():
            seg = key.rpartition(":")[0]
            if seg:
                where = self.segment(seg)
                n = where.stop - where.start
                if len(value) != n:
                    raise ValueError(f"extra {key!r} has {len(value)} values for segment {seg!r} of {n} rows")

    @classmethod
    def from_segments(cls, epoch: int, step: int, seed: int = 0, **named: np.ndarray) -> StepPlan:
        """``StepPlan.from_segments(e, s, main=rows0, a=rows1, b=rows2)`` — keyword order is layout order."""
        parts, segs, pos = [], [], 0
        for name, r in named.items():
            r = np.asarray(r, dtype=np.int64).ravel()
            parts.append(r)
            segs.append((name, pos, pos + len(r)))
            pos += len(r)
        rows = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return cls(epoch, step, rows, tuple(segs), seed)

    def with_extras(self, extras: Mapping[str, np.ndarray]) -> StepPlan:
        """This plan with the step's draws attached (see the module docstring for the key convention)."""
        return replace(self, extras=MappingProxyType({k: np.asarray(v) for k, v in extras.items()}))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s[0] for s in self.segments)

    def segment(self, name: str) -> slice:
        for n, start, stop in self.segments:
            if n == name:
                return slice(start, stop)
        raise KeyError(f"plan has no segment {name!r}; segments are {list(self.names)}")

    def rows_of(self, name: str) -> np.ndarray:
        return self.rows[self.segment(name)]

    @property
    def whole(self) -> StepPlan:
        """The global plan (this plan itself unless it is a rank's part of one)."""
        return self if self.origin is None else self.origin

    @property
    def global_positions(self) -> np.ndarray:
        """int64[R]: the position of each row in :attr:`whole`'s rows."""
        return np.arange(len(self.rows), dtype=np.int64) if self.positions is None else self.positions

    def shard(self, rank: int, world_size: int) -> StepPlan:
        """This rank's part: each segment cut into ``world_size`` near-equal contiguous pieces.

        Aligned segments (equal length) are cut at identical boundaries, so pairs stay on one rank.
        The union over ranks of each segment is the whole segment, and the pieces are disjoint.
        """
        if world_size == 1:
            return self
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        parts, positions, cuts = {}, [], {}
        for name, start, stop in self.segments:
            n = stop - start
            lo = (n * rank) // world_size
            hi = (n * (rank + 1)) // world_size
            parts[name] = self.rows[start + lo : start + hi]
            positions.append(self.global_positions[start + lo : start + hi])
            cuts[name] = (lo, hi)
        extras = {}
        for key, value in self.extras.items():
            seg, _, name = key.rpartition(":")
            if not seg:
                extras[key] = value  # one value for the whole step: every rank has it
            elif name == PERMUTATION:
                extras[key] = induced_permutation(value, *cuts[seg])
            else:
                extras[key] = value[cuts[seg][0] : cuts[seg][1]]
        out = StepPlan.from_segments(self.epoch, self.step, self.seed * RANK_SEED_STRIDE + rank, **parts)
        return replace(out, extras=MappingProxyType(extras), origin=self.whole,
                       positions=np.concatenate(positions))


PERMUTATION = "perm"  # extras name of a permutation of its segment's positions ("main:perm")


def induced_permutation(perm: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """The permutation that ``perm`` (of 0..n−1) induces on positions [lo, hi), as indices 0..hi−lo−1.

    Each k in the window follows ``perm`` until it lands in the window again (the first-return map: walk k →
    perm[k] → perm[perm[k]] …). On the whole range it is ``perm`` itself, so one process keeps the drawn
    permutation exactly; on a part it is a permutation of that part, and a uniform one when ``perm`` is
    uniform: deleting one element from its cycle maps the n! permutations of n onto those of n − 1, n to one.
    Walks from different k cover disjoint stretches of the cycles, so the cost is O(n) in all.
    """
    perm = np.asarray(perm, dtype=np.int64)
    out = np.empty(hi - lo, dtype=np.int64)
    for k in range(lo, hi):
        j = int(perm[k])
        while not lo <= j < hi:
            j = int(perm[j])
        out[k - lo] = j - lo
    return out


@dataclass
class Batch:
    """A loaded plan, on the training device."""

    plan: StepPlan
    rows: torch.Tensor  # int64[R]
    images: torch.Tensor  # uint8[R, H, W, 3]
    labels: torch.Tensor  # int64[R]
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)  # plan.extras on the device

    def segment(self, name: str) -> slice:
        return self.plan.segment(name)

    def extra(self, key: str) -> torch.Tensor:
        """The device copy of the step's draw ``key`` (e.g. ``"main:lam"``)."""
        if key not in self.extras:
            raise KeyError(f"step {self.plan.step} has no draw {key!r}; it has {sorted(self.extras)}")
        return self.extras[key]

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def eval_plans(num_rows: int, batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[StepPlan]:
    """Every row exactly once, in order, last batch kept (possibly short). Under DDP each batch is split
    across ranks with :meth:`StepPlan.shard`, so the union over ranks is still every row once."""
    for step, start in enumerate(range(0, num_rows, batch_size)):
        rows = np.arange(start, min(start + batch_size, num_rows), dtype=np.int64)
        yield StepPlan.from_segments(0, step, main=rows).shard(rank, world_size)


def step_seed(seed: int, epoch: int, step: int, offset: int = 0) -> int:
    """Randomness depends only on (seed, epoch, step, offset): a 63-bit value from SeedSequence."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(step), int(offset)])
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


class PlanQueue:
    """Bounded, deterministic producer of StepPlans (see the module docstring).

    ``make_plan(step) -> StepPlan`` builds the *global* plan of a step; ``apply(payload)`` feeds one finished
    step's payload into the sampler state. The queue shards plans to ``(rank, world_size)``.

        queue = PlanQueue(make_plan, steps=range(s0, s1), lookahead=2, apply=counts.update_pairs)
        for plan in queue:                # the pipeline iterates this
            ...                           # the trainer, after step `plan.step`:
            queue.done(plan.step, pairs)
        queue.close()                     # applies the payloads still pending
    """

    def __init__(
        self,
        make_plan: Callable[[int], StepPlan],
        steps: Iterable[int],
        lookahead: int = 2,
        apply: Callable[[object], None] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        if lookahead < 0:
            raise ValueError(f"lookahead must be >= 0, got {lookahead}")
        self.make_plan = make_plan
        self.steps = list(steps)
        self.lookahead = int(lookahead)
        self.apply = apply
        self.rank, self.world_size = rank, world_size
        self._cv = threading.Condition()
        self._payloads: dict[int, object] = {}
        self._applied_through = self.steps[0] - 1 if self.steps else -1  # payloads applied for steps ≤ this
        self._ready: list[StepPlan] = []
        self._closed = False
        self._error: BaseException | None = None
        self._finished_through = self._applied_through
        self._thread = threading.Thread(target=self._run, name="fastlt-plans", daemon=True)
        self._thread.start()

    # -------------------------------------------------------------------------------- producer side
    def _apply_through(self, target: int) -> None:
        """Apply payloads of steps (applied_through, target] in order. Called with the lock held."""
        while self._applied_through < target:
            s = self._applied_through + 1
            payload = self._payloads.pop(s, None)
            if payload is not None and self.apply is not None:
                self.apply(payload)
            self._applied_through = s

    def _run(self) -> None:
        try:
            for s in self.steps:
                with self._cv:
                    need = s - self.lookahead - 1  # plan s sees exactly the steps ≤ need
                    while not self._closed and self._finished_through < need:
                        self._cv.wait()
                    if self._closed:
                        return
                    self._apply_through(need)
                plan = self.make_plan(s).shard(self.rank, self.world_size)
                with self._cv:
                    self._ready.append(plan)
                    self._cv.notify_all()
        except BaseException as e:  # surfaced to the consumer
            with self._cv:
                self._error = e
                self._cv.notify_all()

    # -------------------------------------------------------------------------------- consumer side
    def __iter__(self) -> Iterator[StepPlan]:
        for _ in range(len(self.steps)):
            with self._cv:
                while not self._ready and self._error is None and not self._closed:
                    self._cv.wait()
                if self._error is not None:
                    raise RuntimeError("plan producer failed") from self._error
                if self._closed:
                    return
                plan = self._ready.pop(0)
            yield plan

    def __len__(self) -> int:
        return len(self.steps)

    def done(self, step: int, payload: object = None) -> None:
        """Step ``step`` finished (in order); ``payload`` is applied before plan ``step+lookahead+1``."""
        with self._cv:
            if step != self._finished_through + 1:
                raise ValueError(
                    f"steps must finish in order: got {step}, expected {self._finished_through + 1}"
                )
            if payload is not None:
                self._payloads[step] = payload
            self._finished_through = step
            self._cv.notify_all()

    def close(self) -> None:
        """Stop producing; apply pending payloads so the sampler state covers every finished step."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join()
        with self._cv:
            self._apply_through(self._finished_through)

    def __enter__(self) -> PlanQueue:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
