"""``tools/bench augment`` runs end to end at a toy size and records both rows (figures: a real run)."""

from __future__ import annotations

import json

from fastlt.bench import main


def test_bench_augment_measures_the_baseline_and_fastlt(tmp_path, capsys):
    argv = ["augment", "--batch", "4", "--size", "48", "--images", "16", "--workers", "0", "--steps", "2",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    record = json.loads((tmp_path / "augment.json").read_text())
    paths = [r["path"] for r in record["rows"]]
    assert paths[0].startswith("torchvision v2 + timm per image") and "fastlt batched" in paths[1]
    assert all(r["img/s"] > 0 for r in record["rows"]) and record["rows"][0]["× baseline"] == 1.0
    assert "ConCutMix ImageNet augmentation" in capsys.readouterr().out
