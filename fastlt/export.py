"""``fastlt export --run RUN``: the run's model as a ``torch.export`` program that loads without fastlt.

    fastlt export --run runs/photos-cpmix-s0 [--checkpoint best|last|FILE] [--out runs/photos-cpmix-s0/export]

writes into ``OUT`` (default ``RUN/export``):

* ``model.pt2`` — the checkpoint's model in eval mode, on the CPU, fp32, as a ``torch.export`` program
  (``torch.export.save``; any batch size). Input: ``uint8[B, S, S, 3]`` RGB images already cropped to
  ``S = image_size`` the way ``fastlt predict`` crops them; output: ``float32[B, C]`` class probabilities, the
  softmax of the method's evaluation logits. The normalisation (the recipe's mean and std) happens inside, so
  no preprocessing constant can be forgotten: ``torch.export.load("model.pt2").module()(images)`` is the
  whole inference, with torch alone. (TorchScript, the other choice, is deprecated in torch 2.14.)
* ``model.json`` — class names (index = output column), image size, mean and std (0–1 units, applied inside),
  the crop rule, and where the model came from (run, checkpoint, epoch, dataset, method);
* ``classes.txt`` — the class names, one per line.

Every model fastlt trains exports (the backbones, the cosine classifier, ConCutMix's heads, LFM's
text-aligned head, whose class text features are buffers); the export is checked before it is kept: the saved
file, loaded back, must give the probabilities ``fastlt predict`` gives for the same images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from fastlt.checkpoint import CheckpointError
from fastlt.predict import PredictError, Predictor
from fastlt.recipes import RecipeError
from fastlt.runtime import TrainingError

FORMAT = "torch.export"
MODEL_FILE = "model.pt2"
TOLERANCE = 1e-4  # probabilities of the loaded export vs fastlt predict (float rounding only)


class ExportError(RuntimeError):
    """The run's model cannot be exported as it is; the message says why."""


class Exported(nn.Module):
    """uint8[B, S, S, 3] images → float32[B, C] probabilities: normalise as the run's kernel does
    (``v·scale + shift``, scale = 1/(255·std), shift = −mean/std), the model, softmax."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * s))
        self.register_buffer("shift", -m / s)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() * self.scale + self.shift
        return torch.softmax(self.model(x).float(), dim=1)


def _check_scoring(predictor: Predictor) -> None:
    """The export scores with ``model(x)``: refuse a method whose evaluation logits are something else."""
    from fastlt.methods.base import Method

    if type(predictor.method).eval_logits is not Method.eval_logits:
        raise ExportError(
            f"method {predictor.recipe.method!r} scores images with its own eval_logits, which the exported "
            "model (the network alone) would not reproduce"
        )


def export_run(run: str | Path, checkpoint: str = "best", out: str | Path | None = None,
               check_images: np.ndarray | None = None) -> Path:
    """Write the export of ``run`` (module docstring) into ``out``; returns that folder.

    ``check_images`` (uint8[B, S, S, 3]) are scored by the loaded file and by ``fastlt predict``'s model
    before anything is kept; by default, a few seeded random images.
    """
    predictor = Predictor.load(run, checkpoint, device="cpu")
    _check_scoring(predictor)
    recipe = predictor.recipe
    S = recipe.image_size
    if check_images is None:
        check_images = np.random.default_rng(0).integers(0, 256, size=(4, S, S, 3), dtype=np.uint8)
    wrapped = Exported(predictor.model, recipe.mean, recipe.std).eval()
    batch = {"images": {0: torch.export.Dim("batch")}}
    try:
        program = torch.export.export(wrapped, (torch.from_numpy(check_images),), dynamic_shapes=batch)
    except Exception as e:  # noqa: BLE001 - any export failure is the same answer to the user
        raise ExportError(f"{recipe.model} × {recipe.method} does not export ({type(e).__name__}: {e})") \
            from None
    out = Path(out) if out is not None else Path(run) / "export"
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / MODEL_FILE
    tmp = out / f".partial.{MODEL_FILE}"  # torch.export wants the .pt2 suffix
    torch.export.save(program, tmp)
    _verify(tmp, predictor, check_images)
    tmp.replace(model_path)
    (out / "model.json").write_text(json.dumps(_card(predictor), indent=1) + "\n")
    (out / "classes.txt").write_text("".join(f"{name}\n" for name in predictor.class_names))
    return out


def _verify(path: Path, predictor: Predictor, images: np.ndarray) -> None:
    loaded = torch.export.load(path).module()
    with torch.no_grad():
        got = loaded(torch.from_numpy(images))
        got = torch.cat([got, loaded(torch.from_numpy(images[:1]))])  # any batch size, one included
    images = np.concatenate([images, images[:1]])
    want = predictor.probabilities(images)
    err = float((got - want).abs().max())
    if not err <= TOLERANCE:
        path.unlink()
        raise ExportError(f"the exported model's probabilities differ from fastlt predict's by {err:.3g}")


def _card(predictor: Predictor) -> dict:
    r = predictor.recipe
    return {
        "format": FORMAT,
        "file": MODEL_FILE,
        "load": f"model = torch.export.load('{MODEL_FILE}').module(); probabilities = model(images)",
        "input": {"dtype": "uint8", "shape": ["batch", r.image_size, r.image_size, 3], "layout": "NHWC, RGB"},
        "output": {"dtype": "float32", "shape": ["batch", len(predictor.class_names)],
                   "meaning": "class probabilities (softmax of the evaluation logits); column i: class i"},
        "class_names": predictor.class_names,
        "image_size": r.image_size,
        "mean": list(r.mean),
        "std": list(r.std),
        "normalisation": "inside the model: (pixel / 255 - mean) / std per channel",
        "crop": "the centred square of side min(h, w) * image_size / round(image_size / 0.875) (the whole "
                "short side for images at most image_size), resized to image_size, as fastlt predict does",
        "max_resolution": predictor.row_spec.max_resolution,
        "run": str(predictor.run),
        "checkpoint": str(predictor.checkpoint),
        "epoch": predictor.epoch,
        "dataset": r.dataset,
        "method": r.method,
        "model": r.model,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastlt export", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run directory (holds recipe.json and best.pt / last.pt)")
    p.add_argument("--checkpoint", default="best", help="best | last | a checkpoint file (default best)")
    p.add_argument("--out", default=None, help="folder to write (default RUN/export)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        out = export_run(args.run, args.checkpoint, args.out)
    except (ExportError, PredictError, TrainingError, CheckpointError, RecipeError) as e:
        print(f"fastlt export: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out / MODEL_FILE} (torch.export: uint8[B, S, S, 3] → probabilities), model.json and "
          "classes.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
