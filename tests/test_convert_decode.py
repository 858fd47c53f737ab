"""Conversion's one decode per image, end to end through ``fastlt convert``: the pixels it stores, the source
bytes it keeps, and the damaged files it refuses.

Tolerances. Rows written without a resize are the decoded source exactly (libjpeg-turbo with the accurate DCT
and fancy upsampling, as PIL decodes; CMYK converted as PIL converts). A shrunk row is the source decoded
DCT-scaled by the largest of 1/2, 1/4, 1/8 that still covers the target, then box-filtered to the target
size over the part of the scaled image that is picture: against that reference (PIL's own scaled decode and
an exact float box filter) raw rows agree within 1 grey level (two roundings). Against the naive reference
— a full-size decode box-filtered down — they differ by what separates the DCT's low-pass from a box
filter (detail inside an 8x8 block); on these photographs, shrunk 2x to 8x, raw rows agree with it to at
least 28 dB PSNR and JPEG rows (q90) to at least 24 dB (PIL's draft + box resize, the usual shortcut, gets
as low as 19 dB here).
"""

from __future__ import annotations

import io
import json
import math

import cv2
import numpy as np
import pytest
from PIL import Image

from fastlt.beton_writer import IMAGE_MODES
from fastlt.convert import main as convert_main
from fastlt.datasets import images
from fastlt.shards import open_shard
from synth import psnr, save_jpeg, tiny_photo

SIZES = [(300, 200), (120, 310), (400, 90), (257, 257), (100, 80)]  # wide, tall, very wide, square, small
KINDS = ["baseline", "progressive", "grey", "cmyk", "png", "chroma444", "chroma422"]


def save(path, img: np.ndarray, kind: str) -> None:
    im = Image.fromarray(img)
    if kind == "baseline":
        im.save(path, "JPEG", quality=90)
    elif kind == "progressive":
        im.save(path, "JPEG", quality=90, progressive=True)
    elif kind == "grey":
        im.convert("L").save(path, "JPEG", quality=90)
    elif kind == "cmyk":
        im.convert("CMYK").save(path, "JPEG", quality=90)
    elif kind.startswith("chroma"):
        im.save(path, "JPEG", quality=90, subsampling={"chroma444": 0, "chroma422": 1}[kind])
    else:
        im.save(path, "PNG")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """An image tree with an ImageNet-LT-style split file (``root/train.txt``): one class per kind of file,
    one image per size."""
    root = tmp_path_factory.mktemp("kinds")
    lines = []
    for k, kind in enumerate(KINDS):
        (root / kind).mkdir()
        for i, (w, h) in enumerate(SIZES):
            img = cv2.resize(tiny_photo(9, i, k, long_side=max(w, h)), (w, h), interpolation=cv2.INTER_AREA)
            rel = f"{kind}/{w}x{h}.{'png' if kind == 'png' else 'jpg'}"
            save(root / rel, img, kind)
            lines.append(f"{rel} {k}\n")
    (root / "train.txt").write_text("".join(lines))
    return root


def convert(root, out, *extra) -> dict:
    """``fastlt convert imagenet-lt`` into ``out``: {source id: (mode, height, width, pixels, row bytes)}."""
    argv = ["imagenet-lt", "--root", str(root), "--train", str(root / "train.txt"), "--out", str(out)]
    assert convert_main([*argv, "--workers", "2", *extra]) == 0
    shard = open_shard(out / "imagenet-lt" / "train.beton")
    rows = {}
    for r, sid in enumerate(shard.index.source_ids):
        mode, h, w, data = shard.image_bytes(r)
        rows[sid] = (mode, h, w, shard.decode(r), data.tobytes())
    return rows


def pil_decode(path, reduce: int = 1) -> np.ndarray:
    """PIL's decode, DCT-scaled by ``reduce`` for a JPEG (``draft``), as RGB."""
    with Image.open(path) as im:
        w, h = im.size
        if reduce > 1:
            # draft picks the largest scale whose reduction fits in both sides of the requested size.
            im.draft(im.mode if im.mode == "CMYK" else "RGB", (w // reduce, h // reduce))
            assert im.size == (-(-w // reduce), -(-h // reduce)), "libjpeg rounds a scaled side up"
        return np.asarray(im.convert("RGB"))


def box_matrix(n_in: int, extent: float, n_out: int) -> np.ndarray:
    """Exact area weights: output o averages [o*s, (o+1)*s) of an input whose first ``extent`` pixels are
    picture (s = extent / n_out)."""
    s = extent / n_out
    a = np.zeros((n_out, n_in))
    for o in range(n_out):
        lo, hi = o * s, (o + 1) * s
        for i in range(math.floor(lo), min(n_in, math.ceil(hi))):
            a[o, i] = max(0.0, min(hi, i + 1) - max(lo, i)) / s
    return a


def reference(path, max_res: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(the DCT-scaled reference, the naive reference) of one source file at ``max_res``."""
    with Image.open(path) as im:
        w, h, is_jpeg = im.width, im.height, im.format == "JPEG"
    tw, th = images.target_size(w, h, max_res)
    full = pil_decode(path)
    if (tw, th) == (w, h):
        return full, full
    naive = cv2.resize(full, (tw, th), interpolation=cv2.INTER_AREA)
    f = next((f for f in (8, 4, 2) if is_jpeg and w >= tw * f and h >= th * f), 1)
    scaled = pil_decode(path, f).astype(np.float64)
    ah, aw = box_matrix(scaled.shape[0], h / f, th), box_matrix(scaled.shape[1], w / f, tw)
    exact = np.einsum("oi,ijc,pj->opc", ah, scaled, aw, optimize=True)
    return np.clip(np.floor(exact + 0.5), 0, 255).astype(np.uint8), naive


@pytest.mark.parametrize("max_res", [None, 150, 64, 37])
def test_raw_rows_are_the_scaled_decode_box_filtered(tree, tmp_path, max_res):
    extra = ["--max-resolution", str(max_res)] if max_res else []
    rows = convert(tree, tmp_path / "out", "--write-mode", "raw", *extra)
    assert len(rows) == len(KINDS) * len(SIZES)
    for sid, (mode, h, w, pixels, _) in rows.items():
        exact, naive = reference(tree / sid, max_res)
        assert mode == "raw" and pixels.shape == exact.shape, sid
        assert max(h, w) <= (max_res or max(h, w)), sid
        diff = np.abs(pixels.astype(int) - exact).max()
        assert diff <= (0 if max_res is None else 1), f"{sid}: {diff} levels from the reference"
        if max_res is None or max_res >= 64:
            assert psnr(pixels, naive) >= 28, sid


@pytest.mark.parametrize("max_res", [150, 64])
def test_jpeg_rows_keep_the_picture(tree, tmp_path, max_res):
    rows = convert(tree, tmp_path / "out", "--max-resolution", str(max_res), "--reencode")
    for sid, (mode, _, _, pixels, data) in rows.items():
        _, naive = reference(tree / sid, max_res)
        assert mode == "jpg" and pixels.shape == naive.shape and psnr(pixels, naive) >= 24, sid
        # Shrunk on YUV planes into 4:2:0, or into greyscale from a greyscale source.
        assert Image.open(io.BytesIO(data)).mode == ("L" if sid.startswith("grey/") else "RGB"), sid


def test_the_writers_image_modes_are_ffcvs():
    from ffcv.fields.rgb_image import IMAGE_MODES as FFCV_IMAGE_MODES

    assert IMAGE_MODES == dict(FFCV_IMAGE_MODES)


def test_source_jpegs_are_stored_byte_for_byte_by_default(tree, tmp_path):
    rows = convert(tree, tmp_path / "out", "--max-resolution", "150")
    stored = {sid for sid, row in rows.items() if row[4] == (tree / sid).read_bytes()}
    # Baseline colour and greyscale JPEGs that need no resize; never progressive, CMYK or PNG sources, and
    # nothing that was shrunk.
    assert stored == {f"{kind}/100x80.jpg" for kind in ("baseline", "grey", "chroma444", "chroma422")}
    for sid in stored:
        np.testing.assert_array_equal(rows[sid][3], pil_decode(tree / sid))
    progressive_id = "progressive/100x80.jpg"
    progressive = rows[progressive_id]
    assert progressive[0] == "jpg" and psnr(progressive[3], pil_decode(tree / progressive_id)) >= 30


def test_keep_jpeg_adds_progressive_and_reencode_stores_none(tree, tmp_path):
    def stored(*extra):
        rows = convert(tree, tmp_path / "-".join(extra), "--max-resolution", "150", *extra)
        return {sid for sid, row in rows.items() if row[4] == (tree / sid).read_bytes()}

    small = {f"{kind}/100x80.jpg" for kind in ("baseline", "grey", "chroma444", "chroma422", "progressive")}
    assert stored("--keep-jpeg") == small
    assert stored("--reencode") == set()


# ------------------------------------------------------------------------------------------ damaged files
def damaged(tmp_path):
    """Three JPEGs whose header and end marker are intact: a zero-filled middle, a middle of random bytes,
    and stray bytes before the end marker. PIL decodes the first and the last without a complaint."""
    good = tmp_path / "good.jpg"
    save_jpeg(good, tiny_photo(3, 0, 0, long_side=200), quality=90)
    data = good.read_bytes()
    n = len(data)
    rng = np.random.default_rng(0)
    return {
        "zeros.jpg": data[: n // 2] + bytes(n // 10) + data[n // 2 + n // 10 :],
        "random.jpg": data[: n // 2]
        + rng.integers(0, 256, n // 10, dtype=np.uint8).tobytes()
        + data[n // 2 + n // 10 :],
        "stray.jpg": data[:-2] + b"\x12\x34" * 10 + data[-2:],
    }


@pytest.fixture
def source(tmp_path):
    """An ImageNet-LT-style source: 6 good images (lines 1-6) and the damaged ones (lines 7-9)."""
    root = tmp_path / "images"
    lines = []
    for i in range(6):
        save_jpeg(root / f"c{i % 2}" / f"{i}.jpg", tiny_photo(3, i + 1, i % 2, long_side=64))
        lines.append(f"c{i % 2}/{i}.jpg {i % 2}")
    for name, data in damaged(tmp_path).items():
        (root / "bad").mkdir(exist_ok=True)
        (root / "bad" / name).write_bytes(data)
        lines.append(f"bad/{name} 0")
    split_file = tmp_path / "train.txt"
    split_file.write_text("\n".join(lines) + "\n")
    return root, split_file


def run_source(source, out, *extra):
    root, split_file = source
    argv = [
        "imagenet-lt",
        "--root",
        str(root),
        "--train",
        str(split_file),
        "--out",
        str(out),
        "--workers",
        "2",
    ]
    return convert_main([*argv, *extra])


def test_the_damage_is_invisible_to_pil(tmp_path):
    files = damaged(tmp_path)
    for name in ("zeros.jpg", "stray.jpg"):
        Image.open(io.BytesIO(files[name])).load()  # no error: PIL would have stored these pictures


def test_damaged_scans_are_refused_with_the_decoders_words(source, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_source(source, out) == 1
    err = capsys.readouterr().err
    assert not out.exists() or not list(out.rglob("*")), "a refused conversion leaves nothing"
    root, split_file = source
    assert f"{split_file}:7: {root / 'bad/zeros.jpg'}: cannot decode image: damaged scan: " in err
    assert "zero bytes from byte" in err
    line8 = next(line for line in err.splitlines() if f"{split_file}:8: " in line)
    assert f"{root / 'bad/random.jpg'}: cannot decode image: " in line8 and len(line8.split("image: ")[1]) > 5
    line9 = next(line for line in err.splitlines() if f"{split_file}:9: " in line)
    assert f"{root / 'bad/stray.jpg'}: cannot decode image: Corrupt JPEG data: " in line9
    assert line9.endswith("extraneous bytes before marker 0xd9")


def test_skip_bad_writes_the_rest_and_records_the_damaged_files(source, tmp_path):
    out = tmp_path / "out"
    assert run_source(source, out, "--skip-bad") == 0
    shard = open_shard(out / "imagenet-lt" / "train.beton")
    assert shard.num_rows == 6 and shard.index.class_counts == [3, 3]
    skipped = {s["source_id"]: s["problem"] for s in shard.index.skipped}
    assert set(skipped) == {"bad/zeros.jpg", "bad/random.jpg", "bad/stray.jpg"}
    assert "damaged scan" in skipped["bad/zeros.jpg"] and "extraneous bytes" in skipped["bad/stray.jpg"]
    assert json.loads(shard.index_path.read_text())["settings"]["skip_bad"] is True
