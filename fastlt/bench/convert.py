"""``tools/bench convert``: images/s converting iNat-sized JPEGs into a shard, beside plain PIL loops and the
decode-only ceiling of the same files.

    tools/bench convert                                  # 2,000 synthetic JPEGs, 500–800 px, --workers 2
    tools/bench convert --repeats 5 --out bench-results  # the README's figures
    tools/bench convert --images 4000 --max-resolution 256 512

The data: ``tools/convert synth-inat`` photographs (iNat 2018 layout, long side 500–800 px, quality 90),
made once per command in a temporary folder (or read from ``--data DIR``, which is kept). Not timed.

Measured on the same files, every row once per pass, passes repeated ``--repeats`` times (rows interleaved,
so that a change of load on a shared machine falls on all of them), median reported:

* **PIL, 1 process** — ``Image.open → convert('RGB') → save(JPEG, q90)`` in a loop: the script people write.
* **PIL, N processes** — the same loop over a ``multiprocessing.Pool(--workers)``, at each resolution
  (``Image.draft`` + a box-filter ``resize`` to the bound for the bounded rows): the same work with the same
  cores — the baseline every ratio is taken against. Its workers, and the one process of the row above,
  start from a fresh interpreter each pass, as a script's do (see :func:`_fresh_context`).
* **decode only** — libjpeg-turbo (strict, TurboJPEG API) decoding each file as the converter decodes it —
  to YUV planes at its DCT scale — and nothing else, over N processes: the ceiling of any converter that
  decodes every image once. At full size two: the full decode (the ceiling of ``--reencode``) and the
  1/8-scale validation decode (that of the default, which stores the source JPEGs).
* **fastlt convert** — ``tools/convert inat2018 --splits train --workers N`` end to end: JSON parse, one
  strict decode per image, resize + encode (or the source bytes), layout, checksum, index. At full size also
  with ``--reencode`` (every image decoded and re-encoded at q90: the same work as the PIL loop).

``CPU ms/img`` is the CPU time of the command and all its worker processes per image: on a shared machine
wall-clock rates move with other people's load, CPU per image much less so. For the converter it is split
into the workers' decoding (the validation), their resizing + encoding (the writing) and the parent's share
(layout, checksum, index). ``faults/img``: their minor page faults per image. A loop that maps fresh memory
for every image (PIL's buffers for a 512 px resize of an 800 px photograph are above glibc's mmap threshold)
takes one fault per 4 KB page, and what a fault costs varies from machine to machine, and from hour to hour
on a virtual one; the converter's workers, and the decode-only rows, recycle their buffers. FFCV is imported
before anything is timed.
"""

from __future__ import annotations

import argparse
import functools
import io
import multiprocessing as mp
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fastlt.bench.report import print_table, write_json
from fastlt.workers import keep_freed_memory


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


def _decode_only(task) -> int:
    """The converter's decode of one file and nothing else: the strict decode to YUV planes at the DCT scale
    it uses for ``max_res``, or (``max_res`` = 'validate') the 1/8-scale validation decode of a JPEG it
    stores as it is."""
    from fastlt.datasets import images, turbojpeg

    path, max_res = task
    with open(path, "rb") as f:
        data = f.read()
    if max_res == "validate":
        return sum(images.check_jpeg(data))
    head = turbojpeg.header(data)
    f = images.dct_factor(head.width, head.height, *images.target_size(head.width, head.height, max_res))
    return sum(p.size for p in turbojpeg.decode_planes(data, head, f))


def usage() -> tuple[float, int]:
    """(CPU seconds, minor page faults) of this process and of every child it has reaped."""
    cpu, faults = 0.0, 0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        cpu, faults = cpu + r.ru_utime + r.ru_stime, faults + r.ru_minflt
    return cpu, faults


def reap_children(timeout: float = 10.0) -> None:
    """Wait for worker processes to exit so that their CPU time is counted."""
    t0 = time.perf_counter()
    while mp.active_children() and time.perf_counter() - t0 < timeout:
        time.sleep(0.01)


@dataclass(frozen=True)
class PoolUsage:
    """CPU seconds and minor page faults that a pool's workers spent on their tasks."""

    cpu: float
    faults: int


def measured(fn) -> tuple[float, float, int, object]:
    """(wall seconds, CPU seconds and minor page faults of this process, its workers and any pool it ran,
    result) of ``fn()``."""
    reap_children()
    (c0, f0), t0 = usage(), time.perf_counter()
    result = fn()
    wall = time.perf_counter() - t0
    reap_children()
    c1, f1 = usage()
    pool = result if isinstance(result, PoolUsage) else PoolUsage(0.0, 0)
    return wall, c1 - c0 + pool.cpu, f1 - f0 + pool.faults, result


def _fresh_context():
    """Pools whose workers fork from a fresh interpreter (multiprocessing's fork server), as the pool of a
    user's script does. Forked from this process instead, they would inherit its malloc state from the rows
    before: glibc raises its mmap threshold after a process frees a large block, and a PIL loop forked
    after a few rows took 4 page faults an image at 512 px instead of ~600, and ran ~1.3x as fast."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["PIL.Image", "fastlt.bench.convert"])
    return ctx


def _usage_of(fn, task) -> tuple[float, int]:
    """In a pool worker: ``fn(task)``, returning the CPU seconds and minor faults it took."""
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    fn(task)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt


def pool_loop(fn, files: list[str], arg, workers: int, initializer=None) -> PoolUsage:
    """``fn((file, arg))`` for every file over ``workers`` fresh processes; what they spent on it."""
    cpu, faults = 0.0, 0
    with _fresh_context().Pool(max(1, workers), initializer=initializer) as pool:
        tasks = [(f, arg) for f in files]
        for c, f in pool.imap_unordered(functools.partial(_usage_of, fn), tasks, chunksize=16):
            cpu, faults = cpu + c, faults + f
    return PoolUsage(cpu, faults)


def fastlt_convert(root: Path, out: Path, max_res: int | None, workers: int, reencode: bool = False) -> dict:
    import contextlib
    import os

    from fastlt.convert import build_parser
    from fastlt.datasets import inat
    from fastlt.datasets.engine import WriteOptions, run

    argv = ["inat2018", str(root), "--splits", "train", "--out", str(out), "--workers", str(workers)]
    args = build_parser().parse_args(argv)
    timings: dict = {}
    # The engine's progress bars go to stderr; a benchmark table should not be buried in them.
    with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
        shards = run(
            inat.build(args),
            WriteOptions(out=out, workers=workers, max_resolution=max_res, reencode=reencode, name="bench"),
            timings,
        )
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
    p.add_argument("--repeats", type=int, default=1, help="passes over all rows, median reported (default 1)")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="existing iNat-layout root to convert (default: generate one in a temporary folder)",
    )
    p.add_argument("--out", default=None, help="write convert.json here")
    return p


def plan(files: list[str], root: Path, out: Path, resolutions: list, workers: int) -> list[dict]:
    """Every row of the table: its labels and what to run (``kind`` says how its ratios are taken)."""
    W = workers
    rows = [
        dict(
            res=None,
            kind="pil1",
            method="PIL decode+re-encode, 1 process",
            run=lambda: pool_loop(_pil_reencode, files, None, 1),
        ),
    ]
    for res in [None, *sorted(resolutions)]:
        rows.append(
            dict(
                res=res,
                kind="pil",
                method=f"PIL decode+re-encode, {W} processes (baseline)",
                run=lambda res=res: pool_loop(_pil_reencode, files, res, W),
            )
        )
        if res is None:
            rows.append(
                dict(
                    res=res,
                    kind="ceiling",
                    ceiling="validate",
                    method=f"decode only at 1/8 (validation), {W} processes",
                    run=lambda: pool_loop(_decode_only, files, "validate", W, keep_freed_memory),
                )
            )
        rows.append(
            dict(
                res=res,
                kind="ceiling",
                ceiling="decode",
                method=f"decode only, as the converter decodes, {W} processes",
                run=lambda res=res: pool_loop(_decode_only, files, res, W, keep_freed_memory),
            )
        )
        for reencode in (False, True) if res is None else (False,):
            rows.append(
                dict(
                    res=res,
                    kind="fastlt",
                    ceiling="decode" if reencode or res else "validate",
                    method=f"tools/convert --workers {W}" + (" --reencode" if reencode else ""),
                    run=lambda res=res, reencode=reencode: fastlt_convert(root, out, res, W, reencode),
                )
            )
    return rows


def summarise(rows: list[dict], n: int) -> list[dict]:
    """Table rows: medians, ratios against the PIL baselines, the share of the decode ceiling."""
    label = {r["res"]: "full" if r["res"] is None else f"max {r['res']}" for r in rows}
    single = next(r["wall"] for r in rows if r["kind"] == "pil1")
    pil = {r["res"]: r["wall"] for r in rows if r["kind"] == "pil"}
    ceilings = {(r["res"], r["ceiling"]): r["wall"] for r in rows if r["kind"] == "ceiling"}
    table = []
    for r in rows:
        t = {
            "resolution": label[r["res"]],
            "method": r["method"],
            "img/s": n / r["wall"],
            "x PIL N-proc": pil[r["res"]] / r["wall"] if r["kind"] != "pil1" else "",
            "x PIL 1-proc": single / r["wall"],
            "CPU ms/img": r["cpu"] / n * 1e3,
            "faults/img": r["faults"] / n,
        }
        if r["kind"] in ("fastlt", "ceiling"):
            t["% of ceiling"] = 100 * ceilings[r["res"], r["ceiling"]] / r["wall"]
        if r["kind"] == "fastlt":
            t["decode ms/img"] = r["timings"]["decode_cpu_s"] / n * 1e3
            t["resize+encode ms/img"] = r["timings"]["encode_cpu_s"] / n * 1e3
            t["parent ms/img"] = r["timings"]["parent_cpu_s"] / n * 1e3
            t["shard MB"] = r["timings"]["bytes"] / 2**20
        table.append(t)
    return table


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Importing FFCV compiles its numba kernels (seconds), and the resize kernel compiles on first use:
    # one-time costs per process, not throughput.
    import ffcv.fields  # noqa: F401
    import ffcv.types  # noqa: F401

    import fastlt.convert  # noqa: F401 - and the converter's own imports, before anything is timed
    from fastlt.datasets import engine, inat, resize  # noqa: F401

    resize.warm_up()
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
        rows = plan(files, root, tmp / "out", args.max_resolution, args.workers)
        runs: list[list] = [[] for _ in rows]
        for p in range(max(1, args.repeats)):
            for r, out in zip(rows, runs):
                out.append(measured(r["run"]))
            print(f"pass {p + 1} of {max(1, args.repeats)} done", flush=True)
        for r, out in zip(rows, runs):
            r["wall"] = statistics.median(w for w, _, _, _ in out)
            r["cpu"] = statistics.median(c for _, c, _, _ in out)
            r["faults"] = statistics.median(f for _, _, f, _ in out)
            if r["kind"] == "fastlt":  # the timings of the pass whose wall time is the median
                r["timings"] = sorted(out, key=lambda m: m[0])[len(out) // 2][3]
        table = summarise(rows, n)
        cols = [
            "resolution",
            "method",
            "img/s",
            "x PIL N-proc",
            "x PIL 1-proc",
            "% of ceiling",
            "CPU ms/img",
            "faults/img",
            "decode ms/img",
            "resize+encode ms/img",
            "parent ms/img",
            "shard MB",
        ]
        print()
        print_table(
            f"tools/bench convert: {n} JPEGs ({mb / n * 1024:.0f} KB mean, long side 500-800 px), "
            f"{args.workers} workers, median of {max(1, args.repeats)} passes",
            table,
            cols,
        )
        write_json(
            args.out,
            "convert",
            {
                "images": n,
                "workers": args.workers,
                "mean_kb": mb / n * 1024,
                "repeats": args.repeats,
                "rows": table,
            },
        )
    return 0
