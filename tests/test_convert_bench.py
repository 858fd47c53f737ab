"""``tools/bench convert`` runs end to end at a toy size and records every row (figures: a real run)."""

from __future__ import annotations

import json

from fastlt.bench import main


def test_bench_convert_measures_every_row_against_its_baseline(tmp_path, capsys):
    argv = ["convert", "--images", "24", "--classes", "4", "--max-resolution", "256", "--out", str(tmp_path)]
    assert main(argv) == 0
    record = json.loads((tmp_path / "convert.json").read_text())
    rows = record["rows"]
    assert record["images"] == 24 and [r["resolution"] for r in rows].count("max 256") == 3
    methods = [(r["resolution"], r["method"]) for r in rows]
    assert ("full", "tools/convert --workers 2 --reencode") in methods
    assert ("max 256", "tools/convert --workers 2") in methods
    for r in rows:
        assert r["img/s"] > 0 and r["CPU ms/img"] > 0 and r["faults/img"] >= 0, r
        if "baseline" in r["method"]:
            assert r["x PIL N-proc"] == 1.0, r
        if r["method"].startswith("tools/convert"):
            assert r["decode ms/img"] > 0 and r["shard MB"] > 0, r
    # Stored sources at full size, shrunk rows at 256 px: the shard is the smaller for the resize.
    size = {(r["resolution"], r["method"]): r["shard MB"] for r in rows if "shard MB" in r}
    assert size["max 256", "tools/convert --workers 2"] < size["full", "tools/convert --workers 2"]
    assert "decode only" in capsys.readouterr().out
