"""The product layout (``kernels/`` and ``pipelines/`` beside ``fastlt/``, installed as ``fastlt.kernels`` and
``fastlt.pipelines``) must never mix two checkouts."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import fastlt
import fastlt.kernels
import fastlt.pipelines


def test_kernels_and_pipelines_come_from_the_same_checkout_as_fastlt():
    root = Path(fastlt.__file__).resolve().parent.parent
    assert Path(fastlt.kernels.__file__).resolve().parent == root / "kernels"
    assert Path(fastlt.pipelines.__file__).resolve().parent == root / "pipelines"


def test_a_second_checkout_on_the_path_is_refused_not_mixed(tmp_path):
    """A copy of fastlt/ alone on PYTHONPATH: ``fastlt`` comes from the copy, the installed mapping would
    serve ``fastlt.kernels`` from this checkout. Importing fastlt must fail and name both places."""
    root = Path(fastlt.__file__).resolve().parent.parent
    other = tmp_path / "other" / "fastlt"
    shutil.copytree(root / "fastlt", other, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "other")}
    p = subprocess.run([sys.executable, "-c", "import fastlt"], env=env, capture_output=True, text=True,
                       cwd=tmp_path)
    assert p.returncode != 0
    assert "two fastlt checkouts are mixed" in p.stderr
    assert str(tmp_path / "other" / "fastlt") in p.stderr and str(root / "kernels") in p.stderr
