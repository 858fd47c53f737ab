"""``tools/bench sampler`` end to end at toy size: every table is produced and the JSON record holds the
figures of the fastlt engine and of each numpy reference (no timing is asserted)."""

from __future__ import annotations

import json

import numpy as np

from fastlt.bench import sampler


def test_synthetic_confusion_has_the_requested_shape():
    y, j, w = sampler.synthetic_confusion(200, 3000, seed=0)
    assert np.all(y != j) and np.all(w >= 1)
    assert np.unique(y * 200 + j).size == y.size  # distinct pairs
    assert 2500 <= y.size <= 3500
    offsets = sampler.long_tail_offsets(200)
    assert offsets[0] == 0 and np.all(np.diff(offsets) >= 2) and np.diff(offsets)[0] == 1000


def test_numpy_reference_agrees_with_the_engine():
    """The baseline must compute the same thing: identical counts after the same updates."""
    from fastlt.sampling import ConfusionCounts

    C = 60
    y, j, w = sampler.synthetic_confusion(C, 600, seed=1)
    ref, fast = sampler.NumpyConfusion(C, y, j, w.copy()), ConfusionCounts(C)
    fast.add(y, j, w)
    offsets = sampler.long_tail_offsets(C, n_max=50)
    for yy, yh in sampler.prediction_stream(C, offsets, y, j, steps=5, B=64, seed=2):
        ref.update(yy, yh)
        fast.update(yy, yh)
    ref.refresh()
    K = np.zeros((C, C), np.int64)
    K[ref.keys // C, ref.keys % C] = ref.counts
    assert np.array_equal(K, fast.to_dense())
    a, b = ref.draw_searchsorted(np.random.default_rng(0), offsets, 2000)
    cls_a, cls_b = (np.searchsorted(offsets, r, side="right") - 1 for r in (a, b))
    assert np.all(K[cls_a, cls_b] > 0)  # every class here has pairs: partners come from recorded ones


def test_bench_runs_and_writes_its_record(tmp_path, capsys):
    rc = sampler.main(["--classes", "300", "--pairs", "4000", "--steps", "5", "--choice-steps", "2",
                       "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    for title in ("CP-Mix pair draws", "Confusion count updates", "memory:", "exact text-local partners"):
        assert title in out
    rec = json.loads((tmp_path / "sampler.json").read_text())
    assert set(rec["draw_s"]) == {"fastlt (numba sum tree)", "numpy cumsum + searchsorted",
                                  "numpy rng.choice per row"}
    assert all(v > 0 for v in rec["draw_s"].values()) and rec["counts_mb"] > 0
    names = [r["embeddings"] for r in rec["text_local"]["exact"]]
    assert names == ["random unit vectors", "clustered taxonomy"]
