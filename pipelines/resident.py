"""resident pipeline: the whole decoded split lives on the device as uint8; a plan is a gather.

For small datasets (CIFAR-LT, digits-lt) decoding is paid once: every row of the ``.beton`` is decoded into
one ``uint8[N, H, W, 3]`` tensor on the training device (50,000 CIFAR images are 150 MB). Loading a plan is
then an index gather plus batched augmentation, with no per-image Python and no host round trip.

Crops (the shared ``Crops`` of each plan, so the same rows as every other pipeline):

* **whole image at the training size** (crop-flip's pad-crop rows, eval of data stored at S × S, CLIP's centre
  square of square data): a gather of the resident rows, mirrored where asked; the pad-crop itself follows in
  the shared augmentation stage.
* **any other box**: resampled to ``S × S`` by ``torchvision.ops.roi_align`` (``aligned=True``: box edges are
  pixel edges, and with ``sampling_ratio=-1`` each output pixel averages ``ceil(box/S)²`` bilinear samples, an
  area filter when shrinking), mirrored where asked.
"""

from __future__ import annotations

import numpy as np
import torch

from fastlt.pipelines.base import Pipeline
from fastlt.pipelines.beton import BetonImages
from fastlt.shards import ShardError


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
        augment=None,
    ):
        super().__init__(
            shard, train=train, image_size=image_size, device=device, seed=seed, prefetch=prefetch,
            augment=augment,
        )
        host = decode_all(self.images)
        N, self.height, self.width, _ = host.shape
        self.data = torch.from_numpy(host).to(self.device)

    def _load(self, plan, crops):
        rows = torch.from_numpy(plan.rows).to(self.device)
        S = self.image_size
        at_size = self.height == self.width == S
        whole = np.all(crops.boxes == (0, 0, self.height, self.width), axis=1) & at_size
        if whole.all():
            return self._mirror(self.data[rows], crops.flips)
        out = resized_crops(self.data[rows], crops.boxes, crops.flips, S)
        if whole.any():
            idx = torch.from_numpy(np.flatnonzero(whole)).to(self.device)
            out[idx] = self._mirror(self.data[rows[idx]], crops.flips[whole])
        return out

    def _mirror(self, images: torch.Tensor, flips: np.ndarray) -> torch.Tensor:
        if not flips.any():
            return images
        f = torch.from_numpy(flips).to(self.device)[:, None, None, None]
        return torch.where(f, images.flip(2), images)

    def _close(self):
        self.data = None
