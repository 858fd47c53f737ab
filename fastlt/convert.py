"""``fastlt convert`` / ``tools/convert``: datasets → class-indexed shards (``<out>/<name>/<split>.beton``).

Every subcommand reads one source format, validates every entry (and decodes every image) before writing
anything, then writes the train split and the other splits. Run ``tools/convert <subcommand> --help``.

    tools/convert digits-lt --out data                     # embedded, no input needed
    tools/convert cifar100-lt ~/cifar-100-python --imbalance-factor 100
    tools/convert imagenet-lt --root ~/imagenet --train ImageNet_LT_train.txt --test ImageNet_LT_test.txt
    tools/convert inat2018 ~/inat2018 --max-resolution 512
    tools/convert imagefolder ~/photos --keep-jpeg         # store the source JPEGs as they are
    tools/convert synth-inat --out /tmp/synth --images 3000 # synthetic iNat-2018-layout JPEGs for benchmarks
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fastlt.datasets.registry import DATASETS

# subcommand → (module, one-line help): one per dataset in the registry. Modules expose
# add_arguments(parser) and build(args) -> Job.
CONVERTERS = {name: (spec.converter_module, spec.help) for name, spec in DATASETS.items()}
# Subcommands that write something other than a shard (tools, not datasets: not in the registry).
HELPERS = {
    "synth-inat": ("fastlt.datasets.synthetic", "write synthetic JPEGs in the iNaturalist 2018 layout"),
}


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s}")
    return v


def _quality(s: str) -> int:
    v = int(s)
    if not 1 <= v <= 100:
        raise argparse.ArgumentTypeError(f"JPEG quality must lie in 1..100, got {s}")
    return v


def common_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("output")
    g.add_argument(
        "--out", default="data", help="shard root; writes <out>/<name>/<split>.beton (default data)"
    )
    g.add_argument(
        "--name",
        default=None,
        help="dataset folder name under --out (default: the subcommand; imagefolder: the root's name)",
    )
    g.add_argument(
        "--workers", type=_positive_int, default=2, help="processes for validation and writing (default 2)"
    )
    g.add_argument(
        "--write-mode",
        choices=("jpg", "raw"),
        default=None,
        help="store JPEG (re-encoded) or raw RGB pixels (default: raw for 32x32 sets, else jpg)",
    )
    g.add_argument(
        "--max-resolution",
        type=_positive_int,
        default=None,
        help="shrink images whose long side exceeds this many pixels (default: keep full size)",
    )
    g.add_argument("--jpeg-quality", type=_quality, default=90, help="JPEG quality for jpg mode (default 90)")
    g.add_argument(
        "--keep-jpeg",
        action="store_true",
        help="jpg mode: also store progressive source JPEGs that need no resize byte for byte (baseline ones "
        "always are; CMYK JPEGs and other formats are re-encoded)",
    )
    g.add_argument(
        "--reencode",
        action="store_true",
        help="jpg mode: re-encode every image at --jpeg-quality, even source JPEGs that need no resize "
        "(by default those are stored byte for byte: no second generation of JPEG loss)",
    )
    g.add_argument(
        "--skip-bad",
        action="store_true",
        help="write the shards without bad entries (listed in the index's 'skipped') instead of stopping",
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastlt convert",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="<subcommand>", required=True)
    common = common_options()
    for name, (module, help_) in CONVERTERS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(
            name,
            help=help_,
            description=(mod.__doc__ or help_).replace("``", ""),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[common],
        )
        p.set_defaults(module=module)
        if hasattr(mod, "add_arguments_for"):  # one module, several subcommands
            mod.add_arguments_for(name, p)
        else:
            mod.add_arguments(p)
    for name, (module, help_) in HELPERS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(module=module, helper=True)
        mod.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    from fastlt.datasets.engine import ConversionInterrupted, WriteOptions, run
    from fastlt.datasets.validate import ConversionError

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    mod = importlib.import_module(args.module)
    if getattr(args, "helper", False):
        return int(mod.main_args(args) or 0)
    opts = WriteOptions(
        out=args.out,
        workers=args.workers,
        write_mode=args.write_mode,
        max_resolution=args.max_resolution,
        jpeg_quality=args.jpeg_quality,
        skip_bad=args.skip_bad,
        name=args.name,
        keep_jpeg=args.keep_jpeg,
        reencode=args.reencode,
    )
    try:
        job = mod.build(args)
        run(job, opts)
    except ConversionError as e:
        print(f"fastlt convert {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        # The engine's message says what the interrupted conversion left; one before it started left nothing.
        said = (
            str(e)
            if isinstance(e, ConversionInterrupted)
            else f"interrupted; nothing was written under {args.out}"
        )
        print(f"fastlt convert {args.command}: {said}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
