"""The engine every pipeline shares: plan → Batch (``load``), prefetching in plan order (``batches``), close.

A pipeline only implements ``_load(plan, crops) -> images uint8[R, S, S, 3]`` on the target device: it cuts
each row's crop box out of the decoded image and resizes it to S (mirroring the rows the crops say). The base
checks the plan, derives the augmentation seed, decides the crops (``fastlt.pipelines.transforms``: one
geometry for all four pipelines), runs the training augmentation of each plan segment on the loaded batch
(``fastlt.pipelines.augment``), attaches rows and labels, and runs the prefetch thread.

Prefetch without lookahead (the deadlock rule). The plans iterable is usually a ``PlanQueue``, which only
makes plan ``s + k`` after the trainer has finished step ``s``. So ``batches()`` runs one loader thread that
pulls one plan at a time, loads it, and pushes the finished Batch into a bounded queue of depth ``prefetch``;
the consumer pops from that queue. Batch ``s`` is therefore handed over as soon as it is built, while the
loader thread may already be blocked waiting for plan ``s + 1``: producing batch ``s`` never needs a later
plan.

Labels come from the shard index (``shard.index.labels[rows]``): rows are class-sorted, so a label is an
offset lookup and nothing is decoded for it.

Augmentation seed of a plan: ``step_seed(pipeline seed, plan.epoch, plan.step, seed of the global plan)``. It
depends only on the plan and the pipeline's seed, so loading a plan twice gives the same pixels, while plans
that a sampler left at the default ``seed=0`` still get different crops at every step. A DDP rank's part of a
plan uses the global plan's seed and its rows' global positions, so every row is cropped and augmented as in a
single process.
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from fastlt.pipelines.augment import DEFAULT, Augmentation
from fastlt.pipelines.beton import BetonImages
from fastlt.pipelines.plan import Batch, StepPlan, step_seed
from fastlt.pipelines.transforms import Crops, eval_crops

_END = object()


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on the training device without a sync: pinned, then copied non-blocking on the calling
    thread's stream (the caching host allocator keeps the pinned block alive until the copy is done)."""
    if device.type == "cpu":
        return host
    return host.pin_memory().to(device, non_blocking=True)


def extras_to_device(plan: StepPlan, device: torch.device) -> dict[str, torch.Tensor]:
    """The plan's draws (``plan.extras``) as tensors on ``device``, each sent with :func:`to_device`."""
    return {k: to_device(torch.from_numpy(np.ascontiguousarray(v)), device) for k, v in plan.extras.items()}


class Pipeline(ABC):
    """Base of the four plan-driven loaders (see the module docstring)."""

    name = "pipeline"

    def __init__(
        self,
        shard,
        *,
        train: bool,
        image_size: int,
        device,
        seed: int = 0,
        prefetch: int = 2,
        augment: Sequence[str] | None = None,
    ):
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        self.shard = shard
        self.train = bool(train)
        self.image_size = int(image_size)
        self.device = torch.device(device)
        self.seed = int(seed)
        self.prefetch = int(prefetch)
        self.images = BetonImages(shard.beton_path)  # per-row sizes (and payloads) of the stored images
        # Training: each plan segment's crop + augmentation policy (recipe key `augment`); eval: centre crops.
        self.augmentation = Augmentation(DEFAULT if augment is None else augment) if self.train else None
        self._labels = torch.from_numpy(shard.index.labels)
        self._num_rows = int(shard.index.num_rows)
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        # Pipelines reuse per-instance buffers (FFCV's, DALI's); loads from two threads take turns.
        self._load_lock = threading.Lock()

    # ------------------------------------------------------------------ what a pipeline implements
    @abstractmethod
    def _load(self, plan: StepPlan, crops: Crops) -> torch.Tensor:
        """uint8[R, S, S, 3] images of ``plan.rows`` on ``self.device``, owned by the caller: row k is
        ``crops.boxes[k]`` of its image resized to S, mirrored when ``crops.flips[k]``."""

    def _close(self) -> None:  # noqa: B027 - optional hook, most pipelines hold nothing to release
        """Release pipeline-specific resources."""

    # ------------------------------------------------------------------ the shared engine
    def augmentation_seed(self, plan: StepPlan) -> int:
        return step_seed(self.seed, plan.epoch, plan.step, plan.whole.seed)

    def crops(self, plan: StepPlan, seed: int) -> Crops:
        """Where each row of ``plan`` is cut: its segment's policy (training) or the centre (evaluation)."""
        sizes = self.images.heights, self.images.widths
        if self.augmentation is None:
            return eval_crops(sizes[0][plan.rows], sizes[1][plan.rows], self.image_size)
        return self.augmentation.crops(plan, *sizes, seed, self.image_size)

    def check_plan(self, plan: StepPlan) -> None:
        rows = plan.rows
        if len(rows) == 0:
            raise ValueError(f"plan epoch {plan.epoch} step {plan.step} has no rows")
        lo, hi = int(rows.min()), int(rows.max())
        if lo < 0 or hi >= self._num_rows:
            bad = lo if lo < 0 else hi
            raise IndexError(
                f"plan epoch {plan.epoch} step {plan.step} asks for row {bad}; "
                f"shard {self.shard.beton_path} has rows 0..{self._num_rows - 1}"
            )

    def load(self, plan: StepPlan) -> Batch:
        """Load one plan synchronously."""
        self.check_plan(plan)
        seed = self.augmentation_seed(plan)
        crops = self.crops(plan, seed)
        with self._load_lock:
            images = self._load(plan, crops)
        R, S = len(plan.rows), self.image_size
        if tuple(images.shape) != (R, S, S, 3) or images.dtype != torch.uint8:
            raise RuntimeError(
                f"{self.name} pipeline returned {images.dtype}{list(images.shape)}, "
                f"expected uint8{[R, S, S, 3]}"
            )
        if self.augmentation is not None:
            images = self.augmentation.apply(images, plan, seed, crops)
        rows = torch.from_numpy(plan.rows)
        labels = self._labels[rows]
        return Batch(plan=plan, rows=to_device(rows, self.device), images=images,
                     labels=to_device(labels, self.device), extras=extras_to_device(plan, self.device))

    def batches(self, plans: Iterable[StepPlan]) -> Iterator[Batch]:
        """Batches of ``plans`` in order, loaded ``prefetch`` ahead on a background thread (no plan
        lookahead)."""
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item) -> bool:
            while not (stop.is_set() or self._stop.is_set()):
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def run() -> None:
            try:
                for plan in plans:
                    if stop.is_set() or self._stop.is_set():
                        return
                    if not put(self.load(plan)):
                        return
            except BaseException as e:  # handed to the consumer, raised there
                put(e)
                return
            put(_END)

        thread = threading.Thread(target=run, name=f"fastlt-{self.name}-loader", daemon=True)
        self._threads.append(thread)
        thread.start()
        try:
            while True:
                item = out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise RuntimeError(f"{self.name} pipeline failed while loading a plan") from item
                yield item
        finally:
            stop.set()
            # The thread may be blocked inside the plans iterable (a PlanQueue waiting for the trainer); it is
            # a daemon and exits at its next check, so only wait briefly here.
            thread.join(timeout=1.0)
            if not thread.is_alive():
                self._threads.remove(thread)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5.0)
        self._threads.clear()
        self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

