"""``fastlt eval --run runs/X [--shard PATH] [--checkpoint best|last|FILE]``: evaluate a run's checkpoint.

Rebuilds the model from the run's ``recipe.json``, loads the checkpoint (``weights_only=True``), evaluates the
shard (default: the recipe's eval split) with a progress bar, and prints many / medium / few / all. It writes
``eval.json``, ``predictions.npz``, ``report.html`` and the plots (``per_class_accuracy.png``;
``confusion.png`` for tens of classes) into the run directory when it evaluates the recipe's own eval
split, and into ``<run>/eval-<dataset>-<split>/`` for any other shard (``--out`` overrides), so the training
run's own results are never overwritten by a different split.

The many / medium / few groups always come from the *training* counts stored in the evaluated shard's index.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import NamedTuple

import torch

from fastlt import metrics as M
from fastlt.checkpoint import EVAL_KEYS, CheckpointError, load_checkpoint, shard_mismatch
from fastlt.distributed import Dist, all_gather_columns
from fastlt.methods.base import get_method
from fastlt.pipelines.plan import eval_plans
from fastlt.plots import write_plots
from fastlt.recipes import Recipe, RecipeError, apply_overrides
from fastlt.report import write_report
from fastlt.runlock import RunLock, RunLockError
from fastlt.runtime import Runtime, TrainingError, build_pipeline, choose_pipeline, open_split
from fastlt.shards import ShardError, open_shard
from fastlt.topk import topk_lowest_index


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastlt eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run directory (holds recipe.json and last.pt / best.pt)")
    p.add_argument(
        "--shard",
        default=None,
        help="a .beton (or .index.json) to evaluate; default: the recipe's eval split",
    )
    p.add_argument(
        "--checkpoint",
        default="best",
        help="best | last | a checkpoint file (default best, falling back to last)",
    )
    p.add_argument(
        "--pipeline", default=None, help="override the recipe's pipeline (resident|ffcv|dali|torch)"
    )
    p.add_argument("--device", default=None, help="cpu | cuda (default: the recipe's)")
    p.add_argument("--out", default=None, help="where to write eval.json and the plots")
    p.add_argument(
        "--allow-foreign-shard",
        action="store_true",
        help="evaluate a shard whose classes (or train counts) are not the ones the checkpoint was trained "
        "on; eval.json records that it was forced",
    )
    p.add_argument("--no-plots", action="store_true")
    return p


class Evaluation(NamedTuple):
    """What one evaluation gives: the summary (``metrics.summarize``) and the per-image predictions."""

    summary: dict
    predictions: M.Predictions


@torch.no_grad()
def evaluate(model, method, pipeline, index, runtime: Runtime, batch_size: int, d: Dist | None = None,
             progress: bool = False) -> Evaluation:
    """Top-k predictions of every image of the split (split across ranks, all-gathered), then the summary.

    Per image the device keeps its row, label and top-k classes (k = ``metrics.TOP_K``): O(N·k), and one
    host transfer at the end. Every rank returns the same evaluation (the trainer's best-checkpoint choice
    reads it on all ranks); ``progress`` shows a bar on rank 0.
    """
    d = d or Dist()
    model.eval()
    k = min(M.TOP_K, index.num_classes)
    plans = [p for p in eval_plans(index.num_rows, batch_size, d.rank, d.world) if len(p.rows)]
    rows, labels, tops = [], [], []
    bar = _bar(progress and d.main, len(plans), f"eval {index.split} ({index.num_rows:,} images)")
    with runtime.autocast():
        for batch in pipeline.batches(iter(plans)):
            logits = method.eval_logits(model, runtime.normalize(batch.images))
            rows.append(batch.rows.to(runtime.device))
            labels.append(batch.labels.to(runtime.device))
            tops.append(topk_lowest_index(logits.float(), k)[1])
            bar.update()
    bar.close()
    local = _stack(rows, labels, tops, k, runtime.device)
    every = _all_gather_rows(local, d)
    every = every[:, torch.argsort(every[0])].cpu().numpy()  # row order: the same on any number of ranks
    preds = M.Predictions(rows=every[0], labels=every[1], top=every[2:].T.copy())
    return Evaluation(M.summarize(preds, index), preds)


def _stack(rows, labels, tops, k: int, device) -> torch.Tensor:
    """int64[2 + k, n]: rows, labels, then the k predicted classes, of this rank's images."""
    if not rows:
        return torch.zeros(2 + k, 0, dtype=torch.int64, device=device)
    return torch.cat([torch.stack([torch.cat(rows), torch.cat(labels)]).long(), torch.cat(tops).long().T])


def _all_gather_rows(local: torch.Tensor, d: Dist) -> torch.Tensor:
    """Concatenate every rank's ``[R, n_rank]`` columns (ranks hold different n): pad, all_gather, trim."""
    if d.world <= 1:
        return local
    import torch.distributed as dist

    n = torch.tensor([local.shape[1]], device=local.device)
    sizes = [torch.zeros_like(n) for _ in range(d.world)]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]  # sync: once per evaluation, after its last batch
    top = max(sizes)
    every = all_gather_columns(local, d, top, fill=0)
    return torch.cat([every[:, r * top : r * top + n] for r, n in enumerate(sizes)], dim=1)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(enabled: bool, total: int, desc: str):
    """A tqdm bar on stderr over the evaluation's batches, or nothing."""
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True, file=sys.stderr)


def _checkpoint_path(run: Path, checkpoint: str) -> Path:
    if checkpoint not in ("best", "last"):
        return Path(checkpoint)
    ckpt = run / f"{checkpoint}.pt"
    return run / "last.pt" if checkpoint == "best" and not ckpt.exists() else ckpt


def _load_model(recipe, index, state, ckpt: Path, shard, device):
    method = get_method(recipe.method)(recipe, index, cache_dir=Path(shard.beton_path).parent)
    model = method.build_model()
    # a --model-ema run is evaluated (and predicts) with the average it reported, like timm
    weights = state["model_ema"] if "model_ema" in state else state["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise TrainingError(
            f"{ckpt}: its model does not fit {index.num_classes} classes of {shard.beton_path} "
            f"({str(e).splitlines()[0]})"
        ) from None
    method.load_state_dict(state["method"])
    return method, model.to(device)


def evaluate_run(
    run: str | Path,
    shard_path: str | None = None,
    checkpoint: str = "best",
    pipeline=None,
    device=None,
    out: str | None = None,
    plots: bool = True,
    say=print,
    allow_foreign_shard: bool = False,
) -> dict:
    """Evaluate ``run``'s checkpoint, write eval.json, predictions.npz, the plots and report.html; ``say``
    prints what it is doing (the command is never silent for more than a bar's update).

    The shard must hold the classes the checkpoint was trained on, with the same train counts
    (``checkpoint.shard_mismatch``), unless ``allow_foreign_shard``; eval.json then records why it did not.
    The run directory is locked (``fastlt.runlock``) while the results are written into it."""
    run = Path(run)
    if not (run / "recipe.json").exists():
        raise TrainingError(f"{run}: no recipe.json (not a fastlt run directory)")
    recipe = Recipe.load(run / "recipe.json")
    over = [(k, v) for k, v in (("pipeline", pipeline), ("device", device)) if v]
    recipe = apply_overrides(recipe, over) if over else recipe
    ckpt = _checkpoint_path(run, checkpoint)
    state = load_checkpoint(ckpt, require=EVAL_KEYS)
    if shard_path:
        try:
            shard = open_shard(shard_path)
        except ShardError as e:
            raise TrainingError(str(e)) from None
    else:
        shard = open_split(recipe, recipe.eval_split)
    index = shard.index
    foreign = shard_mismatch(state, recipe, index)
    if foreign and not allow_foreign_shard:
        raise TrainingError(
            f"{shard.beton_path} does not fit {ckpt}: {foreign}. An accuracy there would mean nothing; "
            "pass --allow-foreign-shard to evaluate it anyway (eval.json then records it)"
        )
    own = shard_path is None
    out_dir = Path(out) if out else (run if own else run / f"eval-{index.dataset}-{index.split}")
    with _run_lock(run, out_dir, say):
        dev = torch.device("cuda" if recipe.device != "cpu" and torch.cuda.is_available() else "cpu")
        method, model = _load_model(recipe, index, state, ckpt, shard, dev)
        runtime = Runtime.create(recipe, index.train_counts, dev)
        pipe = build_pipeline(choose_pipeline(recipe, shard), shard, recipe, dev, train=False)
        say(f"evaluating {ckpt} (epoch {int(state['epoch']) + 1}) on {shard.beton_path}: "
            f"{index.num_rows:,} images, {index.num_classes:,} classes, device {dev}")
        try:
            ev = evaluate(model, method, pipe, index, runtime, recipe.eval_batch_size,
                          progress=recipe.progress)
        finally:
            pipe.close()
        out_dir.mkdir(parents=True, exist_ok=True)
        extra = {"checkpoint": str(ckpt), "epoch": int(state["epoch"]), "shard": str(shard.beton_path)}
        if foreign:
            extra["foreign_shard"] = foreign  # evaluated with --allow-foreign-shard
        M.write_eval(out_dir, ev.summary, index, ev.predictions, extra=extra)
        if plots:
            write_plots(out_dir, ev.summary, index, ev.predictions)
        write_report(out_dir, run, log=say)
    summary = dict(ev.summary, out_dir=str(out_dir), epoch=int(state["epoch"]))
    return summary


def _run_lock(run: Path, out_dir: Path, say):
    """The run's lock while results are written into it (a training writing it refuses this evaluation, and
    the other way round); nothing when they go elsewhere (``--out`` outside the run)."""
    if not out_dir.resolve().is_relative_to(run.resolve()):
        return contextlib.nullcontext()
    try:
        return RunLock.acquire(run, "fastlt eval", say=say)
    except RunLockError as e:
        raise TrainingError(f"{e}; wait for it to finish, or evaluate into another --out folder") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        s = evaluate_run(
            args.run,
            args.shard,
            args.checkpoint,
            args.pipeline,
            args.device,
            args.out,
            plots=not args.no_plots,
            allow_foreign_shard=args.allow_foreign_shard,
        )
    except (TrainingError, CheckpointError, RecipeError) as e:
        print(f"fastlt eval: {e}", file=sys.stderr)
        return 2
    print(M.summary_table([(f"epoch {s['epoch'] + 1}", s)]))
    for w in s["collapse"]:
        print(f"WARNING predictions collapse: {w}")
    print(f"wrote {s['out_dir']}/eval.json and report.html")
    return 0
