"""``tools/bench augment``: batched augmentation of ConCutMix's ImageNet policy against the per-image
transforms the released code runs, in a DataLoader, on the same CPU and the same batch.

Both sides start from the same already-cropped ``--size`` px uint8 photographs (crops of ``skimage.data``
pictures resized to the size; decode and crop are the pipelines' business, ``tools/bench loader``) and end
with the augmented uint8 images of one ConCutMix step: for each of ``--batch`` samples its classification
image and foreground (ColorJitter(0.4, 0.4, 0.4, 0) + RandAugment rand-n2-m10-mstd0.5) and its two contrastive
views (ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8 + RandomGrayscale 0.2) — 4 × batch images a step.

* baseline: torchvision v2 transforms (``RandomApply``, ``ColorJitter``, ``RandomGrayscale``, ``PILToTensor``)
  and timm's ``rand_augment_transform`` per Pillow image, as the released code composes them, in a
  ``torch.utils.data.DataLoader`` with ``--workers`` processes collating the step's batch;
* fastlt: ``fastlt.pipelines.augment.Augmentation`` on the step's uint8 NHWC batch — every segment's draws at
  once; on the CPU every row's operations in one parallel numba pass, on CUDA (when there is one) every
  operation once over the rows that chose it.

Images per second are 4 × batch / the mean time of a step over ``--steps`` consecutive steps, after warm-up
steps that start the workers and drain the batches they prefetched (the baseline: 2 per worker + 1) or compile
the numba kernels and touch the step's buffer (fastlt: 2), so both sides are measured in steady state.
Ratios are against the baseline of the same run. ``CPU ms/img`` is the process's CPU time per image where all
the work runs in this process (the baseline again with ``--workers 0``, and fastlt): unlike wall time it
barely moves when other processes share the cores.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fastlt.bench.report import keep_freed_memory, print_table, write_json

POLICIES = ("main=randaugment", "fg=randaugment", "view1=simclr", "view2=simclr")
SEGMENTS = ("main", "fg", "view1", "view2")


def photographs(n: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 [n, size, size, 3]: random crops of skimage's sample photographs resized to ``size``."""
    import skimage.data
    from PIL import Image

    bases = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        b = bases[i % len(bases)]
        side = int(rng.integers(min(b.shape[:2]) // 2, min(b.shape[:2])))
        y, x = rng.integers(0, b.shape[0] - side + 1), rng.integers(0, b.shape[1] - side + 1)
        crop = Image.fromarray(b[y : y + side, x : x + side])
        out[i] = np.asarray(crop.resize((size, size), Image.BILINEAR))
    return out


class ReleasedTransforms(torch.utils.data.Dataset):
    """Item k: the four augmented uint8 CHW images of sample k, transformed one Pillow image at a time."""

    def __init__(self, images: np.ndarray):
        import torchvision.transforms.v2 as T
        from timm.data.auto_augment import rand_augment_transform

        self.images = images
        hparams = {"translate_const": 100, "img_mean": (124, 116, 104)}  # the released code's
        ra = rand_augment_transform("rand-n2-m10-mstd0.5", hparams)
        jitter = T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.0)], p=1.0)
        self.classify = T.Compose([jitter, ra, T.PILToTensor()])
        self.view = T.Compose([T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                               T.RandomGrayscale(0.2), T.PILToTensor()])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, k: int):
        from PIL import Image

        n = len(self.images)
        a, b = Image.fromarray(self.images[k]), Image.fromarray(self.images[(k * 7 + 3) % n])
        return self.classify(a), self.classify(b), self.view(a), self.view(a)


def baseline_step(images: np.ndarray, batch: int, workers: int):
    """A callable running one step's worth of the released per-image transforms through a DataLoader."""
    loader = torch.utils.data.DataLoader(ReleasedTransforms(images), batch_size=batch, shuffle=True,
                                         num_workers=workers, persistent_workers=workers > 0, drop_last=True)
    state = {"it": iter(loader)}

    def step():
        try:
            return next(state["it"])
        except StopIteration:
            state["it"] = iter(loader)
            return next(state["it"])

    return step


def fastlt_step(images: np.ndarray, batch: int, device: torch.device):
    """A callable augmenting one step's uint8 batch with fastlt's policies on ``device`` (a new seed each
    call; the step's rows are gathered into one reused buffer first, as a pipeline hands its batch over)."""
    from fastlt.pipelines.augment import Augmentation
    from fastlt.pipelines.plan import StepPlan
    from fastlt.pipelines.transforms import Crops

    aug = Augmentation(POLICIES)
    n = len(images)
    source = torch.from_numpy(images).to(device)
    rows = np.arange(batch)
    R = 4 * batch
    crops = Crops(np.zeros((R, 4), np.int32), np.zeros(R, bool), np.zeros(R, bool),
                  np.zeros((R, 2), np.int64), np.zeros(R, bool))  # no pad-crop: the images arrive cropped
    buffer = torch.empty((R, *source.shape[1:]), dtype=torch.uint8, device=device)
    state = {"step": 0}
    sync = torch.cuda.synchronize if device.type == "cuda" else None

    def step():
        s = state["step"] = state["step"] + 1
        main = (rows + s * batch) % n
        plan = StepPlan.from_segments(0, s, seed=s, main=main, fg=(main * 7 + 3) % n, view1=main, view2=main)
        if device.type == "cpu":  # torch's uint8 index_select takes seconds on its first calls: a memcpy;
            # mode="clip" (the rows are in range): with the default "raise" numpy buffers ``out``, two copies
            np.take(images, plan.rows, axis=0, out=buffer.numpy(), mode="clip")
        else:
            torch.index_select(source, 0, torch.from_numpy(plan.rows).to(device), out=buffer)
        out = aug.apply(buffer, plan, s, crops)
        if sync:
            sync()
        return out

    return step


def steady_seconds(step, steps: int, warmup: int) -> tuple[float, float]:
    """Mean (wall, this process's CPU) seconds of ``step()`` over ``steps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/bench augment", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64, help="samples a step (4 images each; default 64)")
    p.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    p.add_argument("--images", type=int, default=512, help="distinct photographs to cycle through")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes of the baseline")
    p.add_argument("--steps", type=int, default=10, help="timed steps per row (their mean)")
    p.add_argument("--no-cpu", action="store_true", help="skip fastlt on the CPU (GPU machines)")
    p.add_argument("--out", default=None, help="folder for augment.json")
    args = p.parse_args(argv)
    keep_freed_memory()
    images = photographs(args.images, args.size)
    per_step = 4 * args.batch
    rows = []
    warmup = 2 * args.workers + 1  # start the workers, drain what they prefetched
    base, _ = steady_seconds(baseline_step(images, args.batch, args.workers), args.steps, warmup)
    rows.append({"path": f"torchvision v2 + timm per image, DataLoader ({args.workers} workers)",
                 "device": "cpu", "ms/step": 1000 * base, "img/s": per_step / base, "× baseline": 1.0})
    if args.workers:
        t, cpu = steady_seconds(baseline_step(images, args.batch, 0), max(2, args.steps // 4), 1)
        rows.append({"path": "the same in this process (--workers 0)", "device": "cpu", "ms/step": 1000 * t,
                     "img/s": per_step / t, "× baseline": base / t, "CPU ms/img": 1000 * cpu / per_step})
    devices = ([] if args.no_cpu else [torch.device("cpu")]) + \
        ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for dev in devices:
        t, cpu = steady_seconds(fastlt_step(images, args.batch, dev), args.steps, 2)
        rows.append({"path": "fastlt batched (Augmentation.apply)", "device": dev.type, "ms/step": 1000 * t,
                     "img/s": per_step / t, "× baseline": base / t, "CPU ms/img": 1000 * cpu / per_step})
    title = (f"ConCutMix ImageNet augmentation, {args.batch} samples × 4 images of {args.size} px a step, "
             f"{torch.get_num_threads()} torch threads")
    print_table(title, rows, ["path", "device", "ms/step", "img/s", "× baseline", "CPU ms/img"])
    write_json(args.out, "augment", {"args": vars(args), "rows": rows})
    return 0
