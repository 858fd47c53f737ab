"""Each baseline's loss on a tiny batch against its formula written out (REFERENCE.md §Losses/§Mixing).

The methods run through the real fused mix kernel and the real sparse soft-label CE; the expected values are
computed here with plain torch from the formulas, replaying the step generator's draws in the same order.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastlt.methods.base import get_method
from helpers.steps import COUNTS, H, W, beta_like, ctx_for, loss_of, make_batch, norm, tiny_model


def run(method_ctx, batch, model=None):
    m, ctx = method_ctx
    model = model or tiny_model()
    return loss_of(m, ctx, batch, model), model


def test_ce_and_balanced_softmax():
    batch = make_batch({"main": [0, 1, 2, 2, 0]})
    y = batch.labels
    out, model = run(ctx_for("ce"), batch)
    z = model(norm(batch.images))
    want = -torch.log_softmax(z, 1)[torch.arange(5), y].mean()
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)
    torch.testing.assert_close(out.logits, z, rtol=1e-5, atol=1e-5)

    out, model = run(ctx_for("bs"), batch)
    want = -torch.log_softmax(z + COUNTS.log(), 1)[torch.arange(5), y].mean()
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert not torch.allclose(out.loss, F.cross_entropy(z, y))  # the prior really enters


@pytest.mark.parametrize("epoch", [0, 25])
def test_ldam_drw(epoch):
    batch = make_batch({"main": [0, 1, 2, 2]})
    y = batch.labels
    m, ctx = ctx_for("ldam-drw", epoch=epoch, drw_epoch=20)
    model = m.build_model()
    torch.manual_seed(0)
    model.backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * H * W, model.feature_dim))
    out = loss_of(m, ctx, batch, model)
    f = model.features(norm(batch.images))
    cos = F.normalize(f, dim=1) @ F.normalize(model.classifier.weight, dim=1).T
    margins = 0.5 * COUNTS.pow(-0.25) / COUNTS.pow(-0.25).max()
    z = 30.0 * (cos - F.one_hot(y, 3) * margins[y, None])
    nll = -torch.log_softmax(z, 1)[torch.arange(4), y]
    if epoch >= 20:
        beta = 0.9999
        w = (1 - beta) / (1 - beta ** COUNTS.double())
        w = (w / w.sum() * 3).float()
        want = (w[y] * nll).sum() / w[y].sum()
    else:
        want = nll.mean()
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-4)
    torch.testing.assert_close(out.logits, 30.0 * cos, rtol=1e-4, atol=1e-4)  # test-time logits: no margin


@pytest.mark.parametrize("per_sample", [False, True])
def test_mixup(per_sample):
    batch = make_batch({"main": [0, 1, 2, 0], "b": [2, 2, 0, 1]})
    out, model = run(ctx_for("mixup", mix_alpha=0.4, mix_per_sample=per_sample), batch)
    lam, _ = beta_like(11, 0.4, 4 if per_sample else 1)
    lam = lam.expand(4)
    a, b = batch.images[:4].float(), batch.images[4:].float()
    mixed = lam.view(4, 1, 1, 1) * a + (1 - lam.view(4, 1, 1, 1)) * b
    logp = torch.log_softmax(model(norm(mixed)), 1)
    ya, yb = batch.labels[:4], batch.labels[4:]
    want = -(lam * logp[torch.arange(4), ya] + (1 - lam) * logp[torch.arange(4), yb]).mean()
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-4)
    assert out.logits is None  # no un-mixed forward: nothing for the confusion counts


def test_cutmix_uses_the_clipped_box_area():
    from fastlt.kernels.mix import cutmix_boxes

    batch = make_batch({"main": [0, 1, 2], "b": [1, 2, 0]})
    out, model = run(ctx_for("cutmix", mix_alpha=1.0), batch)
    lam, g = beta_like(11, 1.0, 1)
    boxes, lam_c = cutmix_boxes(lam, H, W, generator=g)
    y0, x0, y1, x1 = [int(v) for v in boxes[0]]
    a, b = batch.images[:3].clone(), batch.images[3:]
    a[:, y0:y1, x0:x1] = b[:, y0:y1, x0:x1]
    lam_y = 1 - (y1 - y0) * (x1 - x0) / (H * W)
    assert lam_c.item() == pytest.approx(lam_y)
    logp = torch.log_softmax(model(norm(a)), 1)
    ya, yb = batch.labels[:3], batch.labels[3:]
    want = -(lam_y * logp[torch.arange(3), ya] + (1 - lam_y) * logp[torch.arange(3), yb]).mean()
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-4)


def test_remix_moves_label_to_the_minority_class():
    # pairs: (many, few) n_a/n_b = 30 ≥ κ; (few, many) ratio 1/30 ≤ 1/κ; (many, medium) ratio 4 ≥ κ
    batch = make_batch({"main": [0, 2, 0], "b": [2, 0, 1]})
    out, model = run(ctx_for("remix", mix_alpha=1.0, mix_per_sample=True), batch)
    lam, _ = beta_like(11, 1.0, 3)
    n_a, n_b = COUNTS[batch.labels[:3]], COUNTS[batch.labels[3:]]
    lam_y = lam.clone()
    lam_y[(n_a / n_b >= 3) & (lam < 0.5)] = 0.0
    lam_y[(n_a / n_b <= 1 / 3) & (1 - lam < 0.5)] = 1.0
    a, b = batch.images[:3].float(), batch.images[3:].float()
    mixed = lam.view(3, 1, 1, 1) * a + (1 - lam.view(3, 1, 1, 1)) * b
    logp = torch.log_softmax(model(norm(mixed)), 1)
    ya, yb = batch.labels[:3], batch.labels[3:]
    want = -(lam_y * logp[torch.arange(3), ya] + (1 - lam_y) * logp[torch.arange(3), yb]).mean()
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-4)
    assert not torch.equal(lam_y, lam)  # this draw exercises the Remix rule, not plain Mixup


def test_unknown_method_suggests():
    with pytest.raises(ValueError, match="unknown method 'mixupp'; did you mean mixup"):
        get_method("mixupp")
