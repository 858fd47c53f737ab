"""imagenet-lt / places-lt: OLTR split files + a JPEG tree, converted through the real writer."""

from __future__ import annotations

import numpy as np
import pytest

from fastlt.convert import main as convert_main
from fastlt.datasets.oltr import places_key, places_name, wnid_key
from fastlt.shards import open_shard
from synth import assert_shard_matches, decode_file, psnr, write_oltr

TRAIN_COUNTS = [9, 5, 3, 2]


@pytest.fixture(scope="module", params=["imagenet", "places"])
def converted(request, tmp_path_factory):
    flavour = request.param
    tmp = tmp_path_factory.mktemp(flavour)
    src = write_oltr(tmp, flavour, TRAIN_COUNTS)
    cmd = f"{flavour}-lt"
    argv = [cmd, "--root", str(src.root), "--out", str(tmp / "out"), "--workers", "2"]
    for split, f in src.split_files.items():
        argv += [f"--{split}", str(f)]
    if flavour == "imagenet":
        names = tmp / "LOC_synset_mapping.txt"
        # Only two classes have readable names: the others keep their wnid.
        names.write_text(
            f"{src.class_keys[0]} tench, Tinca tinca\n{src.class_keys[2]} goldfish, Carassius auratus\n"
        )
        argv += ["--names", str(names)]
    assert convert_main(argv) == 0
    shards = {s: open_shard(tmp / "out" / cmd / f"{s}.beton") for s in ("train", "val", "test")}
    return flavour, src, shards


def expected_names(flavour, keys):
    if flavour == "imagenet":
        return ["tench", keys[1], "goldfish", keys[3]]
    return ["airfield", "apartment building outdoor", "bamboo forest", "ice skating rink indoor"]


def test_every_split_matches_its_split_file(converted):
    flavour, src, shards = converted
    names = expected_names(flavour, src.class_keys)
    for split, shard in shards.items():
        assert_shard_matches(shard, dict(src.entries[split]), names, TRAIN_COUNTS)
        assert shard.index.settings["write_mode"] == "jpg"


def test_jpg_rows_are_faithful_to_the_source_files(converted):
    flavour, src, shards = converted
    shard = shards["train"]
    for row, rel in enumerate(shard.index.source_ids):
        mode, h, w, _ = shard.image_bytes(row)
        ref = decode_file(src.root / rel)
        assert mode == "jpg" and (h, w) == ref.shape[:2]
        assert psnr(shard.decode(row), ref) > 30


def test_class_key_policies():
    assert wnid_key("train/n01440764/n01440764_190.JPEG") == "n01440764"
    assert wnid_key("val/ILSVRC2012_val_00000001.JPEG") is None
    assert places_key("train/airfield/00004851.jpg") == "airfield"
    assert places_key("data_256/a/apartment_building/outdoor/00000001.jpg") == "apartment_building/outdoor"
    assert places_key("val_256/Places365_val_00000001.jpg") is None
    assert places_name("apartment_building/outdoor") == "apartment building outdoor"
    np.testing.assert_equal(places_name("ice_skating_rink/indoor"), "ice skating rink indoor")
