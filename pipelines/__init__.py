"""fastlt.pipelines: plan-driven loaders (resident, ffcv, dali, torch) that turn StepPlans into Batches.

    pipe = make_pipeline("ffcv", shard, train=True, image_size=224, device="cuda", seed=0, workers=8)
    batch = pipe.load(plan)                 # one plan, synchronously
    for batch in pipe.batches(plan_queue):  # in plan order, prefetched on a thread, never ahead of the plans
        ...
    pipe.close()

Every pipeline returns ``Batch(plan, rows int64[R], images uint8[R, S, S, 3] NHWC, labels int64[R])`` on
``device``, with ``S = image_size``, rows exactly as planned (repeats included) and labels from the shard
index. Train mode: each plan segment's augmentation policy (``augment``, default crop-flip: random resized
crop + flip, pad-4 crop + flip for data stored at S ≤ 64 px; ``fastlt.pipelines.augment``), seeded by the
plan — the same crops and augmentation in all four pipelines. Eval mode: deterministic centre crop (shorter
side → image_size/0.875), identity for data already S × S.
"""

from __future__ import annotations

import torch

from fastlt.names import did_you_mean
from fastlt.pipelines.base import Pipeline
from fastlt.pipelines.plan import Batch, PlanQueue, StepPlan, eval_plans, step_seed

PIPELINES = {
    "resident": ("fastlt.pipelines.resident", "ResidentPipeline"),
    "ffcv": ("fastlt.pipelines.ffcv", "FFCVPipeline"),
    "dali": ("fastlt.pipelines.dali", "DALIPipeline"),
    "torch": ("fastlt.pipelines.torch", "TorchPipeline"),
}


def make_pipeline(
    name: str,
    shard,
    *,
    train: bool,
    image_size: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
    workers: int = 2,
    prefetch: int = 2,
    augment: tuple[str, ...] | None = None,
    **options,
) -> Pipeline:
    """Build the pipeline called ``name`` (resident | ffcv | dali | torch) over an opened shard.

    ``workers`` is the pipeline's CPU parallelism (numba threads for ffcv, DALI threads, DataLoader worker
    processes for torch; unused by resident). ``prefetch`` is the depth of ``batches()``'s queue. ``augment``:
    the training policies per plan segment, as the recipe key (None: crop-flip everywhere; unused in eval
    mode). ``options`` go to the pipeline class (ffcv: ``dct_scaling``; dali: ``capacity``).
    """
    import importlib

    if name not in PIPELINES:
        hint = did_you_mean(name, PIPELINES, n=2)
        raise ValueError(f"unknown pipeline {name!r}{hint}; choose from {', '.join(PIPELINES)}")
    module, cls = PIPELINES[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        extra = {"ffcv": "ffcv", "dali": "dali"}.get(name, "all")
        raise ImportError(f"pipeline {name!r} needs {e.name}: pip install 'fastlt[{extra}]'") from e
    return getattr(mod, cls)(
        shard,
        train=train,
        image_size=image_size,
        device=device,
        seed=seed,
        workers=workers,
        prefetch=prefetch,
        augment=augment,
        **options,
    )


__all__ = [
    "PIPELINES",
    "Batch",
    "PlanQueue",
    "Pipeline",
    "StepPlan",
    "eval_plans",
    "make_pipeline",
    "step_seed",
]
