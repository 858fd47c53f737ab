"""Checkpoints: atomic writes, ``weights_only=True`` loads, and the recipe check behind ``--resume``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so ``torch.load(...,
weights_only=True)`` reads it without unpickling arbitrary objects:

    version, epoch (last finished, 0-based), global_step, recipe (Recipe.to_json()),
    model, optimizer, optimizer_group (which stage group the optimiser state belongs to),
    method (the method's own state, e.g. CP-Mix's confusion counts), rng ({torch, cuda, numpy, python}),
    best (best "all" so far), metrics (the epoch's metrics line)

It is written to a temporary file in the same folder, flushed and fsynced, then renamed over the old one:
a SIGKILL at any moment leaves either the old checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import numpy as np
import torch

from fastlt.recipes import Recipe, RecipeError, recipe_diff

# 2: method state (CP-Mix's confusion counts) moved from "sampler" into "method"; "schedule" dropped.
CHECKPOINT_VERSION = 2


class CheckpointError(ValueError):
    pass


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no checkpoint (a run writes last.pt at the end of its first epoch)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a torn or foreign file
        raise CheckpointError(f"{path}: not a readable fastlt checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or "version" not in state:
        raise CheckpointError(f"{path}: not a fastlt checkpoint (no version)")
    if state["version"] != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {state['version']!r}, this fastlt reads version "
            f"{CHECKPOINT_VERSION}; evaluate or resume it with the fastlt that wrote it"
        )
    return state


def check_recipe(state: dict, recipe: Recipe, path: str | os.PathLike) -> None:
    """Refuse to resume ``recipe`` from a checkpoint trained with a different one, naming the keys."""
    try:
        saved = Recipe.from_json(state["recipe"], f"{path} (recipe)")
    except RecipeError as e:
        raise CheckpointError(str(e)) from None
    diff = recipe_diff(saved, recipe)
    if diff:
        lines = [f"  {k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in sorted(diff.items())]
        raise CheckpointError(
            f"{path}: checkpoint was trained with a different recipe; refusing to resume. Differing keys:\n"
            + "\n".join(lines)
            + "\nStart a new run (another --name) or resume without changing these keys."
        )


# ------------------------------------------------------------------------------------------ RNG states
def rng_state() -> dict:
    """Every global generator, in weights_only-safe types (numpy's key array as a tensor)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": _py_state_to_list(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(_py_state_from_list(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):  # a different GPU count: per-step seeds still govern
            torch.cuda.set_rng_state_all(state["cuda"])


def _py_state_to_list(s):
    version, internal, gauss = s
    return [version, list(internal), gauss]


def _py_state_from_list(s):
    version, internal, gauss = s
    return (version, tuple(internal), gauss)
