"""``tools/bench <name>`` / ``fastlt bench <name>``: throughput figures, always as a ratio to a baseline
measured in the same command. Each benchmark is a module ``fastlt.bench.<name>`` with
``main(argv) -> int``."""

from __future__ import annotations

import importlib
import sys

from fastlt.names import did_you_mean

BENCHES = {
    "convert": "images/s converting iNat-sized JPEGs into a shard",
    "loader": "images/s of each pipeline vs torchvision ImageFolder and the JPEG-decode ceiling",
    "sampler": "confusion-pair draw and update time vs a numpy reference",
    "kernels": "fused mix and sparse soft-label CE vs timm / torchvision / dense CE",
    "step": "training steps/s and data-wait fraction, ce vs cpmix vs concutmix (--num-classes)",
    "eval": "metrics + report per evaluation at C = 8,142: per-image predictions vs the dense C × C matrix",
    "augment": "ConCutMix's ImageNet augmentation batched vs torchvision v2 + timm per image in a DataLoader",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: tools/bench <benchmark|all> [options]\n\nbenchmarks:")
        for k, v in BENCHES.items():
            print(f"  {k:<8} {v}")
        print("  all      run every benchmark with its defaults (`--out DIR` for the JSON files)")
        return 0
    name, rest = argv[0], argv[1:]
    if name == "all":
        # One process per benchmark: thread counts, numba/FFCV state and caches of one must not leak
        # into the next one's figures.
        import subprocess

        rc = 0
        for b in BENCHES:
            print(f"\n=== tools/bench {b}", flush=True)
            rc |= subprocess.call([sys.executable, "-m", "fastlt", "bench", b, *rest])
        return rc
    if name not in BENCHES:
        hint = did_you_mean(name, BENCHES)
        print(
            f"tools/bench: unknown benchmark {name!r}{hint}; choose from {', '.join(BENCHES)}",
            file=sys.stderr,
        )
        return 2
    return int(importlib.import_module(f"fastlt.bench.{name}").main(rest) or 0)
