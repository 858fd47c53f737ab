"""``tools/bench convert``: images/s converting iNat-sized JPEGs into a shard, beside plain PIL loops.

    tools/bench convert                                  # 2,000 synthetic JPEGs, 500–800 px, --workers 2
    tools/bench convert --images 4000 --max-resolution 256 512 --out bench-results

The data: ``tools/convert synth-inat`` photographs (iNat 2018 layout, long side 500–800 px, quality 90),
made once per command in a temporary folder (or read from ``--data DIR``, which is kept). Not timed.

Measured, on the same files, each a full pass (median of ``--repeats``):

* **PIL, 1 process** — ``Image.open → convert('RGB') → save(JPEG, q90)`` in a loop: the script people write.
* **PIL, N processes** — the same loop over a ``multiprocessing.Pool(--workers)``, at each resolution
  (``Image.draft`` + ``resize`` to the bound for the bounded rows): the same work with the same cores,
  nothing else — the fair yardstick.
* **fastlt convert** — ``tools/convert inat2018 --splits train`` end to end: JSON parse, decode-validation of
  every file, FFCV's writer (decode, OpenCV resize + re-encode at q90), checksum, index. The validation
  and write phases are also reported on their own. At full size also with ``--keep-jpeg`` (source JPEGs
  stored byte for byte: validation, a file read and a copy per image).

Ratios: against PIL N-process at the same resolution, and against the 1-process loop at full resolution.
``CPU ms/img`` is the CPU time of the command and all its worker processes per image: on a shared machine
wall-clock rates move with other people's load, CPU per image much less so.
FFCV is imported (and its numba kernels compiled) before anything is timed.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import resource
import statistics
import tempfile
import time
from pathlib import Path

from fastlt.bench.report import print_table, write_json


def _pil_reencode(task) -> int:
    """Decode, optionally shrink (DCT-scaled draft, then a box-filtered resize), re-encode at q90."""
    from PIL import Image

    path, max_res = task
    with Image.open(path) as im:
        if max_res:
            w, h = im.size
            r = max_res / max(w, h)
            if r < 1:
                im.draft("RGB", (int(w * r) + 1, int(h * r) + 1))
        im = im.convert("RGB")
        if max_res and max(im.size) > max_res:
            r = max_res / max(im.size)
            im = im.resize((max(1, int(im.width * r)), max(1, int(im.height * r))), Image.BOX)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
    return buf.tell()


def cpu_seconds() -> float:
    """CPU time of this process and of every child it has reaped (user + system)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def reap_children(timeout: float = 10.0) -> None:
    """Wait for worker processes to exit so their CPU time is counted (FFCV never joins its writers)."""
    t0 = time.perf_counter()
    while mp.active_children() and time.perf_counter() - t0 < timeout:
        time.sleep(0.01)


def measured(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its workers) of ``fn()``."""
    reap_children()
    c0, t0 = cpu_seconds(), time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    reap_children()
    return wall, cpu_seconds() - c0


def pil_loop(files: list[str], max_res: int | None, workers: int) -> None:
    tasks = [(f, max_res) for f in files]
    if workers <= 1:
        for t in tasks:
            _pil_reencode(t)
    else:
        with mp.get_context("fork").Pool(workers) as pool:
            for _ in pool.imap_unordered(_pil_reencode, tasks, chunksize=16):
                pass


def fastlt_convert(root: Path, out: Path, max_res: int | None, workers: int, keep_jpeg: bool = False) -> dict:
    import contextlib
    import os

    from fastlt.convert import build_parser
    from fastlt.datasets import inat
    from fastlt.datasets.engine import WriteOptions, run

    argv = ["inat2018", str(root), "--splits", "train", "--out", str(out), "--workers", str(workers)]
    args = build_parser().parse_args(argv)
    timings: dict = {}
    t0 = time.perf_counter()
    # The engine's progress bars go to stderr; a benchmark table should not be buried in them.
    with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
        shards = run(
            inat.build(args),
            WriteOptions(out=out, workers=workers, max_resolution=max_res, keep_jpeg=keep_jpeg, name="bench"),
            timings,
        )
    timings["total_s"] = time.perf_counter() - t0
    timings["bytes"] = shards["train"].beton_path.stat().st_size
    return timings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tools/bench convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", type=int, default=2000, help="synthetic train JPEGs (default 2000)")
    p.add_argument("--classes", type=int, default=100, help="classes of the synthetic data (default 100)")
    p.add_argument("--workers", type=int, default=2, help="processes for every N-process row (default 2)")
    p.add_argument(
        "--max-resolution",
        type=int,
        nargs="*",
        default=[256, 512],
        help="bounded resolutions to measure besides full size (default 256 512)",
    )
    p.add_argument("--repeats", type=int, default=1, help="passes per row, median reported (default 1)")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="existing iNat-layout root to convert (default: generate one in a temporary folder)",
    )
    p.add_argument("--out", default=None, help="write convert.json here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Importing FFCV compiles its numba kernels (seconds): a one-time cost per process, not throughput.
    import ffcv.fields  # noqa: F401
    import ffcv.writer  # noqa: F401

    with tempfile.TemporaryDirectory(prefix="fastlt-bench-convert-") as tmp:
        tmp = Path(tmp)
        root = args.data
        if root is None:
            from fastlt.datasets.synthetic import write_inat_like

            root = tmp / "inat"
            print(f"generating {args.images} synthetic iNat-sized JPEGs (not timed) ...", flush=True)
            write_inat_like(root, args.images, args.classes, seed=0, val_per_class=1, workers=args.workers)
        import json

        doc = json.loads((root / "train2018.json").read_text())
        files = [str(root / im["file_name"]) for im in doc["images"]]
        n = len(files)
        mb = sum(Path(f).stat().st_size for f in files) / 2**20
        print(f"{n} JPEGs, {mb / n * 1024:.0f} KB mean, under {root}", flush=True)

        def med(fn):
            """Median (wall, CPU) seconds over --repeats passes."""
            runs = [measured(fn) for _ in range(max(1, args.repeats))]
            return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)

        W = args.workers
        rows = []
        single, single_cpu = med(lambda: pil_loop(files, None, 1))
        rows.append(
            {
                "resolution": "full",
                "method": "PIL decode+re-encode, 1 process",
                "img/s": n / single,
                "vs PIL N-proc": "",
                "vs PIL 1-proc": 1.0,
                "CPU ms/img": single_cpu / n * 1e3,
            }
        )
        for res in [None, *sorted(args.max_resolution)]:
            label = "full" if res is None else f"max {res}"
            pil, pil_cpu = med(lambda res=res: pil_loop(files, res, W))
            rows.append(
                {
                    "resolution": label,
                    "method": f"PIL decode+re-encode, {W} processes",
                    "img/s": n / pil,
                    "vs PIL N-proc": 1.0,
                    "vs PIL 1-proc": single / pil,
                    "CPU ms/img": pil_cpu / n * 1e3,
                }
            )
            # --keep-jpeg only changes anything where source JPEGs need no shrinking: at full size.
            for keep in (False, True) if res is None else (False,):
                phases: dict = {}
                t, cpu = med(
                    lambda res=res, keep=keep, phases=phases: phases.update(
                        fastlt_convert(root, tmp / "out", res, W, keep)
                    )
                )
                rows.append(
                    {
                        "resolution": label,
                        "method": f"fastlt convert --workers {W}" + (" --keep-jpeg" if keep else ""),
                        "img/s": n / t,
                        "vs PIL N-proc": pil / t,
                        "vs PIL 1-proc": single / t,
                        "CPU ms/img": cpu / n * 1e3,
                        "validate img/s": n / phases["validate_s"],
                        "write img/s": n / phases["write_s"],
                        "shard MB": phases["bytes"] / 2**20,
                    }
                )
        cols = [
            "resolution",
            "method",
            "img/s",
            "vs PIL N-proc",
            "vs PIL 1-proc",
            "CPU ms/img",
            "validate img/s",
            "write img/s",
            "shard MB",
        ]
        print()
        print_table(
            f"tools/bench convert: {n} JPEGs ({mb / n * 1024:.0f} KB mean, long side 500-800 px), "
            f"{W} workers",
            rows,
            cols,
        )
        write_json(args.out, "convert", {"images": n, "workers": W, "mean_kb": mb / n * 1024, "rows": rows})
    return 0
