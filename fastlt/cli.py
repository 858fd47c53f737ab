"""``fastlt <command> ...`` — one entry point, each command a module with ``main(argv) -> int``.

Commands are imported lazily so ``fastlt --help`` does not pay for torch, FFCV or DALI.
"""

from __future__ import annotations

import importlib
import sys

from fastlt.names import did_you_mean

COMMANDS = {
    "convert": ("fastlt.convert", "convert a dataset into class-indexed .beton shards"),
    "train": ("fastlt.train", "train a recipe (dataset × method) and evaluate it"),
    "eval": ("fastlt.evaluate", "evaluate a run directory's checkpoint on a shard"),
    "verify": ("fastlt.verify", "check shards in full: re-hash every byte, index digest, label column"),
    "bench": ("fastlt.bench", "throughput benchmarks: convert, loader, sampler, kernels, step, eval"),
    "report": ("fastlt.compare", "write a run's report.html, or compare runs side by side"),
    "predict": ("fastlt.predict", "top-k classes and probabilities of images, folders or lists (CSV + JSON)"),
    "export": ("fastlt.export", "a run's model as a torch.export program that loads without fastlt"),
    "demo": ("fastlt.demo", "convert the embedded digits-lt dataset and train it with bs and cpmix"),
}


def usage() -> str:
    lines = ["usage: fastlt <command> [options]", "", "commands:"]
    lines += [f"  {name:<9} {doc}" for name, (_, doc) in COMMANDS.items()]
    lines += ["", "Run `fastlt <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from fastlt import __version__

        print(f"fastlt {__version__}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"fastlt: unknown command {cmd!r}{did_you_mean(cmd, COMMANDS)}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[cmd][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
