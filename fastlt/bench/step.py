"""``tools/bench step``: whole training steps per second and the fraction of step time spent waiting for data,
``ce`` (baseline) vs ``cpmix``, through the real trainer (``fastlt.train.train``) on a synthetic JPEG shard.

    tools/bench step                         # CPU defaults: 1,500 JPEGs → shard at 256 px, 112 px crops
    tools/bench step --pipeline torch --steps 30 --out bench-results

What is timed: epoch 2 of a 2-epoch run (epoch 1 pays numba/Triton compilation and the first decodes), each
epoch ``--steps`` steps, no evaluation. The trainer measures the time blocked in ``next(batches)`` (data wait)
and the epoch's wall time; steps/s = steps / wall time. CP-Mix runs its mixing stage from the first epoch
(``--cpmix-start-epoch 0``): each step loads main + CP-mix pairs (3·B rows: the batch of B plus B_m = B
pairs),
mixes twice and forwards 3·B images, so its steps/s is reported next to img/s of *loaded* rows.

The shard: ``tools/convert synth-inat`` photographs (long side 500–800 px, iNat-2018 layout) converted with
``tools/convert inat2018 --max-resolution`` (default 256) — the resolution is printed with every figure,
because decode cost scales with it. Data is made once under ``--work`` and reused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from fastlt.bench.data import synthetic_shard
from fastlt.bench.report import print_table, write_json


def run_one(method: str, data: Path, runs: Path, args) -> dict:
    from fastlt.recipes import resolve
    from fastlt.train import train

    over = [
        "--data-root",
        str(data),
        "--eval-split",
        "val",
        "--name",
        f"bench-{method}",
        "--epochs",
        "2",
        "--steps-per-epoch",
        str(args.steps),
        "--eval-every",
        "0",
        "--batch-size",
        str(args.batch_size),
        "--image-size",
        str(args.image_size),
        "--model",
        args.model,
        "--pipeline",
        args.pipeline,
        "--workers",
        str(args.workers),
        "--progress",
        "false",
        "--warmup-epochs",
        "0",
        "--classifier",
        "linear",
        "--lr",
        "0.05",
        "--device",
        args.device,
    ]
    if method == "cpmix":
        over += ["--cpmix-start-epoch", "0", "--finetune-epochs", "0"]
    run = runs / f"bench-{method}"
    if run.exists():
        shutil.rmtree(run)
    recipe = resolve("inat2018", method, over)
    train(recipe, runs, log=lambda *a, **k: None)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rec = lines[-1]
    rows_per_step = args.batch_size * (3 if method == "cpmix" else 1)
    return {
        "method": method,
        "steps/s": rec["steps_per_s"],
        "img/s (loaded)": rec["steps_per_s"] * rows_per_step,
        "data wait": rec["data_wait"],
        "loss": rec["train_loss"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/bench step", description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", default="ffcv", help="resident | ffcv | dali | torch (default ffcv)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--model", default="smallnet")
    p.add_argument("--images", type=int, default=1500)
    p.add_argument("--classes", type=int, default=50)
    p.add_argument("--max-resolution", type=int, default=256)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=15, help="steps per epoch (epoch 2 is timed)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work", default="/tmp/fastlt-bench-step", help="where the synthetic data and runs live")
    p.add_argument("--out", default=None, help="folder for step.json")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = synthetic_shard(work, args.images, args.classes, args.max_resolution, args.workers)
    rows = [run_one(m, data, work / "runs", args) for m in ("ce", "cpmix")]
    base = rows[0]["steps/s"]
    for r in rows:
        r["steps/s vs ce"] = r["steps/s"] / base
    title = (
        f"training steps, {args.model} @ {args.image_size} px, batch {args.batch_size}, pipeline "
        f"{args.pipeline}, shard JPEGs ≤ {args.max_resolution} px ({args.images} images), "
        f"device {args.device}"
    )
    print_table(title, rows, ["method", "steps/s", "steps/s vs ce", "img/s (loaded)", "data wait", "loss"])
    write_json(args.out, "step", {"args": vars(args), "rows": rows})
    return 0
