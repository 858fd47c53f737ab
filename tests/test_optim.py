"""Model EMA and layer-wise lr decay groups against hand-computed values and timm's own implementations."""

import math

import pytest
import torch
import torch.nn as nn

from fastlt.heads import BCLModel
from fastlt.models import Classifier, build_model
from fastlt.optim import ModelEma, layer_decay_groups, layer_ids


def _tiny() -> nn.Sequential:
    m = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0, 2.0]]))
        m[0].bias.fill_(-1.0)
        m[1].running_mean.fill_(4.0)
        m[1].num_batches_tracked.fill_(3)
    return m


def test_ema_averages_parameters_and_float_buffers_and_copies_counters():
    model = _tiny()
    ema = ModelEma(model, decay=0.9)
    assert all(not p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[11.0, -8.0]]))
        model[0].bias.fill_(9.0)
        model[1].running_mean.fill_(14.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update(model)
    e = ema.module
    close = lambda a, b: torch.allclose(a, torch.tensor(b), atol=1e-6)  # noqa: E731
    assert close(e[0].weight, [[0.9 * 1 + 0.1 * 11, 0.9 * 2 + 0.1 * -8]])  # [[2.0, 1.0]]
    assert close(e[0].bias, [0.9 * -1 + 0.1 * 9])  # 0.0
    assert close(e[1].running_mean, [5.0])  # 0.9·4 + 0.1·14
    assert e[1].num_batches_tracked.item() == 7  # integers are copied, not averaged
    ema.update(model)  # a second step: 0.9·2 + 0.1·11 = 2.9, 0.9·1 + 0.1·(−8) = 0.1
    assert close(e[0].weight, [[2.9, 0.1]])
    assert torch.equal(model[0].weight, torch.tensor([[11.0, -8.0]]))  # the model is untouched
    ema.set(model)
    assert torch.equal(e[0].weight, model[0].weight)
    x = torch.randn(4, 2)
    assert torch.equal(ema(x), ema.module(x))


def test_ema_decay_schedule_follows_timm_v3():
    model = _tiny()
    fixed = ModelEma(model, decay=0.99)
    assert fixed.get_decay() == 0.99
    assert fixed.get_decay(1) == 0.0 and fixed.get_decay(2) == 0.99  # the first step copies the model
    warm = ModelEma(model, decay=0.999, use_warmup=True)  # γ = 1, power 2/3
    assert warm.get_decay(1) == 0.0
    assert warm.get_decay(2) == pytest.approx(1 - 2 ** (-2 / 3))  # t = 1: 0.370039
    assert warm.get_decay(11) == pytest.approx(1 - 11 ** (-2 / 3))  # t = 10: 1 − 11^(−2/3) = 0.798232
    assert warm.get_decay(10**9) == 0.999  # clamped at decay
    floor = ModelEma(model, decay=0.999, use_warmup=True, min_decay=0.5, update_after_step=5)
    assert floor.get_decay(6) == 0.0 and floor.get_decay(7) == 0.5  # t = 1 gives 0.37 < min_decay
    assert floor.get_decay(21) == pytest.approx(1 - 16 ** (-2 / 3))  # t = 15 → 1 − 16^(−2/3) = 0.842510
    with pytest.raises(ValueError, match="min_decay"):
        ModelEma(model, decay=0.5, min_decay=0.9)


def test_ema_matches_timm_model_ema_v3():
    from timm.utils import ModelEmaV3

    torch.manual_seed(0)
    model = build_model("resnet32", 10)
    ours = ModelEma(model, decay=0.99, use_warmup=True, warmup_power=3 / 4)
    theirs = ModelEmaV3(model, decay=0.99, use_warmup=True, warmup_power=3 / 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(1, 5):
        model(torch.randn(8, 3, 32, 32)).logsumexp(1).sum().backward()
        opt.step()
        opt.zero_grad()
        ours.update(model, step)
        theirs.update(model, step)
    a, b = ours.module.state_dict(), theirs.module.state_dict()
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def _by_name(model: nn.Module, groups: list[dict]) -> dict[str, dict]:
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for g in groups:
        for p in g["params"]:
            assert names[id(p)] not in out  # every parameter in exactly one group
            out[names[id(p)]] = g
    assert out.keys() == set(names.values())
    return out


def test_layer_decay_on_resnet32_by_hand():
    m = build_model("resnet32", 10)
    g = _by_name(m, layer_decay_groups(m, lr=0.1, weight_decay=5e-4, decay=0.5))
    # 17 depths: stem 0, the 15 blocks 1–15 (layer1.0 … layer3.4), the head 16
    assert g["backbone.conv1.weight"]["lr"] == pytest.approx(0.1 * 0.5**16)
    assert g["backbone.bn1.weight"]["lr_scale"] == pytest.approx(0.5**16)
    assert g["backbone.layer1.0.conv1.weight"]["lr"] == pytest.approx(0.1 * 0.5**15)
    assert g["backbone.layer2.0.conv2.weight"]["lr"] == pytest.approx(0.1 * 0.5**10)  # block 6
    assert g["backbone.layer3.4.bn2.bias"]["lr"] == pytest.approx(0.1 * 0.5)  # block 15
    assert g["classifier.weight"]["lr"] == g["classifier.bias"]["lr"] == 0.1
    decayed = {n for n, grp in g.items() if grp["weight_decay"] == 5e-4}
    assert decayed == {n for n, p in m.named_parameters() if p.ndim > 1}  # conv + classifier weights only
    assert all(grp["weight_decay"] == 0.0 for n, grp in g.items() if n not in decayed)


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16_224"])
def test_layer_decay_matches_timm_param_groups(name):
    """Same lr scale and weight decay per parameter as timm's param_groups_layer_decay on the timm model."""
    import timm
    from timm.optim import param_groups_layer_decay

    ref = timm.create_model(name, pretrained=False, num_classes=10)
    skip = ref.no_weight_decay() if hasattr(ref, "no_weight_decay") else ()  # as timm's create_optimizer_v2
    want = _by_name(ref, param_groups_layer_decay(ref, weight_decay=0.05, layer_decay=0.7,
                                                  no_weight_decay_list=skip))
    m = build_model(f"timm:{name}", 10)
    got = _by_name(m, layer_decay_groups(m, lr=1.0, weight_decay=0.05, decay=0.7))
    head = ref.pretrained_cfg["classifier"] + "."
    for n, w in want.items():
        mine = got["classifier." + n.removeprefix(head) if n.startswith(head) else "backbone.net." + n]
        assert mine["lr_scale"] == pytest.approx(w["lr_scale"]), n
        assert mine["weight_decay"] == w["weight_decay"], n
    assert len({g["lr_scale"] for g in want.values()}) > 8  # really several depths


def test_layer_decay_without_a_matcher_groups_twelve_parameters():
    trunk = nn.Sequential(*[nn.Linear(4, 4, bias=False) for _ in range(13)])
    m = Classifier(trunk, 4, 3)
    ids = layer_ids(m)
    assert [ids[f"backbone.{i}.weight"] for i in range(13)] == [0] * 12 + [1]
    assert ids["classifier.weight"] == ids["classifier.bias"] == 2
    g = _by_name(m, layer_decay_groups(m, lr=1.0, weight_decay=0.1, decay=0.5))
    assert g["backbone.0.weight"]["lr"] == 0.25 and g["backbone.12.weight"]["lr"] == 0.5


def test_layer_decay_puts_extra_heads_at_the_top():
    m = BCLModel(build_model("resnet32", 10, classifier="cosine"), feat_dim=16)
    ids = layer_ids(m)
    top = max(ids.values())
    assert top == 16 and ids["base.backbone.conv1.weight"] == 0
    heads = ("projection.", "prototype_head.", "base.classifier.")
    assert all(d == top for n, d in ids.items() if n.startswith(heads))
    with pytest.raises(ValueError, match="no 'backbone' or 'encoder'"):
        layer_ids(nn.Sequential(nn.Linear(2, 2)))
    assert math.isclose(layer_decay_groups(m, 1.0, 0.0, 0.9, trunk=m.base.backbone)[0]["lr_scale"], 0.9**16)
