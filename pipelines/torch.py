"""torch pipeline: ``torch.utils.data.DataLoader`` + PIL — the portable correctness reference.

Every row of a plan becomes one dataset item ``(row, y, x, h, w, flip)``: the crop box and flip are the plan's
shared ``Crops``, so this pipeline cuts exactly the boxes the others cut. A worker reads the row's
bytes from the ``.beton`` through a memory map (``BetonImages``), decodes them with PIL, and resizes the box
to ``image_size`` with PIL's antialiased bilinear filter (``Image.resize(box=...)``), then mirrors if asked.

Plans reach the workers without lookahead: the DataLoader's batch sampler is a small mutable object holding
the chunks of the *current* plan only. ``load(plan)`` sets it and iterates the DataLoader once; with
``persistent_workers=True`` the worker processes survive between plans. A DataLoader that drew plans from its
own sampler would prefetch ``prefetch_factor × workers`` plans before returning the first batch, which would
need plans the trainer has not unlocked yet.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fastlt.pipelines.base import Pipeline
from fastlt.pipelines.beton import BetonImages


class _RowCrops(Dataset):
    """Item ``(row, y, x, h, w, flip)`` → uint8[S, S, 3]."""

    def __init__(self, images: BetonImages, size: int):
        self.images = images
        self.size = size

    def __len__(self) -> int:  # items are addressed by tuples, never by position
        return len(self.images)

    def __getitem__(self, item) -> np.ndarray:
        from PIL import Image

        row, y, x, h, w, flip = (int(v) for v in item)
        if self.images.is_jpeg(row):
            img = Image.open(io.BytesIO(self.images.payload(row).tobytes()))
            img = img.convert("RGB")
        else:
            img = Image.fromarray(np.asarray(self.images.pixels(row)))
        out = img.resize((self.size, self.size), Image.BILINEAR, box=(x, y, x + w, y + h))
        if flip:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        return np.array(out, dtype=np.uint8)  # owned and writable, as collate expects


class _CurrentPlan:
    """Batch sampler over the chunks of the plan being loaded (reset before every plan)."""

    def __init__(self):
        self.chunks: list[list[tuple]] = []

    def __iter__(self):
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)


class TorchPipeline(Pipeline):
    name = "torch"

    def __init__(
        self,
        shard,
        *,
        train: bool,
        image_size: int,
        device,
        seed: int = 0,
        workers: int = 2,
        prefetch: int = 2,
        augment=None,
    ):
        super().__init__(
            shard, train=train, image_size=image_size, device=device, seed=seed, prefetch=prefetch,
            augment=augment,
        )
        self.workers = max(0, int(workers))
        self._sampler = _CurrentPlan()
        self._loader = DataLoader(
            _RowCrops(self.images, self.image_size),
            batch_sampler=self._sampler,
            num_workers=self.workers,
            persistent_workers=self.workers > 0,
            pin_memory=self.device.type == "cuda",
        )
        if self.workers:
            # Start the persistent workers now, from the constructing thread: forking later from the prefetch
            # thread would copy a process whose numba/TBB thread pool is mid-use.
            iter(self._loader)

    def _load(self, plan, crops):
        items = [(int(r), *map(int, b), bool(f)) for r, b, f in zip(plan.rows, crops.boxes, crops.flips)]
        # Two chunks per worker keep both busy while the other's result is collated.
        n_chunks = max(1, 2 * self.workers)
        step = math.ceil(len(items) / n_chunks)
        self._sampler.chunks = [items[i : i + step] for i in range(0, len(items), step)]
        parts = list(self._loader)
        images = torch.cat(parts) if len(parts) > 1 else parts[0]
        return images.to(self.device, non_blocking=True)

    def _close(self):
        it = getattr(self._loader, "_iterator", None) if self._loader is not None else None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self._loader = None
