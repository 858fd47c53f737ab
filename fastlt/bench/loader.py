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

Timing: each loader runs ``--repeats`` passes; a pass is timed from its first batch (worker start-up and
numba compilation excluded) to its last; the median pass is reported. The resolution the shard was written at
is printed next to every figure: decode cost scales with stored pixels, so it is part of the result.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from fastlt.bench.report import print_table, write_json

DECODE_PIPELINES = ("ffcv", "dali", "torch")
ALL = ("resident", *DECODE_PIPELINES)


# ---------------------------------------------------------------------------------------------- timing
def throughput(make_batches: Callable[[], Iterable], repeats: int) -> float:
    """Median images/s over ``repeats`` passes, each timed from its first batch to its last."""
    rates = []
    for _ in range(repeats):
        it = iter(make_batches())
        next(it)  # start-up (workers, compilation, first decode) is not throughput
        t0 = time.perf_counter()
        n = 0
        for b in it:
            n += len(b[0]) if isinstance(b, (list, tuple)) else len(b)
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


# ---------------------------------------------------------------------------------------------- baselines
def link_tree(files: list[Path], labels: np.ndarray, root: Path) -> Path:
    """A folder per class holding links to the original files: what ImageFolder expects."""
    for i, (f, y) in enumerate(zip(files, labels)):
        d = root / f"{int(y):05d}"
        d.mkdir(exist_ok=True)
        (d / f"{i:07d}_{f.name}").symlink_to(f.resolve())
    return root


def torchvision_imagefolder(files, labels, *, batch_size, workers, repeats, images, size=224) -> float:
    import torch
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.PILToTensor()]
    )
    with tempfile.TemporaryDirectory(prefix="fastlt-imagefolder-") as tmp:
        ds = datasets.ImageFolder(str(link_tree(files, labels, Path(tmp))), transform=tf)

        def run():
            # Shuffled; drawn with replacement only when a pass needs more images than the set holds.
            sampler = torch.utils.data.RandomSampler(ds, replacement=images > len(ds), num_samples=images)
            return torch.utils.data.DataLoader(
                ds, batch_size=batch_size, sampler=sampler, num_workers=workers
            )

        return throughput(run, repeats)


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


def decode_ceiling(fn, items: list, *, workers: int, repeats: int, initializer=None, initargs=()) -> float:
    """images/s of ``fn`` over ``items`` in ``workers`` processes (pool start-up excluded)."""
    ctx = mp.get_context("fork")
    with ctx.Pool(workers, initializer=initializer, initargs=initargs) as pool:
        pool.map(fn, items[: 2 * workers])  # warm: imports, page cache
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            pool.map(fn, items, chunksize=8)
            rates.append(len(items) / (time.perf_counter() - t0))
    return statistics.median(rates)


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


def pipeline_rate(name, shard, *, image_size, batch_size, steps, workers, repeats, device) -> float:
    from fastlt.pipelines import make_pipeline

    pipe = make_pipeline(
        name, shard, train=True, image_size=image_size, device=device, seed=0, workers=workers
    )
    try:
        return throughput(lambda: pipe.batches(epoch_plans(shard.num_rows, batch_size, steps, 0)), repeats)
    finally:
        pipe.close()


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
    names = shard.index.class_names
    source = ArraySource(small, labels, [str(r) for r in range(n)])
    return (
        write_shard(folder, "cifar-sized", "train", source, names, write_mode="raw", workers=1),
        small,
        labels,
    )


# ---------------------------------------------------------------------------------------------- command
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/bench loader", description=__doc__.split("\n\n")[0])
    p.add_argument("--shard", action="append", required=True, help="a jpg .beton (repeat to compare shards)")
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
    p.add_argument("--repeats", type=int, default=3, help="passes per loader; the median is reported")
    p.add_argument("--cifar-batch-size", type=int, default=256)
    p.add_argument("--cifar-images", type=int, default=51200, help="images per resident/CIFAR pass")
    p.add_argument("--device", default="cpu", help="device of the pipelines' batches (cpu, cuda)")
    p.add_argument("--no-baseline", action="store_true", help="skip torchvision and the decode ceiling")
    p.add_argument("--out", default=None, help="folder for loader.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fastlt.shards import open_shard

    names = ALL if args.pipeline == "all" else tuple(s.strip() for s in args.pipeline.split(","))
    unknown = [n for n in names if n not in ALL]
    if unknown:
        raise SystemExit(f"tools/bench loader: unknown pipeline(s) {unknown}; choose from {', '.join(ALL)}")
    shards = [open_shard(p) for p in args.shard]
    first = shards[0]
    B, W = args.batch_size, args.workers
    steps = max(2, (args.images or first.num_rows) // B)
    rows: list[dict] = []
    record: dict = {"batch_size": B, "workers": W, "image_size": args.image_size, "device": args.device}

    base = ceiling = None
    if not args.no_baseline:
        root = Path(args.source_root or first.index.settings.get("source") or "")
        files = [root / s for s in first.index.source_ids]
        missing = [str(f) for f in files[:50] if not f.is_file()]
        if missing:
            raise SystemExit(
                f"tools/bench loader: original image {missing[0]} not found; the torchvision baseline "
                "reads the files the shard was converted from — pass --source-root DIR"
            )
        n = steps * B
        labels = first.index.labels
        print(f"baselines on the {len(files)} original JPEGs under {root}, {n} images per pass", flush=True)
        base = torchvision_imagefolder(
            files, labels, batch_size=B, workers=W, repeats=args.repeats, images=n, size=args.image_size
        )
        files = [files[i % len(files)] for i in range(n)]
        rows.append({"loader": "torchvision ImageFolder + PIL", "images": "original JPEGs", "img/s": base})
        ceiling = decode_ceiling(_decode_file, [str(f) for f in files], workers=W, repeats=args.repeats)
        rows.append({"loader": "decode ceiling (simplejpeg)", "images": "original JPEGs", "img/s": ceiling})

    for shard in shards:
        res = resolution(shard)
        print(f"shard {shard.beton_path}: {res}", flush=True)
        if not args.no_baseline and shard.index.settings.get("write_mode", "jpg") == "jpg":
            c = decode_ceiling(
                _decode_row,
                [i % shard.num_rows for i in range(steps * B)],
                workers=W,
                repeats=args.repeats,
                initializer=_init_beton,
                initargs=(str(shard.beton_path),),
            )
            rows.append({"loader": "decode ceiling (simplejpeg)", "images": res, "img/s": c})
        for name in (n for n in names if n in DECODE_PIPELINES):
            print(f"  {name} ...", flush=True)
            rate = pipeline_rate(
                name,
                shard,
                image_size=args.image_size,
                batch_size=B,
                steps=steps,
                workers=W,
                repeats=args.repeats,
                device=args.device,
            )
            rows.append({"loader": f"fastlt {name}", "images": res, "img/s": rate})

    if "resident" in names:
        import torch

        with tempfile.TemporaryDirectory(prefix="fastlt-cifar-sized-") as tmp:
            small_shard, small, labels = cifar_sized_shard(first, Path(tmp), rows=5000)
            cb = args.cifar_batch_size
            csteps = max(2, args.cifar_images // cb)
            what = f"32×32 raw ({small_shard.num_rows} rows)"
            if not args.no_baseline:
                ds = _CifarStyle(small, labels)

                def cifar_loader():
                    # Enough passes over the small set for one timed run of `cifar_images` images.
                    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=csteps * cb)
                    return torch.utils.data.DataLoader(ds, batch_size=cb, sampler=sampler, num_workers=W)

                cbase = throughput(cifar_loader, args.repeats)
                rows.append({"loader": "torchvision CIFAR-style + PIL", "images": what, "img/s": cbase})
            else:
                cbase = None
            print("  resident ...", flush=True)
            from fastlt.pipelines import make_pipeline

            pipe = make_pipeline(
                "resident", small_shard, train=True, image_size=32, device=args.device, seed=0
            )
            rate = throughput(
                lambda: pipe.batches(epoch_plans(small_shard.num_rows, cb, csteps, 0)), args.repeats
            )
            pipe.close()
            rows.append(
                {
                    "loader": "fastlt resident",
                    "images": what,
                    "img/s": rate,
                    "× cifar baseline": rate / cbase if cbase else "",
                }
            )

    for r in rows:
        if base and "× torchvision" not in r:
            r["× torchvision"] = r["img/s"] / base
        if ceiling and r["loader"].startswith("fastlt") and "32×32" not in r["images"]:
            r["% decode ceiling"] = f"{100 * r['img/s'] / ceiling:.0f}%"
    title = (
        f"tools/bench loader — train transforms to {args.image_size} px (resident: 32 px), batch {B}, "
        f"{W} workers, device {args.device}"
    )
    cols = ["loader", "images", "img/s", "× torchvision", "% decode ceiling", "× cifar baseline"]
    print_table(title, rows, cols)
    record["rows"] = rows
    write_json(args.out, "loader", record)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
