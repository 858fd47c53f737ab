"""timm's fine-tuning conventions through the real trainer on digits-lt: a timm backbone from a local weight
file, model EMA (evaluated and checkpointed), gradient clipping and layer-wise learning-rate decay."""

import json

import torch

from fastlt.checkpoint import load_checkpoint
from fastlt.evaluate import main as eval_main
from fastlt.methods.base import get_method
from fastlt.shards import open_shard
from fastlt.train import train
from helpers import digits_recipe, eval_json, quiet


def test_timm_backbone_with_local_weights_ema_clip_and_layer_decay(digits_data, tmp_path):
    import timm
    from safetensors.torch import save_file

    ref = timm.create_model("resnet18", pretrained=False)
    save_file(ref.state_dict(), str(tmp_path / "resnet18.safetensors"))
    weights = str(tmp_path / "resnet18.safetensors")
    over = ["--model", "timm:resnet18", "--pretrained", weights, "--epochs", "2", "--steps-per-epoch", "3",
            "--model-ema", "true", "--model-ema-decay", "0.5", "--clip-grad", "1.0", "--layer-decay", "0.7",
            "--name", "timm"]
    summary = train(digits_recipe(digits_data, "ce", *over), tmp_path, log=quiet)
    ck = load_checkpoint(tmp_path / "timm" / "last.pt")
    # the run started from the file's weights: the stem conv moved only a little in 6 clipped steps
    stem = ck["model"]["backbone.net.conv1.weight"]
    assert (stem - ref.conv1.weight).abs().max() < 0.1 * ref.conv1.weight.abs().max()
    # EMA: a separate average, checkpointed, and what the run evaluated
    assert set(ck["model_ema"]) == set(ck["model"])
    assert any(not torch.equal(ck["model_ema"][k], ck["model"][k]) for k in ck["model"] if "weight" in k)
    # layer-wise decay: one group per depth, the head at the full rate, the stem at 0.7^(L−1) of it
    scales = sorted({g["lr_scale"] for g in ck["optimizer"]["param_groups"]})
    assert len(scales) > 3 and scales[-1] == 1.0 and abs(scales[0] - 0.7 ** (len(scales) - 1)) < 1e-9
    # fastlt eval rebuilds the model from the run and scores the same (EMA) weights the run reported
    run, ev = tmp_path / "timm", tmp_path / "ev"
    assert eval_main(["--run", str(run), "--checkpoint", "last", "--out", str(ev), "--no-plots"]) == 0
    assert eval_json(ev)["per_class_accuracy"] == eval_json(run)["per_class_accuracy"]
    assert summary["all"] == json.loads((tmp_path / "timm" / "eval.json").read_text())["all"]


def test_clip_grad_bounds_the_update(digits_data, tmp_path):
    """One SGD step without momentum history or weight decay moves each weight by lr·g; with the gradient's
    global norm clipped to 1e-6, no weight moves more than lr·1e-6."""
    over = ["--epochs", "1", "--steps-per-epoch", "1", "--eval-every", "0", "--weight-decay", "0",
            "--warmup-epochs", "0", "--schedule", "constant", "--lr", "0.5", "--clip-grad", "1e-6",
            "--name", "clip"]
    recipe = digits_recipe(digits_data, "ce", *over)
    train(recipe, tmp_path, log=quiet)
    index = open_shard(digits_data / "digits-lt" / "train.beton").index
    torch.manual_seed(recipe.seed)  # the trainer builds its model right after seeding, as here
    start = get_method("ce")(recipe, index).build_model().state_dict()
    after = load_checkpoint(tmp_path / "clip" / "last.pt")["model"]
    moved = max((after[k] - start[k]).abs().max().item() for k in start if start[k].is_floating_point()
                and "running" not in k)
    assert 0 < moved <= 0.5 * 1e-6 * 1.001


def test_a_missing_weight_file_is_a_named_error(digits_data, tmp_path, capsys):
    from fastlt.train import main

    argv = ["--dataset", "digits-lt", "--data-root", str(digits_data), "--runs", str(tmp_path), "--model",
            "timm:resnet18", "--pretrained", str(tmp_path / "nothere.safetensors"), "--progress", "false"]
    assert main(argv) == 2
    assert "nothere.safetensors: no such file" in capsys.readouterr().err
