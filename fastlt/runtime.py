"""What training and evaluation share: the opened splits, the pipelines over them, and the :class:`Runtime`
(device, image dtype, normalisation, class priors, the fused normalise/mix kernel).

Both ``fastlt.train`` and ``fastlt.evaluate`` import this module; neither imports the other's loop.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn

from fastlt.recipes import Recipe


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, missing shard, refused resume); the message says why."""


# ---------------------------------------------------------------------------------------------- priors
class Priors(nn.Module):
    """Class statistics of the *training* split as buffers (they follow ``.to(device)``, never train).

    ``counts``     float[C] n_c (a class absent from training counts as 1 so logs stay finite)
    ``log_counts`` float[C] log n_c      — Balanced Softmax adds it to the logits
    ``log_prior``  float[C] log π_c      — logit adjustment adds τ·log π_c
    """

    def __init__(self, train_counts):
        super().__init__()
        n = torch.as_tensor(train_counts, dtype=torch.float32).clamp_min(1.0)
        self.register_buffer("counts", n)
        self.register_buffer("log_counts", n.log())
        self.register_buffer("log_prior", (n / n.sum()).log())

    @property
    def num_classes(self) -> int:
        return int(self.counts.shape[0])


# ---------------------------------------------------------------------------------------------- runtime
@dataclass
class Runtime:
    """Where and how images reach the model: every image goes through the fused kernel (normalise, and for
    mixing methods mix pixels and weigh labels) in ``dtype`` on ``device``."""

    device: torch.device
    priors: Priors  # on ``device``
    mean: tuple[float, float, float]  # 0–1 units (×255 inside the kernel)
    std: tuple[float, float, float]
    dtype: torch.dtype = torch.float32  # image dtype handed to the model (bf16 under CUDA autocast)
    amp: bool = False  # bf16 autocast around forward passes (CUDA only)

    @classmethod
    def create(cls, recipe: Recipe, train_counts, device: torch.device) -> Runtime:
        amp = device.type == "cuda" and recipe.amp
        return cls(
            device=device,
            priors=Priors(train_counts).to(device),
            mean=tuple(recipe.mean),
            std=tuple(recipe.std),
            dtype=torch.bfloat16 if amp else torch.float32,
            amp=amp,
        )

    def autocast(self):
        if self.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8[B,H,W,3] → normalised float[B,3,H,W] (channels-last memory), ``self.dtype``."""
        from fastlt.kernels.mix import mix_images

        return mix_images(images, mean=self.mean, std=self.std, out_dtype=self.dtype).images

    def mix(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        lam: torch.Tensor,
        *,
        y_a: torch.Tensor,
        y_b: torch.Tensor,
        rule: str = "mixup",
        boxes: torch.Tensor | None = None,
        idx_a=None,
        idx_b=None,
        **rule_params,
    ):
        """Mix ``a`` with ``b`` (per-sample λ; CutMix when ``boxes`` is given), normalise, and weigh labels
        with ``rule`` (mixup | cutmix | remix | cpmix | lfm, using the training class counts) in one pass.

        Returns ``kernels.mix.Mixed(images, lam_y)``: label = λ_y·y_a + (1 − λ_y)·y_b.
        """
        from fastlt.kernels.mix import CUTMIX, MIXUP, mix_images

        if boxes is None and rule == "cutmix":
            raise ValueError("rule 'cutmix' needs boxes (see kernels.mix.cutmix_boxes)")
        # one mode for the whole batch, given as a number: the kernel knows it on the host (no device read)
        mode = MIXUP if boxes is None else CUTMIX
        return mix_images(
            a,
            b,
            idx_a=idx_a,
            idx_b=idx_b,
            lam=lam,
            boxes=boxes,
            mode=mode,
            mean=self.mean,
            std=self.std,
            out_dtype=self.dtype,
            rule=rule,
            y_a=y_a,
            y_b=y_b,
            class_counts=self.priors.counts,
            **rule_params,
        )


# ---------------------------------------------------------------------------------------------- data
def pick_device(recipe: Recipe, local_rank: int = 0) -> torch.device:
    if recipe.device == "cuda" or (recipe.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainingError("--device cuda was asked for, but no CUDA GPU is visible")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def open_split(recipe: Recipe, split: str):
    """Open ``<data_root>/<dataset>/<split>.beton``; a missing shard names the command that makes it. With the
    recipe's ``full_verify`` the file is hashed in full (``fastlt.shards.open_shard``)."""
    from fastlt.datasets.registry import DATASETS, convert_command, own_convert_command
    from fastlt.shards import ShardError, open_shard, shard_paths

    beton, index = shard_paths(recipe.data_root, recipe.dataset, split)
    if not beton.exists() and not index.exists():
        known = recipe.dataset in DATASETS  # else a dataset of one's own
        cmd = (convert_command if known else own_convert_command)(recipe.dataset, recipe.data_root)
        raise TrainingError(f"shard {beton} not found. Make it with:\n    {cmd}")
    try:
        return open_shard(beton, full=recipe.full_verify, progress=recipe.progress)
    except ShardError as e:
        raise TrainingError(str(e)) from None


def choose_pipeline(recipe: Recipe, shard) -> str:
    """``auto``: resident when the split is stored raw (decoded pixels of one size, e.g. CIFAR, digits) and
    all of it (N·S·S·3 bytes) fits ``memory_budget_gb``; else ffcv (JPEG decode + crop on CPU threads)."""
    if recipe.pipeline != "auto":
        return recipe.pipeline
    raw = shard.index.settings.get("write_mode") == "raw"
    decoded = shard.num_rows * recipe.image_size * recipe.image_size * 3
    return "resident" if raw and decoded <= recipe.memory_budget_gb * 2**30 else "ffcv"


def build_pipeline(name: str, shard, recipe: Recipe, device: torch.device, train: bool):
    from fastlt.pipelines import make_pipeline

    return make_pipeline(
        name,
        shard,
        train=train,
        image_size=recipe.image_size,
        device=device,
        # train and eval loaders of one run draw from different streams
        seed=recipe.seed + (0 if train else 1),
        workers=recipe.workers,
        augment=recipe.augment if train else None,  # each plan segment's policy (eval: centre crops)
    )
