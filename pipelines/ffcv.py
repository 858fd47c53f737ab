"""ffcv pipeline: FFCV 1.0.2's compiled pipeline, driven one StepPlan at a time.

How plans get into FFCV. FFCV's ``Loader`` computes an epoch's whole order up front, its ``EpochIterator``
chunks that order into fixed-size batches and prefetches ``batches_ahead`` of them, and 1.0.2 rejects custom
``TraversalOrder`` classes. None of that fits a stream of plans that only exist a step or two ahead. But the
order is the only part that does not fit: everything FFCV compiles takes the batch's row indices as an
*argument*. So fastlt builds a real ``Loader`` (``os_cache=True``: the ``.beton`` is memory-mapped and any
access order is allowed) purely for its machinery — the ``Reader``, the OS-cache memory manager and its
compiled reader, the pipeline ``Graph`` and the numba code it generates — and never iterates it. Its own short
"epoch iterator" runs FFCV's compiled stages for each plan exactly as ``EpochIterator.run_pipeline`` does,
with ``batch_indices = plan.rows``, and the shared engine (``pipelines.base``) adds the bounded prefetch
thread.

Seeded crops. FFCV's ``RandomResizedCropRGBImageDecoder`` draws crops from numba's global RNG inside compiled
code, which cannot be tied to a plan. ``PlanCropDecoder`` below is an FFCV ``Operation`` with the same job
(decode + crop + resize, in a numba ``prange`` over the rows) that reads each row's crop box and flip from a
third memory buffer it declares through FFCV's ``AllocationQuery``; fastlt fills that buffer from the plan's
shared ``Crops`` (seeded by the plan) before running the stages. So the crop is a pure function of the plan.

Speed levers inside the decoder (FFCV's own ``imdecode`` from ``libffcv``, i.e. libjpeg-turbo):

* DCT-scaled decode: when the crop box is at least twice the output size, the JPEG is decoded at 1/2, 1/4 or
  1/8 scale (``imdecode``'s ``scale_num/scale_denom``), which cuts the IDCT and colour conversion by 4–64×;
  the box is then resized from an image that is still at least ``image_size``
  (``transforms.dct_scale_denominator``).
* The resize is FFCV's ``resize_crop`` (OpenCV INTER_AREA on the box); the flip is a column swap in the same
  compiled loop.

Device: on CUDA the stages end with FFCV's ``ToTensor`` + ``ToDevice`` (pinned host buffer → device, on a side
stream); the loader thread waits for that copy and clones the result out of FFCV's reusable buffer, so a Batch
stays valid however long the trainer keeps it.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import replace
from pathlib import Path

import numba
import numpy as np
import torch

from fastlt.pipelines.base import Pipeline
from fastlt.pipelines.transforms import dct_scale_denominators

# numba's default (workqueue) threading layer aborts when two threads launch parallel kernels at once
# (a train and an eval pipeline, say), so compiled FFCV stages run one at a time per process.
_STAGE_LOCK = threading.Lock()

# Per-row parameters the decoder reads: crop box y, x, h, w in source pixels, flip, DCT scale denominator.
N_PARAMS = 6


# Compiled FFCV graphs, one per (file, image size, threads, device), kept for the life of the process: a numba
# compile costs seconds, and numba's dispatcher finaliser trips over FFCV's per-graph wrappers of the same C
# entry points when a graph is garbage-collected (KeyError in numba/core/dispatcher.py), so graphs are never
# dropped.
_GRAPHS: dict = {}


def _make_decoder_class():
    from ffcv.fields.rgb_image import IMAGE_MODES
    from ffcv.libffcv import imdecode, resize_crop
    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.compiler import Compiler
    from ffcv.pipeline.operation import Operation

    class PlanCropDecoder(Operation):
        """Decode + crop box + resize to ``size`` + flip, per-row parameters from a buffer (see module
        doc)."""

        def __init__(self, size: int):
            super().__init__()
            self.size = int(size)

        def declare_state_and_memory(self, previous_state):
            max_h = np.uint64(self.metadata["height"].max())
            max_w = np.uint64(self.metadata["width"].max())
            out_shape = (self.size, self.size, 3)
            u8 = np.dtype("<u1")
            return (
                replace(previous_state, jit_mode=True, shape=out_shape, dtype=u8),
                (
                    AllocationQuery(out_shape, u8),
                    AllocationQuery((max_h * max_w * np.uint64(3),), u8),
                    AllocationQuery((N_PARAMS,), np.dtype("<i4")),
                ),
            )

        def generate_code(self):
            jpg = IMAGE_MODES["jpg"]
            mem_read = self.memory_read
            my_range = Compiler.get_iterator()
            imdecode_c = Compiler.compile(imdecode)
            resize_crop_c = Compiler.compile(resize_crop)

            def decode(batch_indices, my_storage, metadata, storage_state):
                destination, temp_storage, params = my_storage
                for k in my_range(len(batch_indices)):
                    field = metadata[batch_indices[k]]
                    data = mem_read(field["data_ptr"], storage_state)
                    height = np.uint32(field["height"])
                    width = np.uint32(field["width"])
                    y, x, h, w, flip, d = params[k]
                    if field["mode"] == jpg:
                        # libjpeg-turbo's scaled size is ceil(dim / d) (TJSCALED).
                        sh = (height + d - 1) // d
                        sw = (width + d - 1) // d
                        imdecode_c(
                            data, temp_storage[k], height, width, height, width, 0, 0, 1, d, False, False
                        )
                        image = temp_storage[k][: sh * sw * 3].reshape(sh, sw, 3)
                        y0 = y // d
                        x0 = x // d
                        y1 = min(sh, max(y0 + 1, (y + h + d - 1) // d))
                        x1 = min(sw, max(x0 + 1, (x + w + d - 1) // d))
                    else:
                        image = data.reshape(height, width, 3)
                        y0, x0, y1, x1 = y, x, y + h, x + w
                    out = destination[k]
                    resize_crop_c(image, y0, y1, x0, x1, out)
                    if flip:
                        n = out.shape[1]
                        for i in range(out.shape[0]):
                            for j in range(n // 2):
                                for c in range(3):
                                    t = out[i, j, c]
                                    out[i, j, c] = out[i, n - 1 - j, c]
                                    out[i, n - 1 - j, c] = t
                return destination[: len(batch_indices)]

            decode.is_parallel = True
            return decode

    return PlanCropDecoder


def _graph(path, image_size: int, workers: int, device: torch.device):
    """(FFCV Loader, its PlanCropDecoder) for this configuration, compiled once per process."""
    from ffcv.loader import Loader, OrderOption
    from ffcv.pipeline import PipelineSpec
    from ffcv.transforms import ToDevice, ToTensor

    st = Path(path).stat()
    key = (str(path), st.st_size, st.st_mtime_ns, image_size, workers, str(device))
    if key not in _GRAPHS:
        decoder = _make_decoder_class()(image_size)
        ops = [ToTensor()]
        if device.type == "cuda":
            ops.append(ToDevice(device, non_blocking=True))
        # An explicit decoder: FFCV only recognises subclasses of the field's default decoder in `transforms`.
        spec = PipelineSpec("image", decoder=decoder, transforms=ops)
        torch_threads = torch.get_num_threads()  # FFCV's Compiler.set_num_threads also sets torch's
        loader = Loader(
            str(path),
            batch_size=1,
            num_workers=workers,
            os_cache=True,
            order=OrderOption.SEQUENTIAL,
            pipelines={"image": spec, "label": None},
            drop_last=False,
        )
        torch.set_num_threads(torch_threads)
        _GRAPHS[key] = (loader, decoder)
    return _GRAPHS[key]


class FFCVPipeline(Pipeline):
    name = "ffcv"

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
        dct_scaling: bool = True,
    ):
        super().__init__(
            shard, train=train, image_size=image_size, device=device, seed=seed, prefetch=prefetch,
            augment=augment,
        )
        self.workers = max(1, int(workers))
        self.dct_scaling = bool(dct_scaling)
        self.loader, self.decoder = _graph(shard.beton_path, self.image_size, self.workers, self.device)
        self._code, self._outputs = self.loader.code
        self._decoder_node = next(
            n.id for n in self.loader.graph.nodes if getattr(n, "decoder", None) is self.decoder
        )
        self._context = self.loader.memory_manager.schedule_epoch(None)
        self._context.__enter__()
        self._storage_state = self._context.state
        self._metadata = self.loader.reader.metadata
        self._capacity = 0
        self._memory = None
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def _ensure_capacity(self, R: int) -> None:
        if R > self._capacity:
            # One slot: the loader thread waits for each plan's device copy and clones the result before it
            # starts the next plan, so the buffers are free again by then. Grow geometrically.
            self._capacity = max(R, 2 * self._capacity)
            self._memory = self.loader.graph.allocate_memory(self._capacity, 1)

    def _params(self, crops) -> np.ndarray:
        boxes = crops.boxes
        params = np.empty((len(boxes), N_PARAMS), dtype=np.int32)
        params[:, :4] = boxes
        params[:, 4] = crops.flips
        if self.dct_scaling:
            params[:, 5] = dct_scale_denominators(boxes[:, 2], boxes[:, 3], self.image_size)
        else:
            params[:, 5] = 1
        return params

    def _select(self, buffer, R):
        if buffer is None:
            return None
        if isinstance(buffer, tuple):
            return tuple(self._select(b, R) for b in buffer)
        return buffer[0][:R]

    def _load(self, plan, crops):
        R = len(plan.rows)
        self._ensure_capacity(R)
        self._memory["operation"][self._decoder_node][2][0][:R] = self._params(crops)
        args = {
            "batch_indices": plan.rows.astype(np.uint64),
            "storage_state": self._storage_state,
            "metadata": self._metadata,
            **{f"memory_{k}": self._select(v, R) for k, v in self._memory["operation"].items()},
            **{f"shared_memory_{k}": self._select(v, R) for k, v in self._memory["shared"].items()},
        }
        ctx = torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()
        with _STAGE_LOCK, ctx:
            numba.set_num_threads(self.workers)  # per calling thread; Compiler's version also resets torch
            if self._stream is not None:
                # The previous plan's clone (default stream) must be done before ToDevice overwrites its
                # source.
                self._stream.wait_stream(torch.cuda.default_stream(self.device))
            for stage_code, define_outputs in self._code:
                results = stage_code(**args)
                for node_id, result in zip(define_outputs, results):
                    args[f"result_{node_id}"] = result
            result = args[f"result_{self._outputs[0]}"]
        if self._stream is not None:
            # Wait for the host→device copy, then clone on the default stream: the Batch then belongs to the
            # stream the trainer uses, and FFCV's device buffer is free for the next plan.
            self._stream.synchronize()
        return result.clone()

    def _close(self):
        if self._context is not None:
            self._context.__exit__(None, None, None)
            self._context = None
        self._memory = None
