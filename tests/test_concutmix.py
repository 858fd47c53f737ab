"""ConCutMix: the rectified label against its formula, and the method end to end on digits-lt."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastlt.kernels.soft_ce import soft_ce_reference
from fastlt.losses import bcl_loss
from fastlt.methods.base import StepContext, get_method
from fastlt.methods.concutmix import label_confidence, rectified_label, semantic_label
from fastlt.pipelines.plan import Batch, StepPlan
from fastlt.recipes import apply_overrides, preset
from fastlt.runtime import Priors, Runtime
from helpers import eval_json, metrics, train_index
from helpers.steps import with_draws


def rectified_by_formula(u, P, area, n, k, omega):
    """REFERENCE.md, one sample at a time in float64: s_c = 1/‖u − P_c‖, top-k, ŷ_sem = s/Σs,
    γ = ω·log(Σ ỹ_area·n)/Σ log n (clamped to [0, 1]), ỹ = γ·ŷ_sem + (1 − γ)·ỹ_area."""
    out = []
    for b in range(u.shape[0]):
        s = [1.0 / math.dist(u[b].tolist(), P[c].tolist()) for c in range(P.shape[0])]
        keep = sorted(range(len(s)), key=lambda c: (-s[c], c))[:k]
        total = sum(s[c] for c in keep)
        sem = [s[c] / total if c in keep else 0.0 for c in range(len(s))]
        gamma = omega * math.log(sum(float(a) * m for a, m in zip(area[b], n))) / sum(math.log(m) for m in n)
        gamma = min(max(gamma, 0.0), 1.0)
        out.append([gamma * x + (1 - gamma) * float(a) for x, a in zip(sem, area[b])])
    return torch.tensor(out, dtype=torch.float64)


def _case(seed, B=6, C=7, D=4):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, D, generator=g)
    P = torch.randn(C, D, generator=g)
    ya = torch.randint(0, C, (B,), generator=g)
    yb = torch.randint(0, C, (B,), generator=g)
    lam = torch.rand(B, generator=g)
    n = torch.tensor([500, 200, 90, 40, 12, 5, 2][:C], dtype=torch.float32)
    return u, P, ya, yb, lam, n


def _dense(ya, yb, lam, C):
    area = torch.zeros(len(ya), C)
    area[torch.arange(len(ya)), ya] += lam
    area[torch.arange(len(ya)), yb] += 1 - lam
    return area


def _densify(idx, w, C):
    return torch.zeros(idx.shape[0], C, dtype=w.dtype).scatter_add_(1, idx, w)


@pytest.mark.parametrize("k", [1, 3, 7])
@pytest.mark.parametrize("omega", [20 / 255, 2.0, 50.0])  # 50: γ hits the clamp at 1
def test_rectified_label_matches_formula_dense_and_sparse(k, omega):
    u, P, ya, yb, lam, n = _case(k)
    area = _dense(ya, yb, lam, P.shape[0])
    want = rectified_by_formula(u.double(), P.double(), area.double(), n.tolist(), k, omega)
    dense = rectified_label(u, P, area, n, topk=k, omega=omega)
    assert torch.allclose(dense.double(), want, atol=1e-5)
    idx, w = rectified_label(u, P, (torch.stack([ya, yb], 1), torch.stack([lam, 1 - lam], 1)), n, k, omega)
    assert idx.shape == w.shape == (u.shape[0], k + 2)  # K = top-k + 2: fixed width for the sparse soft CE
    assert torch.allclose(_densify(idx, w, P.shape[0]).double(), want, atol=1e-5)
    assert torch.allclose(w.sum(1), torch.ones(u.shape[0]), atol=1e-5)  # a distribution


def test_k1_puts_all_semantic_mass_on_the_nearest_prototype():
    u, P, *_ = _case(5)
    idx, w = semantic_label(u, P, 1)
    nearest = torch.cdist(u, P).argmin(1)
    assert idx[:, 0].tolist() == nearest.tolist() and torch.all(w == 1)


def test_ties_at_the_threshold_keep_exactly_k_lowest_index_first():
    # Prototypes 1, 2, 3 are equidistant from u (all at distance 1); 0 is nearer, 4 farther.
    P = torch.tensor([[0.5, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [3.0, 0.0]])
    u = torch.zeros(1, 2)
    idx, w = semantic_label(u, P, 3)
    assert idx.tolist() == [[0, 1, 2]]  # class 3 ties with 1 and 2 but loses on index
    s = torch.tensor([2.0, 1.0, 1.0])
    assert torch.allclose(w[0], s / s.sum())


def test_gamma_bounds():
    n = torch.tensor([1000.0, 10.0, 1.0])
    # Tail-only label: Σ ỹ n = 1 → log 1 = 0 → γ = 0 whatever ω.
    assert label_confidence(torch.tensor([[0.0, 0.0, 1.0]]), n, omega=100.0).item() == 0.0
    # Formula value below 1 is kept as is.
    g = label_confidence(torch.tensor([[0.5, 0.5, 0.0]]), n, omega=1.0).item()
    assert g == pytest.approx(math.log(505) / (math.log(1000) + math.log(10)), rel=1e-6)
    # Large ω: the formula exceeds 1 and is clamped, so the label stays a convex combination.
    assert label_confidence(torch.tensor([[1.0, 0.0, 0.0]]), n, omega=10.0).item() == 1.0
    # Every class with a single image: Σ log n = 0; γ = 0 rather than 0/0.
    assert label_confidence(torch.tensor([[1.0, 0.0]]), torch.ones(2), omega=1.0).item() == 0.0


def test_no_gradient_flows_through_the_label():
    u, P, ya, yb, lam, n = _case(7)
    u.requires_grad_(True)
    P.requires_grad_(True)
    idx, w = rectified_label(u, P, (torch.stack([ya, yb], 1), torch.stack([lam, 1 - lam], 1)), n, 3, 0.5)
    assert not w.requires_grad


def test_topk_outside_range_is_refused():
    u, P, *_ = _case(8)
    with pytest.raises(ValueError, match="topk"):
        semantic_label(u, P, P.shape[0] + 1)


# ------------------------------------------------------------------------------------------------ the method
def _step(recipe_overrides, epoch, seed=0, B=8, C=10):
    """One ConCutMix loss on a hand-built plan/batch (the real mix and soft-CE kernels), with the model's head
    outputs captured by forward hooks so the expected loss can be recomputed from them."""
    r = apply_overrides(preset("digits-lt", "concutmix"), recipe_overrides)
    counts = [300, 120, 60, 40, 25, 15, 9, 5, 3, 2][:C]
    method = get_method("concutmix")(r, train_index(counts))
    torch.manual_seed(seed)
    model = method.build_model()
    g = torch.Generator().manual_seed(seed)
    rows = np.arange(B)
    y = torch.randint(0, C, (B,), generator=g)
    y_fg = torch.randint(0, C, (B,), generator=g)
    plan = StepPlan.from_segments(epoch, 0, main=rows, view1=rows, view2=rows, fg=rows + B)
    images = torch.randint(0, 256, (4 * B, 32, 32, 3), dtype=torch.uint8, generator=g)
    batch = Batch(plan, torch.as_tensor(plan.rows), images, torch.cat([y, y, y, y_fg]))
    priors = Priors(np.array(counts))
    runtime = Runtime(device=torch.device("cpu"), priors=priors, mean=r.mean, std=r.std)
    ctx = StepContext(runtime, method.stages()[0], epoch, 0)
    seen = {}
    for name in ("classifier", "projection", "prototype_head"):
        getattr(model, name).register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, o.detach()))
    out = method.loss(model, with_draws(method, ctx, batch, seed + 1), ctx)
    return r, model, out, seen, y, priors


def test_concutmix_without_cutmix_is_la_ce_plus_bcl_on_the_views():
    r, model, out, seen, y, priors = _step([("ccm_cutmix_prob", "0")], epoch=0)
    B = y.numel()
    logits, u = seen["classifier"], seen["projection"]
    assert logits.shape[0] == u.shape[0] == 3 * B  # one forward over classification + two views
    ce = F.cross_entropy(logits[:B] + r.ccm_tau_la * priors.log_prior, y)
    bcl = bcl_loss(torch.stack([u[B:2 * B], u[2 * B:]], 1), y, seen["prototype_head"], r.ccm_temperature)
    assert out.loss.item() == pytest.approx(float(r.ccm_alpha * ce + r.ccm_beta * bcl), rel=1e-5)
    assert torch.equal(out.labels, y) and torch.allclose(out.logits, logits[:B])


def test_concutmix_rectified_label_replaces_the_area_label_after_l_d_warm():
    """ω large: γ clamps to 1, so after l_d_warm the CE target is the pure semantic label of the mixed image
    — computable from the captured projections and prototypes alone."""
    over = [("ccm_cutmix_prob", "1"), ("ccm_omega", "1000"), ("ccm_l_d_warm", "3"), ("ccm_topk", "3")]
    r, model, out, seen, y, priors = _step(over, epoch=4)
    B = y.numel()
    logits, u, P = seen["classifier"], seen["projection"], seen["prototype_head"]
    idx, w = semantic_label(u[:B], P, 3)
    ce = soft_ce_reference(logits[:B], idx, w, logit_adjust=r.ccm_tau_la * priors.log_prior)
    bcl = bcl_loss(torch.stack([u[B:2 * B], u[2 * B:]], 1), y, P, r.ccm_temperature)
    assert out.loss.item() == pytest.approx(float(r.ccm_alpha * ce + r.ccm_beta * bcl), rel=1e-5)
    # At epoch l_d_warm itself the area label is still used: a different CE, same BCL.
    *_, out_warm, seen_warm, _, _ = _step(over, epoch=3)
    assert torch.equal(seen_warm["projection"], u)
    assert out_warm.loss.item() != pytest.approx(out.loss.item(), rel=1e-4)


def test_concutmix_step_trains_backbone_heads_and_prototypes():
    r, model, out, *_ = _step([("ccm_cutmix_prob", "1")], epoch=0)
    out.loss.backward()
    for name, module in (("backbone", model.base.backbone), ("classifier", model.classifier),
                         ("projection", model.projection), ("prototype head", model.prototype_head)):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name


def test_topk_beyond_the_class_count_fails_when_the_model_is_built():
    r = apply_overrides(preset("digits-lt", "concutmix"), [("ccm_topk", "30")])
    with pytest.raises(ValueError, match="ccm_topk"):
        get_method("concutmix")(r, train_index([5] * 10)).build_model()


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_fastlt_train_concutmix_on_digits_lt_writes_eval_json(digits_data, tmp_path):
    """`fastlt train --dataset digits-lt --method concutmix`, CI-sized: 4 epochs × 12 steps, every batch
    CutMixed, rectified labels from the second epoch on (l_d_warm 0), then the run's evaluation."""
    from fastlt.cli import main as cli

    runs = tmp_path / "runs"
    argv = ["train", "--dataset", "digits-lt", "--method", "concutmix", "--runs", str(runs),
            "--data-root", str(digits_data), "--epochs", "4", "--steps-per-epoch", "12", "--batch-size", "32",
            "--ccm-cutmix-prob", "1", "--ccm-l-d-warm", "0", "--progress", "false", "--workers", "1"]
    assert cli(argv) == 0
    run = runs / "digits-lt-concutmix-s0"
    ev = eval_json(run)
    assert ev["num_classes"] == 10 and ev["num_images"] == 400
    # seed 0: all 51.25 (many 90, medium 35.8, few 58.8); chance is 10, the two many classes alone give 20
    assert ev["all"] > 30 and ev["few"] > 20
    lines = metrics(run)
    assert [x["epoch"] for x in lines] == [0, 1, 2, 3] and all(math.isfinite(x["train_loss"]) for x in lines)
    state = torch.load(run / "last.pt", weights_only=True)
    assert any(k.startswith("prototype_head.") for k in state["model"])  # the BCL heads are saved
    # `fastlt eval` rebuilds the method's model from recipe.json and reproduces the run's evaluation.
    ev_dir = tmp_path / "ev"
    assert cli(["eval", "--run", str(run), "--checkpoint", "last", "--out", str(ev_dir), "--no-plots"]) == 0
    assert eval_json(ev_dir)["all"] == pytest.approx(ev["all"])
