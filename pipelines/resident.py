"""resident pipeline: the whole decoded split lives on the device as uint8; a plan is a gather.

For small datasets (CIFAR-LT, digits-lt) decoding is paid once: every row of the ``.beton`` is decoded into
one ``uint8[N, H, W, 3]`` tensor on the training device (50,000 CIFAR images are 150 MB). Loading a plan is
then an index gather plus batched augmentation, with no per-image Python and no host round trip.

Augmentation policies (parameters from the shared transforms module, so they are seeded by the plan):

* **pad-crop + flip** — data stored at the training resolution and at most 64 px (CIFAR at 32): zero-pad
  by 4, take a random ``S × S`` window, mirror half the rows. Done as *one* ``index_select`` straight from the
  resident pixels: output pixel ``(i, j)`` of row k reads source pixel ``(dy_k − 4 + i, x_k(j))`` with
  ``x_k(j) = dx_k − 4 + j`` (``x_k(W − 1 − j)`` for mirrored rows), and reads a zero pixel kept after the
  data where that falls outside the image. The padded image is never materialised.
* **random-resized-crop + flip** — anything else: the box of each row is resampled to ``S × S`` by
  ``torchvision.ops.roi_align`` (``aligned=True``: box edges are pixel edges, and with ``sampling_ratio=-1``
  each output pixel averages ``ceil(box/S)²`` bilinear samples, an area filter when shrinking).
* **eval** — identity when the data is already ``S × S``; otherwise the shared centre-crop box through
  roi_align.
"""

from __future__ import annotations

import numpy as np
import torch

from fastlt.pipelines.base import Pipeline
from fastlt.pipelines.beton import BetonImages
from fastlt.pipelines.transforms import crop_params, pad_crop_params
from fastlt.shards import ShardError

PAD_CROP_MAX_SIZE = 64


def decode_all(images: BetonImages) -> np.ndarray:
    """uint8[N, H, W, 3] of every row; the shard must hold one image size."""
    hs, ws = np.unique(images.heights), np.unique(images.widths)
    if len(hs) != 1 or len(ws) != 1:
        raise ShardError(
            f"{images.path}: the resident pipeline needs one image size, the shard has heights "
            f"{hs.min()}..{hs.max()} and widths {ws.min()}..{ws.max()}; use the ffcv, dali or torch pipeline"
        )
    H, W = int(hs[0]), int(ws[0])
    out = np.empty((len(images), H, W, 3), dtype=np.uint8)
    for r in range(len(images)):
        out[r] = images.pixels(r) if not images.is_jpeg(r) else images.decode(r)
    return out


def resized_crops(images: torch.Tensor, boxes: np.ndarray, flip: np.ndarray, size: int) -> torch.Tensor:
    """uint8[R, S, S, 3] from uint8[R, H, W, 3] images, int (y, x, h, w) boxes and a flip mask (batched)."""
    from torchvision.ops import roi_align

    R = images.shape[0]
    dev = images.device
    b = torch.as_tensor(boxes, dtype=torch.float32, device=dev)
    rois = torch.stack(
        [
            torch.arange(R, device=dev, dtype=torch.float32),
            b[:, 1],
            b[:, 0],
            b[:, 1] + b[:, 3],
            b[:, 0] + b[:, 2],
        ],
        dim=1,
    )
    x = images.permute(0, 3, 1, 2).float()
    out = roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    f = torch.as_tensor(flip, device=dev)[:, None, None, None]
    out = torch.where(f, out.flip(-1), out)
    return out.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def pad_crops(
    pixels: torch.Tensor,
    shape: tuple[int, int, int],
    rows: torch.Tensor,
    offsets: np.ndarray,
    flip: np.ndarray,
    pad: int,
) -> torch.Tensor:
    """uint8[R, H, W, 3] pad-crop + flip of rows of the resident data as one gather (see the module
    docstring).

    ``pixels`` is the resident data flattened to ``[N·H·W + 1, 3]`` whose last entry is a zero pixel: every
    output pixel is one index into it, and those that fall in the padding point at the zero pixel, so the
    crop, the padding and the flip are a single ``index_select`` with no mask pass.
    """
    N, H, W = shape
    dev = pixels.device
    off = torch.as_tensor(offsets, device=dev)
    iy = off[:, :1] - pad + torch.arange(H, device=dev)  # [R, H] source row of each output row
    ix = off[:, 1:] - pad + torch.arange(W, device=dev)  # [R, W] source column of each output column
    ix = torch.where(torch.as_tensor(flip, device=dev)[:, None], ix.flip(1), ix)
    inside = ((iy >= 0) & (iy < H))[:, :, None] & ((ix >= 0) & (ix < W))[:, None, :]
    flat = rows[:, None, None] * (H * W) + iy.clamp(0, H - 1)[:, :, None] * W + ix.clamp(0, W - 1)[:, None, :]
    flat = torch.where(inside, flat, N * H * W)  # the zero pixel
    return pixels.index_select(0, flat.reshape(-1)).view(len(rows), H, W, 3)


class ResidentPipeline(Pipeline):
    name = "resident"

    def __init__(
        self,
        shard,
        *,
        train: bool,
        image_size: int,
        device,
        seed: int = 0,
        workers: int = 0,
        prefetch: int = 2,
        pad: int = 4,
    ):
        super().__init__(
            shard, train=train, image_size=image_size, device=device, seed=seed, prefetch=prefetch
        )
        host = decode_all(BetonImages(shard.beton_path))
        N, self.height, self.width, _ = host.shape
        # One trailing zero pixel serves as the padding of pad-crop (see pad_crops).
        self.pixels = torch.zeros(
            (N * self.height * self.width + 1, 3), dtype=torch.uint8, device=self.device
        )
        self.pixels[:-1] = torch.from_numpy(host.reshape(-1, 3)).to(self.device)
        self.data = self.pixels[:-1].view(N, self.height, self.width, 3)
        self.pad = int(pad)
        square_at_size = self.height == self.width == self.image_size
        self.policy = (
            ("pad_crop" if square_at_size and self.height <= PAD_CROP_MAX_SIZE else "resized_crop")
            if self.train
            else ("identity" if square_at_size else "center_crop")
        )

    def _load(self, plan, seed):
        rows = torch.from_numpy(plan.rows).to(self.device)
        R = len(plan.rows)
        if self.policy == "identity":
            return self.data[rows]
        if self.policy == "pad_crop":
            offsets, flip = pad_crop_params(R, seed, self.pad)
            return pad_crops(self.pixels, self.data.shape[:3], rows, offsets, flip, self.pad)
        heights = np.full(R, self.height)
        widths = np.full(R, self.width)
        boxes, flip = crop_params(heights, widths, train=self.train, seed=seed, image_size=self.image_size)
        return resized_crops(self.data[rows], boxes, flip, self.image_size)

    def _close(self):
        self.data = self.pixels = None
