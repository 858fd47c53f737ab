"""fastlt.kernels: Triton kernels, each beside a torch reference with identical semantics and a dispatcher.

* :func:`mix_images` — gather + mixup/CutMix/none per sample + normalise + label weights λ_y, one pass,
  ``[B, 3, H, W]`` channels-last output in fp32/bf16/fp16 (``kernels/mix.py``).
* :func:`mix_labels` — the label rules alone (mixup, cutmix, remix, cpmix, lfm); :func:`cutmix_boxes` draws
  boxes and the area-corrected λ from an explicit ``torch.Generator``.
* :func:`soft_cross_entropy` — cross-entropy against sparse soft labels with logit adjustment and class
  weights, forward and backward, no dense target (``kernels/soft_ce.py``).

Implementation choice: Triton on CUDA, numba on CPU (fp32 logits for soft CE), else the torch reference;
``FASTLT_KERNELS=auto|triton|numba|torch`` or a per-call ``backend=`` forces one (``kernels/_dispatch.py``).
"""

from .mix import (
    CUTMIX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MIXUP,
    NONE,
    RULES,
    Mixed,
    cutmix_boxes,
    mix_images,
    mix_labels,
)
from .soft_ce import soft_cross_entropy

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RULES",
    "NONE",
    "MIXUP",
    "CUTMIX",
    "Mixed",
    "mix_images",
    "mix_labels",
    "cutmix_boxes",
    "soft_cross_entropy",
]
