"""fastlt.sampling: sparse confusion counts (exact against dense references) and every partner policy's
distribution (G-tests with fixed seeds, plus exact support checks; each test also shows it rejects the
nearest wrong distribution, so it can fail)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from scipy.stats import power_divergence

from fastlt.sampling import (
    ClassBalanced,
    ConfusionCounts,
    ConfusionPartner,
    InstanceUniform,
    TextLocal,
    TextLocalPartner,
    check_offsets,
    class_of_rows,
    truncation_k,
)

# class sizes with a tail, one empty class (3) that no policy may ever draw
SIZES = np.array([6, 4, 3, 0, 2, 1, 5, 1])
OFFSETS = np.concatenate([[0], np.cumsum(SIZES)]).astype(np.int64)
N, C = int(OFFSETS[-1]), len(SIZES)
ROW_CLASS = np.repeat(np.arange(C), SIZES)


def g_test(rows_or_cells: np.ndarray, expected_p: np.ndarray) -> float:
    """p-value of a G-test of observed category indices against probabilities ``expected_p``; categories of
    probability 0 must never be observed (exact)."""
    obs = np.bincount(rows_or_cells, minlength=expected_p.size).astype(float)
    assert obs.size == expected_p.size, "a category outside the expected support was drawn"
    zero = expected_p == 0
    assert obs[zero].sum() == 0, f"drew impossible categories {np.flatnonzero(zero & (obs > 0))[:5]}"
    p = expected_p[~zero] / expected_p[~zero].sum()
    n = obs.sum()
    return float(power_divergence(obs[~zero], p * n, lambda_="log-likelihood").pvalue)


def random_stream(rng, C, n, hot_rows=None):
    """(y, ŷ) with ~half the predictions correct and confusions concentrated near y (like a real model)."""
    if hot_rows is None:
        y = rng.integers(0, C, n)
        wrong = (y + rng.geometric(0.05, n)) % C
    else:  # a few rows confused with almost every class: big rows, several tree levels
        y = rng.choice(hot_rows, n)
        wrong = rng.integers(0, C, n)
    yhat = np.where(rng.random(n) < 0.5, y, wrong)
    return y.astype(np.int64), yhat.astype(np.int64)


def dense_reference(stream, C):
    K = np.zeros((C, C), np.int64)
    for y, yhat in stream:
        m = y != yhat
        np.add.at(K, (y[m], yhat[m]), 1)
    return K


def roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ============================================================================================ counts
@pytest.fixture(scope="module")
def big_stream():
    """C=700 with a few hot rows: rows grow to 1024 slots, i.e. two tree levels above the slots."""
    rng = np.random.default_rng(0)
    hot = np.array([3, 250, 699])
    return [random_stream(rng, 700, 512, hot if s % 2 else None) for s in range(60)]


def test_updates_equal_dense_add_at(big_stream):
    counts = ConfusionCounts(700, capacity=1)  # start tiny: every growth and compaction path runs
    for y, yhat in big_stream:
        counts.update(y, yhat)
    K = dense_reference(big_stream, 700)
    assert np.array_equal(counts.to_dense(), K)
    assert counts.nnz == np.count_nonzero(K) and counts.total == K.sum()
    assert np.array_equal(counts.row_totals, K.sum(1))
    assert counts.row_cap.max() >= 1024  # the hot rows exercised multi-level trees
    cols, cnt = counts.row(250)
    assert np.array_equal(cols, np.flatnonzero(K[250])) and np.array_equal(cnt, K[250][cols])


def test_weighted_add_and_ignored_diagonal():
    counts = ConfusionCounts(5)
    counts.add([0, 0, 1, 2, 2], [1, 1, 1, 4, 0], [3, 2, 7, 0, 1])
    K = np.zeros((5, 5), np.int64)
    K[0, 1], K[2, 0] = 5, 1  # (1,1) is a correct prediction, w=0 adds nothing
    assert np.array_equal(counts.to_dense(), K)
    assert counts.nnz == 2


def test_checkpoint_roundtrip_is_exact_and_continues_the_same_draws(big_stream):
    a = ConfusionCounts(700)
    for y, yhat in big_stream[:30]:
        a.update(y, yhat)
    state = roundtrip(a.state_dict())
    assert all(isinstance(v, (int, torch.Tensor)) for v in state.values())
    b = ConfusionCounts(700)
    b.load_state_dict(state)
    assert np.array_equal(a.to_dense(), b.to_dense())
    offsets = np.arange(701, dtype=np.int64) * 2
    pa, pb = ConfusionPartner(offsets, a), ConfusionPartner(offsets, b)
    for s, (y, yhat) in enumerate(big_stream[30:]):  # keep updating both: identical layout, identical draws
        a.update(y, yhat)
        b.update(y, yhat)
        ra, rb = pa.pairs(np.random.default_rng(s), 256), pb.pairs(np.random.default_rng(s), 256)
        assert np.array_equal(ra[0], rb[0]) and np.array_equal(ra[1], rb[1])
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in ("row_cap", "keys", "counts"))


def test_bad_updates_are_refused_before_anything_is_added():
    counts = ConfusionCounts(4)
    counts.update([0, 1], [1, 2])
    before = counts.to_dense()
    with pytest.raises(ValueError, match=r"pair 2: \(y=1, yhat=4.*\[0, 4\)"):
        counts.update([0, 1, 1], [1, 2, 4])
    with pytest.raises(ValueError, match="pair 0: .*w=-1"):
        counts.add([0], [1], [-1])
    with pytest.raises(ValueError, match="lengths 2, 1"):
        counts.update([0, 1], [1])
    assert np.array_equal(counts.to_dense(), before)
    with pytest.raises(OverflowError, match="row 0"):
        counts.add([0], [1], [2**31])
    assert np.array_equal(counts.to_dense(), before)


def test_bad_state_is_refused_with_the_key():
    good = ConfusionCounts(4)
    good.update([0, 1], [1, 2])
    state = good.state_dict()
    with pytest.raises(KeyError, match=r"missing keys \['counts'\]"):
        ConfusionCounts(4).load_state_dict({k: v for k, v in state.items() if k != "counts"})
    with pytest.raises(ValueError, match="num_classes 4, expected 5"):
        ConfusionCounts(5).load_state_dict(state)
    bad = dict(state, keys=state["keys"][:-1])
    with pytest.raises(ValueError, match="do not match"):
        ConfusionCounts(4).load_state_dict(bad)
    bad = dict(state, keys=state["keys"].clone().fill_(9))
    with pytest.raises(ValueError, match=r"keys must lie in \[-1, 4\)"):
        ConfusionCounts(4).load_state_dict(bad)


def test_memory_is_sparse():
    counts = ConfusionCounts(20_000)
    rng = np.random.default_rng(1)
    counts.update(rng.integers(0, 20_000, 5000), rng.integers(0, 20_000, 5000))
    assert counts.nbytes < 2_000_000  # a dense int32 20k×20k would be 1.6 GB


# ============================================================================================ confusion draws
def small_counts():
    """K over the 8 classes of SIZES: class 3 owns no rows, classes 2 and 7 have no recorded pairs,
    class 6 is confused only with the empty class 3 (so its partners fall back to instance-uniform)."""
    K = np.zeros((C, C), np.int64)
    K[0, [1, 2, 6]] = [5, 1, 2]
    K[1, [0, 4]] = [1, 3]
    K[3, 0] = 4  # a row that can never be an anchor (class 3 has no rows)
    K[4, [0, 1, 5, 6]] = [1, 1, 1, 5]
    K[5, 0] = 2
    K[6, 3] = 3
    counts = ConfusionCounts(C)
    y, j = np.nonzero(K)
    counts.add(y, j, K[y, j])
    assert np.array_equal(counts.to_dense(), K)
    return counts, K


def expected_confusion_rows(K, anchor_p):
    """P(row_a, row_b) for class probabilities ``anchor_p`` and partner rule (j ∝ K[i], rows uniform;
    instance-uniform partner where row i is empty or j owns no rows)."""
    P = np.zeros((N, N))
    for i in range(C):
        if anchor_p[i] == 0:
            continue
        pj = np.zeros(N)
        for j in np.flatnonzero(K[i]):
            w = K[i, j] / K[i].sum()
            if SIZES[j]:
                pj[OFFSETS[j]:OFFSETS[j + 1]] += w / SIZES[j]
            else:
                pj += w / N
        if K[i].sum() == 0:
            pj[:] = 1 / N
        P[OFFSETS[i]:OFFSETS[i + 1]] += anchor_p[i] / SIZES[i] * pj
    return P.ravel()


@pytest.mark.parametrize("fallback", ["instance", "redraw"])
def test_confusion_pairs_match_counts(fallback):
    counts, K = small_counts()
    draws = ConfusionPartner(OFFSETS, counts, fallback=fallback).pairs(np.random.default_rng(7), 150_000)
    a, b = draws
    label_set = SIZES > 0
    if fallback == "instance":  # i uniform over every class that owns rows
        anchor_p = label_set / label_set.sum()
    else:  # i uniform over classes that own rows and have pairs
        have = label_set & (K.sum(1) > 0)
        anchor_p = have / have.sum()
    assert g_test(a * N + b, expected_confusion_rows(K, anchor_p)) > 1e-3
    # it can fail: anchors ∝ row totals (the classic mistake) are rejected decisively
    tot = K.sum(1) * label_set
    obs_classes = ROW_CLASS[a]
    assert g_test(obs_classes, tot / tot.sum() + 1e-9 * label_set) < 1e-6


def test_confusion_before_any_pair_is_uniform_class_with_instance_partner():
    counts = ConfusionCounts(C)
    for fallback in ("instance", "redraw"):
        a, b = ConfusionPartner(OFFSETS, counts, fallback=fallback).pairs(np.random.default_rng(3), 60_000)
        label_set = SIZES > 0
        assert g_test(ROW_CLASS[a], label_set / label_set.sum()) > 1e-3
        assert g_test(b, np.full(N, 1 / N)) > 1e-3


def test_confusion_partner_of_given_anchors():
    counts, K = small_counts()
    anchors = np.full(40_000, OFFSETS[4] + 1)  # class 4: j ∝ [1, 1, 0, 0, 0, 1, 5, 0]
    a, b = ConfusionPartner(OFFSETS, counts).pairs(np.random.default_rng(5), anchors=anchors)
    assert np.array_equal(a, anchors)
    pj = np.zeros(N)
    for j in np.flatnonzero(K[4]):
        pj[OFFSETS[j]:OFFSETS[j + 1]] = K[4, j] / K[4].sum() / SIZES[j]
    assert g_test(b, pj) > 1e-3
    # an anchor whose class has no recorded pairs (class 2) gets an instance-uniform partner
    no_pairs = np.full(30_000, OFFSETS[2])
    _, b = ConfusionPartner(OFFSETS, counts).pairs(np.random.default_rng(6), anchors=no_pairs)
    assert g_test(b, np.full(N, 1 / N)) > 1e-3


def test_confusion_draws_at_scale_follow_counts(big_stream):
    """Multi-level trees: partner classes of hot rows follow K[i, ·] exactly (G-test over j)."""
    counts = ConfusionCounts(700)
    for y, yhat in big_stream:
        counts.update(y, yhat)
    K = counts.to_dense()
    offsets = np.arange(701, dtype=np.int64)  # one row per class: row == class
    for i in (3, 250):
        _, b = ConfusionPartner(offsets, counts).pairs(np.random.default_rng(i), anchors=np.full(200_000, i))
        assert g_test(b, K[i] / K[i].sum()) > 1e-3


# ============================================================================================ other policies
def test_instance_uniform():
    pol = InstanceUniform(OFFSETS)
    a, b = pol.pairs(np.random.default_rng(0), 40_000)
    assert g_test(a, np.full(N, 1 / N)) > 1e-3 and g_test(b, np.full(N, 1 / N)) > 1e-3
    anchors = np.arange(N)
    a2, b2 = pol.pairs(np.random.default_rng(0), anchors=anchors)
    assert np.array_equal(a2, anchors) and b2.shape == anchors.shape
    # it can fail: a class-balanced expectation is rejected
    balanced = np.where(SIZES[ROW_CLASS] > 0, 1 / SIZES[ROW_CLASS], 0)
    assert g_test(b, balanced / balanced.sum()) < 1e-6


def test_class_balanced_is_uniform_over_classes_and_within_them():
    pol = ClassBalanced(OFFSETS)
    a, b = pol.pairs(np.random.default_rng(1), 60_000)
    L = np.count_nonzero(SIZES)
    p_row = 1 / (L * SIZES[ROW_CLASS])  # class uniform over the label set, row uniform in its class
    assert g_test(a, p_row) > 1e-3 and g_test(b, p_row) > 1e-3
    assert not np.isin(ROW_CLASS[b], [3]).any()
    assert g_test(b, np.full(N, 1 / N)) < 1e-6  # it can fail: instance-uniform is rejected


def softmax_rows(S, tau):
    W = np.exp(S / tau)
    np.fill_diagonal(W, 0)
    return W / W.sum(1, keepdims=True)


def unit(f):
    return f / np.linalg.norm(f, axis=1, keepdims=True)


@pytest.mark.parametrize("source", ["similarity", "embeddings"])
def test_text_local_exact_rows_match_softmax_without_self(source):
    """Head of 2 + rejection tail reproduces the full softmax (no truncation), duplicate classes included."""
    rng = np.random.default_rng(2)
    f = unit(rng.standard_normal((C, 6)))
    f = f.astype(np.float32).astype(np.float64)  # what the sampler stores: the reference is exact
    f[5] = f[4]  # two classes with the same text: a tie across the head/tail boundary
    S = f @ f.T
    tau = 0.3
    S_before = S.copy()
    tl = (TextLocal.from_similarity(S, tau, k=2) if source == "similarity"
          else TextLocal.from_embeddings(f * 3.0, tau, k=2))
    assert np.array_equal(S, S_before)  # the caller's matrix is not touched
    assert np.all(tl.truncated_mass == 0) and np.all(tl.row_lengths == 2) and np.all(tl.tail_mass > 0)
    P = softmax_rows(S, tau)
    for i in range(C):
        cols, p = tl.probabilities(i)
        full = np.zeros(C)
        full[cols] = p
        assert np.allclose(full, P[i], atol=1e-12) and i not in cols
    anchors = np.repeat(np.arange(C), 20_000)
    j = tl.draw(anchors, np.random.default_rng(3))
    assert g_test(anchors * C + j, (P / C).ravel()) > 1e-3
    # it can fail: the head alone (truncated, renormalised) is rejected
    head = np.zeros((C, C))
    for i in range(C):
        cols, _ = tl.probabilities(i)
        head[i, cols[:2]] = P[i, cols[:2]] / P[i, cols[:2]].sum()
    assert g_test(anchors * C + j, (head / C).ravel() + 1e-12) < 1e-6


def test_text_local_truncation_automatic_and_fixed_k():
    rng = np.random.default_rng(4)
    Cb = 300
    f = unit(rng.standard_normal((Cb, 16)))
    S = f @ f.T
    tau = 0.05
    P = softmax_rows(S, tau)
    tl = TextLocal.from_similarity(S, tau, k=None, tail=False, eps=1e-3)
    assert np.array_equal(tl.row_lengths, truncation_k(f, tau, 1e-3, block=64))
    for i in range(Cb):
        cols, p = tl.probabilities(i)
        kept = P[i, cols].sum()
        assert 1 - kept < 1e-3 and np.isclose(tl.truncated_mass[i], 1 - kept, atol=1e-12)
        assert 1 - (kept - P[i, cols[-1]]) >= 1e-3  # one neighbour fewer would drop too much: k is minimal
        assert np.allclose(p, P[i, cols] / kept)  # renormalised over the kept neighbours
        assert np.all(np.diff(P[i, cols]) <= 1e-15)  # the most similar classes are kept
    assert tl.row_lengths.max() < Cb - 1  # truncation actually happened
    top3 = TextLocal.from_similarity(S, tau, k=3, tail=False)
    assert np.all(top3.row_lengths == 3) and np.all(top3.truncated_mass > 0)
    i = 17
    cols, p = top3.probabilities(i)
    order = np.argsort(-P[i])[:3]
    assert np.array_equal(cols, order) and np.allclose(p, P[i, order] / P[i, order].sum())
    anchors = np.full(30_000, i)
    drawn = top3.draw(anchors, np.random.default_rng(8))
    expected = np.zeros(Cb)
    expected[order] = P[i, order] / P[i, order].sum()
    assert g_test(drawn, expected) > 1e-3
    with pytest.raises(ValueError, match="needs tail=False"):
        TextLocal.from_similarity(S, tau, k=None)


def test_text_local_partner_rows():
    rng = np.random.default_rng(5)
    f = rng.standard_normal((C, 5))
    tau = 0.5
    tl = TextLocal.from_embeddings(f, tau, k=2, allowed=SIZES > 0)  # class 3 owns no rows: never a partner
    pol = TextLocalPartner(OFFSETS, tl)
    anchors = np.full(50_000, OFFSETS[1])  # class 1
    a, b = pol.pairs(np.random.default_rng(6), anchors=anchors)
    S = unit(f) @ unit(f).T
    w = np.exp(S[1] / tau) * (SIZES > 0)
    w[1] = 0
    pr = np.zeros(N)
    for j in np.flatnonzero(w):
        pr[OFFSETS[j]:OFFSETS[j + 1]] = w[j] / w.sum() / SIZES[j]
    assert g_test(b, pr) > 1e-3
    a, b = pol.pairs(np.random.default_rng(7), 20_000)  # anchors drawn instance-uniform
    assert g_test(a, np.full(N, 1 / N)) > 1e-3
    assert np.all(ROW_CLASS[a] != ROW_CLASS[b])
    with pytest.raises(ValueError, match="class 3, which owns no rows"):
        TextLocalPartner(OFFSETS, TextLocal.from_embeddings(f, tau, k=2))


def test_offsets_and_anchors_are_checked():
    with pytest.raises(ValueError, match=r"class_offsets\[0\] = 1"):
        check_offsets([1, 2, 3])
    with pytest.raises(ValueError, match="decreases at class 1"):
        check_offsets([0, 5, 3])
    with pytest.raises(ValueError, match="1-D integer"):
        check_offsets(np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match=r"row 22 outside the shard's \[0, 22\)"):
        InstanceUniform(OFFSETS).pairs(np.random.default_rng(0), anchors=[0, 22])
    with pytest.raises(ValueError, match="fallback"):
        ConfusionPartner(OFFSETS, ConfusionCounts(C), fallback="self")
    with pytest.raises(ValueError, match="counts cover 3 classes"):
        ConfusionPartner(OFFSETS, ConfusionCounts(3))
    counts = ConfusionCounts(C)
    for policy in (InstanceUniform(OFFSETS), ClassBalanced(OFFSETS), ConfusionPartner(OFFSETS, counts)):
        with pytest.raises(ValueError, match="give n ≥ 0 draws or explicit anchor rows"):
            policy.pairs(np.random.default_rng(0))
    assert np.array_equal(class_of_rows(OFFSETS, np.arange(N)), ROW_CLASS)
