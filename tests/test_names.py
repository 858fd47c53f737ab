"""Nearest-name hints: one wording for every unknown command, benchmark, pipeline, dataset, method and key."""

from fastlt.bench import BENCHES
from fastlt.bench import main as bench_main
from fastlt.cli import COMMANDS
from fastlt.cli import main as cli_main
from fastlt.names import did_you_mean, unknown_name
from fastlt.recipes import DATASETS, METHODS


def test_one_close_name_is_suggested():
    assert did_you_mean("mixupp", METHODS) == "; did you mean mixup?"
    assert did_you_mean("trian", COMMANDS) == "; did you mean train?"


def test_nothing_close_gives_no_hint():
    assert did_you_mean("resnet", METHODS) == ""
    assert did_you_mean("", DATASETS) == ""


def test_several_names_closest_first_with_commas_and_or():
    assert did_you_mean("cifar100", DATASETS) == "; did you mean cifar100-lt or cifar10-lt?"
    keys = ["epochs", "drw_epoch", "lfm_epochs", "lr"]
    assert did_you_mean("epoch", keys, cutoff=0.5) == "; did you mean epochs, drw_epoch or lfm_epochs?"


def test_n_and_cutoff_bound_the_suggestions():
    assert did_you_mean("cifar100", DATASETS, n=1) == "; did you mean cifar100-lt?"
    keys = ["epochs", "drw_epoch", "lfm_epochs"]
    # similarity to "epoch": epochs 0.91, drw_epoch 0.71, lfm_epochs 0.67
    assert did_you_mean("epoch", keys, cutoff=0.7) == "; did you mean epochs or drw_epoch?"
    assert did_you_mean("epoch", keys, cutoff=0.95) == ""


def test_fmt_writes_each_suggestion():
    flag = did_you_mean("lrr", ["lr", "lfm_lrs"], fmt=lambda k: "--" + k.replace("_", "-"))
    assert flag == "; did you mean --lr?"


def test_non_string_names_and_choices_are_compared_as_text():
    assert did_you_mean(128, [64, 127, 256]) == "; did you mean 127?"


def test_unknown_name_is_the_whole_message():
    assert unknown_name("method", "cp-mix", METHODS, n=1) == (
        "unknown method 'cp-mix'; did you mean cpmix? (choose from " + ", ".join(METHODS) + ")"
    )
    assert unknown_name("schedule", "x", ("cosine", "constant")) == (
        "unknown schedule 'x' (choose from cosine, constant)"
    )


def test_cli_and_bench_suggest_the_nearest_name(capsys):
    assert cli_main(["trian"]) == 2
    assert "fastlt: unknown command 'trian'; did you mean train?" in capsys.readouterr().err
    assert bench_main(["loder"]) == 2
    err = capsys.readouterr().err
    assert f"unknown benchmark 'loder'; did you mean loader?; choose from {', '.join(BENCHES)}" in err
