"""Backbones: the features/classifier split, shapes, the cosine classifier, local pretrained weights."""

import pytest
import torch
import torch.nn.functional as F

from fastlt.models import CosineClassifier, build_model


@pytest.mark.parametrize("name, dim", [("smallnet", 64), ("resnet32", 64)])
def test_small_backbones_split(name, dim):
    torch.manual_seed(0)
    m = build_model(name, 7).eval()
    x = torch.randn(3, 3, 32, 32)
    f = m.features(x)
    assert f.shape == (3, dim) and m.feature_dim == dim
    assert torch.allclose(m(x), m.classifier(f))
    assert m(x).shape == (3, 7)


def test_resnet32_is_resnet32():
    m = build_model("resnet32", 100)
    convs = [
        n
        for n, mod in m.backbone.named_modules()
        if isinstance(mod, torch.nn.Conv2d) and mod.kernel_size == (3, 3)
    ]
    assert len(convs) == 31  # 1 stem + 3 stages × 5 blocks × 2: with the classifier, 32 weighted layers
    n = sum(p.numel() for p in m.backbone.parameters())
    assert 0.45e6 < n < 0.48e6


def test_cosine_classifier_is_scaled_cosine():
    torch.manual_seed(0)
    head = CosineClassifier(5, 4, scale=30.0)
    f = torch.randn(6, 5)
    want = 30.0 * F.normalize(f, dim=1) @ F.normalize(head.weight, dim=1).T
    assert torch.allclose(head(f), want, atol=1e-5)
    assert head(f).abs().max() <= 30.0 + 1e-4
    assert torch.allclose(head(3 * f), head(f), atol=1e-5)  # invariant to feature norm
    raw = CosineClassifier(5, 4, scale=None)
    raw.weight.data.copy_(head.weight.data)
    assert torch.allclose(raw(f) * 30.0, head(f), atol=1e-5)


def test_torchvision_backbone_loads_local_weights(tmp_path):
    import torchvision

    ref = torchvision.models.resnet50(weights=None)
    torch.nn.init.constant_(ref.conv1.weight, 0.01)
    torch.save({"state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, tmp_path / "r50.pt")
    m = build_model("resnet50", 10, classifier="cosine", pretrained=str(tmp_path / "r50.pt"))
    assert torch.equal(m.backbone.net.conv1.weight, ref.conv1.weight)
    assert m.feature_dim == 2048 and m.classifier.weight.shape == (10, 2048)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a resnet50 state dict"):
        build_model("resnet50", 10, pretrained=str(tmp_path / "bad.pt"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_model("resnet50", 10, pretrained=str(tmp_path / "missing.pt"))


def test_unknown_model_names_choices():
    with pytest.raises(ValueError, match="unknown model 'resnet33'; did you mean resnet32"):
        build_model("resnet33", 10)
