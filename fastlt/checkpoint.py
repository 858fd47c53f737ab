"""Checkpoints: atomic writes, ``weights_only=True`` loads, and the recipe check behind ``--resume``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so ``torch.load(...,
weights_only=True)`` reads it without unpickling arbitrary objects:

    version, epoch (last finished, 0-based), global_step, recipe (Recipe.to_json()),
    model, optimizer, optimizer_group (which stage group the optimiser state belongs to),
    method (the method's own state, e.g. CP-Mix's confusion counts), rng ({torch, cuda, numpy, python}),
    best (best "all" so far), metrics (the epoch's metrics line),
    classes (dataset, class names and train counts of the split the model learned; absent in checkpoints
    written before it existed)

``load_checkpoint`` never passes torch's own advice on: for a file it refuses, torch suggests loading with
``weights_only=False``, which runs whatever code the file holds. fastlt explains the refusal instead.

It is written to a temporary file in the same folder, flushed and fsynced, then renamed over the old one:
a SIGKILL at any moment leaves either the old checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from fastlt.recipes import Recipe, RecipeError, recipe_diff

# 2: method state (CP-Mix's confusion counts) moved from "sampler" into "method"; "schedule" dropped.
CHECKPOINT_VERSION = 2


# What resuming and evaluating read from a checkpoint; a file without them is refused by name.
RESUME_KEYS = (
    "epoch", "global_step", "recipe", "model", "optimizer", "optimizer_group", "method", "rng", "best",
)
EVAL_KEYS = ("epoch", "model", "method")


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


def load_checkpoint(path: str | os.PathLike, map_location="cpu", require: tuple[str, ...] = ()) -> dict:
    """The checkpoint at ``path``, refused with a :class:`CheckpointError` when it is missing, unreadable,
    of another format version, or lacks any of the keys in ``require`` (e.g. :data:`RESUME_KEYS`)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no checkpoint (a run writes last.pt at the end of its first epoch)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a torn or foreign file
        raise CheckpointError(f"{path}: not a readable fastlt checkpoint: {_why_unreadable(e)}") from None
    if not isinstance(state, dict) or "version" not in state:
        raise CheckpointError(f"{path}: not a fastlt checkpoint (no version)")
    if state["version"] != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {state['version']!r}, this fastlt reads version "
            f"{CHECKPOINT_VERSION}; evaluate or resume it with the fastlt that wrote it"
        )
    missing = [k for k in require if k not in state]
    if missing:
        raise CheckpointError(
            f"{path}: not a complete fastlt checkpoint: missing {missing} (a fastlt run writes them all)"
        )
    return state


def _why_unreadable(e: Exception) -> str:
    """torch's reason for refusing a file, without its advice to retry with ``weights_only=False``."""
    text = str(e)
    unpickler = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\n|$)", text, re.S)
    if unpickler:
        detail = unpickler.group(1).strip()
        found = re.search(r"GLOBAL (\S+)", detail)
        if found:
            return (
                f"it holds a Python object ({found.group(1)}); fastlt loads only tensors and plain data and "
                "never runs code from a checkpoint file"
            )
        return f"not a torch checkpoint file ({detail.splitlines()[0] if detail else 'unpickling failed'})"
    if isinstance(e, EOFError) or not text:
        return "the file is empty or cut short"
    if "zip archive" in text:
        return "not a torch checkpoint file, or one cut short"
    first = text.splitlines()[0]
    return f"{type(e).__name__}" + ("" if "weights_only" in first else f": {first}")


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


# ------------------------------------------------------------------------------------------ classes
def class_record(index) -> dict:
    """The checkpoint's ``classes``: what its model predicts and what it learned from (the train split's
    ``ShardIndex``, or any split of its conversion: they carry the same names and train counts)."""
    return {
        "dataset": index.dataset,
        "class_names": list(index.class_names),
        "train_class_counts": [int(n) for n in index.train_class_counts],
    }


def shard_mismatch(state: dict, recipe: Recipe, index) -> str | None:
    """Why ``index``'s split is not one the checkpoint's model was trained for, or None when it is: other
    class names (a different dataset with the same class count gives a meaningless accuracy), or other train
    counts (another conversion: its many/medium/few groups are not the model's)."""
    trained = state.get("classes")
    if trained is None:  # written before checkpoints recorded their classes: the dataset name is all there is
        if index.dataset != recipe.dataset:
            return f"it is a {index.dataset!r} shard and the run trained on {recipe.dataset!r}"
        return None
    have, want = list(index.class_names), list(trained["class_names"])
    if have != want:
        if len(have) != len(want):
            diff = f"{len(have)} classes, the model {len(want)}"
        else:
            c = next(c for c, (a, b) in enumerate(zip(have, want)) if a != b)
            diff = f"class {c} is {have[c]!r} there and {want[c]!r} in training"
        return (
            f"its classes are not the model's ({index.dataset!r} shard, model trained on "
            f"{trained['dataset']!r}: {diff})"
        )
    if list(index.train_class_counts) != list(trained["train_class_counts"]):
        return (
            "its index carries other train counts than the split the model was trained on (another "
            "conversion), so its many/medium/few groups would not be the model's"
        )
    return None


def check_fits(state: dict, recipe: Recipe, index, path: str | os.PathLike) -> None:
    """Refuse to resume a checkpoint on data other than what it trained on (``shard_mismatch``)."""
    why = shard_mismatch(state, recipe, index)
    if why:
        raise CheckpointError(f"{path}: the {index.split} split does not fit this checkpoint: {why}")


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
