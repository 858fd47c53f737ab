"""The ``fastlt convert`` / ``tools/convert`` command line: every subcommand documents itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fastlt.cli import main as cli_main
from fastlt.convert import CONVERTERS, HELPERS, main

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
    script = Path(__file__).resolve().parents[1] / "tools" / "convert"
    r = subprocess.run([sys.executable, str(script), "digits-lt", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--imbalance-factor" in r.stdout
