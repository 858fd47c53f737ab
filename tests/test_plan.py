"""StepPlan layout, DDP sharding and the PlanQueue's lookahead bound and determinism."""

from __future__ import annotations

import itertools
import threading
from collections import Counter

import numpy as np
import pytest

from fastlt.pipelines.plan import PlanQueue, StepPlan, eval_plans, induced_permutation, step_seed
from helpers.plans import PlanRecorder


def test_segments_layout_and_lookup():
    p = StepPlan.from_segments(1, 7, seed=3, main=[5, 6, 7, 8], a=[1, 2], b=[9, 9])
    assert p.rows.dtype == np.int64
    assert p.rows.tolist() == [5, 6, 7, 8, 1, 2, 9, 9]
    assert p.names == ("main", "a", "b")
    assert p.rows_of("b").tolist() == [9, 9]
    with pytest.raises(KeyError, match="segments are"):
        p.segment("fg")


def test_segments_must_be_contiguous():
    with pytest.raises(ValueError, match="not contiguous"):
        StepPlan(0, 0, np.arange(4), (("main", 0, 2), ("a", 3, 4)))
    with pytest.raises(ValueError, match="cover 2 rows"):
        StepPlan(0, 0, np.arange(4), (("main", 0, 2),))


@pytest.mark.parametrize("world", [2, 3, 4])
def test_shard_disjoint_union_and_pairs_stay_together(world):
    rng = np.random.default_rng(0)
    B, Bm = 37, 11
    main = rng.permutation(1000)[:B]
    a = rng.integers(0, 1000, Bm)
    b = a + 100_000  # partner k of anchor k is recognisable
    plan = StepPlan.from_segments(0, 5, seed=9, main=main, a=a, b=b)
    parts = [plan.shard(r, world) for r in range(world)]
    # main slices are disjoint and their union (in rank order) is the batch
    assert np.concatenate([p.rows_of("main") for p in parts]).tolist() == main.tolist()
    # partner rows follow their anchors: element k of a and b land on the same rank
    for p in parts:
        np.testing.assert_array_equal(p.rows_of("b"), p.rows_of("a") + 100_000)
    assert sum(len(p.rows_of("a")) for p in parts) == Bm
    # ranks draw different augmentation randomness
    assert len({p.seed for p in parts}) == world
    # each part knows the global plan and where its rows sit in it (per-row randomness is drawn over it)
    for p in parts:
        assert p.whole is plan and np.array_equal(plan.rows[p.global_positions], p.rows)
    assert sorted(np.concatenate([p.global_positions for p in parts]).tolist()) == list(range(len(plan.rows)))
    assert plan.whole is plan and np.array_equal(plan.global_positions, np.arange(len(plan.rows)))


def test_eval_plans_cover_every_row_once_in_order_with_short_last_batch():
    plans = list(eval_plans(103, 25))
    assert [len(p.rows) for p in plans] == [25, 25, 25, 25, 3]
    assert np.concatenate([p.rows for p in plans]).tolist() == list(range(103))
    ranks = [list(eval_plans(103, 25, rank=r, world_size=2)) for r in range(2)]
    rows = np.sort(np.concatenate([p.rows for plans in ranks for p in plans]))
    assert rows.tolist() == list(range(103))


def test_step_seed_depends_only_on_its_arguments():
    assert step_seed(1, 2, 3) == step_seed(1, 2, 3)
    seen = {step_seed(1, e, s, o) for e in range(3) for s in range(50) for o in range(2)}
    assert len(seen) == 300


@pytest.mark.parametrize("lookahead", [0, 1, 3])
def test_lookahead_bound_and_deterministic_state(lookahead):
    rec = PlanRecorder()
    steps = range(10, 30)
    queue = PlanQueue(rec.make_plan, steps, lookahead=lookahead, apply=rec.apply)
    for plan in queue:
        queue.done(plan.step, plan.step)
    queue.close()
    # plan s was made after exactly the payloads of steps <= s - lookahead - 1 were applied: never before
    # those steps finished (their payloads did not exist yet), and without any later step's update
    for s in steps:
        assert rec.made[s] == tuple(range(10, max(10, s - lookahead))), s
    # close() applied every pending payload, in order
    assert rec.applied == list(steps)


def test_done_out_of_order_is_an_error_and_producer_errors_surface():
    rec = PlanRecorder()
    q = PlanQueue(rec.make_plan, range(3), lookahead=1, apply=rec.apply)
    with pytest.raises(ValueError, match="in order"):
        q.done(1)
    q.close()

    def boom(step):
        raise RuntimeError("sampler exploded")

    q = PlanQueue(boom, range(3), lookahead=1)
    with pytest.raises(RuntimeError, match="plan producer failed"):
        list(q)
    q.close()


def test_producer_blocks_until_trainer_catches_up():
    rec = PlanRecorder()
    q = PlanQueue(rec.make_plan, range(10), lookahead=2, apply=rec.apply)
    first = next(iter(q))
    rec.wait_made(2)
    # plans 0..2 need no finished step; plan 3 needs step 0, which is not finished yet
    assert rec.made_steps() == [0, 1, 2]
    q.done(first.step, first.step)
    rec.wait_made(3)
    assert rec.made[3] == (0,)  # made only once step 0 had finished
    assert rec.made_steps() == [0, 1, 2, 3]  # plan 4 waits for step 1
    closer = threading.Thread(target=q.close)
    closer.start()
    closer.join(30)
    assert not closer.is_alive(), "close() must not wait for steps that will never finish"
    assert rec.applied == [0]


# ---------------------------------------------------------------------------------------- the step's draws
def _plan_with_draws(B=7, Bm=4):
    g = np.random.default_rng(0)
    plan = StepPlan.from_segments(0, 5, seed=9, main=np.arange(B), cp_a=np.arange(Bm) + 50,
                                  cp_b=np.arange(Bm) + 90)
    return plan.with_extras({
        "main:lam": g.random(B).astype(np.float32),
        "main:box": g.integers(0, 9, (B, 4)).astype(np.int32),
        "main:perm": g.permutation(B),
        "cp_a:lam": g.random(Bm).astype(np.float32),
        "cutmix": np.array([True]),
    })


@pytest.mark.parametrize("world", [2, 3])
def test_shard_cuts_row_draws_with_their_segment_and_keeps_step_draws(world):
    plan = _plan_with_draws()
    parts = [plan.shard(r, world) for r in range(world)]
    for key in ("main:lam", "main:box", "cp_a:lam"):
        np.testing.assert_array_equal(np.concatenate([p.extras[key] for p in parts]), plan.extras[key])
    for p in parts:
        seg = p.segment("main")
        assert len(p.extras["main:lam"]) == seg.stop - seg.start  # each row keeps its own λ
        np.testing.assert_array_equal(p.extras["main:lam"], plan.extras["main:lam"][p.positions[seg]])
        assert p.extras["cutmix"] is plan.extras["cutmix"]
        assert sorted(p.extras["main:perm"]) == list(range(seg.stop - seg.start))  # a local permutation
    assert plan.shard(0, 1).extras["main:perm"] is plan.extras["main:perm"]  # one process: as drawn


def test_extras_must_match_their_segment():
    plan = StepPlan.from_segments(0, 0, main=np.arange(4))
    with pytest.raises(ValueError, match="'main:lam' has 3 values for segment 'main' of 4 rows"):
        plan.with_extras({"main:lam": np.zeros(3)})
    with pytest.raises(KeyError, match="no segment 'fg'"):
        plan.with_extras({"fg:lam": np.zeros(4)})


def test_induced_permutation_is_the_first_return_map_and_uniform():
    # worked example: 0→3→1→4→2→0 on window [1, 3): 1→4→2 gives 1→2, 2→0→3→1 gives 2→1
    assert induced_permutation(np.array([3, 4, 0, 1, 2]), 1, 3).tolist() == [1, 0]
    # every permutation of 5 induces each of the 3! permutations of a 3-window equally often (5!/3! = 20)
    counts = Counter(tuple(induced_permutation(np.array(p), 1, 4)) for p in itertools.permutations(range(5)))
    assert sorted(counts) == sorted(itertools.permutations(range(3))) and set(counts.values()) == {20}
    p = np.random.default_rng(1).permutation(9)
    np.testing.assert_array_equal(induced_permutation(p, 0, 9), p)  # the whole range: itself
