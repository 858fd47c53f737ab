"""A training step of every method issues no host–device synchronisation (marker ``gpu``).

Under ``torch.cuda.set_sync_debug_mode("error")`` any operation that makes the host wait for the device
(a pageable blocking copy, ``.item()``, ``.cpu()``, a data-dependent shape, ``nonzero``) raises. Each case
runs what the trainer runs between two logging points: the batch's rows, labels and the method's draws
reach the device as the pipelines send them (``pipelines.base.to_device``: pinned, non-blocking), then the
loss, backward, gradient clipping, the optimiser step, the device-side tally and — for a method that consumes
feedback — the asynchronous capture of the mispredicted pairs. One warm-up step runs first, outside the check:
the first step compiles the Triton kernels and lets cuDNN and the allocators settle, and may wait.
The images are drawn on the device (what a decoder hands over); reading shards is the pipelines' own tests.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastlt.distributed import Dist, Feedback
from fastlt.methods.base import StepContext, get_method
from fastlt.pipelines.base import extras_to_device, to_device
from fastlt.pipelines.plan import Batch
from fastlt.recipes import apply_overrides, preset
from fastlt.runtime import Priors, Runtime
from fastlt.schedule import make_optimizer
from helpers import train_index

COUNTS = [134, 103, 80, 62, 48, 37, 28, 22, 17, 13]
CASES = [  # (method, stage, epoch, recipe overrides)
    ("ce", "train", 0, []),
    ("bs", "train", 0, []),
    ("ldam-drw", "train", 1, [("drw_epoch", "1")]),  # re-weighted: the DRW weights enter the CE
    ("mixup", "train", 0, []),
    ("cutmix", "train", 0, [("mix_per_sample", "true")]),
    ("remix", "train", 0, []),
    ("cpmix", "erm", 0, []),
    ("cpmix", "cpmix", 0, []),
    ("cpmix", "finetune", 0, []),
    ("concutmix", "train", 1, [("ccm_cutmix_prob", "1"), ("ccm_l_d_warm", "0")]),  # rectified labels
    ("concutmix", "train", 0, [("ccm_cutmix_prob", "0")]),
    ("lfm", None, 0, []),
]


def _setup(method, stage, epoch, over, device):
    r = apply_overrides(preset("digits-lt", method),
                        [("batch_size", "16"), ("image_size", "32"), ("clip_grad", "1.0"), *over])
    m = get_method(method)(r, train_index(COUNTS))
    st = m.stages()[0] if stage is None else next(s for s in m.stages() if s.name == stage)
    try:
        model = m.build_model().to(device, memory_format=torch.channels_last)
    except Exception as e:  # LFM without an offline text encoder installed on this machine
        if method == "lfm":
            pytest.skip(f"lfm: {e}")
        raise
    runtime = Runtime(device, Priors(torch.tensor(COUNTS, dtype=torch.float32)).to(device), mean=r.mean,
                      std=r.std, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    m.set_train_mode(model, st)
    opt = make_optimizer(r, m.trainable_parameters(model, st), r.lr, model)
    return r, m, st, model, runtime, opt, m.producer(st, first_epoch=epoch, first_step=0)


def _batch(producer, step, device, gen):
    plan = producer.make_plan(step)
    labels = torch.from_numpy(np.searchsorted(producer.offsets, plan.rows, side="right") - 1)
    shape = (len(plan.rows), 32, 32, 3)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, device=device, generator=gen)
    rows = to_device(torch.from_numpy(plan.rows), device)
    return Batch(plan, rows, images, to_device(labels, device), extras_to_device(plan, device))


def _step(r, m, st, model, runtime, opt, batch, epoch, tally):
    ctx = StepContext(runtime, st, epoch, batch.plan.step)
    with runtime.autocast():
        out = m.loss(model, batch, ctx)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    params = [p for g in opt.param_groups for p in g["params"]]
    torch.nn.utils.clip_grad_norm_(params, r.clip_grad)  # the norm stays on the device
    opt.step()
    tally += out.loss.detach().float()
    if out.logits is not None:
        pred = out.logits.detach().argmax(1)
        tally += (pred == out.labels).sum()
        if m.consumes_feedback:
            Feedback.capture(out.labels, pred, Dist(), pad_to=len(out.labels))


@pytest.mark.parametrize("method, stage, epoch, over", CASES, ids=[f"{c[0]}-{c[1]}-e{c[2]}" for c in CASES])
def test_a_step_never_waits_for_the_device(method, stage, epoch, over):
    device = torch.device("cuda")
    r, m, st, model, runtime, opt, producer = _setup(method, stage, epoch, over, device)
    gen = torch.Generator(device).manual_seed(0)
    tally = torch.zeros((), device=device)
    first = producer.first_step
    _step(r, m, st, model, runtime, opt, _batch(producer, first, device, gen), epoch, tally)  # warm-up
    torch.cuda.synchronize()
    batches = [_batch(producer, first + k, device, gen) for k in (1, 2)]
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches:
            _step(r, m, st, model, runtime, opt, batch, epoch, tally)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(tally).item()  # the logging point: the one read of the step's results
