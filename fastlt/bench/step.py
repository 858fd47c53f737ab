"""``tools/bench step``: whole training steps per second and the fraction of step time spent waiting for data,
``ce`` (baseline) vs ``cpmix`` and ``concutmix``, through the real trainer (``fastlt.train.train``) on a
synthetic JPEG shard, each divided by the loop users run today on the same JPEGs — or, with ``--num-classes
C``, on a raw shard of C classes (iNat's 8,142: the cost of everything that scales with the class count),
where ConCutMix's step is also broken down.

    tools/bench step                         # CPU defaults: 1,500 JPEGs → shard at 256 px, 112 px crops
    tools/bench step --methods ce,mixup,cutmix,cpmix --steps 20 --out bench-results
    tools/bench step --num-classes 8142 --batch-size 256 --image-size 32 --steps 3 --methods ce,concutmix

What is timed: a run of 1 + ``--repeats`` epochs of ``--steps`` steps, no evaluation; epoch 1 is a warm-up
(numba/Triton compilation, the first decodes) and the median over the others is reported. The trainer
measures the time blocked in ``next(batches)`` (data wait) and the epoch's wall time; steps/s = steps / wall
time, img/s = B · steps/s (the samples trained on), img/s (loaded) = every row the pipeline loaded. CP-Mix
runs its mixing stage from the first epoch (``--cpmix-start-epoch 0``): each step loads main + CP-mix pairs
(3·B rows: the batch of B plus B_m = B pairs), mixes twice and forwards 3·B images.

The reference (``fastlt.bench.reference_loop``, skipped by ``--no-reference`` and with ``--num-classes``):
torchvision ``ImageFolder`` + PIL ``RandomResizedCrop`` + flip + ``ToTensor`` + ``Normalize`` in a
``DataLoader`` over the *original* JPEGs the shard was converted from, the same model (torchvision's for the
ResNets, fastlt's module for smallnet / resnet32), image size, batch size, workers, SGD settings and device;
``F.cross_entropy``, or timm ``Mixup(mode='batch')`` + ``SoftTargetCrossEntropy`` for mixup and cutmix.
Methods with no off-the-shelf loop (cpmix, concutmix, lfm, bs, ldam-drw) are divided by the CE loop. It is
timed like the trainer — a warm-up epoch, then the median of ``--repeats`` epochs — right after the first
fastlt method it serves; ``× reference`` = fastlt img/s ÷ reference img/s (the same batch size, so also the
steps/s ratio).

ConCutMix runs with every batch CutMixed and the rectified label on from the timed epoch
(``--ccm-cutmix-prob 1 --ccm-l-d-warm 0``): its most expensive step. With ``--num-classes`` the table is
followed by the breakdown of that step (:func:`concutmix_breakdown`): each part timed alone, forward and
backward, at the run's shapes — backbone, classifier, projection and prototype heads, BCL, the rectified
label (and the full stable sort it replaced), the soft CE.

The shard: ``tools/convert synth-inat`` photographs (long side 500–800 px, iNat-2018 layout) converted with
``tools/convert inat2018 --max-resolution`` (default 256) — the resolution is printed with every figure,
because decode cost scales with it. With ``--num-classes C``: random pixels at ``--image-size``, stored raw
(resident pipeline), 6 → 2 training images per class (long-tailed) and one test image per class. Data is made
once under ``--work`` and reused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

from fastlt.bench.data import synthetic_shard
from fastlt.bench.reference_loop import reference_kind
from fastlt.bench.report import print_table, write_json


def overrides(method: str, data: Path, args) -> list[str]:
    """The recipe keys of a bench run: ``1 + --repeats`` epochs of ``--steps`` steps, no evaluation."""
    over = [
        "--data-root",
        str(data),
        "--eval-split",
        "val",
        "--name",
        f"bench-{method}",
        "--epochs",
        str(1 + args.repeats),
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
    if args.compile:
        over += ["--compile"]
    if method == "cpmix":
        over += ["--cpmix-start-epoch", "0", "--finetune-epochs", "0"]
    if method == "concutmix":
        over += ["--ccm-cutmix-prob", "1", "--ccm-l-d-warm", "0"]
    return over


def run_one(method: str, data: Path, runs: Path, args) -> dict:
    """fastlt's trainer on the shard: medians over the epochs after the first (numba/Triton compilation,
    first decodes)."""
    from fastlt.recipes import resolve
    from fastlt.train import train

    run = runs / f"bench-{method}"
    if run.exists():
        shutil.rmtree(run)
    recipe = resolve("inat2018", method, overrides(method, data, args))
    train(recipe, runs, log=lambda *a, **k: None)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    timed = lines[1:]
    steps_per_s = statistics.median(rec["steps_per_s"] for rec in timed)
    return {
        "loop": "fastlt",
        "method": method,
        "steps/s": steps_per_s,
        "img/s": steps_per_s * args.batch_size,
        # every row the pipeline loaded (CP-Mix: main + pairs, ConCutMix: four segments, mixup: main + b)
        "img/s (loaded)": statistics.median(rec["img_per_s"] for rec in timed),
        "data wait": statistics.median(rec["data_wait"] for rec in timed),
        "loss": lines[-1]["train_loss"],
        "epochs timed": len(timed),
        "steps/s per epoch": [round(rec["steps_per_s"], 4) for rec in timed],
    }


def reference_root(data: Path, work: Path) -> tuple[Path, int, int]:
    """The ImageFolder tree of the original train JPEGs the shard was converted from (made once), how many
    images it holds, and the shard's class count."""
    from fastlt.bench.reference_loop import imagefolder_tree
    from fastlt.shards import open_shard

    index = open_shard(data / "inat2018" / "train.beton").index
    source = Path(index.settings["source"])
    files = [source / s for s in index.source_ids]
    missing = next((f for f in files if not f.is_file()), None)
    if missing is not None:
        raise SystemExit(f"tools/bench step: original image {missing} not found; the reference loop reads "
                         f"the JPEGs the shard was converted from (remove {data} to make both again)")
    tree = imagefolder_tree(files, index.labels, work / f"imagefolder-{data.name}")
    return tree, len(files), index.num_classes


def run_reference(kind: str, data: Path, root: Path, num_classes: int, args) -> dict:
    """The loop users run today (``fastlt.bench.reference_loop``) with the settings of fastlt's ``kind`` run:
    one warm-up epoch (worker start, first decodes), then ``--repeats`` timed epochs; medians."""
    from fastlt.bench.reference_loop import LoopConfig, ReferenceLoop, describe
    from fastlt.recipes import resolve

    cfg = LoopConfig.from_recipe(resolve("inat2018", kind, overrides(kind, data, args)), num_classes)
    loop = ReferenceLoop(root, kind, cfg, args.steps)
    warm = loop.epoch()
    timed = [loop.epoch() for _ in range(args.repeats)]
    del loop  # stops its persistent loader workers before the next run
    steps_per_s = statistics.median(t.steps_per_s for t in timed)
    return {
        "loop": "reference",
        "method": kind,
        "steps/s": steps_per_s,
        "img/s": steps_per_s * args.batch_size,
        "img/s (loaded)": steps_per_s * args.batch_size,
        "data wait": statistics.median(t.wait / t.seconds for t in timed),
        "loss": timed[-1].loss,
        "loss, warm-up epoch": warm.loss,
        "epochs timed": len(timed),
        "steps/s per epoch": [round(t.steps_per_s, 4) for t in timed],
        "runs": describe(kind, args.model),
    }


def against(method: str) -> str:
    """Which reference row a fastlt method is divided by, in words."""
    from fastlt.bench.reference_loop import TIMM_MIXING

    if method in TIMM_MIXING:
        return f"timm {method} loop"
    return "CE loop" if method == "ce" else f"CE loop (no off-the-shelf {method})"


def class_shard(work: Path, C: int, image_size: int) -> Path:
    """Data root of ``inat2018/{train,val}`` with ``C`` classes of random raw pixels (made once)."""
    import numpy as np

    from fastlt.datasets.longtail import longtail_counts
    from fastlt.shards import ArraySource, write_shard

    data = work / f"classes-{C}-{image_size}"
    if (data / "inat2018" / "val.index.json").exists():
        return data
    counts = np.maximum(longtail_counts(6, C, 3.0), 2)
    names = [f"class {c}" for c in range(C)]
    rng = np.random.default_rng(0)
    for split, per_class in (("train", counts), ("val", np.ones(C, np.int64))):
        labels = np.repeat(np.arange(C), per_class)
        images = rng.integers(0, 256, (len(labels), image_size, image_size, 3), dtype=np.uint8)
        src = ArraySource(images, labels, [f"{split}/{i}" for i in range(len(labels))])
        write_shard(data, "inat2018", split, src, names, train_class_counts=counts, write_mode="raw")
    return data


def concutmix_breakdown(data: Path, args) -> list[dict]:
    """One ConCutMix step's parts, each timed alone (forward + backward where the step has one) at the run's
    shapes: B images per segment, C classes, the recipe's model and heads."""
    import torch

    from fastlt.bench.report import median_time
    from fastlt.kernels.soft_ce import soft_cross_entropy
    from fastlt.losses import bcl_loss
    from fastlt.methods.base import get_method
    from fastlt.methods.concutmix import rectified_label
    from fastlt.recipes import resolve
    from fastlt.shards import open_shard

    index = open_shard(data / "inat2018" / "train.beton").index
    r = resolve("inat2018", "concutmix", ["--model", args.model, "--image-size", str(args.image_size),
                                         "--classifier", "linear", "--device", "cpu"])
    model = get_method("concutmix")(r, index).build_model().train()
    B, C, S = args.batch_size, index.num_classes, args.image_size
    x = torch.randn(3 * B, 3, S, S)
    y = torch.randint(0, C, (B,))
    feats = model.features(x).detach().requires_grad_(True)
    u = model.projection(feats).detach()
    protos = model.prototypes().detach().requires_grad_(True)
    logits = model.classifier(feats[:B]).detach().requires_grad_(True)
    area = (torch.stack([y, y.roll(1)], 1), torch.full((B, 2), 0.5))
    counts = torch.as_tensor(index.train_counts, dtype=torch.float32)

    def backward(fn):
        return lambda: fn().float().sum().backward()

    parts = [
        ("backbone, 3·B images", backward(lambda: model.features(x))),
        ("classifier, 3·B rows", backward(lambda: model.classifier(feats))),
        ("projection head, 3·B rows", backward(lambda: model.projection(feats))),
        ("prototype head, C classifier rows", backward(lambda: model.prototypes())),
        ("BCL, 2·B views × (2·B + C) members",
         backward(lambda: bcl_loss(torch.stack([u[B:2 * B], u[2 * B:]], 1), y, protos, r.ccm_temperature))),
        ("rectified label (top-k)", lambda: rectified_label(u[:B], protos, area, counts, r.ccm_topk,
                                                             r.ccm_omega)),
        ("  before: full stable sort of B × C", lambda: torch.sort(torch.cdist(u[:B], protos), dim=1,
                                                                   stable=True)),
        ("soft CE (LA), B × C", backward(lambda: soft_cross_entropy(logits, *area))),
    ]
    rows = [{"part": name, "ms": 1000 * median_time(fn, repeats=3)} for name, fn in parts]
    total = sum(row["ms"] for row in rows if not row["part"].startswith(" "))
    for row in rows:
        row["share"] = "" if row["part"].startswith(" ") else f"{row['ms'] / total:.0%}"
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/bench step", description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", default="ffcv", help="resident | ffcv | dali | torch (default ffcv)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--model", default="smallnet")
    p.add_argument("--images", type=int, default=1500)
    p.add_argument("--classes", type=int, default=50)
    p.add_argument("--num-classes", type=int, default=0,
                   help="C classes of random raw pixels instead of the JPEG shard (e.g. 8142), + ConCutMix "
                   "breakdown")
    p.add_argument("--methods", default="ce,cpmix,concutmix",
                   help="comma-separated; the first is the baseline (default ce,cpmix,concutmix)")
    p.add_argument("--max-resolution", type=int, default=256)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=15, help="steps per epoch")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed epochs after a warm-up epoch, fastlt and reference alike; medians (default 3)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model, fastlt's (recipe key compile) and the reference loop's "
                   "alike; the warm-up epoch absorbs the compilation")
    p.add_argument("--no-reference", action="store_true",
                   help="skip the reference loop (torchvision ImageFolder + PIL, timm Mixup)")
    p.add_argument("--work", default="/tmp/fastlt-bench-step", help="where the synthetic data and runs live")
    p.add_argument("--out", default=None, help="folder for step.json")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.num_classes:
        data = class_shard(work, args.num_classes, args.image_size)
        args.pipeline, shape = "resident", f"{args.num_classes:,} classes of raw {args.image_size} px images"
    else:
        data = synthetic_shard(work, args.images, args.classes, args.max_resolution, args.workers)
        shape = f"shard JPEGs ≤ {args.max_resolution} px ({args.images} images)"
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    # The reference reads the original JPEGs; a raw --num-classes shard has none.
    with_reference = not args.no_reference and not args.num_classes
    root, originals, num_classes = reference_root(data, work) if with_reference else (None, 0, 0)
    rows, references = [], {}
    for m in methods:
        rows.append(run_one(m, data, work / "runs", args))
        kind = reference_kind(m)
        if with_reference and kind not in references:  # measured right after the first method it serves
            references[kind] = run_reference(kind, data, root, num_classes, args)
    base = rows[0]["steps/s"]
    vs, cost = f"steps/s vs {methods[0]}", f"step time × {methods[0]}"
    for r in rows:
        r[vs], r[cost] = r["steps/s"] / base, base / r["steps/s"]
        if with_reference:
            r["× reference"] = r["img/s"] / references[reference_kind(r["method"])]["img/s"]
            r["against"] = against(r["method"])
    model = args.model + (" compiled" if args.compile else "")
    title = (f"training steps, {model} @ {args.image_size} px, batch {args.batch_size}, pipeline "
             f"{args.pipeline}, {shape}, device {args.device}, {args.workers} workers, median of "
             f"{args.repeats} epochs of {args.steps} steps after a warm-up epoch")
    shown = [{**r, "data wait": f"{100 * r['data wait']:.1f}%"} for r in [*rows, *references.values()]]
    print_table(title, shown, ["loop", "method", "steps/s", "img/s", "× reference", "against", "data wait",
                               "img/s (loaded)", vs, cost, "loss"])
    for kind, r in references.items():
        print(f"  reference {kind}: {r['runs']}, over the {originals} original JPEGs")
    record = {"args": vars(args), "rows": rows, "reference_rows": list(references.values())}
    if args.num_classes and "concutmix" in methods:
        record["concutmix_breakdown"] = concutmix_breakdown(data, args)
        title = f"one ConCutMix step, part by part (B = {args.batch_size}, C = {args.num_classes:,})"
        print_table(title, record["concutmix_breakdown"], ["part", "ms", "share"])
    write_json(args.out, "step", record)
    return 0
