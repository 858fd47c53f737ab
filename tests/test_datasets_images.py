"""The image reader of conversion: strict libjpeg decoding, sizes, DCT scale choice, the area resize."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from fastlt.datasets import images, jpeg
from fastlt.datasets.resize import area_resize
from synth import save_jpeg, tiny_photo


@pytest.fixture(scope="module")
def jpeg_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.jpg"
    save_jpeg(path, tiny_photo(1, 2, 3, long_side=300), quality=90)
    return path.read_bytes()


def test_target_size_keeps_the_aspect_ratio_and_bounds_the_long_side():
    assert images.target_size(800, 600, None) == (800, 600)
    assert images.target_size(800, 600, 800) == (800, 600)
    assert images.target_size(800, 600, 256) == (256, 192)
    assert images.target_size(600, 800, 256) == (192, 256)
    assert images.target_size(700, 501, 512) == (512, 366)  # 366.4 → 366
    assert images.target_size(700, 503, 512) == (512, 368)  # 367.9 → 368
    assert images.target_size(1000, 1, 10) == (10, 1)  # never 0


def test_dct_factor_is_the_largest_reduction_that_still_covers_the_target():
    assert images.dct_factor(800, 600, 800, 600) == 1
    assert images.dct_factor(800, 600, 256, 192) == 2  # 400x300; 1/4 would give 200x150
    assert images.dct_factor(800, 600, 200, 150) == 4
    assert images.dct_factor(800, 600, 100, 75) == 8
    assert images.dct_factor(808, 608, 101, 76) == 8
    # 807/8 = 100.9: libjpeg would return 101 pixels, the last of them partly made up, so 1/4 it is.
    assert images.dct_factor(807, 608, 101, 76) == 4


@pytest.mark.parametrize("size", [(300, 200), (160, 225), (37, 28), (299, 224)])
def test_area_resize_is_opencvs_inter_area_within_one_level(size):
    rng = np.random.default_rng(sum(size))
    rgbx = rng.integers(0, 256, (225, 300, 4), dtype=np.uint8)
    got = area_resize(rgbx, *size)
    ref = cv2.resize(rgbx, size, interpolation=cv2.INTER_AREA)
    assert got.shape == ref.shape and np.abs(got.astype(int) - ref).max() <= 1


def test_area_resize_over_a_partial_last_pixel_averages_only_the_picture():
    # A side of 10 scaled by 1/4 decodes to 3 pixels, the last standing for half a pixel's worth (2.5).
    rgbx = np.zeros((1, 3, 4), np.uint8)
    rgbx[0, :, 0] = [40, 80, 250]
    got = area_resize(rgbx, 2, 1, extent=(2.5, 1))[0, :, 0]
    # Output pixels cover [0, 1.25) and [1.25, 2.5): (40 + 80/4) / 1.25 and (80*3/4 + 250/2) / 1.25.
    np.testing.assert_array_equal(got, [48, 148])


def test_check_refuses_truncation_garbage_and_a_zero_filled_scan(jpeg_bytes):
    assert images.check_jpeg(jpeg_bytes) == Image.open(io.BytesIO(jpeg_bytes)).size
    with pytest.raises(ValueError, match="Premature end of JPEG file"):
        images.check_jpeg(jpeg_bytes[: len(jpeg_bytes) * 2 // 3])
    with pytest.raises(ValueError):
        images.check_jpeg(jpeg_bytes[:400])  # cut inside the headers
    assert images.check_jpeg(jpeg_bytes), "a refused file leaves the decoder usable for the next one"
    with pytest.raises(ValueError):
        images.check_jpeg(b"\xff\xd8\xff\xe0 this is not a JPEG at all" * 4)
    n = len(jpeg_bytes)
    zeroed = jpeg_bytes[: n // 2] + bytes(400) + jpeg_bytes[n // 2 + 400 :]
    with pytest.raises(ValueError, match=rf"damaged scan: 400 zero bytes from byte {n // 2} of the file"):
        images.check_jpeg(zeroed)


def test_zero_runs_of_flat_content_are_not_damage(tmp_path):
    # Optimised Huffman tables give "no DC change" and "end of block" the all-zero codes: a uniform area
    # then really is a run of zero bytes.
    path = tmp_path / "flat.jpg"
    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(path, "JPEG", quality=90, optimize=True)
    data = path.read_bytes()
    assert jpeg.ZERO_RUN * b"\x00" in data
    assert jpeg.zero_filled_scan(data) is None and images.check_jpeg(data) == (256, 256)


def test_describe_names_the_problem(tmp_path):
    assert images.describe(FileNotFoundError()) == "file not found"
    assert images.describe(IsADirectoryError()) == "is a directory, expected an image file"
    assert (
        images.describe(images.Undecodable("Corrupt JPEG data")) == "cannot decode image: Corrupt JPEG data"
    )
    assert images.describe(ValueError("a bug, not a bad image")) is None
    with pytest.raises(images.ImageRefused, match="stores sides up to 65500 px") as e:
        images._check_size(70000, 10)
    assert images.describe(e.value) == "image is 70000x10; the shard format stores sides up to 65500 px"
