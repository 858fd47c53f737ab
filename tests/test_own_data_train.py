"""Your own long-tailed images, end to end: each layout converts and trains (every method at least once,
a few steps each), the base recipe is chosen from the shard, unknown names get a hint and the command that
makes the shard, and a dataset whose classes all fall in one group says so."""

from __future__ import annotations

import json
import math

import pytest

from fastlt.convert import main as convert_main
from fastlt.recipes import RecipeError, preset
from fastlt.train import main as train_main
from fastlt.train import train
from helpers import eval_json, metrics
from helpers.own_data import convert_argv, tiny_recipe, write_layouts
from synth import write_imagefolder

# Three datasets, one per layout; the list layout is stored as JPEG (the ffcv pipeline), the others raw
# (32×32 PNGs: the resident pipeline), and its groups are set so that every class is 'medium'.
DATASETS = {
    "folder": ("digits-folder", ()),
    "split": ("digits-split", ()),
    "lists": ("digits-lists", ("--write-mode", "jpg", "--group-thresholds", "1,1000")),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("own")
    layouts = write_layouts(base)
    out = base / "data"
    for layout, (name, extra) in DATASETS.items():
        assert convert_main(convert_argv(layout, layouts[layout], out, name, *extra)) == 0
    return out


def test_the_base_recipe_is_chosen_from_the_shard(data, tmp_path, capsys):
    r = preset("digits-folder", "bs", str(data))
    assert (r.model, r.image_size, r.schedule, r.epochs) == ("resnet32", 32, "multistep", 200)
    assert r.eval_split == "val"
    chosen = "base 'small images, up to 10 classes' chosen from its shard (10 classes, median short image"
    assert f"{chosen} side 32 px)" in r.source
    assert r.data_root == str(data)
    # ConCutMix takes CIFAR-10-LT's released values for ten classes
    ccm = preset("digits-folder", "concutmix", str(data))
    assert (ccm.ccm_topk, ccm.ccm_tau_la, ccm.batch_size) == (3, 0.85, 256)
    # Photos (short side above 64 px) get the ImageNet-LT schedule; --print-recipe shows it.
    write_imagefolder(tmp_path / "photos", {"": [6, 6]}, ext=".jpg")
    for p in (tmp_path / "photos").rglob("*.jpg"):  # 40-px photos → upscale their sizes past 64 px
        from PIL import Image

        with Image.open(p) as im:
            im.resize((im.width * 3, im.height * 3)).save(p)
    assert convert_main(["imagefolder", str(tmp_path / "photos"), "--out", str(data), "--workers", "1"]) == 0
    capsys.readouterr()
    argv = ["--dataset", "photos", "--method", "concutmix", "--data-root", str(data), "--print-recipe"]
    assert train_main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["model"], printed["image_size"], printed["schedule"]) == ("resnet50", 224, "cosine")
    assert "base 'photos' chosen from its shard (2 classes" in printed["source"]
    assert printed["ccm_topk"] == 2  # never more than there are classes


def test_a_benchmark_converted_under_another_name_trains_as_its_own(tmp_path):
    """Its index records no image sizes (the digits-lt converter): they are read from the .beton; it has a
    test split and no val, so the recipe evaluates on test."""
    assert convert_main(["digits-lt", "--name", "mydigits", "--out", str(tmp_path), "--workers", "1"]) == 0
    r = preset("mydigits", "ce", str(tmp_path))
    assert (r.model, r.image_size, r.eval_split) == ("resnet32", 32, "test")
    assert "(10 classes, median short image side 32 px)" in r.source


def test_an_unknown_dataset_names_what_is_there_and_how_to_make_it(data, capsys):
    assert train_main(["--dataset", "digits-foldr", "--data-root", str(data)]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'digits-foldr'; did you mean digits-folder" in err
    assert f"converted under {data}: digits-folder, digits-lists" in err
    assert f"tools/convert imagefolder /path/to/digits-foldr --out {data}" in err
    with pytest.raises(RecipeError, match="that is a converter"):
        preset("imagelist", "bs", str(data))


# Every method once, across the three layouts (each a few steps: the point is the path, not accuracy).
CASES = [
    ("folder", "ce", ()),
    ("folder", "cpmix", ("--cpmix-start-epoch", "1", "--finetune-epochs", "1")),
    ("folder", "lfm", ("--lfm-epochs", "1,1")),
    ("split", "bs", ()),
    ("split", "ldam-drw", ("--drw-epoch", "1")),
    ("split", "concutmix", ("--ccm-l-d-warm", "0", "--batch-size", "8")),
    ("lists", "mixup", ()),
    ("lists", "cutmix", ()),
    ("lists", "remix", ()),
]


@pytest.mark.slow
@pytest.mark.parametrize("layout, method, over", CASES, ids=[f"{lay}-{m}" for lay, m, _ in CASES])
def test_each_layout_trains_with_every_method(data, tmp_path, layout, method, over):
    name = DATASETS[layout][0]
    said = []
    recipe = tiny_recipe(data, name, method, *over)
    summary = train(recipe, tmp_path, log=lambda *a, **k: said.append(" ".join(map(str, a))))
    run = tmp_path / recipe.run_name
    lines = metrics(run)
    assert lines and all(math.isfinite(x["train_loss"]) for x in lines)
    ev = eval_json(run)
    assert ev["num_classes"] == 10 and ev["split"] == "val" and summary["all"] is not None
    assert ev["class_names"][:3] == ["eight", "five", "four"]  # sorted folder names
    if layout == "lists":  # --group-thresholds 1,1000: one group, and the run says so
        assert set(ev["class_groups"]) == {"medium"}
        assert any("all 10 classes of digits-lists are medium" in s for s in said)
    else:
        assert not any("classes of" in s and "are " in s for s in said)
    if method in ("lfm", "concutmix"):  # heads of their own: the export still loads without fastlt
        from fastlt.export import export_run

        out = export_run(run, "last")
        assert (out / "model.pt2").exists()
