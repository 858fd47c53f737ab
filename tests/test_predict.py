"""fastlt predict: images, folders and list files in; top-k names and probabilities out (CSV and JSON),
through the run's conversion and evaluation crop; bad files reported by path and skipped."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from fastlt.predict import Predictor, expand_inputs, main, predict
from fastlt.shards import open_shard
from helpers.own_data import trained_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_run(tmp_path_factory.mktemp("predict"))


def test_predict_scores_the_val_images_as_the_evaluation_did(trained):
    """Every val image's evaluated top-1 class is predict's most probable class (ties within float
    rounding allowed): same conversion, same crop, same normalisation, same model."""
    run, data, folder = trained
    val = open_shard(data / "digits" / "val.beton").index
    saved = np.load(run / "predictions.npz")
    predictor = Predictor.load(run, "last", device="cpu")
    paths = [folder / val.source_ids[r] for r in saved["rows"]]
    doc = predict(predictor, paths, top_k=val.num_classes, batch_size=7, workers=0, progress=False)
    assert not doc["skipped"] and [p["path"] for p in doc["predictions"]] == list(map(str, paths))
    for row, evaluated in zip(doc["predictions"], saved["top"][:, 0]):
        prob = {t["index"]: t["probability"] for t in row["top"]}
        assert prob[int(evaluated)] >= row["top"][0]["probability"] - 1e-5, row["path"]
    assert predictor.class_names == val.class_names


def test_cli_folders_lists_and_bad_files(trained, tmp_path, capsys):
    run, _, folder = trained
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    missing = tmp_path / "missing.png"
    seven = sorted((folder / "seven").glob("*.png"))
    listing = tmp_path / "few.txt"
    listing.write_text("".join(f"{p} 5\n" for p in seven[:2]) + "\n# comment\n")
    out = tmp_path / "pred"
    argv = ["--run", str(run), str(folder / "nine"), str(listing), str(corrupt), str(missing),
            "--top-k", "3", "--batch-size", "2", "--workers", "1", "--out", str(out), "--no-progress"]
    assert main(argv) == 1  # some files skipped: outputs written, status 1
    err = capsys.readouterr().err
    assert f"skipped {corrupt}: cannot decode image" in err and f"skipped {missing}: file not found" in err
    nine = sorted((folder / "nine").glob("*.png"))
    expected = [*map(str, nine), *map(str, seven[:2])]
    with open(f"{out}.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", *(f"{k}_{r}" for r in (1, 2, 3) for k in ("class", "probability"))]
    assert [r[0] for r in rows[1:]] == expected
    doc = json.loads(open(f"{out}.json").read())
    assert [s["path"] for s in doc["skipped"]] == [str(corrupt), str(missing)]
    assert doc["top_k"] == 3 and doc["method"] == "bs" and doc["checkpoint"].endswith("best.pt")
    names = open_shard(trained[1] / "digits" / "train.beton").index.class_names
    for p, row in zip(doc["predictions"], rows[1:]):
        probs = [t["probability"] for t in p["top"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert [t["class"] for t in p["top"]] == [names[t["index"]] for t in p["top"]] == row[1::2]


def test_inputs_expand_in_order_and_nothing_readable_is_status_2(trained, tmp_path, capsys):
    _, _, folder = trained
    (folder / "nine" / ".hidden.png").write_bytes(b"")
    listed = expand_inputs([str(folder / "nine")])
    assert listed == sorted((folder / "nine").glob("[!.]*.png"))
    run = trained[0]
    assert main(["--run", str(run), str(tmp_path / "nothing.png"), "--out", str(tmp_path / "p"),
                 "--workers", "0", "--no-progress"]) == 2
    assert main(["--run", str(tmp_path), str(folder)]) == 2
    assert "no recipe.json" in capsys.readouterr().err
