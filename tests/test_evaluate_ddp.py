"""Evaluation under DDP (2 gloo processes): the ranks gather predictions, not matrices, and rank 0 writes the
same eval.json and predictions.npz as one process evaluating the whole split."""

from __future__ import annotations

import json
import socket

import numpy as np
import torch.multiprocessing as mp


def _evaluate(data, out, rank: int, world: int, port: int) -> None:
    """Evaluate digits-lt's test split with a seeded smallnet on ``world`` ranks; rank 0 writes ``out``."""
    import torch
    import torch.distributed as dist

    from fastlt import metrics as M
    from fastlt.distributed import Dist
    from fastlt.evaluate import evaluate
    from fastlt.methods.base import get_method
    from fastlt.recipes import resolve
    from fastlt.runtime import Runtime, build_pipeline
    from fastlt.shards import open_shard

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        recipe = resolve("digits-lt", "ce", ["--data-root", str(data), "--device", "cpu"])
        shard = open_shard(data / "digits-lt" / "test.beton")
        method = get_method("ce")(recipe, shard.index)
        torch.manual_seed(0)
        model = method.build_model()
        runtime = Runtime.create(recipe, shard.index.train_counts, torch.device("cpu"))
        pipe = build_pipeline("resident", shard, recipe, torch.device("cpu"), train=False)
        try:
            ev = evaluate(model, method, pipe, shard.index, runtime, 64, Dist(rank, world))
        finally:
            pipe.close()
        if rank == 0:
            M.write_eval(out, ev.summary, shard.index, ev.predictions)
        else:  # every rank holds the whole evaluation (best.pt is chosen on all of them)
            (out / f"rank{rank}.json").write_text(json.dumps(ev.summary))
    finally:
        if world > 1:
            dist.destroy_process_group()


def test_two_gloo_ranks_write_the_eval_json_of_one_process(digits_data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    _evaluate(digits_data, one, 0, 1, 0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_evaluate, args=(digits_data, two, r, 2, port)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    want = json.loads((one / "eval.json").read_text())
    assert json.loads((two / "eval.json").read_text()) == want
    assert want["num_images"] == 400 and sum(want["per_class_support"]) == 400
    a, b = np.load(one / "predictions.npz"), np.load(two / "predictions.npz")
    for key in ("rows", "labels", "top"):
        np.testing.assert_array_equal(a[key], b[key])
    rank1 = json.loads((two / "rank1.json").read_text())
    assert rank1["all"] == want["all"] and rank1["confused_pairs"] == want["confused_pairs"]
