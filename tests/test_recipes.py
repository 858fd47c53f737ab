"""Recipes: presets carry sources, overrides are type-checked, bad input names the key and the fix."""

import json
from dataclasses import replace

import pytest

from fastlt.datasets import registry
from fastlt.recipes import (
    DATASETS,
    METHODS,
    Recipe,
    RecipeError,
    apply_overrides,
    preset,
    recipe_diff,
    resolve,
    split_overrides,
)


def test_train_offers_the_registry_datasets_with_a_preset():
    assert DATASETS == ("digits-lt", "cifar10-lt", "cifar100-lt", "imagenet-lt", "places-lt", "inat2018")
    assert "imagefolder" in registry.DATASETS  # a converter with no preset: not a training dataset
    with pytest.raises(RecipeError, match="unknown dataset 'imagefolder'"):
        preset("imagefolder", "bs")
    with pytest.raises(RecipeError, match="unknown dataset 'imagefolder'"):
        Recipe(dataset="imagefolder")


def test_presets_start_from_the_registry_schedule():
    for d in DATASETS:
        base = registry.DATASETS[d].preset_base
        r = preset(d, "ce")  # ce adds no parameters: the preset is the dataset's base
        assert {k: getattr(r, k) for k in base} == dict(base), d
    assert preset("cifar100-lt", "ce") == replace(preset("cifar10-lt", "ce"), dataset="cifar100-lt")


def test_every_preset_resolves_with_a_source():
    for d in DATASETS:
        for m in METHODS:
            r = preset(d, m)
            assert r.dataset == d and r.method == m
            assert r.source.strip(), (d, m)


def test_papers_settings_in_presets():
    r = preset("cifar100-lt", "ldam-drw")
    assert (r.model, r.epochs, r.batch_size, r.lr, r.weight_decay) == ("resnet32", 200, 128, 0.1, 2e-4)
    assert r.milestones == (160, 180) and r.warmup_epochs == 5 and r.drw_epoch == 160
    assert r.classifier == "cosine" and r.ldam_max_m == 0.5 and r.ldam_s == 30.0
    assert "LDAM" in r.source
    assert preset("places-lt", "cpmix").lr == 0.01 and preset("places-lt", "cpmix").finetune_epochs == 0
    assert preset("inat2018", "cpmix").classifier == "cosine"
    assert "fastlt default" in preset("cifar100-lt", "cpmix").source
    c = preset("cifar10-lt", "concutmix")
    assert (c.ccm_tau_la, c.ccm_topk) == (0.85, 3)
    assert preset("places-lt", "lfm").lfm_alpha == (1.25, 1.5)


def test_overrides_are_typed():
    r = apply_overrides(
        preset("digits-lt", "cpmix"),
        [
            "--lr",
            "0.2",
            "--epochs=7",
            "--milestones",
            "3,5",
            "--amp",
            "false",
            "--name",
            "x",
            "--mean",
            "0.1,0.2,0.3",
            "--cpmix-kappa",
            "0.25",
        ],
    )
    assert (r.lr, r.epochs, r.milestones, r.amp, r.name) == (0.2, 7, (3, 5), False, "x")
    assert r.mean == (0.1, 0.2, 0.3) and r.cpmix_kappa == 0.25
    assert isinstance(r.lr, float) and isinstance(r.epochs, int)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lrr", "0.1"], "unknown recipe key --lrr; did you mean --lr"),
        (["--epoch", "3"], "did you mean --epochs"),
        (["--epochs", "3.5"], "--epochs: expected an integer, got '3.5'"),
        (["--lr", "fast"], "--lr: expected a number, got 'fast'"),
        (["--amp", "maybe"], "--amp: expected a bool (true/false), got 'maybe'"),
        (["--milestones", "160,x"], "--milestones: expected a comma-separated list of int"),
        (["--pipeline", "ffvc"], "unknown pipeline 'ffvc'; did you mean ffcv"),
        (["--cpmix-kappa", "2"], "'cpmix_kappa' must lie in [0, 1]"),
        (["--lr"], "--lr needs a value"),
    ],
)
def test_bad_overrides_say_what_is_wrong(argv, message):
    with pytest.raises(RecipeError) as e:
        apply_overrides(preset("digits-lt", "bs"), argv)
    assert message in str(e.value)


def test_unknown_dataset_and_method_suggest_names():
    with pytest.raises(RecipeError, match="unknown dataset 'cifar100'; did you mean cifar100-lt"):
        preset("cifar100", "bs")
    with pytest.raises(RecipeError, match="unknown method 'cp-mix'; did you mean cpmix"):
        preset("digits-lt", "cp-mix")


def test_recipe_is_frozen_and_round_trips(tmp_path):
    r = resolve("cifar10-lt", "remix", ["--seed", "3"])
    with pytest.raises(AttributeError):
        r.lr = 1.0  # type: ignore[misc]
    r.save(tmp_path / "recipe.json")
    back = Recipe.load(tmp_path / "recipe.json")
    assert back == r
    d = json.loads((tmp_path / "recipe.json").read_text())
    d["lr"] = "0.1"
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(RecipeError, match="key 'lr' must be float"):
        Recipe.load(tmp_path / "bad.json")
    d = r.to_json() | {"learning_rate": 0.1}
    (tmp_path / "bad2.json").write_text(json.dumps(d))
    with pytest.raises(RecipeError, match="unknown recipe keys \\['learning_rate'\\]"):
        Recipe.load(tmp_path / "bad2.json")
    (tmp_path / "bad3.json").write_text('{"lr": 0.1,\n "epochs": }')
    with pytest.raises(RecipeError, match="bad3.json:2: malformed JSON"):
        Recipe.load(tmp_path / "bad3.json")


def test_diff_ignores_runtime_keys():
    a = preset("digits-lt", "bs")
    b = apply_overrides(a, ["--workers", "7", "--name", "other", "--lr", "0.3"])
    assert recipe_diff(a, b) == {"lr": (a.lr, 0.3)}


def test_split_overrides():
    assert split_overrides(["--a-b", "1", "--c=2"]) == [("a_b", "1"), ("c", "2")]
    with pytest.raises(RecipeError, match="expected --key value, got 'x'"):
        split_overrides(["x"])
