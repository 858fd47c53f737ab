"""EXIF orientation: fastlt stores the pixels as they are encoded and ignores the orientation tag, like
torchvision's ImageFolder / PIL loader (which never calls ImageOps.exif_transpose) and FFCV's writer — so a
shard, a torchvision baseline and a model trained on either see the same array. A photo taken on its side
stays on its side; rotate such files before converting (e.g. ``exiftran -ai`` or PIL's exif_transpose)."""

import numpy as np
from PIL import Image

from fastlt.convert import main as convert_main
from fastlt.shards import open_shard


def test_exif_orientation_is_ignored_like_torchvisions_loader(tmp_path):
    root = tmp_path / "photos" / "train"
    g = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            # a wide image (48 × 24) whose tag says "rotate 90° to display" (orientation 6)
            pixels = np.repeat(np.repeat(g.integers(0, 256, (6, 12, 3), dtype=np.uint8), 4, 0), 4, 1)
            exif = Image.Exif()
            exif[0x0112] = 6
            Image.fromarray(pixels).save(root / name / f"{i}.jpg", quality=95, exif=exif)
    assert convert_main(["imagefolder", str(tmp_path / "photos"), "--out", str(tmp_path / "out"),
                         "--workers", "1", "--val-per-class", "0"]) == 0
    shard = open_shard(tmp_path / "out" / "photos" / "train.beton")
    for row, rel in enumerate(shard.index.source_ids):
        stored = shard.decode(row)
        with Image.open(tmp_path / "photos" / rel) as im:
            assert im.getexif()[0x0112] == 6
            as_torchvision_loads_it = np.asarray(im.convert("RGB"))
        assert stored.shape == as_torchvision_loads_it.shape == (24, 48, 3)  # not transposed to 48 × 24
        assert np.abs(stored.astype(int) - as_torchvision_loads_it.astype(int)).mean() < 3  # JPEG re-decode
