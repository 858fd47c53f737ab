"""``fastlt train``: one flat training loop, readable top to bottom, the same for every method.

    fastlt train --dataset digits-lt --method cpmix [--key value ...] [--runs runs] [--resume runs/X]
    torchrun --nproc_per_node 2 -m fastlt train --dataset digits-lt --method bs

:func:`train` is the data path of DESIGN.md §1:

    run = setup(recipe)                               # splits, method, model, runtime, pipelines (+ resume)
    for epoch:
        stage = enter_stage(...)                      # at a boundary: trainable set, optimiser, producer
        train_epoch:                                  # per step:
            plan  = producer.make_plan(step)          #   shard rows (PlanQueue thread, `lookahead` ahead)
            batch = pipeline.load(plan)               #   uint8 NHWC on the device (pipeline thread)
            out   = method.loss(model, batch, ctx)    #   mix (fused kernel) → forward → loss
            out.loss.backward(); optimizer.step()     #   (gradients averaged across ranks under DDP)
            queue.done(step, pairs)                   #   mispredicted (y, ŷ), only for a method that asks
        evaluate → save_epoch (last.pt / best.pt → metrics.jsonl)
    finish                                            # eval.json, predictions, report.html, plots

Everything random is a function of (seed, epoch, step): plans come from seeded producers, augmentation from
the plan's seed, and the losses' λ, permutations, boxes and coins are drawn with the plan (``Method.draw``,
from ``step_seed(seed, epoch, step, OFFSET_DRAWS)``) and reach the device with the batch.
So a run resumed from ``last.pt`` (written atomically at every epoch end) replays exactly what an
uninterrupted run computes from that epoch on. DDP collectives live in ``fastlt.distributed``.

Run directory ``<runs>/<name>/``: ``recipe.json`` (resolved recipe), ``metrics.jsonl`` (one line per epoch,
appended after that epoch's checkpoint), ``last.pt`` / ``best.pt`` (atomic; ``fastlt.checkpoint``),
``eval.json`` + ``predictions.npz`` + ``report.html`` + ``per_class_accuracy.png`` (+ ``confusion.png`` for
tens of classes) after the last epoch (``fastlt.metrics``, ``fastlt.report``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from fastlt import metrics as M
from fastlt.board import stream as stream_to_tensorboard
from fastlt.checkpoint import (
    CHECKPOINT_VERSION,
    RESUME_KEYS,
    CheckpointError,
    check_fits,
    check_recipe,
    class_record,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from fastlt.distributed import (
    Dist,
    Feedback,
    GradientAverager,
    average_buffers,
    check_same_state,
    init_distributed,
    reduce_tally,
)
from fastlt.evaluate import evaluate
from fastlt.methods.base import (
    Method,
    Stage,
    StepContext,
    StepOutput,
    get_method,
    group_span,
    stage_at,
    stage_start,
    unread_keys,
)
from fastlt.optim import ModelEma
from fastlt.pipelines.plan import PlanQueue
from fastlt.plots import write_plots
from fastlt.recipes import (
    ALIASES,
    DATASETS,
    METHODS,
    Recipe,
    RecipeError,
    apply_overrides,
    resolve,
    split_overrides,
)
from fastlt.report import write_report
from fastlt.runlock import RunLock, RunLockError
from fastlt.runtime import Runtime, TrainingError, build_pipeline, choose_pipeline, open_split, pick_device
from fastlt.schedule import lr_at, make_optimizer, set_lr
from fastlt.shards import ShardError, check_same_conversion, single_group_note

LOSS_CHECK_EVERY = 10  # steps between host reads of the running loss (each read is a device sync)


# ------------------------------------------------------------------------------------------ the run
@dataclass
class Run:
    """Everything one training run holds, made by :func:`setup`; ``epoch``/``step`` advance as it trains."""

    recipe: Recipe
    dist: Dist
    dir: Path
    method: Method
    model: nn.Module
    runtime: Runtime
    stages: tuple[Stage, ...]
    eval_index: object  # ShardIndex of the eval split
    pipeline: str
    train_pipe: object
    eval_pipe: object
    log: Callable[..., None]
    epoch: int = 0  # next epoch to train (0-based)
    step: int = 0  # global step
    best: float = -1.0  # best "all" so far
    resumed_optimizer: tuple[str, dict] | None = None  # (group, state) from last.pt, until that group starts
    ema: ModelEma | None = None  # --model-ema: the average that is evaluated and checkpointed
    lock: RunLock | None = None  # run.dir/run.lock, held by rank 0 from start_run_dir / restore until close

    @property
    def total_epochs(self) -> int:
        return sum(s.epochs for s in self.stages)

    @property
    def eval_model(self) -> nn.Module:
        """What evaluation scores: the weights' moving average under --model-ema, else the weights."""
        return self.ema.module if self.ema is not None else self.model

    def close(self) -> None:  # stop the loader threads, free the resident split, let the run directory go
        self.train_pipe.close()
        self.eval_pipe.close()
        if self.lock is not None:
            self.lock.release()


def setup(recipe: Recipe, runs: str | os.PathLike, resume: bool, log=print) -> Run:
    """Open both splits, build the method, model, runtime and pipelines; restore ``last.pt`` when resuming."""
    use_cuda = recipe.device != "cpu" and torch.cuda.is_available()
    d = init_distributed(use_cuda)
    device = pick_device(recipe, d.local_rank)
    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed % 2**32)
    train_shard = open_split(recipe, recipe.train_split)
    eval_shard = open_split(recipe, recipe.eval_split)
    try:  # the eval split's many/medium/few groups must come from *this* train split's counts
        check_same_conversion(train_shard, eval_shard)
    except ShardError as e:
        raise TrainingError(str(e)) from None
    index = train_shard.index
    method = get_method(recipe.method)(recipe, index, cache_dir=Path(train_shard.beton_path).parent)
    try:
        model = method.build_model().to(device)
    except ValueError as e:  # an unknown model name, a missing or mismatched --pretrained file
        raise TrainingError(str(e)) from None
    if device.type == "cuda" and recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    pipe = choose_pipeline(recipe, train_shard)
    run = Run(
        recipe=recipe, dist=d, dir=Path(runs) / recipe.run_name, method=method, model=model,
        runtime=Runtime.create(recipe, index.train_counts, device), stages=method.stages(),
        eval_index=eval_shard.index, pipeline=pipe,
        train_pipe=build_pipeline(pipe, train_shard, recipe, device, train=True),
        eval_pipe=build_pipeline(pipe, eval_shard, recipe, device, train=False),
        log=log if d.main else (lambda *a, **k: None),
        ema=ModelEma(model, recipe.model_ema_decay, use_warmup=recipe.model_ema_warmup) if recipe.model_ema
        else None,
    )
    if recipe.compile:  # after the EMA's copy: the average stays a plain module
        method.compile_model(model)
    try:
        restore(run) if resume else start_run_dir(run)
    except BaseException:
        run.close()
        raise
    run.log(
        f"{recipe.dataset} × {recipe.method}: {index.num_rows} train images, {index.num_classes} classes, "
        f"model {recipe.model}{' (compiled)' if recipe.compile else ''}, pipeline {pipe}, device {device}"
        + (f", {d.world} ranks" if d.world > 1 else "")
        + f" → {run.dir}"
    )
    note = single_group_note(index)
    if note:
        run.log(note)
    return run


def start_run_dir(run: Run) -> None:
    if not run.dist.main:
        return
    try:
        run.dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainingError(f"cannot make the run directory {run.dir}: {e.strerror} (see --runs)") from None
    lock_run_dir(run)
    if (run.dir / "last.pt").exists():
        raise TrainingError(
            f"{run.dir} already holds a run; pass --resume {shlex.quote(str(run.dir))} or choose another "
            "--name"
        )
    run.recipe.save(run.dir / "recipe.json")


def lock_run_dir(run: Run) -> None:
    """One writer per run directory (``fastlt.runlock``): a second training or an evaluation into it is
    refused, naming this process; a lock left by a dead process is taken over."""
    try:
        run.lock = RunLock.acquire(run.dir, "fastlt train", say=run.log)
    except RunLockError as e:
        raise TrainingError(f"{e}; wait for it to finish, or train into another --name") from None


def restore(run: Run) -> None:
    """Continue from ``last.pt``: weights, method state, global RNGs, position, best, optimiser state."""
    path = run.dir / "last.pt"
    if run.dist.main:
        lock_run_dir(run)
    try:
        state = load_checkpoint(path, require=RESUME_KEYS)
        check_recipe(state, run.recipe, path)
        check_fits(state, run.recipe, run.eval_index, path)
    except CheckpointError as e:
        raise TrainingError(str(e)) from None
    try:
        run.model.load_state_dict(state["model"])
        if run.ema is not None:
            run.ema.module.load_state_dict(state["model_ema"])
        run.method.load_state_dict(state["method"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise TrainingError(f"{path}: its model or method state does not fit this run ({e})") from None
    set_rng_state(state["rng"])
    run.epoch, run.step, run.best = state["epoch"] + 1, state["global_step"], state["best"]
    run.resumed_optimizer = (state["optimizer_group"], state["optimizer"])
    run.log(f"resuming {run.dir} at epoch {run.epoch + 1}/{run.total_epochs} (step {run.step})")
    if run.dist.main:
        _truncate_metrics(run.dir / "metrics.jsonl", state["epoch"])


# ------------------------------------------------------------------------------------------ stages
@dataclass
class StageRun:
    """The stage being trained: its optimiser (shared by the stages of one group) and its one producer."""

    index: int
    stage: Stage
    group_start: int  # first epoch of the stage's group (the LR schedule spans the group)
    group_epochs: int
    optimizer: torch.optim.Optimizer
    producer: object
    averager: GradientAverager | None  # DDP: averages gradients during backward

    def lr(self, recipe: Recipe, epoch: float) -> float:
        return lr_at(recipe, self.stage, self.group_epochs, epoch - self.group_start)


def enter_stage(run: Run, index: int, prev: StageRun | None) -> StageRun:
    """Switch to stage ``index`` at ``run.epoch``: trainable parameters, optimiser group, plan producer."""
    stage, r = run.stages[index], run.recipe
    g_start, g_epochs = group_span(run.stages, index)
    params = run.method.trainable_parameters(run.model, stage)
    keep = {id(p) for p in params}
    for p in run.model.parameters():
        p.requires_grad_(id(p) in keep)
    if prev is not None and prev.stage.group == stage.group:
        optimizer = prev.optimizer  # stages of one group train with one optimiser and one LR schedule
    else:
        optimizer = make_optimizer(r, params, lr_at(r, stage, g_epochs, run.epoch - g_start), run.model)
        if run.resumed_optimizer is not None and run.resumed_optimizer[0] == stage.group:
            optimizer.load_state_dict(run.resumed_optimizer[1])
        run.resumed_optimizer = None
    # Anchored at the current (epoch, step): at the stage's start, or mid-stage when resuming.
    producer = run.method.producer(stage, first_epoch=run.epoch, first_step=run.step,
                                   world=run.dist.world)
    first = stage_start(run.stages, index)
    run.log(
        f"stage {stage.name} (epochs {first + 1}–{first + stage.epochs}): plans {stage.plan!r}, "
        f"training {stage.trainable}, optimiser group {stage.group!r}"
    )
    if prev is not None and prev.averager is not None:
        prev.averager.remove()
    trainable = [p for p in run.model.parameters() if p.requires_grad]
    averager = GradientAverager(trainable, run.dist.world) if run.dist.world > 1 else None
    return StageRun(index, stage, g_start, g_epochs, optimizer, producer, averager)


# ------------------------------------------------------------------------------------------ one epoch
@dataclass
class Tally:
    """What an epoch accumulates on the device (read on the host only every LOSS_CHECK_EVERY steps)."""

    device: torch.device
    loss_sum: torch.Tensor = field(init=False)  # Σ step losses
    correct: torch.Tensor = field(init=False)  # un-mixed samples predicted right
    seen: int = 0
    images: int = 0
    wait: float = 0.0  # seconds the loop waited for a batch
    t0: float = field(default_factory=time.perf_counter)

    def __post_init__(self):
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), device=self.device, dtype=torch.int64)

    def add(self, out: StepOutput, pred: torch.Tensor | None, images: int) -> None:
        self.loss_sum += out.loss.detach().float()
        self.images += images
        if pred is not None:
            self.correct += (pred == out.labels).sum()
            self.seen += out.labels.numel()


def train_epoch(run: Run, st: StageRun, epoch: int) -> tuple[Tally, int, float]:
    """All steps of one epoch; returns (tally, steps, seconds)."""
    r, d = run.recipe, run.dist
    steps = st.producer.steps_per_epoch
    # feedback is resolved on the producer thread, where its host copy is waited for (see Feedback)
    queue = PlanQueue(st.producer.make_plan, steps=range(run.step, run.step + steps), lookahead=r.lookahead,
                      apply=lambda fb: st.producer.apply(fb.resolve()), rank=d.rank, world_size=d.world)
    pad_to = -(-st.producer.batch_size // d.world)  # any rank's share of a main batch
    run.method.set_train_mode(run.model, st.stage)
    bar = Progress(r.progress and d.main, steps, f"epoch {epoch + 1}/{run.total_epochs} {st.stage.name}")
    tally = Tally(run.runtime.device)
    batches = run.train_pipe.batches(queue)
    try:
        for i in range(steps):
            t0 = time.perf_counter()
            batch = next(batches)  # plan → batch (loaded ahead on the pipeline thread)
            tally.wait += time.perf_counter() - t0
            set_lr(st.optimizer, st.lr(r, epoch + i / steps))
            out = train_step(run, st, batch, epoch)
            pred = out.logits.detach().argmax(1) if out.logits is not None else None  # stays on the device
            # feedback: (y, ŷ) of the un-mixed samples (gathered over ranks), only for a method that asks
            wants = run.method.consumes_feedback and pred is not None
            queue.done(run.step, Feedback.capture(out.labels, pred, d, pad_to) if wants else None)
            tally.add(out, pred, len(batch))  # device-side sums; len() is the plan's, known on the host
            run.step += 1
            if i % LOSS_CHECK_EVERY == LOSS_CHECK_EVERY - 1 or i == steps - 1:
                check_finite(run, st, epoch, i, tally)  # sync: the logging cadence's one read of the loss
                el = time.perf_counter() - tally.t0
                bar.update(loss=f"{tally.loss_sum.item() / (i + 1):.3f}",  # no new sync: already waited for
                           **{"img/s": f"{tally.images / el:.0f}", "wait": f"{tally.wait / el:.0%}"})
            else:
                bar.update()
    finally:
        bar.close()
        with contextlib.suppress(StopIteration):
            batches.close()
        queue.close()  # applies pending pairs: the method's state now covers every finished step
    return tally, steps, time.perf_counter() - tally.t0


def train_step(run: Run, st: StageRun, batch, epoch: int) -> StepOutput:
    """mix → forward → loss → backward → (all-reduce) → optimiser step."""
    ctx = StepContext(run.runtime, st.stage, epoch, run.step)
    with run.runtime.autocast():
        out = run.method.loss(run.model, batch, ctx)
    st.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()  # under DDP, buckets of gradients are all-reduced while backward runs
    if st.averager is not None:
        st.averager.wait()
    if run.recipe.clip_grad > 0:  # the global norm stays on the device: no sync
        params = [p for g in st.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, run.recipe.clip_grad)
    st.optimizer.step()
    if run.ema is not None:
        run.ema.update(run.model, step=run.step + 1)
    return out


def check_finite(run: Run, st: StageRun, epoch: int, i: int, tally: Tally) -> None:
    lv = tally.loss_sum.item() / (i + 1)
    if not math.isfinite(lv):
        # last.pt holds the epoch before this one (0-based epoch - 1), from this run or the one resumed.
        kept = (
            f"The last good checkpoint is {run.dir / 'last.pt'} (epoch {epoch})"
            if epoch > 0
            else "No epoch had finished, so there is no checkpoint"
        )
        raise TrainingError(
            f"loss is {lv} at epoch {epoch + 1} step {i + 1} ({run.recipe.method}, lr "
            f"{st.optimizer.param_groups[0]['lr']:.3g}); stopping. {kept}; lower --lr or check the data."
        )


# ------------------------------------------------------------------------------------------ epoch end
def evaluate_run_split(run: Run):
    """(summary, per-image predictions) of the eval split, split across ranks (``fastlt.evaluate``)."""
    return evaluate(run.eval_model, run.method, run.eval_pipe, run.eval_index, run.runtime,
                    run.recipe.eval_batch_size, run.dist, progress=run.recipe.progress)


def epoch_record(run: Run, st: StageRun, epoch: int, tally: Tally, steps: int, elapsed: float,
                 summary: dict | None) -> dict:
    average_buffers(run.model, run.dist)
    loss_sum, correct, seen = reduce_tally(tally.loss_sum, tally.correct, tally.seen, run.dist)
    test = M.epoch_fields(summary)  # many/medium/few/all, top-5, group flow, diversity, collapse
    return {
        "epoch": epoch,
        "stage": st.stage.name,
        "step": run.step,
        "lr": st.optimizer.param_groups[0]["lr"],
        "train_loss": loss_sum.item() / max(steps, 1),  # sync: epoch end
        "train_acc": 100 * correct.item() / seen if seen else None,
        "img_per_s": tally.images * run.dist.world / elapsed,
        "steps_per_s": steps / elapsed,
        "data_wait": tally.wait / elapsed,
        **run.method.epoch_stats(),
        **test,
    }


def save_epoch(run: Run, st: StageRun, record: dict) -> None:
    """last.pt (and best.pt), then the metrics line: a metrics line always has its checkpoint."""
    is_best = record["all"] is not None and record["all"] > run.best
    run.best = max(run.best, record["all"] or 0.0)
    if not run.dist.main:
        return
    state = {
        "version": CHECKPOINT_VERSION,
        "epoch": record["epoch"],
        "global_step": run.step,
        "recipe": run.recipe.to_json(),
        "model": run.model.state_dict(),
        **({"model_ema": run.ema.module.state_dict()} if run.ema is not None else {}),
        "optimizer": st.optimizer.state_dict(),
        "optimizer_group": st.stage.group,
        "method": run.method.state_dict(),
        "rng": rng_state(),
        "best": run.best,
        "metrics": record,
        "classes": class_record(run.eval_index),  # fastlt eval refuses a shard of other classes
    }
    save_checkpoint(run.dir / "last.pt", state)
    if is_best:
        save_checkpoint(run.dir / "best.pt", state)
    M.append_jsonl(run.dir / "metrics.jsonl", record)
    if run.recipe.tensorboard:
        stream_to_tensorboard(run.dir, record)
    run.log(
        f"epoch {record['epoch'] + 1:>3}/{run.total_epochs} {st.stage.name:<8} "
        f"loss {record['train_loss']:.4f} acc {_f(record['train_acc'])} | {_test_part(record)} | "
        f"{record['img_per_s']:.0f} img/s, "
        f"data wait {record['data_wait']:.0%}" + M.collapse_note(record)
    )


def finish(run: Run, last: tuple | None) -> dict | None:
    """Final evaluation (kept from the last epoch, or made now for a finished run resumed), eval.json."""
    if last is None and run.recipe.eval_every > 0:
        last = evaluate_run_split(run)
    check_same_state(run.method.state_dict(), run.dist, "the method's state (their plans would differ)")
    if last is None:
        return None
    summary, predictions = last
    if run.dist.main:
        extra = {"checkpoint": "last.pt", "epochs": run.total_epochs}
        M.write_eval(run.dir, summary, run.eval_index, predictions, extra=extra)
        write_plots(run.dir, summary, run.eval_index, predictions)
        write_report(run.dir, log=run.log)
    return summary


# ------------------------------------------------------------------------------------------ the loop
def train(recipe: Recipe, runs: str | os.PathLike = "runs", resume: bool = False, log=print) -> dict:
    """Train ``recipe`` into ``<runs>/<recipe.run_name>``; return the final evaluation summary."""
    run = setup(recipe, runs, resume, log)
    st, last, record = None, None, None
    try:
        for epoch in range(run.epoch, run.total_epochs):
            index, _ = stage_at(run.stages, epoch)
            if st is None or index != st.index:
                st = enter_stage(run, index, st)
            tally, steps, elapsed = train_epoch(run, st, epoch)
            every = recipe.eval_every
            due = every > 0 and ((epoch + 1) % every == 0 or epoch == run.total_epochs - 1)
            last = evaluate_run_split(run) if due else None
            record = epoch_record(run, st, epoch, tally, steps, elapsed, last[0] if last else None)
            save_epoch(run, st, record)
            run.epoch = epoch + 1
        summary = finish(run, last)
    finally:  # also on errors (NaN, interrupt): stop the loader threads, free the resident split
        run.close()
    return summary if summary is not None else record


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


def _f(v) -> str:
    return " n/a" if v is None else f"{v:4.1f}"


def _test_part(record: dict) -> str:
    """``test many … medium … few … all …``, leaving out a group the dataset has no class in."""
    if record["all"] is None:
        return "test n/a"
    groups = [g for g in M.GROUPS if record[g] is not None]
    return "test " + " ".join(f"{g} {record[g]:4.1f}" for g in (*groups, "all"))


def _resume_hint(run_dir: Path) -> str:
    """What a Ctrl-C left: ``last.pt`` is written atomically, so the last finished epoch is always intact."""
    if not (run_dir / "last.pt").exists():
        return f"; no epoch had finished, so {run_dir} holds nothing to resume"
    command = f"fastlt train --resume {shlex.quote(str(run_dir))}"
    return f"; {run_dir / 'last.pt'} holds the last finished epoch; continue with: {command}"


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
    p.add_argument("--dataset", default=None, help=f"one of {', '.join(DATASETS)}, or any dataset converted "
                   "under --data-root, e.g. with tools/convert imagefolder (default digits-lt)")
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
        recipe = resolve(args.dataset or "digits-lt", args.method or "bs", rest)
    return recipe, args


def given_keys(argv: list[str]) -> list[str]:
    """The recipe keys set by ``--key value`` in ``argv`` (after aliases), e.g. ``['lr', 'classifier']``."""
    _, rest = build_parser().parse_known_args(argv)
    return [ALIASES.get(k, k) for k, _ in split_overrides(rest)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    recipe = None  # until resolved: a Ctrl-C before then has no run to name
    try:
        recipe, args = resolve_cli(argv)
        for key in unread_keys(recipe.method, given_keys(argv)):
            print(f"fastlt train: warning: --{key.replace('_', '-')} has no effect with method "
                  f"{recipe.method!r} (it does not read it)", file=sys.stderr)
        if args.print_recipe:
            print(json.dumps(recipe.to_json(), indent=1))
            return 0
        summary = train(recipe, args.runs, resume=bool(args.resume))
    except (RecipeError, TrainingError) as e:
        print(f"fastlt train: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "" if recipe is None else _resume_hint(Path(args.runs) / recipe.run_name)
        print(f"fastlt train: interrupted{hint}", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        print(M.summary_table([(f"{recipe.dataset}/{recipe.method}", summary)]))
    return 0
