"""fastlt.producers: segment layout per method, epoch permutations, determinism, DDP alignment, the
PlanQueue feedback loop of CP-Mix and exact continuation from a checkpoint."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from fastlt.pipelines.plan import PlanQueue, step_seed
from fastlt.producers import PRODUCERS, make_producer
from fastlt.sampling import ConfusionCounts, TextLocal, class_of_rows

SIZES = np.array([30, 12, 7, 5, 3, 2, 1, 1, 0, 4])
OFFSETS = np.concatenate([[0], np.cumsum(SIZES)]).astype(np.int64)
N, C = int(OFFSETS[-1]), len(SIZES)
B = 8
FEATURES = np.random.default_rng(0).standard_normal((C, 12))
# LFM's partner table over classes that have rows (class 8 has none), as the method builds it
NEIGHBOURS = TextLocal.from_embeddings(FEATURES, tau=0.05, allowed=SIZES > 0)


def producer(plan, seed=0, **kw):
    if plan == "lfm":
        kw.setdefault("neighbours", NEIGHBOURS)
    return make_producer(plan, OFFSETS, B, seed=seed, **kw)


def same_plan(p, q) -> bool:
    return (p.epoch, p.step, p.seed, p.segments) == (q.epoch, q.step, q.seed, q.segments) and np.array_equal(
        p.rows, q.rows)


LAYOUT = {
    "erm": [("main", B)],
    "pair": [("main", B), ("b", B)],
    "cpmix": [("main", B), ("cp_a", 5), ("cp_b", 5)],
    "concutmix": [("main", B), ("view1", B), ("view2", B), ("fg", B)],
    "lfm": [("main", B), ("partner", B)],
    "balanced": [("main", B)],
}


@pytest.mark.parametrize("plan", list(PRODUCERS))
def test_layout_rows_and_determinism(plan):
    kw = {"mix_batch_size": 5} if plan == "cpmix" else {}
    p, q, other = producer(plan, 3, **kw), producer(plan, 3, **kw), producer(plan, 4, **kw)
    assert p.steps_per_epoch == N // B
    plans = [p.make_plan(s) for s in range(2 * p.steps_per_epoch + 1)]
    for s, plan_s in enumerate(plans):
        assert [(n, b - a) for n, a, b in plan_s.segments] == LAYOUT[plan]
        assert plan_s.step == s and plan_s.epoch == s // p.steps_per_epoch
        assert plan_s.rows.min() >= 0 and plan_s.rows.max() < N
        assert not np.isin(class_of_rows(OFFSETS, plan_s.rows), [8]).any()  # class 8 owns no rows
        assert same_plan(plan_s, q.make_plan(s))  # same seed, same plan, whatever was made before
    assert any(not np.array_equal(a.rows, other.make_plan(a.step).rows) for a in plans)
    assert len({pl.seed for pl in plans}) == len(plans)  # a distinct augmentation seed per step


@pytest.mark.parametrize("plan", ["erm", "pair", "cpmix", "concutmix", "lfm"])
def test_main_batch_is_an_epoch_permutation(plan):
    p = producer(plan, 1)
    spe = p.steps_per_epoch
    epochs = [np.concatenate([p.make_plan(e * spe + k).rows_of("main") for k in range(spe)]) for e in (0, 1)]
    for rows in epochs:
        assert rows.size == spe * B and np.unique(rows).size == rows.size  # drop_last: each row ≤ once
    assert not np.array_equal(epochs[0], epochs[1])
    full = producer(plan, 1, drop_last=False)
    assert full.steps_per_epoch == -(-N // B)
    rows = np.concatenate([full.make_plan(k).rows_of("main") for k in range(full.steps_per_epoch)])
    assert np.array_equal(np.sort(rows), np.arange(N))  # every row exactly once, last batch short


def test_partner_segments_follow_their_policy():
    ccm = producer("concutmix").make_plan(2)
    main = ccm.rows_of("main")
    assert np.array_equal(ccm.rows_of("view1"), main) and np.array_equal(ccm.rows_of("view2"), main)
    for s in range(20):
        lfm = producer("lfm").make_plan(s)
        anchor, partner = (class_of_rows(OFFSETS, lfm.rows_of(n)) for n in ("main", "partner"))
        assert np.all(anchor != partner)
    # class-balanced fine-tuning: classes are near-uniform, unlike the instance-uniform main batch
    bal = producer("balanced")
    classes = np.concatenate([class_of_rows(OFFSETS, bal.make_plan(s).rows) for s in range(400)])
    freq = np.bincount(classes, minlength=C) / classes.size
    assert np.all(np.abs(freq[SIZES > 0] - 1 / 9) < 0.02) and freq[8] == 0


def test_sharded_plans_keep_pairs_on_one_rank():
    plan = producer("pair").make_plan(0)
    ref = dict(zip(plan.rows_of("main").tolist(), plan.rows_of("b").tolist()))
    for world in (2, 3):
        for r in range(world):
            part = plan.shard(r, world)
            for m, b in zip(part.rows_of("main"), part.rows_of("b")):
                assert ref[int(m)] == int(b)


def fake_predictions(plan, C=C):
    """A deterministic 'model': predicts label+1 for some rows (a pure function of the plan)."""
    y = class_of_rows(OFFSETS, plan.rows_of("main"))
    wrong = plan.rows_of("main") % 3 == 0
    return y, np.where(wrong, (y + 1 + plan.step % 2) % C, y)


def run_cpmix(p, steps, lookahead=2):
    """Drive a CP-Mix producer through the real PlanQueue, feeding back each step's pairs."""
    plans = []
    with PlanQueue(p.make_plan, steps, lookahead=lookahead, apply=p.apply) as q:
        for plan in q:
            plans.append(plan)
            q.done(plan.step, fake_predictions(plan))
    return plans


def replay_cpmix(p, steps, lookahead=2):
    """The same stream made sequentially: payload s is applied just before plan s + lookahead + 1."""
    plans, pending = [], {}
    for s in steps:
        if s - lookahead - 1 in pending:
            p.apply(pending.pop(s - lookahead - 1))
        plan = p.make_plan(s)
        plans.append(plan)
        pending[s] = fake_predictions(plan)
    for s in sorted(pending):
        p.apply(pending[s])
    return plans


def test_cpmix_through_plan_queue_equals_sequential_replay_and_uses_counts():
    spe = producer("cpmix").steps_per_epoch
    threaded = producer("cpmix", 5)
    plans = run_cpmix(threaded, range(2 * spe))
    replayed = producer("cpmix", 5)
    ref = replay_cpmix(replayed, range(2 * spe))
    assert all(same_plan(a, b) for a, b in zip(plans, ref))
    assert np.array_equal(threaded.counts.to_dense(), replayed.counts.to_dense())
    K = threaded.counts.to_dense()
    assert K.sum() > 0
    # late plans draw partners from recorded confusions (classes with pairs only ever pair with K's columns)
    late = plans[-1]
    ca, cb = class_of_rows(OFFSETS, late.rows_of("cp_a")), class_of_rows(OFFSETS, late.rows_of("cp_b"))
    for i, j in zip(ca, cb):
        if K[i].sum() > 0:
            assert K[i, j] > 0


def run_epochs(p, epochs):
    """One PlanQueue per epoch, as the trainer runs them (checkpoints are taken between epochs)."""
    spe = p.steps_per_epoch
    return [plan for e in epochs for plan in run_cpmix(p, range(e * spe, (e + 1) * spe))]


def test_checkpoint_continues_the_same_stream():
    uninterrupted = producer("cpmix", 9)
    ref = run_epochs(uninterrupted, range(3))
    first = producer("cpmix", 9)
    run_epochs(first, [0])
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = producer("cpmix", 9)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    spe = resumed.steps_per_epoch
    cont = run_epochs(resumed, [1, 2])
    assert all(same_plan(x, y) for x, y in zip(cont, ref[spe:]))
    assert np.array_equal(resumed.counts.to_dense(), uninterrupted.counts.to_dense())
    # it can fail: without the restored counts the stream differs
    fresh = run_epochs(producer("cpmix", 9), [1, 2])
    assert not all(same_plan(x, y) for x, y in zip(fresh, ref[spe:]))


def test_shared_counts_collect_in_erm_and_feed_cpmix():
    counts = ConfusionCounts(C)
    erm = make_producer("erm", OFFSETS, B, seed=2, counts=counts)
    for s in range(erm.steps_per_epoch):
        erm.apply(fake_predictions(erm.make_plan(s)))
    assert counts.total > 0
    cp = make_producer("cpmix", OFFSETS, B, seed=2, counts=counts, first_epoch=1,
                       first_step=erm.steps_per_epoch)
    plan = cp.make_plan(erm.steps_per_epoch)
    assert plan.epoch == 1 and cp.counts is counts
    with pytest.raises(ValueError, match="precedes this producer's first step"):
        cp.make_plan(0)


def test_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="did you mean cpmix"):
        make_producer("cpmx", OFFSETS, B)
    with pytest.raises(ValueError, match="needs the class neighbours"):
        make_producer("lfm", OFFSETS, B)
    with pytest.raises(ValueError, match=f"exceeds the shard's {N} rows"):
        make_producer("erm", OFFSETS, N + 1)
    with pytest.raises(ValueError, match="counts cover 3 classes"):
        make_producer("cpmix", OFFSETS, B, counts=ConfusionCounts(3))
    state = producer("cpmix", 1).state_dict()
    with pytest.raises(ValueError, match="seed is 1, this producer has 2"):
        producer("cpmix", 2).load_state_dict(state)
    with pytest.raises(KeyError, match="missing key 'num_rows'"):
        producer("cpmix", 1).load_state_dict({k: v for k, v in state.items() if k != "num_rows"})
    tl = TextLocal.from_embeddings(FEATURES[:5], 0.1)
    with pytest.raises(ValueError, match="neighbours cover 5 classes"):
        make_producer("lfm", OFFSETS, B, neighbours=tl)


def test_max_steps_caps_an_epoch_and_keeps_the_epoch_of_each_step():
    """A capped producer (``steps_per_epoch`` recipe key) maps global steps to epochs by the capped length,
    and its plans are the uncapped producer's first steps of each epoch."""
    full, capped = producer("pair", 3), producer("pair", 3, max_steps=2)
    assert full.steps_per_epoch == N // B and capped.steps_per_epoch == 2
    assert [capped.epoch_of(s) for s in range(5)] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]
    for s in range(5):
        e, k = capped.epoch_of(s)
        want = full.make_plan(e * full.steps_per_epoch + k)
        got = capped.make_plan(s)
        assert np.array_equal(got.rows_of("main"), want.rows_of("main"))  # same epoch permutation slice
    with pytest.raises(ValueError, match="max_steps"):
        producer("erm", max_steps=0)


def test_the_last_partial_batch_is_kept_unless_too_short():
    """drop_last false (the recipe default, as the papers' loaders): ceil(N/B) steps, the last one short;
    a remainder under ``min_last`` rows (2 per DDP rank) is dropped instead of giving a rank nothing."""
    b = 6
    rest = N % b
    assert rest >= 2  # a real partial batch

    def steps(**kw):
        return make_producer("erm", OFFSETS, b, **kw).steps_per_epoch

    keep = make_producer("erm", OFFSETS, b, drop_last=False)
    assert keep.steps_per_epoch == -(-N // b)
    assert len(keep.make_plan(keep.steps_per_epoch - 1).rows_of("main")) == rest
    assert steps(drop_last=False, min_last=rest) == -(-N // b)
    assert steps(drop_last=False, min_last=rest + 1) == N // b
    assert steps(drop_last=True) == N // b
    pair = make_producer("pair", OFFSETS, b, drop_last=False)  # partners follow the short main batch
    last = pair.make_plan(pair.steps_per_epoch - 1)
    assert len(last.rows_of("b")) == len(last.rows_of("main")) == rest


# ---------------------------------------------------------------------------------------- the step's draws
@pytest.mark.parametrize("method, stage, keys", [
    ("mixup", "train", ["main:lam"]),
    ("cutmix", "train", ["main:box", "main:lam"]),
    ("cpmix", "cpmix", ["cp_a:lam", "main:lam", "main:perm"]),
    ("concutmix", "train", ["cutmix", "main:box", "main:lam"]),
])
def test_a_methods_draws_come_with_its_plans(method, stage, keys):
    """The producer attaches ``Method.draw`` of each global plan, from a generator seeded by the step only."""
    from fastlt.methods.base import get_method
    from fastlt.producers import OFFSET_DRAWS
    from fastlt.recipes import apply_overrides, preset
    from helpers import train_index

    r = apply_overrides(preset("digits-lt", method), [("batch_size", str(B)), ("ccm_cutmix_prob", "1")]
                        if method == "concutmix" else [("batch_size", str(B))])
    m = get_method(method)(r, train_index(SIZES.tolist()))
    st = next(s for s in m.stages() if s.name == stage)
    p, q = m.producer(st, first_epoch=0, first_step=0), m.producer(st, first_epoch=0, first_step=0)
    plans = [p.make_plan(s) for s in range(3)]
    for s, plan in enumerate(plans):
        assert sorted(plan.extras) == keys
        again = m.draw(st, plan, torch.Generator().manual_seed(step_seed(r.seed, 0, s, OFFSET_DRAWS)))
        for k in keys:
            np.testing.assert_array_equal(plan.extras[k], again[k])
            np.testing.assert_array_equal(plan.extras[k], q.make_plan(s).extras[k])  # a fresh producer: same
    lams = [plan.extras["main:lam"][0] for plan in plans]
    assert len(set(lams)) == 3  # every step draws afresh
