"""Evaluation from per-image predictions: the tie-exact top-k, evaluate() over a real shard and model, the
taxonomy from an iNat conversion to eval.json, and the progress bar."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fastlt import metrics as M
from fastlt.evaluate import evaluate
from fastlt.methods.base import get_method
from fastlt.runtime import Runtime, build_pipeline
from fastlt.shards import open_shard
from fastlt.topk import _topk_by_key, topk_lowest_index
from helpers import digits_recipe
from synth import write_inat


# ------------------------------------------------------------------------------------------ top-k
@pytest.mark.parametrize("topk", [topk_lowest_index, _topk_by_key], ids=["host-branch", "int64-key"])
@pytest.mark.parametrize("seed", range(4))
def test_topk_is_the_stable_descending_sort_even_with_ties(seed, topk):
    """Both ways (the CPU's host branch, CUDA's keys; the keys run on any device) give the stable sort."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(50):
        B, C = int(torch.randint(1, 9, (1,), generator=g)), int(torch.randint(1, 40, (1,), generator=g))
        k = int(torch.randint(1, C + 1, (1,), generator=g))
        signed_zeros = torch.randint(0, 2, (B, C), generator=g).float() * -0.0  # −0.0 == +0.0: a tie
        for scores in (torch.randint(-2, 3, (B, C), generator=g).float(), torch.randn(B, C, generator=g),
                       torch.randn(B, C, generator=g).bfloat16(), signed_zeros):
            vals, idx = topk(scores, k)
            want_v, want_i = torch.sort(scores, dim=1, descending=True, stable=True)
            assert torch.equal(idx, want_i[:, :k]) and torch.equal(vals, want_v[:, :k])


def test_topk_all_equal_scores_keep_the_lowest_indices():
    vals, idx = topk_lowest_index(torch.zeros(3, 10), 4)
    assert idx.tolist() == [[0, 1, 2, 3]] * 3
    with pytest.raises(ValueError, match="k must lie in"):
        topk_lowest_index(torch.zeros(2, 3), 4)


# ------------------------------------------------------------------------------------------ evaluate
def _model_and_pipeline(data, split: str, method: str = "ce", seed: int = 0, pipeline: str = "resident"):
    recipe = digits_recipe(data, method, "--device", "cpu")
    shard = open_shard(data / "digits-lt" / f"{split}.beton")
    m = get_method(method)(recipe, shard.index)
    torch.manual_seed(seed)
    model = m.build_model()
    runtime = Runtime.create(recipe, shard.index.train_counts, torch.device("cpu"))
    pipe = build_pipeline(pipeline, shard, recipe, torch.device("cpu"), train=False)
    return m, model, runtime, pipe, shard.index


def test_evaluate_keeps_every_image_once_and_does_not_depend_on_the_batch_size(digits_data):
    m, model, runtime, pipe, index = _model_and_pipeline(digits_data, "test")
    try:
        big = evaluate(model, m, pipe, index, runtime, 512)
        small = evaluate(model, m, pipe, index, runtime, 37)
    finally:
        pipe.close()
    p = big.predictions
    np.testing.assert_array_equal(p.rows, np.arange(index.num_rows))
    np.testing.assert_array_equal(p.labels, index.labels)
    assert p.top.shape == (index.num_rows, 5) and all(len(set(r)) == 5 for r in p.top.tolist())
    np.testing.assert_array_equal(small.predictions.top, p.top)
    assert big.summary == small.summary == M.summarize(p, index)


def test_top1_is_the_argmax_of_the_logits(digits_data):
    """The same images through the model directly: evaluate's top-1 is argmax (first maximum), its top-5 the
    five largest logits."""
    m, model, runtime, pipe, index = _model_and_pipeline(digits_data, "test")
    try:
        ev = evaluate(model, m, pipe, index, runtime, 128)
        from fastlt.pipelines.plan import eval_plans

        logits = torch.cat([m.eval_logits(model, runtime.normalize(b.images))
                            for b in pipe.batches(eval_plans(index.num_rows, 128))])
    finally:
        pipe.close()
    np.testing.assert_array_equal(ev.predictions.top1, logits.argmax(1).numpy())
    want = torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :5].numpy()
    np.testing.assert_array_equal(ev.predictions.top, want)


def test_evaluation_shows_a_progress_bar(digits_data, capsys):
    m, model, runtime, pipe, index = _model_and_pipeline(digits_data, "test")
    try:
        evaluate(model, m, pipe, index, runtime, 100, progress=True)
        assert "eval test (400 images)" in capsys.readouterr().err
        evaluate(model, m, pipe, index, runtime, 100, progress=False)
        assert capsys.readouterr().err == ""
    finally:
        pipe.close()


def test_inat_taxonomy_goes_from_the_converter_to_eval_json(tmp_path):
    from fastlt.convert import main as convert

    write_inat(tmp_path / "inat", [6, 4, 3, 2])
    out = tmp_path / "data"
    argv = ["inat2018", str(tmp_path / "inat"), "--out", str(out), "--workers", "1", "--max-resolution", "32"]
    assert convert(argv) == 0
    shard = open_shard(out / "inat2018" / "val.beton")
    tax = shard.index.settings["class_taxonomy"]
    assert tax == {"supercategory": ["Plantae", "Aves", "Plantae", "Aves"], "kingdom": ["Animalia"] * 4}
    assert open_shard(out / "inat2018" / "train.beton").index.settings["class_taxonomy"] == tax
    from fastlt.recipes import resolve

    recipe = resolve("inat2018", "ce", ["--data-root", str(out), "--image-size", "32", "--model", "smallnet",
                                        "--device", "cpu", "--progress", "false"])
    method = get_method("ce")(recipe, shard.index)
    torch.manual_seed(0)
    model = method.build_model()
    runtime = Runtime.create(recipe, shard.index.train_counts, torch.device("cpu"))
    pipe = build_pipeline("torch", shard, recipe, torch.device("cpu"), train=False)
    try:
        ev = evaluate(model, method, pipe, shard.index, runtime, 4)
    finally:
        pipe.close()
    M.write_eval(tmp_path, ev.summary, shard.index, ev.predictions)
    got = json.loads((tmp_path / "eval.json").read_text())["taxonomy"]
    assert [v["name"] for v in got["supercategory"]] == ["Aves", "Plantae"]
    assert [(v["classes"], v["images"]) for v in got["supercategory"]] == [(2, 4), (2, 4)]
    assert got["kingdom"][0]["images"] == 8 and got["kingdom"][0]["top1"] == ev.summary["all"]


def test_bench_eval_times_both_paths_at_a_small_shape(capsys):
    from fastlt.bench import main as bench

    argv = ["eval", "--classes", "300", "--per-class", "2", "--epochs", "3", "--batch-size", "128"]
    assert bench(argv) == 0
    out = capsys.readouterr().out
    assert "C = 300, N = 600" in out
    assert "dense C × C matrix (before)" in out and "fastlt (top-5 per image)" in out
