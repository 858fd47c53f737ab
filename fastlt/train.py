"""``fastlt train``: one flat training loop, readable top to bottom, the same for every method.

    fastlt train --dataset digits-lt --method cpmix [--key value ...] [--runs runs] [--resume runs/X]
    torchrun --nproc_per_node 2 -m fastlt train --dataset digits-lt --method bs

The data path of DESIGN.md §1, step by step:

    plan  = producer.make_plan(step)                  # shard rows (PlanQueue thread, `lookahead` ahead)
    batch = pipeline.load(plan)                       # uint8 NHWC on the device (pipeline thread, prefetched)
    out   = method.loss(model, batch, ctx)            # mix (fused kernel) → forward → loss
    out.loss.backward(); optimizer.step()             # (gradients averaged across ranks under DDP)
    queue.done(step, mispredicted (y, ŷ) pairs)       # → confusion counts → later CP-Mix plans
    (epoch end) evaluate → last.pt / best.pt → metrics.jsonl → next stage

Everything random is a function of (seed, epoch, step): plans come from seeded producers, augmentation from
the plan's seed, λ and permutations from a generator seeded by ``step_seed(seed, epoch, step)``. So a run
resumed from ``last.pt`` (written atomically at every epoch end) replays exactly what an uninterrupted run
computes from that epoch on.

DDP: every rank runs this same loop on its slice of every plan (``StepPlan.shard``); gradients are averaged
with one ``all_reduce`` per step (a flat bucket: no wrapper, so methods may call ``model.features`` or any
head directly); mispredicted pairs are all-gathered before ``queue.done`` so every rank's confusion counts —
and therefore every rank's CP-Mix plans — stay identical; BatchNorm running statistics are averaged at epoch
end; evaluation confusion matrices are summed. Only rank 0 writes files.

Run directory ``<runs>/<name>/``: ``recipe.json`` (resolved recipe), ``metrics.jsonl`` (one line per epoch,
appended after that epoch's checkpoint), ``last.pt`` / ``best.pt`` (atomic; ``fastlt.checkpoint``),
``eval.json`` + ``confusion.png`` + ``per_class_accuracy.png`` after the last epoch (``fastlt.metrics``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from fastlt import metrics as M
from fastlt.checkpoint import (
    CHECKPOINT_VERSION,
    CheckpointError,
    check_recipe,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from fastlt.methods.base import Method, Priors, Stage, StepContext, get_method, stage_at, stage_start
from fastlt.pipelines.plan import PlanQueue, eval_plans, step_seed
from fastlt.recipes import DATASETS, METHODS, Recipe, RecipeError, apply_overrides, preset
from fastlt.shards import ShardError, check_same_conversion

# How to make each dataset's shard (printed when one is missing).
CONVERT_COMMANDS = {
    "digits-lt": "tools/convert digits-lt --out {root}",
    "cifar10-lt": "tools/convert cifar10-lt /path/to/cifar-10-batches-py --imbalance-factor 100 --out {root}",
    "cifar100-lt": "tools/convert cifar100-lt /path/to/cifar-100-python --imbalance-factor 100 --out {root}",
    "imagenet-lt": "tools/convert imagenet-lt --root /path/to/imagenet --train ImageNet_LT_train.txt "
    "--test ImageNet_LT_test.txt --out {root}",
    "places-lt": "tools/convert places-lt --root /path/to/places365 --train Places_LT_train.txt "
    "--test Places_LT_test.txt --out {root}",
    "inat2018": "tools/convert inat2018 /path/to/inat2018 --out {root}",
}


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, missing shard, refused resume); the message says why."""


# ------------------------------------------------------------------------------------------ setup helpers
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(recipe: Recipe) -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: NCCL when training on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    cuda = recipe.device != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(recipe: Recipe, d: Dist) -> torch.device:
    if recipe.device == "cuda" or (recipe.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainingError("--device cuda was asked for, but no CUDA GPU is visible")
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


def open_split(recipe: Recipe, split: str):
    """Open ``<data_root>/<dataset>/<split>.beton``; a missing shard names the command that makes it."""
    from fastlt.shards import ShardError, open_shard, shard_paths

    beton, index = shard_paths(recipe.data_root, recipe.dataset, split)
    if not beton.exists() and not index.exists():
        cmd = CONVERT_COMMANDS[recipe.dataset].format(root=recipe.data_root)
        raise TrainingError(f"shard {beton} not found. Make it with:\n    {cmd}")
    try:
        return open_shard(beton)
    except ShardError as e:
        raise TrainingError(str(e)) from None


def choose_pipeline(recipe: Recipe, shard, device: torch.device) -> str:
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
        seed=recipe.seed + (0 if train else 1),
        workers=recipe.workers,
    )


def lr_at(recipe: Recipe, stage: Stage, group_epochs: int, t: float) -> float:
    """Learning rate ``t`` epochs (fractional) into a stage group of ``group_epochs`` epochs.

    Linear warmup over ``warmup_epochs``, then the group's schedule: cosine decays to 0 at the
    group's end, multistep multiplies by ``lr_decay`` at each milestone, constant stays.
    """
    base = stage.lr if stage.lr is not None else recipe.lr
    schedule = stage.schedule or recipe.schedule
    warm = stage.warmup_epochs if stage.warmup_epochs is not None else recipe.warmup_epochs
    milestones = stage.milestones if stage.milestones is not None else recipe.milestones
    if warm > 0 and t < warm:
        return base * (t + 1e-3) / warm  # never exactly zero: the first step still moves
    if schedule == "cosine":
        span = max(group_epochs - warm, 1e-9)
        return base * 0.5 * (1 + math.cos(math.pi * min(max(t - warm, 0.0) / span, 1.0)))
    if schedule == "multistep":
        return base * recipe.lr_decay ** sum(t >= m for m in milestones)
    return base


def make_optimizer(recipe: Recipe, params, lr: float) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=recipe.momentum,
            weight_decay=recipe.weight_decay,
            nesterov=recipe.nesterov,
        )
    cls = torch.optim.Adam if recipe.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, weight_decay=recipe.weight_decay)


def set_trainable(method: Method, model: nn.Module, stage: Stage) -> list[nn.Parameter]:
    params = method.trainable_parameters(model, stage)
    keep = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return params


def group_span(stages, index: int) -> tuple[int, int]:
    """(first epoch, number of epochs) of the group that stage ``index`` belongs to (consecutive stages)."""
    stages = list(stages)
    g = stages[index].group
    lo = index
    while lo > 0 and stages[lo - 1].group == g:
        lo -= 1
    hi = index
    while hi + 1 < len(stages) and stages[hi + 1].group == g:
        hi += 1
    return stage_start(stages, lo), sum(s.epochs for s in stages[lo : hi + 1])


def all_reduce_grads(params, world: int) -> None:
    """Average gradients over ranks with one flat all_reduce."""
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    pos = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[pos : pos + n].view_as(g))
        pos += n


def gather_pairs(y: torch.Tensor, yhat: torch.Tensor, d: Dist) -> tuple[np.ndarray, np.ndarray]:
    """Mispredicted (y, ŷ) of this step from every rank, in rank order (identical on all ranks)."""
    wrong = y != yhat
    y, yhat = y[wrong], yhat[wrong]
    if d.world > 1:
        import torch.distributed as dist

        local = torch.stack([y, yhat]).to(torch.int64)
        n = torch.tensor([local.shape[1]], device=local.device)
        sizes = [torch.zeros_like(n) for _ in range(d.world)]
        dist.all_gather(sizes, n)
        top = int(max(s.item() for s in sizes))
        padded = torch.zeros(2, top, dtype=torch.int64, device=local.device)
        padded[:, : local.shape[1]] = local
        bufs = [torch.zeros_like(padded) for _ in range(d.world)]
        dist.all_gather(bufs, padded)
        parts = [b[:, : int(s.item())] for b, s in zip(bufs, sizes)]
        cat = torch.cat(parts, dim=1)
        y, yhat = cat[0], cat[1]
    return y.cpu().numpy().astype(np.int64), yhat.cpu().numpy().astype(np.int64)


def average_buffers(model: nn.Module, d: Dist) -> None:
    """Average floating buffers (BatchNorm running statistics) across ranks."""
    if d.world <= 1:
        return
    import torch.distributed as dist

    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b /= d.world


@torch.no_grad()
def evaluate(
    model: nn.Module,
    method: Method,
    pipeline,
    index,
    recipe: Recipe,
    device: torch.device,
    d: Dist,
    ctx_kwargs: dict,
) -> tuple[dict, np.ndarray]:
    """Confusion matrix over the whole split (split across ranks, summed), then the summary."""
    model.eval()
    cm = M.ConfusionMatrix(index.num_classes, device)
    plans = eval_plans(index.num_rows, recipe.eval_batch_size, d.rank, d.world)
    plans = (p for p in plans if len(p.rows))
    ctx = StepContext(
        recipe=recipe,
        stage=Stage("eval", 1),
        epoch=0,
        step=0,
        device=device,
        generator=torch.Generator().manual_seed(0),
        **ctx_kwargs,
    )
    with autocast(device, recipe):
        for batch in pipeline.batches(plans):
            logits = method.eval_logits(model, ctx.normalize(batch.images))
            cm.update(batch.labels, logits.argmax(1))
    cm.all_reduce()
    mat = cm.numpy()
    return M.summarize(mat, index.group_ids), mat


def autocast(device: torch.device, recipe: Recipe):
    if device.type == "cuda" and recipe.amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Progress:
    """tqdm bar per epoch (loss, img/s, data-wait fraction), only on rank 0 and only when asked."""

    def __init__(self, enabled: bool, total: int, desc: str):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)

    def update(self, **postfix) -> None:
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------------------ the loop
def train(recipe: Recipe, runs: str | os.PathLike = "runs", resume: bool = False, log=print) -> dict:
    """Train ``recipe`` into ``<runs>/<recipe.run_name>``; return the final evaluation summary."""
    d = init_distributed(recipe)
    device = pick_device(recipe, d)
    log = log if d.main else (lambda *a, **k: None)
    run_dir = Path(runs) / recipe.run_name
    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed % 2**32)

    # -- data and model -----------------------------------------------------------------------------
    train_shard = open_split(recipe, recipe.train_split)
    eval_shard = open_split(recipe, recipe.eval_split)
    try:  # the eval split's many/medium/few groups must come from *this* train split's counts
        check_same_conversion(train_shard, eval_shard)
    except ShardError as e:
        raise TrainingError(str(e)) from None
    index = train_shard.index
    method = get_method(recipe.method)(recipe)
    stages = method.stages()
    total_epochs = sum(s.epochs for s in stages)
    priors = Priors(index.train_counts).to(device)
    model = method.build_model(index.num_classes).to(device)
    cuda = device.type == "cuda"
    if cuda and recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ctx_kwargs = dict(
        priors=priors,
        mean=tuple(recipe.mean),
        std=tuple(recipe.std),
        dtype=torch.bfloat16 if cuda and recipe.amp else torch.float32,
    )
    from fastlt.sampling import ConfusionCounts

    counts = ConfusionCounts(index.num_classes)  # CP-Mix pairs; every method collects them (cheap, O(nnz))
    pipe_name = choose_pipeline(recipe, train_shard, device)
    train_pipe = build_pipeline(pipe_name, train_shard, recipe, device, train=True)
    eval_pipe = build_pipeline(pipe_name, eval_shard, recipe, device, train=False)

    # -- resume ---------------------------------------------------------------------------------------
    start_epoch, global_step, best, opt_state, opt_group = 0, 0, -1.0, None, None
    if resume:
        ckpt_path = run_dir / "last.pt"
        try:
            state = load_checkpoint(ckpt_path)
            check_recipe(state, recipe, ckpt_path)
        except CheckpointError as e:
            raise TrainingError(str(e)) from None
        model.load_state_dict(state["model"])
        counts.load_state_dict(state["sampler"]["counts"])
        method.load_state_dict(state["method"])
        set_rng_state(state["rng"])
        start_epoch, global_step = state["epoch"] + 1, state["global_step"]
        best, opt_state, opt_group = state["best"], state["optimizer"], state["optimizer_group"]
        log(f"resuming {run_dir} at epoch {start_epoch + 1}/{total_epochs} (step {global_step})")
        if d.main:
            _truncate_metrics(run_dir / "metrics.jsonl", state["epoch"])
    elif d.main:
        if (run_dir / "last.pt").exists():
            raise TrainingError(
                f"{run_dir} already holds a run; pass --resume {run_dir} or choose another --name"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        recipe.save(run_dir / "recipe.json")
    if d.main:
        log(
            f"{recipe.dataset} × {recipe.method}: {index.num_rows} train images, "
            f"{index.num_classes} classes, "
            f"model {recipe.model}, pipeline {pipe_name}, device {device}"
            + (f", {d.world} ranks" if d.world > 1 else "")
            + f" → {run_dir}"
        )

    optimizer, cur_group, cur_stage, summary, record = None, None, None, None, None
    try:
        for epoch in range(start_epoch, total_epochs):
            # -- stage switch (data: which plans, which parameters train, which optimiser group) -----------
            si, stage = stage_at(stages, epoch)
            g_start, g_epochs = group_span(stages, si)
            if si != cur_stage:
                # stages of one group train the same parameters with one optimiser and one LR schedule
                params = set_trainable(method, model, stage)
                if stage.group != cur_group:
                    optimizer = make_optimizer(
                        recipe, params, lr_at(recipe, stage, g_epochs, epoch - g_start)
                    )
                    if opt_state is not None and opt_group == stage.group:
                        optimizer.load_state_dict(opt_state)
                    opt_state, cur_group = None, stage.group
                cur_stage = si
                first = stage_start(stages, si)
                log(
                    f"stage {stage.name} (epochs {first + 1}–{first + stage.epochs}): plans {stage.plan!r}, "
                    f"training {stage.trainable}, optimiser group {stage.group!r}"
                )
            trainable = [p for p in model.parameters() if p.requires_grad]
            producer = method.producer(
                index, stage, recipe.seed, counts, first_epoch=epoch, first_step=global_step
            )
            steps = producer.steps_per_epoch
            if recipe.steps_per_epoch:
                steps = min(steps, recipe.steps_per_epoch)
            step0 = global_step
            queue = PlanQueue(
                producer.make_plan,
                steps=range(step0, step0 + steps),
                lookahead=recipe.lookahead,
                apply=producer.apply,
                rank=d.rank,
                world_size=d.world,
            )
            method.set_train_mode(model, stage)
            bar = Progress(
                recipe.progress and d.main, steps, f"epoch {epoch + 1}/{total_epochs} {stage.name}"
            )
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.int64)
            seen = images = 0
            wait = 0.0
            t_epoch = time.perf_counter()
            batches = train_pipe.batches(queue)
            try:
                for i in range(steps):
                    t0 = time.perf_counter()
                    batch = next(batches)  # plan → batch (loaded ahead on the pipeline thread)
                    wait += time.perf_counter() - t0
                    for group in optimizer.param_groups:
                        group["lr"] = lr_at(recipe, stage, g_epochs, epoch - g_start + i / steps)
                    gen = torch.Generator().manual_seed(step_seed(recipe.seed, epoch, global_step, 7))
                    ctx = StepContext(
                        recipe=recipe,
                        stage=stage,
                        epoch=epoch,
                        step=global_step,
                        device=device,
                        generator=gen,
                        **ctx_kwargs,
                    )
                    with autocast(device, recipe):
                        out = method.loss(model, batch, ctx)  # mix → forward → loss
                    optimizer.zero_grad(set_to_none=True)
                    out.loss.backward()
                    if d.world > 1:
                        all_reduce_grads(trainable, d.world)
                    optimizer.step()
                    # confusion update: mispredicted pairs of the un-mixed samples, gathered over ranks
                    pairs = None
                    if out.logits is not None:
                        pred = out.logits.detach().argmax(1)
                        pairs = gather_pairs(out.labels, pred, d)
                        correct += (pred == out.labels).sum()
                        seen += out.labels.numel()
                    queue.done(global_step, pairs)
                    loss_sum += out.loss.detach().float()
                    images += len(batch)
                    global_step += 1
                    if i % 10 == 9 or i == steps - 1:
                        lv = loss_sum.item() / (i + 1)
                        if not math.isfinite(lv):
                            raise TrainingError(
                                f"loss is {lv} at epoch {epoch + 1} step {i + 1} ({recipe.method}, lr "
                                f"{optimizer.param_groups[0]['lr']:.3g}); stopping. The last good checkpoint "
                                f"is {run_dir / 'last.pt'} (epoch {epoch}); lower --lr or check the data."
                            )
                        el = time.perf_counter() - t_epoch
                        bar.update(
                            loss=f"{lv:.3f}", **{"img/s": f"{images / el:.0f}", "wait": f"{wait / el:.0%}"}
                        )
                    else:
                        bar.update()
            finally:
                bar.close()
                with contextlib.suppress(StopIteration):
                    batches.close()
                queue.close()  # applies pending pairs: counts now cover every finished step
            elapsed = time.perf_counter() - t_epoch
            average_buffers(model, d)
            if d.world > 1:  # train metrics over all ranks: mean loss, accuracy over every rank's samples
                import torch.distributed as dist

                tally = torch.stack(
                    [loss_sum.double(), correct.double(), torch.tensor(float(seen), device=device)]
                )
                dist.all_reduce(tally)
                loss_sum, correct, seen = tally[0] / d.world, tally[1], int(tally[2].item())

            # -- epoch end: evaluate, log, checkpoint ------------------------------------------------------
            last = epoch == total_epochs - 1
            every = recipe.eval_every
            summary = None
            if every > 0 and ((epoch + 1) % every == 0 or last):
                summary, matrix = evaluate(
                    model, method, eval_pipe, eval_shard.index, recipe, device, d, ctx_kwargs
                )
            test = {k: (summary[k] if summary else None) for k in ("many", "medium", "few", "all")}
            train_loss = loss_sum.item() / max(steps, 1)
            record = {
                "epoch": epoch,
                "stage": stage.name,
                "step": global_step,
                "lr": optimizer.param_groups[0]["lr"],
                "train_loss": train_loss,
                "train_acc": 100 * correct.item() / seen if seen else None,
                "img_per_s": images * d.world / elapsed,
                "steps_per_s": steps / elapsed,
                "data_wait": wait / elapsed,
                "confusion_pairs": int(counts.total),
                **test,
            }
            is_best = test["all"] is not None and test["all"] > best
            best = max(best, test["all"] or 0.0)
            if d.main:
                state = {
                    "version": CHECKPOINT_VERSION,
                    "epoch": epoch,
                    "global_step": global_step,
                    "recipe": recipe.to_json(),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "optimizer_group": stage.group,
                    "schedule": {
                        "group": stage.group,
                        "group_start_epoch": g_start,
                        "group_epochs": g_epochs,
                    },
                    "sampler": {"counts": counts.state_dict()},
                    "method": method.state_dict(),
                    "rng": rng_state(),
                    "best": best,
                    "metrics": record,
                }
                save_checkpoint(run_dir / "last.pt", state)
                if is_best:
                    save_checkpoint(run_dir / "best.pt", state)
                # after the checkpoint: a metrics line always has its checkpoint (resume drops lines past it)
                M.append_jsonl(run_dir / "metrics.jsonl", record)
                log(
                    f"epoch {epoch + 1:>3}/{total_epochs} {stage.name:<8} loss {train_loss:.4f} "
                    f"acc {_f(record['train_acc'])} | test many {_f(test['many'])} "
                    f"medium {_f(test['medium'])} "
                    f"few {_f(test['few'])} all {_f(test['all'])} | {record['img_per_s']:.0f} img/s, "
                    f"data wait {record['data_wait']:.0%}"
                )
        if summary is None and recipe.eval_every > 0:  # resumed a finished run: evaluate what is there
            summary, matrix = evaluate(
                model, method, eval_pipe, eval_shard.index, recipe, device, d, ctx_kwargs
            )
    finally:  # also on errors (NaN, interrupt): stop the loader threads, free the resident split
        train_pipe.close()
        eval_pipe.close()
    if d.world > 1:  # every rank must hold the same counts (they drive identical CP-Mix plans): show it
        print(
            f"[rank {d.rank}] confusion counts: {counts.total} pairs, sha256 {counts_digest(counts)}",
            flush=True,
        )
    if d.main and summary is not None:
        M.write_eval(
            run_dir,
            summary,
            eval_shard.index,
            matrix,
            extra={"checkpoint": "last.pt", "epochs": total_epochs},
        )
    return summary if summary is not None else record


def counts_digest(counts) -> str:
    """sha256 of the confusion counts as sorted (y, ŷ, count) triples (layout-independent)."""
    import hashlib

    y, yhat, w = counts.pairs()
    return hashlib.sha256(np.stack([y, yhat, w]).astype(np.int64).tobytes()).hexdigest()[:16]


def _f(v) -> str:
    return " n/a" if v is None else f"{v:4.1f}"


def _truncate_metrics(path: Path, last_epoch: int) -> None:
    """Drop lines of epochs after the checkpoint (written by a run killed before its next checkpoint)."""
    if not path.exists():
        return
    keep = [
        ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["epoch"] <= last_epoch
    ]
    path.write_text("".join(ln + "\n" for ln in keep))


# ------------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastlt train",
        description="Train a recipe (dataset × method preset, plus --key value overrides of any recipe key).",
        epilog="Any recipe key can be overridden, e.g. --epochs 10 --lr 0.05 --milestones 160,180 "
        "--amp false. "
        "See fastlt/recipes.py for the keys and presets.",
    )
    p.add_argument("--dataset", default=None, help=f"one of {', '.join(DATASETS)} (default digits-lt)")
    p.add_argument("--method", default=None, help=f"one of {', '.join(METHODS)} (default bs)")
    p.add_argument("--runs", default="runs", help="folder of run directories (default runs)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue runs/X from its last.pt")
    p.add_argument("--print-recipe", action="store_true", help="print the resolved recipe as JSON and exit")
    return p


def resolve_cli(argv: list[str]) -> tuple[Recipe, argparse.Namespace]:
    args, rest = build_parser().parse_known_args(argv)
    if args.resume:
        run = Path(args.resume)
        if not (run / "recipe.json").exists():
            raise RecipeError(f"--resume {run}: no recipe.json there (not a fastlt run directory)")
        recipe = Recipe.load(run / "recipe.json")
        if args.dataset and args.dataset != recipe.dataset or args.method and args.method != recipe.method:
            raise RecipeError(f"--resume {run}: that run is {recipe.dataset} × {recipe.method}")
        args.runs = str(run.parent)
        recipe = apply_overrides(recipe, rest)
        if recipe.run_name != run.name:
            recipe = apply_overrides(recipe, [("name", run.name)])
    else:
        recipe = apply_overrides(preset(args.dataset or "digits-lt", args.method or "bs"), rest)
    return recipe, args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        recipe, args = resolve_cli(argv)
        if args.print_recipe:
            print(json.dumps(recipe.to_json(), indent=1))
            return 0
        summary = train(recipe, args.runs, resume=bool(args.resume))
    except (RecipeError, TrainingError) as e:
        print(f"fastlt train: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(M.TABLE_HEADER)
        print(M.format_row(f"{recipe.dataset}/{recipe.method}", summary))
    return 0
