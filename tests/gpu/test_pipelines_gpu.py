"""CUDA paths of the pipelines: FFCV's ToDevice, the resident gather on the GPU, DALI's mixed decode.

Each CUDA output is compared with the same pipeline on the CPU for the same plan: the decode and crop code
is shared, so FFCV and the resident pad-crop must agree exactly, roi_align to ±1 grey level (float rounding),
and DALI's nvJPEG decode to the tolerance of the CPU agreement tests.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from fastlt.pipelines import PlanQueue, StepPlan, make_pipeline
from fastlt.shards import ArraySource, write_shard
from synth import ListSource

CUDA = torch.device("cuda")


def _smooth_images(n: int, rng: np.random.Generator, lo: int, hi: int) -> list[np.ndarray]:
    """Photograph-like content without any download: colour gradients, a few rectangles, mild noise."""
    out = []
    for _ in range(n):
        h, w = int(rng.integers(lo, hi)), int(rng.integers(lo, hi))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.stack(
            [
                yy / h * rng.uniform(80, 255),
                xx / w * rng.uniform(80, 255),
                (yy + xx) / (h + w) * rng.uniform(80, 255),
            ],
            axis=-1,
        )
        for _ in range(4):
            y0, x0 = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
            img[y0 : y0 + int(rng.integers(4, h // 2)), x0 : x0 + int(rng.integers(4, w // 2))] = rng.uniform(
                0, 255, 3
            )
        img += rng.normal(0, 4, img.shape)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def jpg_shard(tmp_path_factory):
    rng = np.random.default_rng(0)
    images = _smooth_images(24, rng, 80, 200)
    labels = rng.integers(0, 3, len(images))
    return write_shard(
        tmp_path_factory.mktemp("s"), "smooth", "train", ListSource(images, labels), list("abc"), workers=1
    )


@pytest.fixture(scope="module")
def raw_shard(tmp_path_factory):
    rng = np.random.default_rng(1)
    images = np.stack(_smooth_images(32, rng, 32, 33))
    labels = rng.integers(0, 4, len(images))
    return write_shard(
        tmp_path_factory.mktemp("s"),
        "tiny",
        "train",
        ArraySource(images, labels, [str(i) for i in range(len(images))]),
        list("abcd"),
        write_mode="raw",
        workers=1,
    )


def _plan(seed=3):
    return StepPlan.from_segments(0, 1, seed=seed, main=np.array([0, 3, 3, 17, 9]), b=np.array([3, 0]))


@pytest.mark.parametrize("train", [True, False])
def test_ffcv_to_device_matches_the_cpu_pipeline(jpg_shard, train):
    plan = _plan()
    gpu = make_pipeline("ffcv", jpg_shard, train=train, image_size=64, device=CUDA, seed=1, workers=2)
    cpu = make_pipeline("ffcv", jpg_shard, train=train, image_size=64, device="cpu", seed=1, workers=2)
    a, b = gpu.load(plan), cpu.load(plan)
    assert a.images.device.type == "cuda" and a.labels.device.type == "cuda" and a.rows.device.type == "cuda"
    assert torch.equal(a.images.cpu(), b.images)
    assert torch.equal(a.labels.cpu(), torch.from_numpy(jpg_shard.index.labels[plan.rows]))
    # A kept batch is not overwritten by later loads (results are cloned out of FFCV's reusable buffers).
    kept = a.images.clone()
    gpu.load(_plan(seed=4))
    assert torch.equal(a.images, kept)
    gpu.close()
    cpu.close()


def test_resident_on_cuda_matches_the_cpu_gather(raw_shard):
    plan = StepPlan.from_segments(0, 2, seed=5, main=np.array([0, 1, 1, 31, 7, 7]))
    for size, exact in ((32, True), (24, False)):
        gpu = make_pipeline("resident", raw_shard, train=True, image_size=size, device=CUDA, seed=0)
        cpu = make_pipeline("resident", raw_shard, train=True, image_size=size, device="cpu", seed=0)
        a, b = gpu.load(plan).images, cpu.load(plan).images
        assert a.device.type == "cuda"
        if exact:  # pad-crop: the same integer gather
            assert torch.equal(a.cpu(), b)
        else:  # roi_align: float rounding may differ by one grey level
            assert (a.cpu().int() - b.int()).abs().max() <= 1


@pytest.mark.timeout(120)
def test_cuda_batches_never_need_a_later_plan(jpg_shard):
    queue = PlanQueue(
        lambda s: StepPlan.from_segments(0, s, seed=s, main=np.arange(s, s + 4)), range(5), lookahead=0
    )
    pipe = make_pipeline("ffcv", jpg_shard, train=True, image_size=64, device=CUDA, seed=0, workers=2)
    seen = []

    def trainer():
        for batch in pipe.batches(queue):
            seen.append(batch.plan.step)
            queue.done(batch.plan.step)

    t = threading.Thread(target=trainer, daemon=True)
    t.start()
    t.join(timeout=90)
    queue.close()
    pipe.close()
    assert seen == list(range(5))


def test_dali_mixed_decode_agrees_with_the_reference(jpg_shard):
    pytest.importorskip("nvidia.dali")
    plan = _plan()
    gpu = make_pipeline("dali", jpg_shard, train=True, image_size=64, device=CUDA, seed=1, workers=2)
    ref = make_pipeline("torch", jpg_shard, train=True, image_size=64, device="cpu", seed=1, workers=0)
    a, b = gpu.load(plan).images, ref.load(plan).images
    assert a.device.type == "cuda"
    diff = (a.cpu().int() - b.int()).abs().float().mean(dim=(1, 2, 3))
    assert diff.max() < 6.0, diff
