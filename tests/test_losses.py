"""bcl_loss and mms_loss against direct, loop-per-anchor / loop-per-sample transcriptions of the formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastlt.losses import bcl_loss, mms_loss, top2_label


def bcl_by_anchor(features, labels, prototypes, T):
    """BCL written one anchor at a time, straight from REFERENCE.md: members = views + prototypes, each
    class's denominator terms averaged by its member count with the anchor excluded, positives = same-class
    members."""
    z = [F.normalize(f, dim=0) for f in features.double()]
    p = [F.normalize(q, dim=0) for q in prototypes.double()]
    members = [(zj, int(y)) for zj, y in zip(z, labels)] + [(pc, c) for c, pc in enumerate(p)]
    C = prototypes.shape[0]
    total = 0.0
    for i, (zi, yi) in enumerate(zip(z, labels.tolist())):
        den = 0.0
        for c in range(C):
            terms = [math.exp(float(zi @ m) / T) for j, (m, y) in enumerate(members) if y == c and j != i]
            den += sum(terms) / len(terms)
        pos = [float(zi @ m) / T for j, (m, y) in enumerate(members) if y == yi and j != i]
        total += -sum(s - math.log(den) for s in pos) / len(pos)
    return total / len(z)


LAYOUTS = {
    "balanced": [0, 1, 2, 0, 1, 2],
    "class absent from the batch": [0, 0, 1, 1, 1, 3],  # class 2 appears only as its prototype
    # one view of class 2: its only positive is its prototype
    "single-member class": [0, 0, 0, 0, 2, 1, 1, 1],
    "one class only": [1, 1, 1, 1],
}


@pytest.mark.parametrize("layout", LAYOUTS, ids=list(LAYOUTS))
@pytest.mark.parametrize("T", [0.1, 0.5])
def test_bcl_matches_loop_over_anchors(layout, T):
    g = torch.Generator().manual_seed(len(LAYOUTS[layout]) * 7 + int(T * 10))
    labels = torch.tensor(LAYOUTS[layout])
    C, D = 4, 5
    feats = torch.randn(len(labels), D, generator=g, dtype=torch.float64)
    protos = torch.randn(C, D, generator=g, dtype=torch.float64)
    got = bcl_loss(feats, labels, protos, T)
    want = bcl_by_anchor(feats, labels, protos, T)
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_bcl_views_layout_equals_flat_layout():
    g = torch.Generator().manual_seed(1)
    B, V, D, C = 5, 2, 8, 3
    y = torch.randint(0, C, (B,), generator=g)
    feats = torch.randn(B, V, D, generator=g)
    protos = torch.randn(C, D, generator=g)
    flat = torch.cat([feats[:, 0], feats[:, 1]])
    flat_loss = float(bcl_loss(flat, y.repeat(2), protos, 0.1))
    assert float(bcl_loss(feats, y, protos, 0.1)) == pytest.approx(flat_loss)
    want = bcl_by_anchor(flat, y.repeat(2), protos, 0.1)
    assert float(bcl_loss(feats, y, protos, 0.1)) == pytest.approx(want, rel=1e-5)


def test_bcl_is_stable_at_small_temperature_and_trains_prototypes():
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(6, 4, generator=g, requires_grad=True)
    protos = torch.randn(3, 4, generator=g, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = bcl_loss(feats, y, protos, 0.01)  # logits up to ±100: exp overflows without the logsumexp form
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(protos.grad).all() and protos.grad.abs().sum() > 0  # prototypes learn by gradient
    assert torch.isfinite(feats.grad).all()


def test_bcl_rejects_bad_shapes():
    with pytest.raises(ValueError, match="prototypes"):
        bcl_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.randn(2, 5), 0.1)
    with pytest.raises(ValueError, match="labels"):
        bcl_loss(torch.randn(4, 3), torch.zeros(3, dtype=torch.long), torch.randn(2, 3), 0.1)


# ------------------------------------------------------------------------------------------------ MMS
def mms_by_sample(cos, label_pairs, S, lam, T):
    """MMS one sample and one CE term at a time: logits_k = (cos_k + λ_m (1 − S[c, k])) / T."""
    total = 0.0
    for b, pairs in enumerate(label_pairs):
        for v, c in pairs:
            logits = [(float(cos[b, k]) + lam * (1 - float(S[c, k]))) / T for k in range(cos.shape[1])]
            lse = math.log(sum(math.exp(x - max(logits)) for x in logits)) + max(logits)
            total += v * (lse - logits[c])
    return total / cos.shape[0]


def _text_features(C, D=6, seed=0):
    """(unit text features t [C, D], their similarity S = t·tᵀ for the expected values)."""
    g = torch.Generator().manual_seed(seed)
    t = F.normalize(torch.randn(C, D, generator=g, dtype=torch.float64), dim=1)
    return t, t @ t.T


def test_mms_hard_labels_match_formula():
    g = torch.Generator().manual_seed(3)
    B, C = 7, 5
    cos = torch.rand(B, C, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.randint(0, C, (B,), generator=g)
    t, S = _text_features(C)
    got = mms_loss(cos, y, t, margin=0.3, temperature=0.01)
    want = mms_by_sample(cos, [[(1.0, int(c))] for c in y], S, 0.3, 0.01)
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_mms_without_margin_is_plain_ce_on_scaled_cosines():
    cos = torch.rand(4, 3, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1])
    got = mms_loss(cos, y, _text_features(3)[0], margin=0.0, temperature=0.5)
    assert float(got) == pytest.approx(float(F.cross_entropy(cos / 0.5, y)), rel=1e-6)


def test_mms_mixed_labels_use_the_two_largest_entries():
    g = torch.Generator().manual_seed(4)
    B, C = 6, 5
    cos = torch.rand(B, C, generator=g, dtype=torch.float64) * 2 - 1
    t, S = _text_features(C, seed=1)
    a = torch.tensor([0, 1, 2, 3, 4, 0])
    b = torch.tensor([1, 3, 0, 4, 2, 4])
    lam = torch.tensor([0.7, 0.2, 0.5, 1.0, 0.35, 0.9], dtype=torch.float64)
    pairs = [[(float(l), int(i)), (1 - float(l), int(j))] for l, i, j in zip(lam, a, b)]
    want = mms_by_sample(cos, pairs, S, 0.3, 0.05)
    dense = lam[:, None] * F.one_hot(a, C) + (1 - lam[:, None]) * F.one_hot(b, C)
    sparse = (torch.stack([a, b], 1), torch.stack([lam, 1 - lam], 1))
    assert float(mms_loss(cos, dense, t, 0.3, 0.05)) == pytest.approx(want, rel=1e-5)
    assert float(mms_loss(cos, sparse, t, 0.3, 0.05)) == pytest.approx(want, rel=1e-5)


def test_mms_wider_label_drops_all_but_two_largest():
    cos = torch.zeros(1, 4, dtype=torch.float64)
    t, S = _text_features(4, seed=2)
    dense = torch.tensor([[0.1, 0.5, 0.15, 0.25]], dtype=torch.float64)
    want = mms_by_sample(cos, [[(0.5, 1), (0.25, 3)]], S, 0.3, 0.1)
    assert float(mms_loss(cos, dense, t, 0.3, 0.1)) == pytest.approx(want, rel=1e-6)


def test_top2_merges_duplicate_sparse_classes():
    idx = torch.tensor([[2, 0, 2]])
    w = torch.tensor([[0.3, 0.4, 0.3]])
    v, c = top2_label((idx, w), 3)
    assert c.tolist() == [[2, 0]] and v[0].tolist() == pytest.approx([0.6, 0.4])


def test_mms_rejects_text_features_of_another_class_count():
    with pytest.raises(ValueError, match=r"text_features must be \[3, d\], got \[4, 4\]"):
        mms_loss(torch.zeros(2, 3), torch.tensor([0, 1]), torch.eye(4), 0.3, 0.01)
