"""dali pipeline: NVIDIA DALI decode + crop + resize + flip, fed one StepPlan at a time.

Graph (one per pipeline, built once)::

    external_source "data"   JPEG bytes of the plan's rows (raw-mode shards: the pixels themselves)
    external_source "anchor" (x, y) of each row's crop box      ┐ from the plan's shared Crops,
    external_source "shape"  (w, h) of each row's crop box      │ seeded by the plan
    external_source "flip"   0/1 per row                        ┘
      → decoders.image_slice(data, anchor, shape)   decodes only the box (libjpeg-turbo on CPU, nvJPEG "mixed"
                                                     on GPU); raw shards: fn.slice of the pixels
      → resize to image_size × image_size            antialiased linear
      → flip(horizontal=flip)                        uint8 HWC out

The bytes come from the ``.beton`` itself: ``BetonImages`` reads FFCV's ``Reader`` metadata (pointer, size,
mode) and slices a memory map, so DALI and FFCV read one file. DALI's own readers are not used: they shuffle
from a small buffer, which on a class-sorted shard would give class-clumped batches, and they choose the order
themselves.

Driving it per plan. ``DALIGenericIterator.__next__`` schedules run ``s + 1`` before it returns batch ``s``,
so a pull-style source would have to produce plan ``s + 1`` first — exactly the lookahead a ``PlanQueue`` does
not allow (plan ``s + 1`` may wait for the trainer to finish step ``s``). fastlt therefore pushes each plan
into the named external sources with ``feed_input`` and calls ``run()`` once, with ``prefetch_queue_depth=1``
so a run never asks for more input than was fed, and converts the output with the DALI torch plugin's
``feed_ndarray`` (the same copy ``DALIGenericIterator`` makes). Overlap between plans comes from the shared
prefetch thread.

CPU-only machines: ``device_id=None`` and CPU decode. With CUDA the decode is ``mixed`` and the output is
copied straight into a torch CUDA tensor.
"""

from __future__ import annotations

import numpy as np
import torch

from fastlt.pipelines.base import Pipeline
from fastlt.shards import ShardError


class DALIPipeline(Pipeline):
    name = "dali"

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
        capacity: int = 256,
    ):
        super().__init__(
            shard, train=train, image_size=image_size, device=device, seed=seed, prefetch=prefetch,
            augment=augment,
        )
        jpeg = self.images.modes == 0
        if jpeg.any() and not jpeg.all():
            raise ShardError(
                f"{shard.beton_path}: the dali pipeline needs one write mode (all jpg or all raw)"
            )
        self.jpeg = bool(jpeg.all())
        self.workers = max(1, int(workers))
        self._capacity = 0
        self._pipe = None
        self._ensure_capacity(capacity)

    def _build(self, batch_size: int):
        from nvidia.dali import fn, pipeline_def, types

        gpu = self.device.type == "cuda"
        size = self.image_size
        jpeg = self.jpeg

        @pipeline_def(
            batch_size=batch_size,
            num_threads=self.workers,
            device_id=(self.device.index or 0) if gpu else None,
            prefetch_queue_depth=1,
        )
        def graph():
            data = fn.external_source(
                name="data", dtype=types.UINT8, ndim=1 if jpeg else 3, layout=None if jpeg else "HWC"
            )
            anchor = fn.external_source(name="anchor", dtype=types.FLOAT, ndim=1)
            shape = fn.external_source(name="shape", dtype=types.FLOAT, ndim=1)
            flip = fn.external_source(name="flip", dtype=types.INT32, ndim=0)
            if jpeg:
                images = fn.decoders.image_slice(
                    data,
                    anchor,
                    shape,
                    device="mixed" if gpu else "cpu",
                    output_type=types.RGB,
                    axis_names="WH",
                    normalized_anchor=False,
                    normalized_shape=False,
                )
            else:
                images = fn.slice(
                    data.gpu() if gpu else data,
                    anchor,
                    shape,
                    axis_names="WH",
                    normalized_anchor=False,
                    normalized_shape=False,
                )
            images = fn.resize(
                images,
                resize_x=size,
                resize_y=size,
                antialias=True,
                interp_type=types.INTERP_LINEAR,
                dtype=types.UINT8,
            )
            return fn.flip(images, horizontal=flip)

        pipe = graph()
        pipe.build()
        return pipe

    def _ensure_capacity(self, R: int) -> None:
        if R > self._capacity:
            self._capacity = max(R, 2 * self._capacity)
            self._pipe = self._build(self._capacity)

    def _load(self, plan, crops):
        from nvidia.dali.plugin.pytorch import feed_ndarray

        rows = plan.rows
        R = len(rows)
        self._ensure_capacity(R)
        boxes, flip = crops.boxes, crops.flips
        if self.jpeg:
            data = [np.asarray(self.images.payload(int(r))) for r in rows]
        else:
            data = [np.asarray(self.images.pixels(int(r))) for r in rows]
        self._pipe.feed_input("data", data)
        self._pipe.feed_input("anchor", np.ascontiguousarray(boxes[:, [1, 0]], dtype=np.float32))
        self._pipe.feed_input("shape", np.ascontiguousarray(boxes[:, [3, 2]], dtype=np.float32))
        self._pipe.feed_input("flip", flip.astype(np.int32))
        (out,) = self._pipe.run()
        tensor = out.as_tensor()
        images = torch.empty(tensor.shape(), dtype=torch.uint8, device=self.device)
        if self.device.type == "cuda":
            feed_ndarray(tensor, images, cuda_stream=torch.cuda.current_stream(self.device))
            torch.cuda.current_stream(self.device).synchronize()
        else:
            feed_ndarray(tensor, images)
        return images

    def _close(self):
        self._pipe = None
