"""fastlt export: a torch.export program that a clean interpreter loads with torch alone (fastlt made
unimportable there) and that gives the probabilities fastlt predict gives."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fastlt.export import main
from fastlt.predict import main as predict_main
from helpers.own_data import trained_run

# What a user's own program does with the export: no fastlt, only torch, numpy and PIL. The images are
# 32×32 like the run's, so the evaluation crop is the whole image.
CONSUMER = """
import json, sys
sys.modules["fastlt"] = None  # any import of fastlt now fails
import numpy as np, torch
from PIL import Image
folder, paths = sys.argv[1], sys.argv[2:]
card = json.load(open(f"{folder}/model.json"))
model = torch.export.load(f"{folder}/{card['file']}").module()
images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
with torch.no_grad():
    probs = model(torch.from_numpy(images))
print(json.dumps({"names": card["class_names"], "probs": probs.tolist()}))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_run(tmp_path_factory.mktemp("export"))


def test_export_loads_without_fastlt_and_matches_predict(trained, tmp_path, capsys):
    run, _, folder = trained
    assert main(["--run", str(run), "--out", str(tmp_path / "exp")]) == 0
    assert "model.pt2" in capsys.readouterr().out
    card = json.loads((tmp_path / "exp" / "model.json").read_text())
    assert card["format"] == "torch.export" and card["image_size"] == 32 and len(card["class_names"]) == 10
    assert (tmp_path / "exp" / "classes.txt").read_text().split() == card["class_names"]
    paths = [str(p) for name in ("zero", "nine") for p in sorted((folder / name).glob("*.png"))[:3]]
    out = subprocess.run([sys.executable, "-I", "-c", CONSUMER, str(tmp_path / "exp"), *paths],
                         capture_output=True, text=True, check=True)
    exported = json.loads(out.stdout)
    assert predict_main(["--run", str(run), *paths, "--top-k", "10", "--out", str(tmp_path / "p"),
                         "--workers", "0", "--no-progress"]) == 0
    predicted = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert [p["path"] for p in predicted] == paths
    for probs, pred in zip(exported["probs"], predicted):
        for t in pred["top"]:
            assert exported["names"][t["index"]] == t["class"]
            assert probs[t["index"]] == pytest.approx(t["probability"], abs=1e-5)


def test_export_of_a_missing_run_is_a_message(tmp_path, capsys):
    assert main(["--run", str(tmp_path / "nope")]) == 2
    assert "no recipe.json" in capsys.readouterr().err
