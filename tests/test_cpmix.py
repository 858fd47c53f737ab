"""CP-Mix: stages as data, and the stage-2 objective on a tiny batch against REFERENCE.md written out:

L = CE(z_main + log n, y) + η · [ CE_soft(CP-mix(cp_a, cp_b)) + CE_soft(mixup(main, main[π])) ]
λ_x ~ Beta(α, α) per sample, λ_y = (1 − κ)·λ_x + κ·n_b/(n_a + n_b)
"""

import pytest
import torch
import torch.nn.functional as F

from fastlt.methods.base import get_method
from fastlt.methods.cpmix import cpmix_start
from fastlt.recipes import apply_overrides, preset
from helpers import train_index
from helpers.steps import COUNTS, beta_draws, ctx_for, loss_of, make_batch, norm, tiny_model


def test_stages_are_data():
    index = train_index([50, 20, 5])
    r = apply_overrides(preset("cifar100-lt", "cpmix"), ["--finetune-epochs", "10"])
    m = get_method("cpmix")(r, index)
    st = m.stages()
    assert [(s.name, s.epochs, s.plan, s.trainable, s.group) for s in st] == [
        ("erm", 133, "erm", "all", "main"),
        ("cpmix", 67, "cpmix", "all", "main"),
        ("finetune", 10, "balanced", "classifier", "finetune"),
    ]
    assert st[2].lr == 0.01 and st[2].schedule == "cosine"
    r = apply_overrides(preset("places-lt", "cpmix"), ["--cpmix-start-epoch", "20"])
    assert cpmix_start(r) == 20
    # no fine-tune on Places-LT
    assert [s.name for s in get_method("cpmix")(r, index).stages()] == ["erm", "cpmix"]
    r0 = apply_overrides(preset("digits-lt", "cpmix"), ["--cpmix-start-epoch", "0"])
    assert [s.name for s in get_method("cpmix")(r0, index).stages()] == ["cpmix", "finetune"]


def lam_rule(lam, n_a, n_b, kappa):
    return (1 - kappa) * lam + kappa * n_b / (n_a + n_b)


@pytest.mark.parametrize("kappa", [0.0, 0.5])
def test_cpmix_objective_matches_the_formula(kappa):
    batch = make_batch({"main": [0, 1, 2, 0, 1], "cp_a": [2, 0, 1], "cp_b": [0, 1, 0]}, seed=3)
    m, ctx = ctx_for("cpmix", stage="cpmix", cpmix_alpha=0.7, cpmix_eta=0.3, cpmix_kappa=kappa)
    model = tiny_model(2)
    out = loss_of(m, ctx, batch, model)

    # replay the step generator: Beta for the CP pairs, the permutation, Beta for the same-batch mixup
    (lam_cp, lam_mu), perm = beta_draws(11, 0.7, [3, 5], perm_after_first=5)
    y, ya, yb = batch.labels[:5], batch.labels[5:8], batch.labels[8:]
    img = batch.images.float()
    x_main, a, b = img[:5], img[5:8], img[8:]
    cp = lam_cp.view(3, 1, 1, 1) * a + (1 - lam_cp.view(3, 1, 1, 1)) * b
    mu = lam_mu.view(5, 1, 1, 1) * x_main + (1 - lam_mu.view(5, 1, 1, 1)) * x_main[perm]
    z = model(norm(torch.cat([x_main, cp, mu])))
    zm, zc, zu = z[:5], z[5:8], z[8:]
    erm = F.cross_entropy(zm + COUNTS.log(), y)

    def soft(zz, y1, y2, lam):
        lp = torch.log_softmax(zz, 1)
        r = torch.arange(len(y1))
        return -(lam * lp[r, y1] + (1 - lam) * lp[r, y2]).mean()

    ly_cp = lam_rule(lam_cp, COUNTS[ya], COUNTS[yb], kappa)
    ly_mu = lam_rule(lam_mu, COUNTS[y], COUNTS[y[perm]], kappa)
    want = erm + 0.3 * (soft(zc, ya, yb, ly_cp) + soft(zu, y, y[perm], ly_mu))
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-4)
    torch.testing.assert_close(out.logits, zm, rtol=1e-4, atol=1e-4)  # pairs come from the un-mixed batch
    assert torch.equal(out.labels, y)


def test_erm_and_finetune_stages():
    batch = make_batch({"main": [0, 1, 2, 2]})
    model = tiny_model()
    z = model(norm(batch.images.float()))
    y = batch.labels
    m, ctx = ctx_for("cpmix", stage="erm")
    erm = loss_of(m, ctx, batch, model)
    assert erm.loss.item() == pytest.approx(F.cross_entropy(z + COUNTS.log(), y).item(), rel=1e-5)
    m, ctx = ctx_for("cpmix", stage="finetune")
    ft = loss_of(m, ctx, batch, model)
    assert ft.loss.item() == pytest.approx(
        F.cross_entropy(z, y).item(), rel=1e-5
    )  # balanced batches: plain CE
