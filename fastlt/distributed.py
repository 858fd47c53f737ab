"""DDP under ``torchrun``: the process group, and the few collectives the training loop needs.

Every rank runs the same loop on its slice of every plan (``StepPlan.shard``). No model wrapper: gradients are
averaged with one flat ``all_reduce`` per step (methods may call ``model.features`` or any head directly);
mispredicted pairs are all-gathered so every rank's method state — and so every rank's CP-Mix plans — stays
identical (:func:`check_same_state` verifies it at the end of training); BatchNorm running statistics are
averaged at epoch end. Only rank 0 writes files.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(use_cuda: bool) -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: NCCL when training on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


BUCKET_BYTES = 25 << 20  # torch DDP's default bucket size


class GradientAverager:
    """Average gradients over ranks while backward is still running, with no model wrapper.

    The trainable parameters are cut into buckets of about ``BUCKET_BYTES`` in reverse order (backward
    produces the last layers' gradients first). A post-accumulate-grad hook marks each parameter ready; when
    a bucket's last gradient lands, its gradients are flattened and an asynchronous ``all_reduce`` starts, so
    communication overlaps the rest of backward. :meth:`wait` (before the optimiser step) waits for them,
    reduces any bucket that did not complete (a parameter without a gradient this step) in bucket order, and
    writes the averages back. The buckets and their order are the same on every rank (same parameters, same
    graph), so every rank issues the same collectives in the same order.
    """

    def __init__(self, params, world: int):
        self.world = world
        self.buckets: list[list[nn.Parameter]] = []
        size = BUCKET_BYTES
        for p in reversed(list(params)):
            if size >= BUCKET_BYTES:
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(p)
            size += p.numel() * p.element_size()
        self.bucket_of = {id(p): i for i, b in enumerate(self.buckets) for p in b}
        self.hooks = [p.register_post_accumulate_grad_hook(self._ready) for b in self.buckets for p in b]
        self._reset()

    def _reset(self) -> None:
        self.pending = [len(b) for b in self.buckets]
        self.launched: dict[int, tuple] = {}  # bucket → (async work, flat gradients)

    def _ready(self, p: nn.Parameter) -> None:
        i = self.bucket_of[id(p)]
        self.pending[i] -= 1
        if self.pending[i] == 0:
            self._launch(i)

    def _launch(self, i: int) -> None:
        import torch.distributed as dist

        grads = [p.grad for p in self.buckets[i] if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads]) if grads else None
        work = dist.all_reduce(flat, async_op=True) if flat is not None else None
        self.launched[i] = (work, flat)

    def wait(self) -> None:
        for i in range(len(self.buckets)):
            if i not in self.launched:
                self._launch(i)
            work, flat = self.launched[i]
            if work is None:
                continue
            work.wait()
            flat /= self.world
            pos = 0
            for p in self.buckets[i]:
                if p.grad is not None:
                    n = p.grad.numel()
                    p.grad.copy_(flat[pos : pos + n].view_as(p.grad))
                    pos += n
        self._reset()

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


class Feedback:
    """One step's (y, ŷ) from every rank, on its way to the host without stalling the step.

    :meth:`capture` runs in the training loop and never waits for the device: every rank pads its (y, ŷ) to
    the same fixed width (``pad_to`` ≥ any rank's slice of the batch, known from the recipe, so no sizes are
    exchanged), all-gathers on the device, and copies the result into pinned host memory with
    ``non_blocking=True``, recording a CUDA event after the copy. :meth:`resolve` runs on the plan producer's
    thread, right before the pairs are folded into the counts: it waits for that event and keeps the
    mispredicted pairs, in rank order (identical on every rank).
    """

    def __init__(self, pairs: torch.Tensor, event=None):
        self.pairs, self.event = pairs, event  # int64[2, world·pad_to] on the host; -1 marks padding

    @classmethod
    def capture(cls, y: torch.Tensor, yhat: torch.Tensor, d: Dist, pad_to: int) -> Feedback:
        local = all_gather_columns(torch.stack([y, yhat]).to(torch.int64), d, pad_to, fill=-1)
        if not local.is_cuda:
            return cls(local)
        host = torch.empty(local.shape, dtype=torch.int64, pin_memory=True)
        host.copy_(local, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return cls(host, event)

    def resolve(self) -> tuple[np.ndarray, np.ndarray]:
        if self.event is not None:
            self.event.synchronize()  # the copy above (producer thread: the training loop does not wait)
        y, yhat = self.pairs.numpy()
        wrong = (y >= 0) & (y != yhat)
        return y[wrong], yhat[wrong]


def all_gather_columns(local: torch.Tensor, d: Dist, width: int, fill: int = -1) -> torch.Tensor:
    """Every rank's ``[R, n]`` columns (n ≤ ``width``, may differ by rank), each padded to ``width`` with
    ``fill`` and concatenated in rank order: ``[R, world·width]`` (``local`` itself on one process). One
    collective of a size every rank knows, so no sizes are exchanged and the host never waits."""
    if d.world <= 1:
        return local
    import torch.distributed as dist

    if local.shape[1] > width:
        raise ValueError(f"all_gather_columns: {local.shape[1]} columns exceed the width {width}")
    padded = torch.full((local.shape[0], width), fill, dtype=local.dtype, device=local.device)
    padded[:, : local.shape[1]] = local
    bufs = [torch.empty_like(padded) for _ in range(d.world)]
    dist.all_gather(bufs, padded)
    return torch.cat(bufs, dim=1)


def average_buffers(model: nn.Module, d: Dist) -> None:
    """Average floating buffers (BatchNorm running statistics) across ranks."""
    if d.world <= 1:
        return
    import torch.distributed as dist

    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b /= d.world


def reduce_tally(loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, d: Dist):
    """Train metrics over all ranks: (mean of the ranks' loss sums, correct over all ranks, seen over all)."""
    if d.world <= 1:
        return loss_sum, correct, seen
    import torch.distributed as dist

    n = torch.tensor(float(seen), device=loss_sum.device)
    tally = torch.stack([loss_sum.double(), correct.double(), n])
    dist.all_reduce(tally)
    return tally[0] / d.world, tally[1], int(tally[2].item())


def state_digest(state) -> str:
    """sha256 of a (nested) state dict of arrays, tensors and plain values, independent of memory layout."""
    h = hashlib.sha256()

    def feed(x):
        if isinstance(x, dict):
            for k in sorted(x):
                h.update(str(k).encode())
                feed(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                feed(v)
        elif isinstance(x, torch.Tensor):
            feed(x.detach().cpu().numpy())
        elif isinstance(x, np.ndarray):
            h.update(str((x.dtype, x.shape)).encode())
            h.update(np.ascontiguousarray(x).tobytes())
        else:
            h.update(repr(x).encode())

    feed(state)
    return h.hexdigest()[:16]


def check_same_state(state, d: Dist, what: str) -> None:
    """Raise when the ranks' ``state`` differ: their plans (built from it) would no longer agree."""
    if d.world <= 1:
        return
    import torch.distributed as dist

    mine = state_digest(state)
    digests: list[str] = [""] * d.world
    dist.all_gather_object(digests, mine)
    if len(set(digests)) > 1:
        raise RuntimeError(f"ranks disagree on {what}: digests by rank {digests}")
