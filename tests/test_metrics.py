"""Every field of eval.json against a brute-force computation on small random predictions (a class never
predicted, a class absent from the eval split, tied counts), collapse warnings, the written files."""

import json
import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from fastlt import metrics as M
from fastlt.plots import CONFUSION_PNG_MAX_CLASSES, write_plots
from fastlt.sampling import ConfusionCounts
from helpers import train_index

GROUP_OF = {"many": 0, "medium": 1, "few": 2}
TRAIN_COUNTS = [400, 150, 101, 100, 60, 20, 19, 7, 2]  # many ×3, medium ×3, few ×3 (boundaries on both sides)


def _index(counts=TRAIN_COUNTS, taxonomy=None):
    idx = train_index(counts, names=[f"species {c}" for c in range(len(counts))])
    return replace(idx, settings={"class_taxonomy": taxonomy} if taxonomy else {})


def _random_predictions(seed: int, C: int, N: int = 80, absent: int = 4, never: int = 6) -> M.Predictions:
    """Random labels without class ``absent``, top-5 lists without class ``never`` at rank 1, and half the
    top-1 predictions right."""
    rng = np.random.default_rng(seed)
    labels = rng.choice([c for c in range(C) if c != absent], N)
    top = np.stack([rng.permutation(C)[:5] for _ in range(N)])
    right = rng.random(N) < 0.5
    top[right, 0] = labels[right]
    for i in np.flatnonzero(top[:, 0] == never):  # move `never` out of the first place
        top[i, [0, 1]] = top[i, [1, 0]]
    for i in np.flatnonzero(top[:, 0] == never):
        top[i, 0] = (never + 1) % C
    assert never not in top[:, 0] and absent not in labels
    return M.Predictions(np.arange(N), labels, top)


def brute(p: M.Predictions, index) -> dict:
    """The summary, one image / class / pair at a time."""
    C, groups, names = index.num_classes, index.class_groups, index.class_names
    labels, top = p.labels.tolist(), p.top.tolist()
    support = [labels.count(c) for c in range(C)]
    acc1 = [sum(1 for y, t in zip(labels, top) if y == c and t[0] == c) / support[c] if support[c] else None
            for c in range(C)]
    acc5 = [sum(1 for y, t in zip(labels, top) if y == c and c in t) / support[c] if support[c] else None
            for c in range(C)]

    def means(acc, hits):
        out = {}
        for g in M.GROUPS:
            vals = [a for a, gg in zip(acc, groups) if gg == g and a is not None]
            out[g] = 100 * sum(vals) / len(vals) if vals else None
        valid = [a for a in acc if a is not None]
        out["all"] = 100 * hits / len(labels)
        out["mean_class"] = 100 * sum(valid) / len(valid)
        return out

    flow = [[0] * 3 for _ in range(3)]
    for y, t in zip(labels, top):
        flow[GROUP_OF[groups[y]]][GROUP_OF[groups[t[0]]]] += 1
    predicted = Counter(t[0] for t in top)
    most = max(range(C), key=lambda c: (predicted[c], -c))  # the lowest index among equals
    ranked = sorted((predicted[c] for c in range(C)), reverse=True)
    half = next(i + 1 for i in range(C) if sum(ranked[: i + 1]) >= len(labels) / 2)
    pairs = Counter((y, t[0]) for y, t in zip(labels, top) if y != t[0])
    top_pairs = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[: M.TOP_PAIRS]
    return {
        **means(acc1, sum(y == t[0] for y, t in zip(labels, top))),
        "top5": means(acc5, sum(y in t for y, t in zip(labels, top))),
        "per_class": [None if a is None else 100 * a for a in acc1],
        "per_class_top5": [None if a is None else 100 * a for a in acc5],
        "per_class_support": support,
        "per_class_predicted": [predicted[c] for c in range(C)],
        "group_flow": flow,
        "diversity": {
            "classes_in_split": sum(1 for s in support if s),
            "predicted_classes": len(predicted),
            "top_class": most,
            "top_class_name": names[most],
            "top_class_share": predicted[most] / len(labels),
            "top_class_label_share": support[most] / len(labels),
            "top3_share": sum(ranked[:3]) / len(labels),
            "classes_for_half": half,
        },
        "confused_pairs": {
            "distinct": len(pairs),
            "errors": sum(pairs.values()),
            "top": [{"true": y, "predicted": j, "true_name": names[y], "predicted_name": names[j], "count": n,
                     "share_of_true": n / support[y]} for (y, j), n in top_pairs],
        },
    }


def _close(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert len(a) == len(b)
        return all(_close(x, y) for x, y in zip(a, b))
    if a is None or b is None or isinstance(a, str):
        assert a == b
        return True
    assert a == pytest.approx(b, rel=1e-12, abs=1e-12)
    return True


@pytest.mark.parametrize("seed", range(6))
def test_summary_matches_brute_force(seed):
    index = _index()
    p = _random_predictions(seed, index.num_classes)
    got = M.summarize(p, index)
    want = brute(p, index)
    for key, value in want.items():
        assert _close(got[key], value), key
    assert got["top_k"] == 5 and got["num_images"] == 80
    assert got["per_class"][4] is None and got["per_class_support"][4] == 0  # absent from the split
    assert got["per_class_predicted"][6] == 0  # never predicted


def test_tied_pair_counts_are_listed_by_class_index():
    index = _index()
    # pairs (3→1) ×2, (2→1) ×2, (0→5) ×2, (8→0) ×1: equal counts come out by (true, predicted)
    labels = np.array([3, 3, 2, 2, 0, 0, 8, 1])
    top1 = np.array([1, 1, 1, 1, 5, 5, 0, 1])
    p = M.Predictions(np.arange(8), labels, np.stack([top1] + [np.full(8, 7)] * 4, 1))
    got = [(x["true"], x["predicted"], x["count"]) for x in M.summarize(p, index)["confused_pairs"]["top"]]
    assert got == [(0, 5, 2), (2, 1, 2), (3, 1, 2), (8, 0, 1)]
    assert _close(M.summarize(p, index)["confused_pairs"], brute(p, index)["confused_pairs"])


def test_most_predicted_class_ties_go_to_the_lowest_index():
    index = _index()
    p = M.Predictions(np.arange(4), np.array([0, 1, 2, 3]), np.array([[5, 0], [2, 0], [2, 0], [5, 0]]))
    div = M.summarize(p, index)["diversity"]
    assert div["top_class"] == 2 and div["top_class_name"] == "species 2" and div["top_class_share"] == 0.5


def test_taxonomy_accuracy_per_supercategory():
    tax = {"supercategory": ["Aves", "Plantae", "Aves", "Fungi", "Plantae", "Aves", "Fungi", "Aves",
                             "Plantae"],
           "kingdom": ["Animalia", "Plantae", "Animalia", "Fungi", "Plantae", "Animalia", "Fungi", "Animalia",
                       "Plantae"]}
    index = _index(taxonomy=tax)
    p = _random_predictions(3, index.num_classes)
    got = M.summarize(p, index)["taxonomy"]
    assert list(got) == ["supercategory", "kingdom"]
    labels, top1 = p.labels.tolist(), p.top1.tolist()
    acc = brute(p, index)["per_class"]
    for level, values in tax.items():
        assert [v["name"] for v in got[level]] == sorted(set(values))
        for v in got[level]:
            members = [c for c, x in enumerate(values) if x == v["name"]]
            imgs = [i for i, y in enumerate(labels) if y in members]
            with_images = [acc[c] for c in members if acc[c] is not None]
            assert v["classes"] == len(members) and v["images"] == len(imgs)
            assert v["top1"] == pytest.approx(100 * sum(labels[i] == top1[i] for i in imgs) / len(imgs))
            assert v["mean_class"] == pytest.approx(sum(with_images) / len(with_images))
    assert M.summarize(p, _index())["taxonomy"] == {}  # no taxonomy in the index: nothing reported


def test_planted_collapse_is_flagged_and_a_healthy_model_is_not():
    C, N = 40, 400
    names = [f"c{c}" for c in range(C)]
    index = replace(train_index([50] * C, names=names), settings={})
    labels = np.repeat(np.arange(C), N // C)
    rng = np.random.default_rng(0)
    healthy = np.where(rng.random(N) < 0.6, labels, rng.integers(0, C, N))
    top = lambda t1: np.stack([t1, (t1 + 1) % C], 1)  # noqa: E731
    assert M.summarize(M.Predictions(np.arange(N), labels, top(healthy)), index)["collapse"] == []
    # two thirds of all predictions on three classes, the rest on a handful: the collapsed-LFM shape
    collapsed = np.where(rng.random(N) < 2 / 3, rng.choice([3, 17, 29], N), rng.integers(0, 6, N))
    s = M.summarize(M.Predictions(np.arange(N), labels, top(collapsed)), index)
    assert len(s["collapse"]) == 2
    assert "of all predictions" in s["collapse"][0] and "top 3 classes take" in s["collapse"][0]
    assert f"only {s['diversity']['predicted_classes']} of the {C} classes" in s["collapse"][1]
    record = M.epoch_fields(s)
    assert record["collapse"] == s["collapse"] and "WARNING predictions collapse" in M.collapse_note(record)
    assert M.collapse_note(M.epoch_fields(None)) == ""


def test_one_class_taking_most_predictions_is_flagged_alone():
    C, N = 10, 100
    index = replace(train_index([50] * C), settings={})
    labels = np.repeat(np.arange(C), N // C)
    t1 = labels.copy()
    t1[:55] = 0  # class 0: 55 % of predictions, 5.5× its 10 % of the labels; all 10 classes still predicted
    s = M.summarize(M.Predictions(np.arange(N), labels, t1[:, None]), index)
    assert len(s["collapse"]) == 1 and "'class 0' takes 55.0 %" in s["collapse"][0]


def test_epoch_fields_are_the_metrics_line_of_an_evaluation():
    index = _index()
    s = M.summarize(_random_predictions(1, index.num_classes), index)
    rec = M.epoch_fields(s)
    assert rec["all"] == s["all"] and rec["top5_all"] == s["top5"]["all"]
    assert rec["group_flow"] == s["group_flow"] and sum(map(sum, rec["group_flow"])) == 80
    assert rec["predicted_classes"] == s["diversity"]["predicted_classes"]
    assert set(M.epoch_fields(None)) == set(rec) and all(v is None for v in M.epoch_fields(None).values())


def test_training_pairs_by_name_from_the_confusion_counts():
    K = ConfusionCounts(5)
    K.update(np.array([0, 0, 0, 1, 1, 2, 3, 3, 4]), np.array([1, 1, 2, 0, 0, 4, 4, 3, 0]))
    names = ["ant", "bee", "cat", "dog", "eel"]
    got = M.training_pairs(K, names, k=3)
    assert got["confusion_pairs"] == 8 and got["confusion_distinct"] == 6  # (3, 3) is right, not recorded
    assert got["confusion_top"] == [["ant", "bee", 2], ["bee", "ant", 2], ["ant", "cat", 1]]


def test_write_eval_files(tmp_path):
    index = _index()
    p = _random_predictions(2, index.num_classes)
    s = M.summarize(p, index)
    M.write_eval(tmp_path, s, index, p, extra={"checkpoint": "last.pt"})
    write_plots(tmp_path, s, index, p)
    rec = json.loads((tmp_path / "eval.json").read_text())
    assert rec["per_class_accuracy"] == s["per_class"] and rec["train_class_counts"] == TRAIN_COUNTS
    for key in ("top5", "per_class_top5", "per_class_support", "per_class_predicted", "group_flow",
                "diversity", "confused_pairs", "taxonomy", "collapse", "top_k"):
        assert rec[key] == json.loads(json.dumps(s[key])), key
    assert rec["checkpoint"] == "last.pt"
    assert not any(isinstance(v, float) and math.isnan(v) for v in rec.values())
    back = M.Predictions.load(tmp_path / "predictions.npz")
    for a, b in ((back.rows, p.rows), (back.labels, p.labels), (back.top, p.top)):
        np.testing.assert_array_equal(a, b)
    for png in ("confusion.png", "per_class_accuracy.png"):
        data = (tmp_path / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_confusion_png_only_for_tens_of_classes(tmp_path):
    C = CONFUSION_PNG_MAX_CLASSES + 1
    index = replace(train_index([30] * C), settings={})
    labels = np.arange(C)
    p = M.Predictions(labels, labels, np.stack([labels, (labels + 1) % C], 1))
    write_plots(tmp_path, M.summarize(p, index), index, p)
    assert (tmp_path / "per_class_accuracy.png").exists() and not (tmp_path / "confusion.png").exists()


def test_results_table_cells_are_mean_and_sample_std():
    from fastlt.results import cell, markdown_table

    assert cell([90.0, 92.0, 94.0]) == "92.0 ± 2.0"  # sample std (ddof = 1)
    assert cell([50.0]) == "50.0" and cell([None]) == "n/a"
    t = markdown_table(
        {"bs": [dict(many=1.0, medium=2.0, few=3.0, all=4.0), dict(many=3.0, medium=2.0, few=5.0, all=6.0)]}
    )
    assert t.splitlines()[-1] == "| bs | 2.0 ± 1.4 | 2.0 ± 0.0 | 4.0 ± 1.4 | 5.0 ± 1.4 |"


def test_summary_table_has_no_column_for_a_group_without_classes():
    one_group = M.summary_table([("mine/bs", dict(many=None, medium=None, few=80.0, all=80.0))])
    header, row, note = one_group.splitlines()
    assert header.split() == ["few", "all"] and row.split() == ["mine/bs", "80.0", "80.0"]
    assert note == "(no many or medium classes in this dataset's groups)"
    full = M.summary_table([("digits/bs", dict(many=95.0, medium=94.0, few=80.0, all=92.0))])
    assert full.splitlines()[0].split() == ["many", "medium", "few", "all"] and len(full.splitlines()) == 2
