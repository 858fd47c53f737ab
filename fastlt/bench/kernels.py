"""``tools/bench kernels``: the fused mix and the sparse soft-label CE against what a trainer would use
instead.

Mixing (``--batch`` 128 × 224 × 224 uint8 NHWC images, partner = the batch reversed, as timm pairs them).
Every row starts from the same uint8 batch and ends with normalised float pixels plus label information:

* fastlt: per-sample λ ~ Beta(α, α), per-sample choice mixup / CutMix (p = 0.5), per-sample boxes drawn by
  ``cutmix_boxes``, then one ``mix_images`` call (λ_y included). Run through the dispatcher's CPU fast path
  (numba) and the torch reference; on CUDA, Triton.
* baselines: uint8 → normalised float in plain torch, then ``timm.data.Mixup`` (``mode='batch'``: one λ and
  one box per batch; ``mode='elem'``: per-sample λ and boxes, a Python loop) or torchvision v2 ``MixUp`` /
  ``CutMix`` (one λ per batch). The conversion alone is a row of its own.

Soft-label CE (``--ce-batch`` 512 × ``--classes`` 8142, two targets per row = a mixed label): forward +
backward of ``soft_cross_entropy`` against ``F.cross_entropy`` with a dense ``[B, C]`` probability target
built by scatter, time and peak memory (torch profiler on CPU, ``max_memory_allocated`` on CUDA).

On CUDA the GPU section adds Triton vs the torch reference vs ``torch.compile`` of the reference, and the mix
kernel's achieved bandwidth against a device-to-device copy of the same byte count measured in the same run.
Ratios are ``time / time of fastlt's dispatched kernel``: above 1 means fastlt is faster.

On CPU the process keeps freed memory (``--fresh-memory`` turns that off; see ``report.keep_freed_memory``):
first-touch page faults of fresh 77 MB buffers otherwise dominate every row on a VM.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from fastlt.bench.report import keep_freed_memory, median_time, print_table, write_json
from fastlt.kernels import IMAGENET_MEAN, IMAGENET_STD, cutmix_boxes, mix_images, soft_cross_entropy
from fastlt.kernels.mix import CUTMIX, MIXUP, mix_reference, normalize_coefficients
from fastlt.kernels.soft_ce import soft_ce_reference

NUM_CLASSES = 1000  # timm / torchvision build dense one-hot targets of this width


def _to_normalised_float(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """What a trainer without a fused kernel does: uint8 NHWC → float NCHW (channels-last) → normalise."""
    return images.permute(0, 3, 1, 2).float().div_(255.0).sub_(mean).div_(std)


class FastltMix:
    """Per-sample λ, mode and box, then one fused launch; the partner of sample i is sample B−1−i."""

    def __init__(
        self, images, labels, counts, backend=None, out_dtype=torch.float32, alpha=(0.8, 1.0), seed=0
    ):
        self.images, self.labels, self.counts = images, labels, counts
        self.backend, self.out_dtype = backend, out_dtype
        B = images.shape[0]
        self.idx_b = torch.arange(B - 1, -1, -1, device=images.device)
        self.beta_mixup = torch.distributions.Beta(torch.tensor(alpha[0]), torch.tensor(alpha[0]))
        self.beta_cutmix = torch.distributions.Beta(torch.tensor(alpha[1]), torch.tensor(alpha[1]))
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self):
        B, H, W = self.images.shape[:3]
        g = self.generator
        cut = torch.rand(B, generator=g) < 0.5
        lam = torch.where(cut, self.beta_cutmix.sample((B,)), self.beta_mixup.sample((B,)))
        boxes, _ = cutmix_boxes(lam, H, W, g)
        mode = torch.where(cut, CUTMIX, MIXUP).to(torch.int32)
        dev = self.images.device
        return mix_images(
            self.images,
            self.images,
            idx_b=self.idx_b,
            lam=lam.to(dev),
            boxes=boxes.to(dev),
            mode=mode.to(dev),
            out_dtype=self.out_dtype,
            rule="remix",
            y_a=self.labels,
            y_b=self.labels[self.idx_b],
            class_counts=self.counts,
            backend=self.backend,
        )


def mix_rows(B: int, size: int, repeats: int) -> list[dict]:
    from timm.data import Mixup
    from torchvision.transforms import v2

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (B, size, size, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (B,), generator=g)
    counts = torch.randint(1, 1000, (NUM_CLASSES,), generator=g).float()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def convert():
        return _to_normalised_float(images, mean, std)

    def timm_mode(mode):
        mixer = Mixup(
            mixup_alpha=0.8, cutmix_alpha=1.0, mode=mode, label_smoothing=0.0, num_classes=NUM_CLASSES
        )
        return lambda: mixer(convert(), labels)

    tv_mixup, tv_cutmix = v2.MixUp(num_classes=NUM_CLASSES), v2.CutMix(num_classes=NUM_CLASSES)
    cases = [
        ("fastlt mix_images (dispatch: numba)", "per sample", FastltMix(images, labels, counts)),
        (
            "fastlt mix_images (torch reference)",
            "per sample",
            FastltMix(images, labels, counts, backend="torch"),
        ),
        ("uint8 -> normalised float only (torch)", "-", convert),
        ("convert + timm Mixup mode='batch'", "per batch", timm_mode("batch")),
        ("convert + timm Mixup mode='elem'", "per sample", timm_mode("elem")),
        ("convert + torchvision v2 MixUp", "per batch", lambda: tv_mixup(convert(), labels)),
        ("convert + torchvision v2 CutMix", "per batch", lambda: tv_cutmix(convert(), labels)),
    ]
    rows = []
    for name, lam, fn in cases:
        t = median_time(fn, repeats=repeats, warmup=1)
        rows.append({"op": name, "λ / box": lam, "ms": t * 1e3})
    base = rows[0]["ms"]
    for r in rows:
        r["× fastlt"] = r["ms"] / base
    return rows


def cpu_peak_bytes(fn) -> int:
    """Peak bytes allocated while ``fn()`` runs on CPU. Torch tensors: the torch profiler attributes each
    allocation (+) and free (−) to an op, and the running sum in start-time order peaks at the high-water
    mark. numpy arrays (the numba paths allocate there): tracemalloc. The two peaks are added, an upper
    bound when both allocate."""
    import tracemalloc

    from torch.profiler import ProfilerActivity, profile

    tracemalloc.start()
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        numpy_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    held = peak = 0
    for e in events:
        held += e.self_cpu_memory_usage
        peak = max(peak, held)
    return peak + numpy_peak


def cuda_peak_bytes(fn) -> int:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def cuda_device_us(fn, iters: int = 10) -> float:
    """GPU time per call in µs: the sum of every kernel's and copy's device time (torch profiler), so host
    overhead — Python, argument checks, launch latency — is excluded."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    # Device-side events only (kernels, memcpy/memset): the CPU ops that launched them report the same time.
    device = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return sum(e.device_time_total for e in device) / iters


def ce_rows(B: int, C: int, repeats: int, device: str, backends: list[tuple[str, object]]) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(B, C, generator=g).to(device)
    y = torch.randint(0, C, (B, 2), generator=g).to(device)
    lam = torch.rand(B, generator=g).to(device)
    w = torch.stack([lam, 1 - lam], 1)
    adjust = torch.log(torch.randint(1, 1000, (C,), generator=g).float()).to(device)

    def dense():
        z = logits.detach().requires_grad_(True)
        target = torch.zeros(B, C, device=device).scatter_add_(1, y, w)
        F.cross_entropy(z + adjust, target).backward()

    def sparse(fn):
        def run():
            z = logits.detach().requires_grad_(True)
            fn(z, y, w, adjust).backward()

        return run

    cases = [(name, sparse(fn)) for name, fn in backends] + [("dense one-hot F.cross_entropy", dense)]
    sync = torch.cuda.synchronize if device == "cuda" else None
    peak = cuda_peak_bytes if device == "cuda" else cpu_peak_bytes
    rows = []
    for name, fn in cases:
        t = median_time(fn, repeats=repeats, warmup=2, sync=sync)
        row = {"op": f"{name} fwd+bwd", "ms": t * 1e3, "peak MiB": peak(fn) / 2**20}
        if device == "cuda":
            row["GPU µs"] = cuda_device_us(fn)
        rows.append(row)
    base = rows[0]["ms"]
    for r in rows:
        r["× fastlt"] = r["ms"] / base
    return rows


def gpu_mix_rows(B: int, size: int, repeats: int) -> list[dict]:
    """Triton vs reference vs torch.compile(reference) on an all-mixup batch (every pixel of a and b is read),
    bf16 output; bandwidth = bytes read + written / GPU time, against a device copy moving as many bytes."""
    dev = "cuda"
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2 * B, size, size, 3), dtype=torch.uint8, generator=g).to(dev)
    idx_a = torch.arange(B, device=dev)
    idx_b = torch.arange(B, 2 * B, device=dev)
    lam = torch.rand(B, generator=g).to(dev)
    mode = torch.full((B,), MIXUP, dtype=torch.int32, device=dev)
    boxes = torch.zeros(B, 4, dtype=torch.int32, device=dev)
    scale, shift = normalize_coefficients(IMAGENET_MEAN, IMAGENET_STD, dev)
    out_dtype = torch.bfloat16
    compiled = torch.compile(mix_reference)
    kw = dict(idx_a=idx_a, idx_b=idx_b, lam=lam, mode=mode, boxes=boxes, out_dtype=out_dtype)
    n = B * size * size * 3
    moved = 2 * n + n * 2  # read a and b (uint8), write bf16
    src = torch.empty(moved // 2, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    cases = [
        ("mix_images Triton (bf16 out)", lambda: mix_images(images, images, backend="triton", **kw)),
        ("mix_images torch reference", lambda: mix_images(images, images, backend="torch", **kw)),
        (
            "torch.compile(mix_reference)",
            lambda: compiled(images, images, idx_a, idx_b, lam, mode, boxes, scale, shift, out_dtype),
        ),
        (f"device copy of {moved / 2 / 2**20:.0f} MiB (read + write = same bytes)", lambda: dst.copy_(src)),
    ]
    rows = []
    for name, fn in cases:
        t = median_time(fn, repeats=repeats, warmup=3, sync=torch.cuda.synchronize)
        us = cuda_device_us(fn)
        rows.append({"op": name, "ms": t * 1e3, "GPU µs": us, "GB/s": moved / us / 1e3})
    base, copy_bw = rows[0]["ms"], rows[-1]["GB/s"]
    for r in rows:
        r["× fastlt"] = r["ms"] / base
        r["% of copy"] = 100 * r["GB/s"] / copy_bw
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/bench kernels", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128, help="images per mixed batch (even: timm requires it)")
    p.add_argument("--size", type=int, default=224, help="image height = width")
    p.add_argument("--ce-batch", type=int, default=512)
    p.add_argument("--classes", type=int, default=8142)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU section (GPU machines)")
    p.add_argument("--out", default=None, help="directory for kernels.json")
    p.add_argument(
        "--fresh-memory",
        action="store_true",
        help="let glibc return freed buffers to the kernel, so every call also pays first-touch page faults",
    )
    args = p.parse_args(argv)
    if args.batch % 2:
        p.error(f"--batch must be even (timm's Mixup requires it), got {args.batch}")

    steady = False if args.fresh_memory else keep_freed_memory()
    how = "freed memory kept (steady state)" if steady else "fresh pages every call"
    print(f"allocator: {how}", flush=True)
    record: dict = {"args": vars(args), "steady_state_allocator": steady}
    rows = []
    if not args.no_cpu:
        cpu = [
            ("soft_cross_entropy (auto: torch row passes)", soft_cross_entropy),
            ("soft_cross_entropy numba", lambda *a: soft_cross_entropy(*a, backend="numba")),
            ("soft_ce_reference (autograd)", soft_ce_reference),
        ]
        rows += mix_rows(args.batch, args.size, args.repeats)
        rows += ce_rows(args.ce_batch, args.classes, args.repeats, "cpu", cpu)
        print_table(
            f"kernels on CPU ({torch.get_num_threads()} threads): mix B={args.batch}×{args.size}², "
            f"soft CE B={args.ce_batch} C={args.classes}; × fastlt = time / fastlt's time",
            rows,
            ["op", "λ / box", "ms", "× fastlt", "peak MiB"],
        )
        record["cpu"] = rows
        by_op = {r["op"]: r for r in rows}
        batch_x = by_op["convert + timm Mixup mode='batch'"]["× fastlt"]
        elem_x = by_op["convert + timm Mixup mode='elem'"]["× fastlt"]
        print(f"goals: fastlt vs timm batch mode {batch_x:.2f}× faster (≥ 1), vs elem {elem_x:.2f}× (≥ 5)")
        auto = by_op["soft_cross_entropy (auto: torch row passes) fwd+bwd"]
        best = min(by_op[k]["ms"] for k in ("soft_ce_reference (autograd) fwd+bwd",
                                            "dense one-hot F.cross_entropy fwd+bwd"))
        dense_mib = by_op["dense one-hot F.cross_entropy fwd+bwd"]["peak MiB"]
        print(f"goal: soft CE auto {auto['ms']:.1f} ms vs the faster of reference and dense {best:.1f} ms "
              f"(≤ 1.0×: {auto['ms'] / best:.2f}×), peak {auto['peak MiB']:.1f} MiB vs dense {dense_mib:.1f}")
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        gpu = gpu_mix_rows(args.batch, args.size, max(args.repeats, 20))
        compiled_ce = torch.compile(soft_ce_reference)
        ce = ce_rows(
            args.ce_batch,
            args.classes,
            max(args.repeats, 20),
            "cuda",
            [
                ("soft_cross_entropy Triton", lambda *a: soft_cross_entropy(*a, backend="triton")),
                ("soft_cross_entropy torch row passes", lambda *a: soft_cross_entropy(*a, backend="torch")),
                ("soft_ce_reference (autograd)", soft_ce_reference),
                ("torch.compile(soft_ce_reference)", compiled_ce),
            ],
        )
        print_table(
            f"kernels on {name}: mix (bf16 out, all-mixup) and soft CE",
            gpu + ce,
            ["op", "ms", "GPU µs", "GB/s", "% of copy", "× fastlt", "peak MiB"],
        )
        record["gpu"] = {"device": name, "mix": gpu, "soft_ce": ce}
        print(f"goal: mix kernel at {gpu[0]['% of copy']:.0f}% of a device copy's bandwidth (≥ 70%)")
    write_json(args.out, "kernels", record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
