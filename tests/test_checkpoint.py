"""Checkpoints: atomic replacement, weights_only loading, RNG round trip, refusal of torn/foreign files and of
a different recipe."""

import random

import numpy as np
import pytest
import torch

from fastlt.checkpoint import (
    CHECKPOINT_VERSION,
    CheckpointError,
    check_recipe,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from fastlt.recipes import apply_overrides, preset
from fastlt.sampling import ConfusionCounts


def real_state(epoch=0):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(8, 4)).sum().backward()
    opt.step()
    counts = ConfusionCounts(3)
    counts.update(np.array([0, 1, 2, 2]), np.array([1, 0, 0, 1]))
    return {
        "version": CHECKPOINT_VERSION,
        "epoch": epoch,
        "global_step": 10,
        "recipe": preset("digits-lt", "bs").to_json(),
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "optimizer_group": "main",
        "sampler": {"counts": counts.state_dict()},
        "method": {},
        "rng": rng_state(),
        "best": 1.5,
        "metrics": {"all": 1.5, "few": None},
    }


def test_round_trip_with_weights_only(tmp_path):
    state = real_state()
    save_checkpoint(tmp_path / "last.pt", state)
    back = load_checkpoint(tmp_path / "last.pt")
    for k, v in state["model"].items():
        assert torch.equal(back["model"][k], v)
    assert back["optimizer"]["state"][0]["momentum_buffer"].shape == (3, 4)
    c = ConfusionCounts(3)
    c.load_state_dict(back["sampler"]["counts"])
    assert c.to_dense()[2, 0] == 1 and c.total == 4
    assert back["metrics"] == {"all": 1.5, "few": None}


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    save_checkpoint(tmp_path / "r.pt", {"version": CHECKPOINT_VERSION, "rng": rng_state()})
    want = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2] == want[2]


def test_failed_write_keeps_the_old_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, real_state(epoch=4))
    before = path.read_bytes()
    with pytest.raises((TypeError, AttributeError, RuntimeError)):  # pickling a lambda fails
        save_checkpoint(path, {"version": CHECKPOINT_VERSION, "bad": lambda: 0})  # not picklable
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary left behind
    assert load_checkpoint(path)["epoch"] == 4


class Foreign:
    pass


def test_torn_foreign_and_missing_files_are_refused(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, real_state())
    data = path.read_bytes()
    (tmp_path / "torn.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="torn.pt: not a readable fastlt checkpoint"):
        load_checkpoint(tmp_path / "torn.pt")
    torch.save({"version": CHECKPOINT_VERSION, "x": Foreign()}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="foreign.pt: not a readable fastlt checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")  # weights_only refuses arbitrary classes
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt: not a fastlt checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"version": 1, "model": {}}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=f"old.pt: checkpoint format version 1, this fastlt reads "
                                              f"version {CHECKPOINT_VERSION}"):
        load_checkpoint(tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="nothere.pt: no checkpoint"):
        load_checkpoint(tmp_path / "nothere.pt")


def test_check_recipe_names_the_differing_keys():
    state = real_state()
    r = preset("digits-lt", "bs")
    check_recipe(state, r, "x.pt")  # same recipe: fine
    check_recipe(
        state, apply_overrides(r, ["--workers", "9", "--name", "other"]), "x.pt"
    )  # runtime keys only
    with pytest.raises(CheckpointError) as e:
        check_recipe(state, apply_overrides(r, ["--epochs", "50", "--milestones", "10,20"]), "runs/x/last.pt")
    msg = str(e.value)
    assert "runs/x/last.pt: checkpoint was trained with a different recipe" in msg
    assert "epochs: checkpoint 30, now 50" in msg and "milestones: checkpoint (), now (10, 20)" in msg
