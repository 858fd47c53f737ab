"""``fastlt demo`` (what ``make demo`` runs): convert the embedded digits-lt dataset if it is missing,
train it with Balanced Softmax and with CP-Mix, and print the many / medium / few / all table of both.

digits-lt is scikit-learn's copy of the UCI handwritten digits made long-tailed (544 train images, IF 10,
balanced 400-image test set; see ``fastlt/datasets/digits.py``), so the whole demo runs offline on a laptop
CPU in a few minutes. Runs land in ``<runs>/demo-bs`` and ``<runs>/demo-cpmix`` (replaced on every demo).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

METHODS = ("bs", "cpmix")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fastlt demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data", help="shard root (default data)")
    p.add_argument("--runs", default="runs", help="folder of run directories (default runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true", help="show per-epoch progress bars")
    args, extra = p.parse_known_args(sys.argv[1:] if argv is None else argv)

    from fastlt import metrics as M
    from fastlt.recipes import RecipeError
    from fastlt.results import digits_recipe, ensure_digits
    from fastlt.train import TrainingError, train

    t0 = time.perf_counter()
    rc = ensure_digits(args.data)
    if rc:
        return rc
    results = {}
    for method in METHODS:
        try:
            recipe = digits_recipe(method, args.data, f"demo-{method}", args.seed, args.progress, extra)
        except RecipeError as e:
            print(f"fastlt demo: {e}", file=sys.stderr)
            return 2
        run = Path(args.runs) / recipe.run_name
        if run.exists():
            shutil.rmtree(run)
        print(
            f"\n== digits-lt × {method} ({recipe.epochs} epochs"
            + (f" + {recipe.finetune_epochs} fine-tune" if method == "cpmix" else "")
            + ")"
        )
        try:
            results[method] = train(recipe, args.runs)
        except TrainingError as e:
            print(f"fastlt demo: {e}", file=sys.stderr)
            return 2
    print(f"\ndigits-lt test accuracy (%), {time.perf_counter() - t0:.0f} s in all")
    print(M.summary_table(list(results.items())))
    print(f"runs, plots and metrics: {args.runs}/demo-bs, {args.runs}/demo-cpmix")
    return 0
