"""A small randomly initialised CLIP saved as a local open_clip checkpoint — what a user's own file looks
like, at a size the CPU tests load in a second. Shared by the text-encoder and LFM tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}
NAME = "fastlt-tiny-clip"


def write_tiny_clip(folder: Path, seed: int = 0):
    """Write ``<folder>/fastlt-tiny-clip.json`` (open_clip model config) and ``<folder>/tiny.pt`` (its state
    dict); return ``(config_path, checkpoint_path, model)``."""
    import open_clip

    cfg = Path(folder) / f"{NAME}.json"
    cfg.write_text(json.dumps(CONFIG))
    open_clip.add_model_config(cfg)
    torch.manual_seed(seed)
    model = open_clip.create_model(NAME)
    ckpt = Path(folder) / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    return cfg, ckpt, model.eval()
