"""Augmentation in training: the recipe's per-segment policies reach the trainer's batches, and a run killed
mid-epoch with augmentation on resumes to exactly the metrics of an uninterrupted run.

Both use ConCutMix on digits-lt with its released CIFAR policies (``--augment``): AutoAugment on the
classification and foreground images, SimCLR-with-blur on the two contrastive views.
"""

from __future__ import annotations

import signal

import numpy as np
import torch

from fastlt.checkpoint import load_checkpoint
from helpers import DETERMINISTIC, KILL_AT_STEP, digits_recipe, eval_json, fastlt_train, metrics, quiet

CIFAR_POLICIES = "main=autoaugment-cifar,fg=autoaugment-cifar,view1=simclr-cifar,view2=simclr-cifar"


def test_a_concutmix_digits_run_trains_on_its_views_policies(digits_data, tmp_path):
    """The trainer's own pipeline (``fastlt.train.setup``) augments each segment of the method's own plans
    with that segment's policy: the batch is the crop stage's output run through exactly those policies,
    and the views differ from what crop-flip gives them."""
    from fastlt.pipelines.augment import Augmentation
    from fastlt.train import enter_stage, setup, train

    recipe = digits_recipe(digits_data, "concutmix", "--augment", CIFAR_POLICIES, "--epochs", "1",
                           "--steps-per-epoch", "3", "--batch-size", "16", "--workers", "1")
    run = setup(recipe, tmp_path / "runs", resume=False, log=quiet)
    try:
        pipe = run.train_pipe
        assert pipe.augmentation.policy("view1").name == "simclr-cifar"
        assert pipe.augmentation.policy("main").name == "autoaugment-cifar"
        plan = enter_stage(run, 0, None).producer.make_plan(0)
        seed = pipe.augmentation_seed(plan)
        crops = pipe.crops(plan, seed)
        stage_output = pipe._load(plan, crops)
        batch = pipe.load(plan)
        expected = Augmentation(recipe.augment).apply(stage_output.clone(), plan, seed, crops)
        assert torch.equal(batch.images, expected)
        views = plan.segment("view1")
        assert crops.pad[plan.segment("main")].all() and not crops.pad[views].any()  # pad-crop vs RRC
        changed = (batch.images[views] != stage_output[views]).flatten(1).any(1)
        assert changed.float().mean() > 0.5  # colour jitter (p 0.8) / grayscale / blur touched most views
    finally:
        run.close()
    summary = train(recipe, tmp_path / "runs2", log=quiet)
    assert np.isfinite(metrics(tmp_path / "runs2" / recipe.run_name)[0]["train_loss"])
    assert summary["all"] is not None


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_with_augmentation(digits_data, tmp_path):
    common = ["--dataset", "digits-lt", "--method", "concutmix", "--augment", CIFAR_POLICIES, "--epochs", "2",
              "--steps-per-epoch", "4", "--batch-size", "16", "--ccm-l-d-warm", "0", "--progress", "false",
              "--data-root", str(digits_data), "--runs", str(tmp_path)]
    from fastlt.train import main as train_main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the subprocesses' thread count: the same float reductions
    try:
        assert train_main([*common, "--name", "full"]) == 0
    finally:
        torch.set_num_threads(threads)

    victim = fastlt_train("5", *common, "--name", "cut", launcher=KILL_AT_STEP)  # step 5: mid epoch 2
    out, _ = victim.communicate(timeout=300)
    assert victim.returncode == -signal.SIGKILL, out
    run = tmp_path / "cut"
    assert [m["epoch"] for m in metrics(run)] == [0] and load_checkpoint(run / "last.pt")["epoch"] == 0

    resumed = fastlt_train("--resume", str(run), "--progress", "false")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    got, want = metrics(run), metrics(tmp_path / "full")
    assert len(got) == 2
    for g, w in zip(got, want):
        assert {k: g.get(k) for k in DETERMINISTIC} == {k: w.get(k) for k in DETERMINISTIC}
    assert eval_json(run)["per_class_accuracy"] == eval_json(tmp_path / "full")["per_class_accuracy"]
