"""The CUDA training path: bf16 autocast, channels-last, Triton mix kernel on device, and (where FFCV is
installed to read shards) a short digits-lt run on the resident pipeline."""

import numpy as np
import pytest
import torch

from fastlt.methods.base import StepContext, get_method
from fastlt.models import build_model
from fastlt.pipelines.plan import Batch, StepPlan
from fastlt.recipes import preset, resolve
from fastlt.runtime import Priors, Runtime
from helpers import metrics, train_index
from helpers.steps import with_draws

COUNTS = torch.tensor([134.0, 103, 80, 62, 48, 37, 28, 22, 17, 13])


def cpmix_batch(device, seed=0):
    g = np.random.default_rng(seed)
    segs = {"main": g.integers(0, 10, 32), "cp_a": g.integers(0, 10, 16), "cp_b": g.integers(0, 10, 16)}
    plan = StepPlan.from_segments(0, 0, **{k: np.arange(len(v)) for k, v in segs.items()})
    labels = torch.tensor(np.concatenate(list(segs.values())), device=device)
    images = torch.from_numpy(g.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)).to(device)
    return Batch(plan, torch.arange(len(labels), device=device), images, labels)


def step(device, dtype):
    r = preset("digits-lt", "cpmix")
    torch.manual_seed(0)
    model = build_model("smallnet", 10).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    method = get_method("cpmix")(r, train_index(COUNTS.long().tolist()))
    stage = next(s for s in method.stages() if s.name == "cpmix")
    runtime = Runtime(device, Priors(COUNTS).to(device), mean=r.mean, std=r.std, dtype=dtype)
    ctx = StepContext(runtime, stage, 0, 0)
    batch = with_draws(method, ctx, cpmix_batch(device), seed=1)
    ctx_auto = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if dtype == torch.bfloat16
        else torch.autocast("cpu", enabled=False)
    )
    with ctx_auto:
        x = ctx.normalize(batch.images)
        out = method.loss(model, batch, ctx)
    out.loss.backward()
    grad = model.classifier.weight.grad.float().cpu()
    return x, out, grad


def test_cuda_bf16_channels_last_step_matches_fp32_cpu():
    cuda = torch.device("cuda")
    x, out, grad = step(cuda, torch.bfloat16)
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(out.loss) and out.logits.shape == (32, 10)
    _, ref, ref_grad = step(torch.device("cpu"), torch.float32)
    assert out.loss.item() == pytest.approx(
        ref.loss.item(), rel=3e-2
    )  # bf16 activations: ~3 significant digits
    cos = torch.nn.functional.cosine_similarity(grad.flatten(), ref_grad.flatten(), dim=0)
    assert cos > 0.98


def test_short_digits_run_on_cuda(tmp_path):
    pytest.importorskip("ffcv", reason="reading .beton shards needs FFCV")
    from fastlt.convert import main as convert
    from fastlt.train import train

    assert convert(["digits-lt", "--out", str(tmp_path / "data"), "--workers", "1"]) == 0
    r = resolve(
        "digits-lt",
        "cpmix",
        [
            "--data-root",
            str(tmp_path / "data"),
            "--epochs",
            "3",
            "--cpmix-start-epoch",
            "1",
            "--finetune-epochs",
            "1",
            "--device",
            "cuda",
            "--pipeline",
            "resident",
            "--progress",
            "false",
            "--name",
            "gpu",
        ],
    )
    summary = train(r, tmp_path / "runs", log=print)
    recs = metrics(tmp_path / "runs" / "gpu")
    assert [x["stage"] for x in recs] == ["erm", "cpmix", "cpmix", "finetune"]
    assert all(np.isfinite(x["train_loss"]) for x in recs)
    assert summary["all"] > 20.0  # ten classes: well above chance after four epochs
