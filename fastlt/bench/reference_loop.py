"""The training loop users run today, which ``tools/bench step`` measures beside fastlt's trainer.

Same model, image size, batch size, worker count, optimiser and device as the fastlt run it is compared with:

* data: torchvision ``datasets.ImageFolder`` over the *original* JPEG files the shard was converted from (a
  folder per class of links to them: :func:`imagefolder_tree`), PIL ``RandomResizedCrop`` +
  ``RandomHorizontalFlip`` + ``ToTensor`` + ``Normalize`` in a shuffled ``DataLoader`` (persistent workers,
  pinned memory on CUDA);
* model: torchvision's constructor for the ImageNet backbones (resnet50, resnet152, resnext50); fastlt's own
  module for its small nets (smallnet, resnet32), which torchvision does not have;
* loss: ``F.cross_entropy``; for mixup and cutmix, timm's ``Mixup(mode='batch')`` (one λ — one box — per
  batch, the batch mixed with its reverse) + ``SoftTargetCrossEntropy``. CP-Mix, ConCutMix, LFM, Balanced
  Softmax and LDAM-DRW have no off-the-shelf loop: :func:`reference_kind` compares them with the CE loop;
* SGD with the recipe's learning rate, momentum and weight decay (constant: a schedule costs nothing
  measurable); on CUDA the recipe's bf16 autocast and channels-last memory, as fastlt's trainer uses.

Timing mirrors the trainer's epochs: :meth:`ReferenceLoop.epoch` runs ``steps`` steps from the start of an
iteration over the loader to the last optimiser step (the loss is read once at the end, which waits for the
device), and counts the time blocked in ``next(batches)`` as data wait.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# Methods whose published loop is available off the shelf (timm); every other one is compared with CE.
TIMM_MIXING = ("mixup", "cutmix")
TORCHVISION_MODELS = ("resnet50", "resnet152", "resnext50")


def reference_kind(method: str) -> str:
    """The reference loop ``method`` is compared with: its timm loop for mixup / cutmix, the CE loop else."""
    return method if method in TIMM_MIXING else "ce"


def describe(kind: str, model: str) -> str:
    """What the reference loop of ``kind`` runs, in words, for tables and the JSON record."""
    net = f"torchvision {model}" if model in TORCHVISION_MODELS else f"fastlt {model} module"
    loss = "F.cross_entropy" if kind == "ce" else f"timm Mixup({kind}, mode='batch') + SoftTargetCrossEntropy"
    return f"ImageFolder + PIL DataLoader, {net}, {loss}, SGD"


@dataclass(frozen=True)
class LoopConfig:
    """Everything the reference loop shares with the fastlt run it is measured against."""

    model: str
    num_classes: int
    image_size: int
    batch_size: int
    workers: int
    device: str  # cpu | cuda
    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    mix_alpha: float
    amp: bool  # bf16 autocast (CUDA only)
    channels_last: bool  # CUDA only
    model_width: int
    seed: int
    compile: bool  # torch.compile the model, as a user who compiles would in this loop

    @classmethod
    def from_recipe(cls, recipe, num_classes: int) -> LoopConfig:
        """The reference settings of a resolved fastlt recipe (device chosen as ``pick_device`` does)."""
        cuda = recipe.device != "cpu" and torch.cuda.is_available()
        return cls(
            model=recipe.model, num_classes=num_classes, image_size=recipe.image_size,
            batch_size=recipe.batch_size, workers=recipe.workers, device="cuda" if cuda else "cpu",
            lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
            nesterov=recipe.nesterov,
            mean=tuple(recipe.mean), std=tuple(recipe.std), mix_alpha=recipe.mix_alpha,
            amp=cuda and recipe.amp, channels_last=cuda and recipe.channels_last,
            model_width=recipe.model_width, seed=recipe.seed, compile=recipe.compile,
        )


@dataclass(frozen=True)
class EpochTiming:
    steps: int
    seconds: float
    wait: float  # seconds blocked in next(batches)
    loss: float  # mean training loss of the epoch

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds


def imagefolder_tree(files: list[Path], labels, root: Path) -> Path:
    """``root/<class>/<file>.jpg`` links to ``files`` (made once): the layout ``ImageFolder`` reads. Class
    folders are zero-padded label numbers, so ImageFolder's sorted class indices are the shard's labels."""
    from fastlt.bench.loader import link_tree

    root = Path(root)
    done = root / ".complete"
    if done.exists():
        return root
    partial = root.with_name(root.name + ".partial")
    if partial.exists():
        import shutil

        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    link_tree(files, labels, partial)
    (partial / ".complete").touch()
    partial.rename(root)
    return root


def reference_model(cfg: LoopConfig) -> nn.Module:
    if cfg.model in TORCHVISION_MODELS:
        import torchvision.models as tvm

        ctor = {"resnet50": tvm.resnet50, "resnet152": tvm.resnet152, "resnext50": tvm.resnext50_32x4d}
        return ctor[cfg.model](weights=None, num_classes=cfg.num_classes)
    from fastlt.models import build_model

    return build_model(cfg.model, cfg.num_classes, classifier="linear", width=cfg.model_width)


def imagefolder_loader(root: Path, cfg: LoopConfig, steps: int) -> torch.utils.data.DataLoader:
    """A shuffled loader of ``steps`` batches per iteration (drawn with replacement only when the folder
    holds fewer than ``steps · B`` images)."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([
        transforms.RandomResizedCrop(cfg.image_size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(cfg.mean, cfg.std),
    ])
    ds = datasets.ImageFolder(str(root), transform=tf)
    n = steps * cfg.batch_size
    gen = torch.Generator().manual_seed(cfg.seed)
    sampler = torch.utils.data.RandomSampler(ds, replacement=n > len(ds), num_samples=n, generator=gen)
    return torch.utils.data.DataLoader(
        ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers, drop_last=True,
        pin_memory=cfg.device == "cuda", persistent_workers=cfg.workers > 0,
    )


class ReferenceLoop:
    """One reference training run (model, optimiser, loader, loss) whose epochs are timed one by one."""

    def __init__(self, root: Path, kind: str, cfg: LoopConfig, steps: int):
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        if kind not in ("ce", *TIMM_MIXING):
            raise ValueError(f"no reference loop {kind!r}; choose from ce, {', '.join(TIMM_MIXING)}")
        torch.manual_seed(cfg.seed)
        self.cfg, self.steps, self.device = cfg, steps, torch.device(cfg.device)
        self.memory = torch.channels_last if cfg.channels_last else torch.preserve_format
        self.model = reference_model(cfg).to(self.device, memory_format=self.memory)
        if cfg.compile:
            self.model.compile()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
        self.loader = imagefolder_loader(root, cfg, steps)
        self.mixup, self.criterion = None, F.cross_entropy
        if kind in TIMM_MIXING:
            alphas = {"mixup_alpha": cfg.mix_alpha, "cutmix_alpha": 0.0}
            if kind == "cutmix":
                alphas = {"mixup_alpha": 0.0, "cutmix_alpha": cfg.mix_alpha}
            # label_smoothing 0: fastlt's mixing methods weigh the two labels only
            self.mixup = Mixup(**alphas, mode="batch", label_smoothing=0.0, num_classes=cfg.num_classes)
            self.criterion = SoftTargetCrossEntropy()

    def epoch(self) -> EpochTiming:
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        wait = 0.0
        t0 = time.perf_counter()
        batches = iter(self.loader)
        for _ in range(self.steps):
            tw = time.perf_counter()
            x, y = next(batches)
            wait += time.perf_counter() - tw
            loss_sum += self.step(x, y)
        loss = loss_sum.item() / self.steps  # host read: waits for the last step
        return EpochTiming(self.steps, time.perf_counter() - t0, wait, loss)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True, memory_format=self.memory)
        y = y.to(self.device, non_blocking=True)
        target = y
        if self.mixup is not None:
            x, target = self.mixup(x, y)
        with torch.autocast("cuda", dtype=torch.bfloat16) if self.cfg.amp else contextlib.nullcontext():
            logits = self.model(x)
        loss = self.criterion(logits.float(), target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()
