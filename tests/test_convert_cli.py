"""The ``fastlt convert`` / ``tools/convert`` command line: every subcommand documents itself."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fastlt.cli import main as cli_main
from fastlt.convert import CONVERTERS, HELPERS, build_parser, main
from fastlt.datasets.registry import DATASETS, convert_command

TOOLS_CONVERT = Path(__file__).resolve().parents[1] / "tools" / "convert"

COMMON = ("--out", "--workers", "--write-mode", "--max-resolution", "--jpeg-quality", "--skip-bad")


@pytest.mark.parametrize("command", sorted(CONVERTERS))
def test_every_converter_has_help_with_the_common_options(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"fastlt convert {command}" in out
    for opt in COMMON:
        assert opt in out, f"{command} --help lacks {opt}"


def test_helper_help_and_top_level_help(capsys):
    for command in HELPERS:
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0 and "--images" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(c in out for c in [*CONVERTERS, *HELPERS])


def test_bad_arguments_are_rejected_by_name(capsys):
    for argv, msg in (
        (["cifar10-lt"], "the following arguments are required: root"),
        (["digits-lt", "--jpeg-quality", "101"], "JPEG quality must lie in 1..100, got 101"),
        (["digits-lt", "--workers", "0"], "expected a positive integer, got 0"),
        (["digits-lt", "--write-mode", "png"], "invalid choice: 'png'"),
        (["places"], "invalid choice: 'places'"),
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err


def test_missing_source_is_a_clear_error(tmp_path, capsys):
    assert main(["inat2018", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 1
    assert f"{tmp_path / 'nowhere'}: dataset root is not a directory" in capsys.readouterr().err
    assert cli_main(["convert", "cifar100-lt", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    assert f"{tmp_path / 'meta'}: file not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_tools_convert_script_runs():
    r = subprocess.run(
        [sys.executable, str(TOOLS_CONVERT), "digits-lt", "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "--imbalance-factor" in r.stdout


def test_tools_convert_help_lists_every_registry_dataset():
    wide = {**os.environ, "COLUMNS": "200"}  # each help line unwrapped, to find it whole
    r = subprocess.run(
        [sys.executable, str(TOOLS_CONVERT), "--help"], capture_output=True, text=True, env=wide
    )
    assert r.returncode == 0
    for name, spec in DATASETS.items():
        assert name in r.stdout and spec.help in r.stdout, name


@pytest.mark.parametrize("name", [n for n, s in DATASETS.items() if s.preset_base is not None])
def test_convert_command_of_every_preset_dataset_is_a_valid_command_for_it(name, tmp_path):
    cmd = convert_command(name, str(tmp_path / "shards"))
    assert cmd.startswith(f"tools/convert {name} ")
    argv = shlex.split(cmd)[1:]
    args = build_parser().parse_args(argv)  # the printed command is one tools/convert accepts
    assert (args.command, args.out) == (name, str(tmp_path / "shards"))


def test_convert_command_refuses_a_dataset_without_one():
    with pytest.raises(ValueError, match="unknown dataset 'imagefolder'"):
        convert_command("imagefolder", "data")
    with pytest.raises(ValueError, match="unknown dataset 'inat'; did you mean inat2018"):
        convert_command("inat", "data")
