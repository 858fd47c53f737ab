"""Augmentation on CUDA: the policies, parameters and torch operations of the CPU, batched on the device.

The CPU side runs the torch reference (``FASTLT_KERNELS=torch``), so both sides execute the same float32
operations; CUDA kernels may fuse a multiply-add the CPU rounds twice (or the reverse), which moves a value
by one grey level where it sits on a rounding boundary — and a later equalize or autocontrast of that image
can carry such a step to more of its values. Both policy sets of ConCutMix are checked.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastlt.pipelines.augment import Augmentation
from fastlt.pipelines.plan import StepPlan

CUDA = torch.device("cuda")
SPECS = {
    "cifar": ("main=autoaugment-cifar", "fg=autoaugment-cifar", "view1=simclr-cifar", "view2=simclr-cifar"),
    "imagenet": ("main=randaugment", "fg=randaugment", "view1=simclr", "view2=simclr"),
}


def _photos(n: int, size: int) -> torch.Tensor:
    import skimage.data
    from PIL import Image

    base = skimage.data.astronaut()
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        y, x = rng.integers(0, 256, 2)
        out.append(np.asarray(Image.fromarray(base[y : y + 256, x : x + 256]).resize((size, size))))
    return torch.from_numpy(np.stack(out))


@pytest.mark.parametrize(("spec", "size"), [("cifar", 32), ("imagenet", 96)])
def test_cuda_augmentation_matches_the_cpu_reference(spec, size, monkeypatch):
    monkeypatch.setenv("FASTLT_KERNELS", "torch")
    aug, B = Augmentation(SPECS[spec]), 16
    main = np.arange(B)
    plan = StepPlan.from_segments(0, 3, seed=4, main=main, view1=main, view2=main, fg=main[::-1].copy())
    images = _photos(4 * B, size)
    sizes = np.full(4 * B, size), np.full(4 * B, size)
    crops = aug.crops(plan, *sizes, 7, size)
    cpu = aug.apply(images.clone(), plan, 7, crops)
    gpu = aug.apply(images.to(CUDA), plan, 7, crops)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.uint8
    diff = (gpu.cpu().int() - cpu.int()).abs().float()
    assert float((diff > 0).mean()) < 0.01 and float(diff.mean(dim=(1, 2, 3)).max()) <= 1.0
