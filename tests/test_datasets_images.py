"""The shared image reader: fast path (simplejpeg) and PIL agree, truncation is caught either way."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fastlt.datasets import images
from synth import save_jpeg, tiny_photo


@pytest.fixture(scope="module")
def jpeg(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.jpg"
    save_jpeg(path, tiny_photo(1, 2, 3, long_side=300), quality=90)
    return path


@pytest.mark.parametrize("max_res", [None, 400, 300, 160, 100, 37])
def test_decode_matches_pil_draft_bit_for_bit(jpeg, max_res):
    ref = images._pil_decode(jpeg, max_res)
    got = images.decode(jpeg, max_res)
    np.testing.assert_array_equal(got, ref)
    assert max(got.shape[:2]) >= min(300, max_res or 300)
    f = images.dct_factor(*Image.open(jpeg).size, max_res)
    assert max(got.shape[:2]) == -(-300 // f)


def test_dct_factor():
    assert images.dct_factor(800, 600, None) == 1
    assert images.dct_factor(800, 600, 256) == 2
    assert images.dct_factor(800, 600, 100) == 8
    assert images.dct_factor(800, 600, 200) == 4
    assert images.dct_factor(800, 600, 801) == 1


def test_check_catches_truncation_and_garbage(jpeg, tmp_path):
    assert images.check(jpeg) == Image.open(jpeg).size
    data = jpeg.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(OSError, match="truncated"):
        images.check(cut)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(data[:200] + bytes(len(data) - 200))
    with pytest.raises(Exception):  # noqa: B017 - PIL's error type for corrupt data varies by version
        images.check(bad)


def test_non_jpeg_goes_through_pil(tmp_path):
    img = tiny_photo(0, 0, 0, long_side=30)
    path = tmp_path / "x.png"
    Image.fromarray(img).save(path)
    assert images.check(path) == (img.shape[1], img.shape[0])
    np.testing.assert_array_equal(images.decode(path, 10), img)  # PNGs are never pre-shrunk
