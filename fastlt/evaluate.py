"""``fastlt eval --run runs/X [--shard PATH] [--checkpoint best|last|FILE]``: evaluate a run's checkpoint.

Rebuilds the model from the run's ``recipe.json``, loads the checkpoint (``weights_only=True``), evaluates the
shard (default: the recipe's eval split) and prints many / medium / few / all. It writes ``eval.json``,
``confusion.png`` and ``per_class_accuracy.png`` into the run directory when it evaluates the recipe's
own eval split, and into ``<run>/eval-<dataset>-<split>/`` for any other shard (``--out`` overrides),
so the training run's own results are never overwritten by a different split.

The many / medium / few groups always come from the *training* counts stored in the evaluated shard's index.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from fastlt import metrics as M
from fastlt.checkpoint import CheckpointError, load_checkpoint
from fastlt.distributed import Dist
from fastlt.methods.base import get_method
from fastlt.pipelines.plan import eval_plans
from fastlt.recipes import Recipe, RecipeError, apply_overrides
from fastlt.runtime import Runtime, TrainingError, build_pipeline, choose_pipeline, open_split
from fastlt.shards import ShardError, open_shard


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
    p.add_argument("--no-plots", action="store_true")
    return p


@torch.no_grad()
def evaluate(model, method, pipeline, index, runtime: Runtime, batch_size: int, d: Dist | None = None):
    """Confusion matrix over the whole split (split across ranks, summed), then the summary."""
    d = d or Dist()
    model.eval()
    cm = M.ConfusionMatrix(index.num_classes, runtime.device)
    plans = eval_plans(index.num_rows, batch_size, d.rank, d.world)
    plans = (p for p in plans if len(p.rows))
    with runtime.autocast():
        for batch in pipeline.batches(plans):
            logits = method.eval_logits(model, runtime.normalize(batch.images))
            cm.update(batch.labels, logits.argmax(1))
    cm.all_reduce()
    mat = cm.numpy()
    return M.summarize(mat, index.group_ids), mat


def _checkpoint_path(run: Path, checkpoint: str) -> Path:
    if checkpoint not in ("best", "last"):
        return Path(checkpoint)
    ckpt = run / f"{checkpoint}.pt"
    return run / "last.pt" if checkpoint == "best" and not ckpt.exists() else ckpt


def _load_model(recipe, index, state, ckpt: Path, shard, device):
    method = get_method(recipe.method)(recipe, index, cache_dir=Path(shard.beton_path).parent)
    model = method.build_model()
    try:
        model.load_state_dict(state["model"])
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
) -> dict:
    run = Path(run)
    if not (run / "recipe.json").exists():
        raise TrainingError(f"{run}: no recipe.json (not a fastlt run directory)")
    recipe = Recipe.load(run / "recipe.json")
    over = [(k, v) for k, v in (("pipeline", pipeline), ("device", device)) if v]
    recipe = apply_overrides(recipe, over) if over else recipe
    ckpt = _checkpoint_path(run, checkpoint)
    state = load_checkpoint(ckpt)
    if shard_path:
        try:
            shard = open_shard(shard_path)
        except ShardError as e:
            raise TrainingError(str(e)) from None
    else:
        shard = open_split(recipe, recipe.eval_split)
    index = shard.index
    dev = torch.device("cuda" if recipe.device != "cpu" and torch.cuda.is_available() else "cpu")
    method, model = _load_model(recipe, index, state, ckpt, shard, dev)
    runtime = Runtime.create(recipe, index.train_counts, dev)
    pipe = build_pipeline(choose_pipeline(recipe, shard), shard, recipe, dev, train=False)
    try:
        summary, matrix = evaluate(model, method, pipe, index, runtime, recipe.eval_batch_size)
    finally:
        pipe.close()
    own = shard_path is None
    out_dir = Path(out) if out else (run if own else run / f"eval-{index.dataset}-{index.split}")
    out_dir.mkdir(parents=True, exist_ok=True)
    M.write_eval(
        out_dir,
        summary,
        index,
        matrix,
        plots=plots,
        extra={"checkpoint": str(ckpt), "epoch": int(state["epoch"]), "shard": str(shard.beton_path)},
    )
    summary["out_dir"] = str(out_dir)
    summary["epoch"] = int(state["epoch"])
    return summary


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
        )
    except (TrainingError, CheckpointError, RecipeError) as e:
        print(f"fastlt eval: {e}", file=sys.stderr)
        return 2
    print(M.TABLE_HEADER)
    print(M.format_row(f"epoch {s['epoch'] + 1}", s))
    print(f"wrote {s['out_dir']}/eval.json")
    return 0
