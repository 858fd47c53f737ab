"""Backbones: the features/classifier split, the released ResNet-32 and NormedLinear, torchvision and timm
models with local weights."""

import math

import pytest
import torch
import torch.nn.functional as F

from fastlt.models import BasicBlock, CosineClassifier, OptionAShortcut, build_model


@pytest.mark.parametrize("name, dim", [("smallnet", 64), ("resnet32", 64)])
def test_small_backbones_split(name, dim):
    torch.manual_seed(0)
    m = build_model(name, 7).eval()
    x = torch.randn(3, 3, 32, 32)
    f = m.features(x)
    assert f.shape == (3, dim) and m.feature_dim == dim
    assert torch.allclose(m(x), m.classifier(f))
    assert m(x).shape == (3, 7)


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_resnet32_layers_and_parameter_count_are_the_releases():
    m = build_model("resnet32", 10)
    assert _count(m) == 464_154  # the released ResNet-32 with a 10-class linear head
    assert _count(build_model("resnet32", 10, classifier="cosine")) == 464_144  # NormedLinear has no bias
    convs = {n: c for n, c in m.backbone.named_modules() if isinstance(c, torch.nn.Conv2d)}
    assert len(convs) == 31 and all(c.kernel_size == (3, 3) for c in convs.values())  # no 1×1 projections
    assert convs["conv1"].weight.shape == (16, 3, 3, 3)
    for stage, (cin, cout, stride) in enumerate([(16, 16, 1), (16, 32, 2), (32, 64, 2)], start=1):
        first = convs[f"layer{stage}.0.conv1"]
        assert (first.in_channels, first.out_channels, first.stride) == (cin, cout, (stride, stride))
        assert all(convs[f"layer{stage}.{b}.conv{k}"].weight.shape == (cout, cout, 3, 3)
                   for b in range(5) for k in (1, 2) if (b, k) != (0, 1))
    shapes = {}
    for stage in (1, 2, 3):
        getattr(m.backbone, f"layer{stage}").register_forward_hook(
            lambda mod, i, o, s=stage: shapes.__setitem__(s, tuple(o.shape)))
    m.eval()(torch.randn(2, 3, 32, 32))
    assert shapes == {1: (2, 16, 32, 32), 2: (2, 32, 16, 16), 3: (2, 64, 8, 8)}


def test_option_a_shortcut_subsamples_and_zero_pads_without_parameters():
    torch.manual_seed(0)
    block = build_model("resnet32", 10).backbone.layer2[0]
    assert isinstance(block.shortcut, OptionAShortcut) and _count(block.shortcut) == 0
    x = torch.randn(2, 16, 32, 32)
    want = torch.zeros(2, 32, 16, 16)
    for i in range(16):  # channel i of the input lands at 8 + i; every second row and column is kept
        for r in range(16):
            for c in range(16):
                want[:, 8 + i, r, c] = x[:, i, 2 * r, 2 * c]
    assert torch.equal(block.shortcut(x), want)
    block.eval()
    residual = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
    assert torch.allclose(block(x), F.relu(residual + want), atol=1e-6)
    # blocks that keep the shape add the input itself
    same = BasicBlock(16, 16, 1).eval()
    assert isinstance(same.shortcut, torch.nn.Identity)
    with pytest.raises(ValueError, match="option-A"):
        BasicBlock(16, 48, 2)


def test_resnet32_initialisation_is_kaiming_normal_fan_in():
    """std √(2/fan_in) per layer (a fan_out init misses the stem by 2.3×, stage entries and the head by √2 or
    more), normal not uniform (pooled kurtosis 3, uniform's is 1.8), BatchNorm at (1, 0)."""
    torch.manual_seed(0)
    m = build_model("resnet32", 10)
    standardised = []
    layers = [c for c in m.modules() if isinstance(c, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(layers) == 32
    for layer in layers:
        w = layer.weight.detach()
        want = math.sqrt(2.0 / w[0].numel())  # fan_in = in_channels · k · k (in_features for the head)
        assert abs(w.std().item() / want - 1) < 0.1, (layer, w.std().item(), want)
        assert abs(w.mean().item()) < 0.1 * want
        standardised.append((w / want).flatten())
    z = torch.cat(standardised)
    assert abs((z**4).mean().item() / (z**2).mean().item() ** 2 - 3.0) < 0.15
    for bn in (c for c in m.modules() if isinstance(c, torch.nn.BatchNorm2d)):
        assert torch.equal(bn.weight, torch.ones(bn.num_features))
        assert torch.equal(bn.bias, torch.zeros(bn.num_features))
    assert m.classifier.bias.abs().max() <= 64**-0.5  # nn.Linear's default bias init stays


def _release_draws(seed: int, head: str) -> list[torch.Tensor]:
    """The release's construction order written out: every layer with torch's default init (convolutions in
    module order, then the head), then kaiming_normal_ on convolutions and linear head in module order."""
    torch.manual_seed(seed)
    shapes = [(3, 16)] + [(16, 16)] * 10 + [(16, 32)] + [(32, 32)] * 9 + [(32, 64)] + [(64, 64)] * 9
    convs = [torch.nn.Conv2d(cin, cout, 3, bias=False) for cin, cout in shapes]
    if head == "linear":
        fc = torch.nn.Linear(64, 10)
        weights = [c.weight for c in convs] + [fc.weight]
        for w in weights:
            torch.nn.init.kaiming_normal_(w)
        return [w.detach() for w in weights] + [fc.bias.detach()]
    normed = torch.empty(64, 10).uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)  # NormedLinear, [D, C]
    for c in convs:
        torch.nn.init.kaiming_normal_(c.weight)
    return [c.weight.detach() for c in convs] + [normed.t()]


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_resnet32_draws_the_releases_initial_weights(head):
    want = _release_draws(7, head)
    torch.manual_seed(7)
    m = build_model("resnet32", 10, classifier=head)
    got = [c.weight for c in m.backbone.modules() if isinstance(c, torch.nn.Conv2d)]
    got += [m.classifier.weight] + ([m.classifier.bias] if head == "linear" else [])
    assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))


def test_cosine_classifier_is_normed_linear():
    torch.manual_seed(3)
    head = CosineClassifier(5, 4, scale=30.0)
    torch.manual_seed(3)
    release = torch.empty(5, 4).uniform_(-1, 1)  # NormedLinear's [D, C] draw, each class column → unit norm
    release = release / release.norm(dim=0, keepdim=True)
    assert head.weight.shape == (4, 5)  # one row per class, the layout heads and methods read
    assert torch.allclose(head.weight.t(), release, atol=1e-6)
    assert torch.allclose(head.weight.norm(dim=1), torch.ones(4), atol=1e-5)
    f = torch.randn(6, 5)
    cos = torch.tensor([[torch.dot(a, w) / (a.norm() * w.norm()) for w in head.weight.detach()] for a in f])
    assert torch.allclose(head(f), 30.0 * cos, atol=1e-4)
    assert torch.allclose(head(3 * f), head(f), atol=1e-5)  # invariant to feature norm
    raw = CosineClassifier(5, 4, scale=None)
    raw.weight.data.copy_(head.weight.data)
    assert torch.allclose(raw(f), cos, atol=1e-5)


# -------------------------------------------------------------------------------------- timm / torchvision
def _timm_files(tmp_path, name="resnet18"):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    ref = timm.create_model(name, pretrained=False)  # random init, with its 1000-class fc
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    torch.save(state, tmp_path / f"{name}.pt")
    save_file(state, str(tmp_path / f"{name}.safetensors"))
    return ref


def test_timm_model_loads_local_weights_trains_and_reloads(tmp_path):
    ref = _timm_files(tmp_path)
    for file in ("resnet18.pt", "resnet18.safetensors"):
        m = build_model("timm:resnet18", 7, classifier="cosine", pretrained=str(tmp_path / file))
        assert m.feature_dim == 512 and m.classifier.weight.shape == (7, 512)
        mine = m.backbone.net.state_dict()
        assert mine.keys() == {k for k in ref.state_dict() if not k.startswith("fc.")}
        assert all(torch.equal(v, ref.state_dict()[k]) for k, v in mine.items())
    x = torch.randn(2, 3, 64, 64)
    m(x).logsumexp(1).sum().backward()
    assert m.classifier.weight.grad.abs().sum() > 0 and m.backbone.net.conv1.weight.grad.abs().sum() > 0
    torch.save(m.state_dict(), tmp_path / "fastlt.pt")
    again = build_model("timm:resnet18", 7, classifier="cosine")
    again.load_state_dict(torch.load(tmp_path / "fastlt.pt", weights_only=True))
    assert torch.equal(again.eval()(x), m.eval()(x))


def test_bad_weight_files_name_the_file_and_keys(tmp_path):
    import timm

    _timm_files(tmp_path)
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), tmp_path / "r34.pt")
    bad = {k: v for k, v in torch.load(tmp_path / "resnet18.pt", weights_only=True).items()}
    bad["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(bad, tmp_path / "shape.pt")
    (tmp_path / "text.pt").write_text("not weights")
    cases = {
        "missing.pt": r"missing\.pt: no such file",
        "r34.pt": r"r34\.pt: not a timm resnet18 state dict \(unexpected \['layer1\.2\.",
        "shape.pt": r"shape\.pt: not a timm resnet18 state dict "
        r"\(wrong shape \['conv1\.weight \(64, 3, 5, 5\) \(want \(64, 3, 7, 7\)\)",
        "text.pt": r"text\.pt: not a readable state dict",
    }
    for file, message in cases.items():
        with pytest.raises(ValueError, match=message):
            build_model("timm:resnet18", 10, pretrained=str(tmp_path / file))
    with pytest.raises(ValueError, match=r"r34\.pt: not a torchvision resnet18 state dict \(unexpected"):
        build_model("tv:resnet18", 10, pretrained=str(tmp_path / "r34.pt"))  # same key names as timm's


def test_torchvision_backbone_loads_local_weights(tmp_path):
    import torchvision

    ref = torchvision.models.resnet50(weights=None)
    torch.nn.init.constant_(ref.conv1.weight, 0.01)
    torch.save({"state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, tmp_path / "r50.pt")
    m = build_model("resnet50", 10, classifier="cosine", pretrained=str(tmp_path / "r50.pt"))
    assert torch.equal(m.backbone.net.conv1.weight, ref.conv1.weight)
    assert m.feature_dim == 2048 and m.classifier.weight.shape == (10, 2048)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt: not a torchvision resnet50 state dict \(missing \['bn1"):
        build_model("resnet50", 10, pretrained=str(tmp_path / "bad.pt"))


def test_resnet32_loads_a_released_code_checkpoint(tmp_path):
    """The release saves {'state_dict': DataParallel(model).state_dict(), ...}: module. prefix, a NormedLinear
    head named linear with a [D, C] weight; the backbone keys are fastlt's, the head is ignored."""
    torch.manual_seed(2)
    trained = build_model("resnet32", 10).backbone
    state = {f"module.{k}": v for k, v in trained.state_dict().items()}
    state["module.linear.weight"] = torch.ones(64, 10)
    torch.save({"epoch": 200, "state_dict": state, "best_acc1": torch.tensor(80.0)}, tmp_path / "ckpt.pth")
    m = build_model("resnet32", 10, classifier="cosine", pretrained=str(tmp_path / "ckpt.pth"))
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in m.backbone.state_dict().items())
    with pytest.raises(ValueError, match="smallnet has no pretrained form"):
        build_model("smallnet", 10, pretrained=str(tmp_path / "ckpt.pth"))

def test_torchvision_paper_backbones_keep_torchvision_defaults():
    """BCL / ConCutMix build these with zero_init_residual=False: the last BN of each block starts at 1."""
    m = build_model("resnext50", 10)
    assert m.backbone.net.layer1[0].conv2.groups == 32 and m.feature_dim == 2048
    assert all(torch.equal(b.bn3.weight, torch.ones_like(b.bn3.weight)) for b in m.backbone.net.layer4)


def test_any_torchvision_model_by_name():
    m = build_model("tv:mobilenet_v3_small", 5).eval()  # classifier is Linear → Hardswish → Dropout → Linear
    assert m.feature_dim == 1024 and m(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_unknown_model_names_choices():
    with pytest.raises(ValueError, match="unknown model 'resnet33'; did you mean resnet32"):
        build_model("resnet33", 10)
    with pytest.raises(ValueError, match="unknown timm model 'resnet19'; did you mean resnet18"):
        build_model("timm:resnet19", 10)
    with pytest.raises(ValueError, match="unknown torchvision model 'resnet19'; did you mean resnet18"):
        build_model("tv:resnet19", 10)
