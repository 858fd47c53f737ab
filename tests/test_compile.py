"""``--compile``: the model is compiled in place (torch.compile with its default inductor backend, real C++
code generation on this CPU), trains the same numbers as the eager model within float reassociation, and
keeps the checkpoint format, so compiled and eager runs resume each other."""

from __future__ import annotations

import pytest
import torch

from fastlt.checkpoint import load_checkpoint
from fastlt.recipes import RecipeError, split_overrides
from fastlt.train import train
from helpers import digits_recipe, metrics


def test_a_bool_key_given_alone_means_true():
    assert split_overrides(["--compile", "--lr", "0.1"]) == [("compile", "true"), ("lr", "0.1")]
    assert split_overrides(["--lr", "0.1", "--compile"]) == [("lr", "0.1"), ("compile", "true")]
    assert split_overrides(["--compile", "false"]) == [("compile", "false")]
    with pytest.raises(RecipeError, match="--lr needs a value"):
        split_overrides(["--lr"])
    with pytest.raises(RecipeError, match="--lr needs a value"):
        split_overrides(["--lr", "--compile"])
    # a misspelt flag alone is an unknown key with suggestions, not a key missing its value
    with pytest.raises(RecipeError, match="unknown recipe key --compil; did you mean --compile"):
        split_overrides(["--compil", "--lr", "0.1"])


@pytest.mark.slow
def test_compiled_run_matches_eager_and_keeps_the_checkpoint(digits_data, tmp_path):
    torch.set_num_threads(1)
    common = ("--epochs", "1", "--steps-per-epoch", "3", "--eval-every", "0", "--workers", "1")
    runs = tmp_path / "runs"
    train(digits_recipe(digits_data, "ce", *common, "--name", "eager"), runs, log=lambda *a: None)
    logs = []
    train(digits_recipe(digits_data, "ce", *common, "--name", "compiled", "--compile"), runs, log=logs.append)
    assert any("(compiled)" in str(line) for line in logs)
    eager, compiled = metrics(runs / "eager")[0], metrics(runs / "compiled")[0]
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-4)
    a = load_checkpoint(runs / "eager" / "last.pt")["model"]
    b = load_checkpoint(runs / "compiled" / "last.pt")["model"]
    assert list(a) == list(b)  # same names: no _orig_mod. prefix
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4)
