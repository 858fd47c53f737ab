"""The digits-lt results table: methods × seeds, mean ± std of many / medium / few / all.

    python -m fastlt.results         # every method (fastlt.methods.METHODS) × seeds 0,1,2
    python -m fastlt.results --methods bs,cpmix --seeds 0,1 --out /tmp/table.md

Every cell trains the method's digits-lt preset (``fastlt/recipes.py``) with ``--seed s`` (model init, plans,
augmentation and mixing all follow it; the dataset split is fixed by the converter) and reads the final
evaluation on the balanced test split. The std is the sample standard deviation over seeds (ddof = 1).
Runs go to ``<runs>/results/<method>-s<seed>`` and are reused when their ``eval.json`` exists
(``--fresh`` retrains).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from fastlt.methods import METHODS

DEFAULT_METHODS = tuple(METHODS)  # ce, bs, ldam-drw, mixup, cutmix, remix, cpmix, concutmix, lfm
KEYS = ("many", "medium", "few", "all")


def cell(values) -> str:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return "n/a"
    if v.size == 1:
        return f"{v[0]:.1f}"
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def markdown_table(results: dict[str, list[dict]]) -> str:
    lines = ["| method | many | medium | few | all |", "|---|---|---|---|---|"]
    for method, runs in results.items():
        lines.append(f"| {method} | " + " | ".join(cell([r[k] for r in runs]) for k in KEYS) + " |")
    return "\n".join(lines)


def ensure_digits(data: str) -> int:
    """Convert digits-lt into ``data`` unless both its splits are there; the converter's exit code."""
    from fastlt.shards import shard_paths

    if all(shard_paths(data, "digits-lt", s)[1].exists() for s in ("train", "test")):
        return 0
    from fastlt.convert import main as convert

    print(f"converting digits-lt into {data}/digits-lt (tools/convert digits-lt --out {data})", flush=True)
    return convert(["digits-lt", "--out", data])


def digits_recipe(method: str, data: str, name: str, seed: int, progress: bool, extra=()):
    """The digits-lt preset of ``method`` for one run (raises RecipeError on a bad extra override)."""
    from fastlt.recipes import resolve

    argv = ["--data-root", data, "--name", name, "--seed", str(seed), "--progress", str(progress).lower()]
    return resolve("digits-lt", method, [*argv, *extra])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastlt.results", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data")
    p.add_argument("--runs", default="runs")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument(
        "--out", default="results/digits-lt.md", help="markdown file to write (default %(default)s)"
    )
    p.add_argument("--fresh", action="store_true", help="retrain runs that already have an eval.json")
    args, extra = p.parse_known_args(sys.argv[1:] if argv is None else argv)

    from fastlt.recipes import RecipeError
    from fastlt.train import TrainingError, train

    methods = [m for m in args.methods.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if ensure_digits(args.data):
        return 2
    root = Path(args.runs) / "results"
    results: dict[str, list[dict]] = {}
    t0 = time.perf_counter()
    for method in methods:
        results[method] = []
        for seed in seeds:
            try:
                recipe = digits_recipe(method, args.data, f"{method}-s{seed}", seed, False, extra)
            except RecipeError as e:
                print(f"fastlt.results: {e}", file=sys.stderr)
                return 2
            run = root / recipe.run_name
            if (run / "eval.json").exists() and not args.fresh:
                rec = json.loads((run / "eval.json").read_text())
                print(f"{method} seed {seed}: reusing {run}/eval.json")
            else:
                if run.exists():
                    shutil.rmtree(run)
                print(f"{method} seed {seed}: training → {run}", flush=True)
                try:
                    rec = train(recipe, root, log=lambda *a, **k: None)
                except TrainingError as e:
                    print(f"fastlt.results: {e}", file=sys.stderr)
                    return 2
            results[method].append({k: rec[k] for k in KEYS})
            print("   " + "  ".join(f"{k} {rec[k]:.1f}" for k in KEYS), flush=True)
    table = markdown_table(results)
    header = (
        f"digits-lt test accuracy (%), mean ± std over seeds {','.join(map(str, seeds))} "
        f"(`python -m fastlt.results{' ' + ' '.join(argv or []) if argv else ''}`, "
        f"{time.perf_counter() - t0:.0f} s)"
    )
    text = header + "\n\n" + table + "\n"
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
