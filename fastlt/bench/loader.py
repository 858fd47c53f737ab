"""``tools/bench loader``: images/s of each plan-driven pipeline beside the loaders users run today.

    tools/bench loader --shard data/inat2018/train.beton --pipeline all [--out bench-results]

Measured in one command, on the same images, with the same number of worker processes/threads:

* **torchvision** — ``ImageFolder`` + PIL ``DataLoader`` over the *original* JPEG files the shard was
  converted from (a folder-per-class tree of links to them), ``RandomResizedCrop(224)`` +
  ``RandomHorizontalFlip`` + ``PILToTensor``: what a user runs today. Every ratio is against this.
* **decode ceiling** — libjpeg-turbo (simplejpeg) decoding the same original files and nothing else, in the
  same number of processes: no loader that decodes every full image can beat it. A second row gives the
  ceiling for the shard's own stored JPEGs, to show what the shard's ``max_resolution`` buys.
* each pipeline (``ffcv``, ``dali``, ``torch``) on every ``--shard`` given, train transforms to 224 px, plans
  of a shuffled epoch fed through ``pipeline.batches``.
* **resident** needs one image size, so it is measured on CIFAR-sized data: the shard's images resized to
  32×32 and written as a raw shard, pad-4 crop + flip, against the CIFAR loader users run today (an in-memory
  dataset + PIL ``RandomCrop(32, padding=4)`` + flip in a ``DataLoader``), at ``--cifar-batch-size``.

Timing: every loader is built first, then ``--repeats`` rounds run one pass of each loader in turn
(interleaved, so a change in machine load hits all of them alike); a pass is timed from its first batch
(worker start-up and numba compilation excluded) to its last; the median pass is reported. The resolution
the shard was written at is printed next to every figure: decode cost scales with stored pixels, so it is
part of the result.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastlt.bench.report import print_table, write_json

DECODE_PIPELINES = ("ffcv", "dali", "torch")
ALL = ("resident", *DECODE_PIPELINES)


# ---------------------------------------------------------------------------------------------- timing
def pass_rate(make_batches: Callable[[], Iterable]) -> float:
    """images/s of one pass, timed from its first batch to its last (start-up is not throughput)."""
    it = iter(make_batches())
    next(it)
    t0 = time.perf_counter()
    n = 0
    for b in it:
        n += len(b[0]) if isinstance(b, (list, tuple)) else len(b)
    return n / (time.perf_counter() - t0)


@dataclass
class Runner:
    """One loader of the table: ``one_pass()`` measures a pass; ``row`` is its table row."""

    row: dict
    one_pass: Callable[[], float]
    rates: list[float] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- baselines
def link_tree(files: list[Path], labels: np.ndarray, root: Path) -> Path:
    """A folder per class holding links to the original files: what ImageFolder expects."""
    for i, (f, y) in enumerate(zip(files, labels)):
        d = root / f"{int(y):05d}"
        d.mkdir(exist_ok=True)
        (d / f"{i:07d}_{f.name}").symlink_to(f.resolve())
    return root


def imagefolder_pass(root: Path, *, batch_size, workers, images, size) -> Callable[[], float]:
    import torch
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.PILToTensor()]
    )
    ds = datasets.ImageFolder(str(root), transform=tf)

    def loader():
        # Shuffled; drawn with replacement only when a pass needs more images than the set holds.
        sampler = torch.utils.data.RandomSampler(ds, replacement=images > len(ds), num_samples=images)
        return torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers)

    return lambda: pass_rate(loader)


def _decode_file(path: str) -> int:
    import simplejpeg

    with open(path, "rb") as f:
        return simplejpeg.decode_jpeg(f.read(), colorspace="RGB").shape[0]


_beton = None


def _decode_row(row: int) -> int:
    import simplejpeg

    return simplejpeg.decode_jpeg(
        memoryview(np.ascontiguousarray(_beton.payload(row))), colorspace="RGB"
    ).shape[0]


def _init_beton(path: str) -> None:
    global _beton
    from fastlt.pipelines.beton import BetonImages

    _beton = BetonImages(path)


def ceiling_pass(stack: ExitStack, fn, items: list, *, workers: int, initializer=None, initargs=()):
    """One pass = ``fn`` over ``items`` in a pool of ``workers`` processes (started once, warmed)."""
    pool = stack.enter_context(
        mp.get_context("fork").Pool(workers, initializer=initializer, initargs=initargs)
    )
    pool.map(fn, items[: 2 * workers])  # imports, page cache

    def one_pass() -> float:
        t0 = time.perf_counter()
        pool.map(fn, items, chunksize=8)
        return len(items) / (time.perf_counter() - t0)

    return one_pass


class _CifarStyle:
    """torchvision's CIFAR dataset pattern: uint8 array in memory → PIL → transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        from torchvision import transforms

        self.images, self.labels = images, labels
        self.tf = transforms.Compose(
            [
                transforms.RandomCrop(32, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.PILToTensor(),
            ]
        )

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        return self.tf(Image.fromarray(self.images[i])), int(self.labels[i])


def cifar_pass(images, labels, *, batch_size, workers, steps) -> Callable[[], float]:
    import torch

    ds = _CifarStyle(images, labels)

    def loader():
        # Enough draws from the small set for one pass of `steps` batches.
        sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=steps * batch_size)
        return torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers)

    return lambda: pass_rate(loader)


# ---------------------------------------------------------------------------------------------- pipelines
def epoch_plans(num_rows: int, batch_size: int, steps: int, seed: int):
    """Plans of shuffled epochs (as many as ``steps`` needs), ``batch_size`` rows each."""
    from fastlt.pipelines import StepPlan

    rng = np.random.default_rng(seed)
    order = np.zeros(0, dtype=np.int64)
    for step in range(steps):
        while len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(num_rows)])
        rows, order = order[:batch_size], order[batch_size:]
        yield StepPlan.from_segments(0, step, seed=step, main=rows)


def pipeline_pass(stack: ExitStack, name, shard, *, image_size, batch_size, steps, workers, device):
    from fastlt.pipelines import make_pipeline

    pipe = make_pipeline(
        name, shard, train=True, image_size=image_size, device=device, seed=0, workers=workers
    )
    stack.callback(pipe.close)
    return lambda: pass_rate(lambda: pipe.batches(epoch_plans(shard.num_rows, batch_size, steps, 0)))


def resolution(shard) -> str:
    from fastlt.pipelines.beton import BetonImages

    img = BetonImages(shard.beton_path)
    long_side = np.maximum(img.heights, img.widths)
    limit = shard.index.settings.get("max_resolution")
    head = f"max_resolution {limit}" if limit else "full size"
    return f"{head} (long side {long_side.min()}–{long_side.max()} px, mean {long_side.mean():.0f})"


def cifar_sized_shard(shard, folder: Path, rows: int):
    """The shard's first ``rows`` images resized to 32×32, written as a raw shard (CIFAR's format)."""
    from PIL import Image

    from fastlt.pipelines.beton import BetonImages
    from fastlt.shards import ArraySource, write_shard

    img = BetonImages(shard.beton_path)
    n = min(rows, len(img))
    small = np.stack(
        [np.asarray(Image.fromarray(img.decode(r)).resize((32, 32), Image.BILINEAR)) for r in range(n)]
    )
    labels = shard.index.labels[:n]
    source = ArraySource(small, labels, [str(r) for r in range(n)])
    out = write_shard(
        folder, "cifar-sized", "train", source, shard.index.class_names, write_mode="raw", workers=1
    )
    return out, small, labels


# ---------------------------------------------------------------------------------------------- command
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/bench loader", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--shard",
        action="append",
        default=None,
        help="a jpg .beton (repeat to compare shards); default: synthetic iNat-sized JPEGs (--synth-images) "
        "converted at full resolution and at max_resolution 320 under --work",
    )
    p.add_argument("--synth-images", type=int, default=1500, help="images of the default synthetic set")
    p.add_argument(
        "--work", default="/tmp/fastlt-bench-loader", help="where the default synthetic data lives"
    )
    p.add_argument("--pipeline", default="all", help=f"all, or a comma list of {', '.join(ALL)}")
    p.add_argument(
        "--source-root", default=None, help="root of the original images (default: from the index)"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="processes / threads for every loader (default 2)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument(
        "--images", type=int, default=None, help="images per pass (default: one epoch of the shard)"
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="interleaved passes per loader; the median is reported"
    )
    p.add_argument("--cifar-batch-size", type=int, default=256)
    p.add_argument("--cifar-images", type=int, default=51200, help="images per resident/CIFAR pass")
    p.add_argument("--device", default="cpu", help="device of the pipelines' batches (cpu, cuda)")
    p.add_argument("--no-baseline", action="store_true", help="skip torchvision and the decode ceiling")
    p.add_argument("--out", default=None, help="folder for loader.json")
    return p


def build_runners(args, stack: ExitStack) -> list[Runner]:
    from fastlt.shards import open_shard

    names = ALL if args.pipeline == "all" else tuple(s.strip() for s in args.pipeline.split(","))
    unknown = [n for n in names if n not in ALL]
    if unknown:
        raise SystemExit(f"tools/bench loader: unknown pipeline(s) {unknown}; choose from {', '.join(ALL)}")
    shards = [open_shard(p) for p in args.shard]
    first = shards[0]
    B, W = args.batch_size, args.workers
    steps = max(2, (args.images or first.num_rows) // B)
    n = steps * B
    runners: list[Runner] = []

    if not args.no_baseline:
        root = Path(args.source_root or first.index.settings.get("source") or "")
        files = [root / s for s in first.index.source_ids]
        missing = [str(f) for f in files[:50] if not f.is_file()]
        if missing:
            raise SystemExit(
                f"tools/bench loader: original image {missing[0]} not found; the torchvision baseline "
                "reads the files the shard was converted from — pass --source-root DIR"
            )
        print(f"baselines on the {len(files)} original JPEGs under {root}, {n} images per pass", flush=True)
        tree = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fastlt-imagefolder-")))
        link_tree(files, first.index.labels, tree)
        one = imagefolder_pass(tree, batch_size=B, workers=W, images=n, size=args.image_size)
        runners.append(Runner({"loader": "torchvision ImageFolder + PIL", "images": "original JPEGs"}, one))
        items = [str(files[i % len(files)]) for i in range(n)]
        one = ceiling_pass(stack, _decode_file, items, workers=W)
        runners.append(Runner({"loader": "decode ceiling (simplejpeg)", "images": "original JPEGs"}, one))

    for shard in shards:
        res = resolution(shard)
        print(f"shard {shard.beton_path}: {res}", flush=True)
        if not args.no_baseline and shard.index.settings.get("write_mode", "jpg") == "jpg":
            one = ceiling_pass(
                stack,
                _decode_row,
                [i % shard.num_rows for i in range(n)],
                workers=W,
                initializer=_init_beton,
                initargs=(str(shard.beton_path),),
            )
            runners.append(Runner({"loader": "decode ceiling (simplejpeg)", "images": res}, one))
        for name in (x for x in names if x in DECODE_PIPELINES):
            one = pipeline_pass(
                stack,
                name,
                shard,
                image_size=args.image_size,
                batch_size=B,
                steps=steps,
                workers=W,
                device=args.device,
            )
            runners.append(Runner({"loader": f"fastlt {name}", "images": res}, one))

    if "resident" in names:
        from fastlt.pipelines import make_pipeline

        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fastlt-cifar-sized-")))
        small_shard, small, labels = cifar_sized_shard(first, tmp, rows=5000)
        cb = args.cifar_batch_size
        csteps = max(2, args.cifar_images // cb)
        what = f"32×32 raw ({small_shard.num_rows} rows)"
        if not args.no_baseline:
            one = cifar_pass(small, labels, batch_size=cb, workers=W, steps=csteps)
            runners.append(Runner({"loader": "torchvision CIFAR-style + PIL", "images": what}, one))
        pipe = make_pipeline("resident", small_shard, train=True, image_size=32, device=args.device, seed=0)
        stack.callback(pipe.close)
        one = lambda: pass_rate(lambda: pipe.batches(epoch_plans(small_shard.num_rows, cb, csteps, 0)))  # noqa: E731
        runners.append(Runner({"loader": "fastlt resident", "images": what}, one))
    return runners


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.shard:
        from fastlt.bench.data import synthetic_shard

        roots = [
            synthetic_shard(Path(args.work), args.synth_images, 100, res, args.workers) for res in (None, 320)
        ]
        args.shard = [str(r / "inat2018" / "train.beton") for r in roots]
    with ExitStack() as stack:
        runners = build_runners(args, stack)
        for rep in range(args.repeats):
            for r in runners:
                r.rates.append(r.one_pass())
                print(
                    f"  round {rep + 1}/{args.repeats}  {r.row['loader']:<30} {r.rates[-1]:>10,.0f} img/s",
                    flush=True,
                )
    rows = []
    for r in runners:
        rows.append({**r.row, "img/s": statistics.median(r.rates), "passes": [round(x, 1) for x in r.rates]})
    by_name = {(r["loader"], r["images"]): r["img/s"] for r in rows}
    base = by_name.get(("torchvision ImageFolder + PIL", "original JPEGs"))
    ceiling = by_name.get(("decode ceiling (simplejpeg)", "original JPEGs"))
    cifar = next((r["img/s"] for r in rows if r["loader"] == "torchvision CIFAR-style + PIL"), None)
    for r in rows:
        if base:
            r["× torchvision"] = r["img/s"] / base
        small = "32×32" in r["images"]
        if ceiling and r["loader"].startswith("fastlt") and not small:
            r["% decode ceiling"] = f"{100 * r['img/s'] / ceiling:.0f}%"
        if cifar and small:
            r["× cifar baseline"] = r["img/s"] / cifar
    title = (
        f"tools/bench loader — train transforms to {args.image_size} px (resident: 32 px), "
        f"batch {args.batch_size} (CIFAR-sized: {args.cifar_batch_size}), {args.workers} workers, "
        f"device {args.device}, median of {args.repeats} interleaved passes"
    )
    cols = ["loader", "images", "img/s", "× torchvision", "% decode ceiling", "× cifar baseline"]
    print_table(title, rows, cols)
    record = {
        "batch_size": args.batch_size,
        "cifar_batch_size": args.cifar_batch_size,
        "workers": args.workers,
        "image_size": args.image_size,
        "device": args.device,
        "rows": rows,
    }
    write_json(args.out, "loader", record)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
