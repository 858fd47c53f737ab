"""Augmentation in the presets: each method trains on what its released code trains on, every preset's
source says where its augmentation (and the corrected numbers) come from, and the others keep crop-flip."""

from __future__ import annotations

import pytest

from fastlt.recipes import DATASETS, METHODS, RecipeError, preset, resolve

LARGE = ("imagenet-lt", "inat2018", "places-lt")


def test_concutmix_presets_carry_the_released_augmentations():
    for d in ("cifar10-lt", "cifar100-lt"):
        r = preset(d, "concutmix")
        assert r.augment == ("main=autoaugment-cifar", "fg=autoaugment-cifar", "view1=simclr-cifar",
                             "view2=simclr-cifar")
        assert "augmentations" in r.source and "prototype per class" in r.source
    for d in LARGE:
        r = preset(d, "concutmix")
        assert r.augment == ("main=randaugment", "fg=randaugment", "view1=simclr", "view2=simclr")
        assert "augmentations" in r.source


def test_lfm_presets_use_clip_center_and_say_so():
    for d in ("cifar10-lt", "cifar100-lt", *LARGE):
        r = preset(d, "lfm")
        assert r.augment == ("clip-center",) and "CLIP resize and centre crop" in r.source
    places = preset("places-lt", "lfm").source
    assert "ViT-B/16 from the paper's Table 4" in places and "resolves to ViT-B/32" in places


def test_other_methods_and_digits_lt_keep_crop_flip():
    for d in DATASETS:
        for m in METHODS:
            if m in ("concutmix", "lfm") and d != "digits-lt":
                continue
            assert preset(d, m).augment == ("crop-flip",), (d, m)


def test_cpmix_learning_rates_are_the_papers_and_the_source_says_what_is_fastlts():
    assert {d: preset(d, "cpmix").lr for d in DATASETS if d != "digits-lt"} == {
        "cifar10-lt": 0.1, "cifar100-lt": 0.1, "imagenet-lt": 0.1, "places-lt": 0.01, "inat2018": 0.1}
    src = preset("inat2018", "cpmix").source
    assert "lr 0.1 is the paper's" in src
    src = preset("cifar100-lt", "cpmix").source
    assert "CP-Mix paper: SGD lr 0.1" in src and "fastlt defaults" in src
    assert "longer than previous works" in src and "standard 200 / 90" in src


def test_augment_is_a_recipe_key_the_command_line_sets_and_checks():
    r = resolve("digits-lt", "concutmix", ["--augment", "view1=simclr,view2=simclr,randaugment"])
    assert r.augment == ("view1=simclr", "view2=simclr", "randaugment")
    with pytest.raises(RecipeError, match="unknown augment policy 'simclrr'"):
        resolve("digits-lt", "concutmix", ["--augment", "view1=simclrr"])
