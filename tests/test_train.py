"""The trainer end to end on digits-lt (real shards, resident pipeline, numba sampler, fused kernels):
stage switching, CP-Mix batches from the confusion sampler, NaN handling, missing shards, bad resumes,
evaluation."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from fastlt.checkpoint import load_checkpoint
from fastlt.methods.cpmix import CPMix
from fastlt.recipes import resolve
from fastlt.train import TrainingError, main, train
from helpers import digits_recipe, eval_json, metrics, quiet


def record_cp_pairs(monkeypatch) -> list:
    """Wrap the real CP-Mix loss so it also keeps the labels of every CP-mix pair it trains on."""
    seen, real = [], CPMix.loss

    def loss(self, model, batch, ctx):
        if "cp_a" in batch.plan.names:
            a, b = batch.labels[batch.segment("cp_a")], batch.labels[batch.segment("cp_b")]
            seen.append((ctx.epoch, a.numpy().copy(), b.numpy().copy()))
        return real(self, model, batch, ctx)

    monkeypatch.setattr(CPMix, "loss", loss)
    return seen


def test_cpmix_stages_switch_and_pairs_come_from_confusions(digits_data, tmp_path, monkeypatch):
    # batch 32: 17 full steps an epoch (544 images) whether or not the last partial batch is kept
    over = ["--epochs", "3", "--cpmix-start-epoch", "2", "--finetune-epochs", "1", "--batch-size", "32"]
    r = digits_recipe(digits_data, "cpmix", *over, "--name", "cp")
    seen = record_cp_pairs(monkeypatch)
    summary = train(r, tmp_path, log=quiet)
    run = tmp_path / "cp"
    recs = metrics(run)
    assert [x["stage"] for x in recs] == ["erm", "erm", "cpmix", "finetune"]
    assert [x["epoch"] for x in recs] == [0, 1, 2, 3]
    # pairs are collected from the first step on and never reset
    totals = [x["confusion_pairs"] for x in recs]
    assert totals[0] > 0 and totals == sorted(totals)
    # the CP-mix stage ran in epoch 2 only, and its pairs follow K: j ∝ K[i, j] never picks K[i, j] = 0
    assert {e for e, _, _ in seen} == {2}
    ya = np.concatenate([a for _, a, _ in seen])
    yb = np.concatenate([b for _, _, b in seen])
    ck = load_checkpoint(run / "last.pt")
    from fastlt.sampling import ConfusionCounts

    K = ConfusionCounts(10)
    K.load_state_dict(ck["method"]["counts"])
    dense = K.to_dense()
    assert (dense.sum(1) > 0).all(), "every class has recorded confusions after two ERM epochs"
    assert (ya != yb).all() and (dense[ya, yb] > 0).all()
    # anchors are uniform over classes, not ∝ K's row totals or the class sizes: the two few classes
    # (13 and 17 of 544 train images, 5.5% together) get about 2/10 of the anchors
    few = np.isin(ya, [8, 9]).mean()
    assert 0.1 < few < 0.3
    # the run ends with the fine-tune's optimiser and writes the evaluation files
    assert eval_json(run)["all"] == summary["all"]
    # seed 0: all 57.5 (many 78.75, few 41.25) after 2 ERM epochs, 1 CP-Mix and 1 fine-tune epoch; chance is
    # 10, and predicting the two many classes alone gives 20
    assert summary["all"] > 35 and summary["few"] > 20
    assert (run / "confusion.png").exists() and (run / "per_class_accuracy.png").exists()
    assert ck["optimizer_group"] == "finetune"


def test_finetune_freezes_backbone(digits_data, tmp_path):
    """1 cpmix epoch + 1 fine-tune epoch vs the same run without the fine-tune: identical backbone."""
    over = ["--epochs", "1", "--cpmix-start-epoch", "1", "--eval-every", "0"]
    r = digits_recipe(digits_data, "cpmix", *over, "--finetune-epochs", "1", "--name", "ft")
    train(r, tmp_path, log=quiet)
    train(replace(r, finetune_epochs=0, name="ft1"), tmp_path, log=quiet)
    a = load_checkpoint(tmp_path / "ft" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "ft1" / "last.pt")["model"]
    backbone = [k for k in a if k.startswith("backbone.")]
    assert backbone and all(torch.equal(a[k], b[k]) for k in backbone)  # weights and BN statistics
    assert not torch.equal(a["classifier.weight"], b["classifier.weight"])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(digits_data, tmp_path):
    # epoch 2 multiplies the lr by 1e12: weight decay alone then scales weights by ~1e7 per step → inf → NaN
    r = digits_recipe(
        digits_data,
        "bs",
        "--epochs",
        "3",
        "--schedule",
        "multistep",
        "--milestones",
        "1",
        "--lr-decay",
        "1e12",
        "--warmup-epochs",
        "0",
        "--name",
        "nan",
    )
    with pytest.raises(TrainingError) as e:
        train(r, tmp_path, log=quiet)
    msg = str(e.value)
    assert "loss is nan" in msg.lower() or "loss is inf" in msg.lower()
    assert "epoch 2" in msg and str(tmp_path / "nan" / "last.pt") in msg
    ck = load_checkpoint(tmp_path / "nan" / "last.pt")
    assert ck["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert len(metrics(tmp_path / "nan")) == 1


def test_missing_shard_prints_the_convert_command(tmp_path, capsys):
    rc = main(
        [
            "--dataset",
            "digits-lt",
            "--method",
            "bs",
            "--data-root",
            str(tmp_path / "nowhere"),
            "--runs",
            str(tmp_path / "runs"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert f"tools/convert digits-lt --out {tmp_path / 'nowhere'}" in err
    assert "train.beton not found" in err
    rc = main(["--dataset", "cifar100-lt", "--method", "bs", "--data-root", str(tmp_path / "d")])
    assert (
        "tools/convert cifar100-lt /path/to/cifar-100-python --imbalance-factor 100"
        in capsys.readouterr().err
    )


def test_cli_bad_input(tmp_path, capsys):
    assert main(["--dataset", "digitz-lt"]) == 2
    assert "unknown dataset 'digitz-lt'; did you mean digits-lt" in capsys.readouterr().err
    assert main(["--method", "balanced-softmax"]) == 2
    assert "unknown method 'balanced-softmax'" in capsys.readouterr().err
    assert main(["--epochs", "ten"]) == 2
    assert "--epochs: expected an integer, got 'ten'" in capsys.readouterr().err
    assert main(["--resume", str(tmp_path)]) == 2
    assert "no recipe.json there" in capsys.readouterr().err


def test_resume_refuses_a_different_recipe_and_eval_reads_the_run(digits_data, tmp_path, capsys):
    r = digits_recipe(digits_data, "ce", "--epochs", "1", "--name", "run")
    train(r, tmp_path, log=quiet)
    run = tmp_path / "run"
    assert main(["--resume", str(run), "--lr", "0.3", "--weight-decay", "0"]) == 2
    err = capsys.readouterr().err
    assert "different recipe; refusing to resume" in err
    assert "lr: checkpoint 0.05, now 0.3" in err and "weight_decay: checkpoint 0.0005, now 0.0" in err
    # a recipe.json edited by hand is caught the same way
    d = json.loads((run / "recipe.json").read_text())
    d["seed"] = 5
    (run / "recipe.json").write_text(json.dumps(d))
    assert main(["--resume", str(run)]) == 2
    assert "seed: checkpoint 0, now 5" in capsys.readouterr().err
    # starting again into the same directory without --resume is refused
    with pytest.raises(TrainingError, match="already holds a run; pass --resume"):
        train(r, tmp_path, log=quiet)

    from fastlt.evaluate import main as eval_main

    want = eval_json(run)
    assert eval_main(["--run", str(run), "--checkpoint", "last", "--out", str(tmp_path / "ev")]) == 0
    got = eval_json(tmp_path / "ev")
    for k in ("many", "medium", "few", "all"):
        assert got[k] == pytest.approx(want[k])
    out = capsys.readouterr().out.splitlines()
    assert ["many", "medium", "few", "all"] in [ln.split() for ln in out]  # the summary table
    assert eval_main(["--run", str(run), "--shard", str(digits_data / "digits-lt" / "train.beton")]) == 0
    train_eval = eval_json(run / "eval-digits-lt-train")
    assert train_eval["split"] == "train" and train_eval["num_images"] == 544


# seed 0 on this config: cutmix all 37.2 (many 100, medium 28.8), ldam-drw all 64.2. Chance is 10, and
# predicting the two many classes alone gives 20: the floors sit clearly above both, below the figures.
@pytest.mark.parametrize("method, floor", [("cutmix", 25), ("ldam-drw", 40)])
def test_other_methods_train_through_the_same_loop(digits_data, tmp_path, method, floor):
    over = ["--epochs", "5", "--drw-epoch", "4", "--batch-size", "32", "--steps-per-epoch", "12"]
    r = digits_recipe(digits_data, method, *over, "--name", "m")
    summary = train(r, tmp_path, log=quiet)
    recs = metrics(tmp_path / "m")
    assert [x["step"] for x in recs] == [12, 24, 36, 48, 60]
    assert all(np.isfinite(x["train_loss"]) for x in recs)
    # neither consumes feedback: the loop gathers no confusion pairs for them
    assert all("confusion_pairs" not in x for x in recs)
    if method == "cutmix":  # mixed-only steps: no un-mixed forward, so no train accuracy
        assert recs[-1]["train_acc"] is None
    else:
        assert recs[-1]["train_acc"] is not None
    assert summary["all"] > floor


def test_lr_schedule_and_stage_groups():
    from fastlt.methods.base import Stage, group_span
    from fastlt.schedule import lr_at

    r = resolve("cifar100-lt", "ldam-drw", [])  # lr 0.1, warmup 5, ×0.01 at 160 and 180 (LDAM-DRW)
    s = Stage("train", 200)
    assert lr_at(r, s, 200, 2.5) == pytest.approx(0.1 * (2.5 + 1e-3) / 5)
    assert lr_at(r, s, 200, 5.0) == pytest.approx(0.1)
    assert lr_at(r, s, 200, 159.9) == pytest.approx(0.1)
    assert lr_at(r, s, 200, 160.0) == pytest.approx(1e-3)
    assert lr_at(r, s, 200, 185.0) == pytest.approx(1e-5)
    c = resolve("digits-lt", "cpmix", ["--warmup-epochs", "0"])  # cosine from 0.05 over the group
    assert lr_at(c, s, 30, 0.0) == pytest.approx(0.05)
    assert lr_at(c, s, 30, 15.0) == pytest.approx(0.025)
    assert lr_at(c, s, 30, 30.0) == pytest.approx(0.0, abs=1e-12)
    ft = Stage("finetune", 3, lr=0.01, schedule="cosine", warmup_epochs=0, group="finetune")
    assert lr_at(c, ft, 3, 0.0) == pytest.approx(0.01)  # the stage's own lr and schedule
    stages = [Stage("erm", 20), Stage("cpmix", 10), ft]
    assert group_span(stages, 1) == (0, 30) and group_span(stages, 2) == (30, 3)


def test_a_key_the_method_does_not_read_is_reported(capsys):
    """`--classifier cosine` with lfm (whose classifier is always the text-aligned head) would do nothing."""
    assert main(["--method", "lfm", "--classifier", "cosine", "--lfm-tau", "0.1", "--print-recipe"]) == 0
    err = capsys.readouterr().err
    assert "warning: --classifier has no effect with method 'lfm'" in err and "--lfm-tau" not in err
    assert main(["--method", "cpmix", "--mix-alpha", "0.4", "--cpmix-eta", "1", "--print-recipe"]) == 0
    err = capsys.readouterr().err
    assert "--mix-alpha has no effect with method 'cpmix'" in err and "cpmix-eta" not in err
    assert main(["--method", "mixup", "--mix-alpha", "0.4", "--lr", "0.1", "--print-recipe"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_drop_last_false_keeps_the_partial_batch(digits_data, tmp_path):
    """digits-lt: 544 train images at batch 64 → 9 steps (the last of 32 images) by default, 8 with
    --drop-last true."""
    common = ["--epochs", "1", "--eval-every", "0"]
    train(digits_recipe(digits_data, "ce", *common, "--name", "keep"), tmp_path, log=quiet)
    dropping = digits_recipe(digits_data, "ce", *common, "--drop-last", "true", "--name", "drop")
    train(dropping, tmp_path, log=quiet)
    assert metrics(tmp_path / "keep")[0]["step"] == 9 and metrics(tmp_path / "drop")[0]["step"] == 8
