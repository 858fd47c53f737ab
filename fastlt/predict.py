"""``fastlt predict --run RUN PATH...``: the top-k classes of images, by name, with probabilities.

    fastlt predict --run runs/photos-cpmix-s0 holiday/ extra.jpg more.txt --top-k 5 --out predictions

``PATH`` is an image file, a folder (every image below it, by extension, hidden files skipped) or a list file
(``.txt``/``.csv``/``.lst``: one image per line, relative to the list's folder; a ``path,label`` or
``path label`` line counts by its path, so the split lists of ``tools/convert imagelist`` work as they are).

Every image takes the path an evaluation image took: the run's conversion (a strict decode, shrunk to the
dataset's ``--max-resolution``, stored as its shard stores images: :func:`fastlt.datasets.images.file_row`),
then the evaluation crop (:func:`fastlt.pipelines.transforms.center_crop_boxes`, resized to the recipe's
``image_size`` with PIL's antialiased bilinear filter as the torch pipeline does), the run's
:class:`~fastlt.runtime.Runtime` normalisation and the method's ``eval_logits`` on the model of the
checkpoint; the probabilities are the softmax of those logits (raw logits, as evaluation ranks them: no
class prior is added). Images are decoded in ``--workers`` processes and scored in batches of
``--batch-size``, on CPU or GPU, with a progress bar.

Writes ``OUT.csv`` (``path``, then ``class_1, probability_1 … class_k, probability_k``) and ``OUT.json`` (the
same, with class indices, plus the run, checkpoint and the ``skipped`` files). A file that cannot be read or
decoded is reported on stderr by path with the reason and skipped; the batch goes on. Exit status 0 when every
image was predicted, 1 when some were skipped, 2 when nothing could be predicted or the run cannot be loaded.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastlt.checkpoint import EVAL_KEYS, CheckpointError, load_checkpoint
from fastlt.datasets.imagefolder import IMG_EXTENSIONS
from fastlt.recipes import Recipe, RecipeError, apply_overrides
from fastlt.runtime import Runtime, TrainingError, open_split

LIST_SUFFIXES = (".txt", ".csv", ".lst", ".list")


class PredictError(RuntimeError):
    """The run cannot be used for prediction (no recipe.json there); the message says why."""


# ------------------------------------------------------------------------------------------ the model
@dataclass
class Predictor:
    """A run's model, ready to score images the way its evaluation scored them (module docstring)."""

    run: Path
    checkpoint: Path
    epoch: int
    recipe: Recipe
    class_names: list[str]
    row_spec: object  # fastlt.datasets.images.RowSpec: how the run's shard stores an image
    method: object
    model: torch.nn.Module
    runtime: Runtime

    @classmethod
    def load(cls, run: str | Path, checkpoint: str = "best", device: str | None = None) -> Predictor:
        from fastlt.datasets.images import RowSpec
        from fastlt.evaluate import _checkpoint_path, _load_model

        run = Path(run)
        if not (run / "recipe.json").exists():
            raise PredictError(f"{run}: no recipe.json (not a fastlt run directory)")
        recipe = Recipe.load(run / "recipe.json")
        if device:
            recipe = apply_overrides(recipe, [("device", device)])
        ckpt = _checkpoint_path(run, checkpoint)
        state = load_checkpoint(ckpt, require=EVAL_KEYS)
        shard = open_split(recipe, recipe.train_split)  # class names, train counts, how images are stored
        index = shard.index
        dev = torch.device("cuda" if recipe.device != "cpu" and torch.cuda.is_available() else "cpu")
        method, model = _load_model(recipe, index, state, ckpt, shard, dev)
        model.eval()
        s = index.settings
        spec = RowSpec(s.get("write_mode", "jpg"), s.get("max_resolution"), s.get("jpeg_quality", 90),
                       s.get("store_source", "baseline"))
        return cls(run, ckpt, int(state["epoch"]), recipe, list(index.class_names), spec, method, model,
                   Runtime.create(recipe, index.train_counts, dev))

    def preprocess(self, path: str | Path) -> np.ndarray:
        """uint8[S, S, 3]: the image at ``path`` as the run's evaluation saw its images; raises on a file
        that is missing or does not decode cleanly."""
        return eval_crop(stored_pixels(path, self.row_spec), self.recipe.image_size)

    @torch.no_grad()
    def probabilities(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """float32[B, C] on the CPU for uint8[B, S, S, 3] images."""
        x = torch.as_tensor(images).to(self.runtime.device)
        with self.runtime.autocast():
            logits = self.method.eval_logits(self.model, self.runtime.normalize(x))
        return torch.softmax(logits.float(), dim=1).cpu()


def stored_pixels(path: str | Path, spec) -> np.ndarray:
    """uint8[H, W, 3]: the image as the dataset's conversion would have stored it (decoded back)."""
    import io

    from PIL import Image

    from fastlt.datasets.images import file_row

    row = file_row(path, spec)
    if row.mode == "raw":
        return np.frombuffer(row.data, dtype=np.uint8).reshape(row.height, row.width, 3)
    with Image.open(io.BytesIO(row.data)) as im:
        return np.asarray(im.convert("RGB"))


def eval_crop(pixels: np.ndarray, image_size: int) -> np.ndarray:
    """uint8[S, S, 3]: the evaluation box of ``pixels`` resized to ``image_size`` (as the torch pipeline)."""
    from PIL import Image

    from fastlt.pipelines.transforms import center_crop_boxes

    (y, x, h, w), = center_crop_boxes(np.array([pixels.shape[0]]), np.array([pixels.shape[1]]), image_size)
    img = Image.fromarray(np.ascontiguousarray(pixels))
    out = img.resize((image_size, image_size), Image.BILINEAR, box=(int(x), int(y), int(x + w), int(y + h)))
    return np.asarray(out, dtype=np.uint8)


# ------------------------------------------------------------------------------------------ the inputs
def _list_entries(path: Path) -> list[Path]:
    """The images a list file names (module docstring), relative to its folder."""
    from fastlt.datasets.imagelist import HEADER_PATHS, split_line

    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        line = line.strip()
        if path.suffix.lower() == ".csv" and line:
            line = next(csv.reader([line]))[0].strip()  # the path field
        if not line or line.startswith("#") or (n == 1 and line.lower() in HEADER_PATHS):
            continue
        if not (path.parent / line).exists():
            parsed = split_line(line)  # "path label": the path alone names the image
            if parsed and (path.parent / parsed[0]).exists():
                line = parsed[0]
        out.append(path.parent / line)
    return out


def expand_inputs(paths: list[str]) -> list[Path]:
    """Image files, in the order given: folders expanded (sorted), list files read; anything else as is
    (a missing file is then reported when it is read)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(
                f for f in p.rglob("*")
                if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
        elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            out += _list_entries(p)
        else:
            out.append(p)
    return out


class _Files(torch.utils.data.Dataset):
    """Item i → (i, uint8[S, S, 3] or None, error or None), decoded in a DataLoader worker."""

    def __init__(self, predictor: Predictor, paths: list[Path]):
        self.spec, self.size, self.paths = predictor.row_spec, predictor.recipe.image_size, paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from fastlt.datasets.images import describe

        try:
            return i, eval_crop(stored_pixels(self.paths[i], self.spec), self.size), None
        except Exception as e:  # noqa: BLE001 - every failure is reported by path, never fatal to the batch
            return i, None, describe(e)


def _as_lists(items):
    return items


# ------------------------------------------------------------------------------------------ predicting
def predict(predictor: Predictor, paths: list[Path], top_k: int = 5, batch_size: int = 64, workers: int = 2,
            progress: bool = True) -> dict:
    """Top-k of every readable image of ``paths`` (the JSON document :func:`main` writes)."""
    from tqdm import tqdm

    from fastlt.datasets import resize

    k = min(top_k, len(predictor.class_names))
    resize.warm_up()  # compile the resize kernel once, before the workers fork
    loader = torch.utils.data.DataLoader(_Files(predictor, paths), batch_size=batch_size, num_workers=workers,
                                         collate_fn=_as_lists)
    results, skipped = [], []
    with tqdm(total=len(paths), desc="predict", unit="img", file=sys.stderr, disable=not progress,
              dynamic_ncols=True, mininterval=0.5) as bar:
        for items in loader:
            good = [(i, img) for i, img, err in items if err is None]
            for i, _, err in items:
                if err is not None:
                    print(f"fastlt predict: skipped {paths[i]}: {err}", file=sys.stderr)
                    skipped.append({"path": str(paths[i]), "error": err})
            if good:
                probs = predictor.probabilities(np.stack([img for _, img in good]))
                p, c = probs.topk(k, dim=1)
                for (i, _), pi, ci in zip(good, p.tolist(), c.tolist()):
                    names = [predictor.class_names[j] for j in ci]
                    top = [{"class": n, "index": j, "probability": q} for n, j, q in zip(names, ci, pi)]
                    results.append({"path": str(paths[i]), "top": top})
            bar.update(len(items))
    return {
        "run": str(predictor.run),
        "checkpoint": str(predictor.checkpoint),
        "epoch": predictor.epoch,
        "dataset": predictor.recipe.dataset,
        "method": predictor.recipe.method,
        "num_classes": len(predictor.class_names),
        "top_k": k,
        "predictions": results,
        "skipped": skipped,
    }


def write_outputs(doc: dict, out: str | Path) -> tuple[Path, Path]:
    """``OUT.csv`` and ``OUT.json`` (module docstring)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out.with_name(out.name + ".csv"), out.with_name(out.name + ".json")
    k = doc["top_k"]
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", *(f"{key}_{r}" for r in range(1, k + 1) for key in ("class", "probability"))])
        for row in doc["predictions"]:
            cells = [v for t in row["top"] for v in (t["class"], f"{t['probability']:.6f}")]
            w.writerow([row["path"], *cells])
    json_path.write_text(json.dumps(doc, indent=1) + "\n")
    return csv_path, json_path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastlt predict", description=__doc__.split("\n\n")[0],
                                epilog="See the module docstring (fastlt/predict.py) for what is written.")
    p.add_argument("--run", required=True, help="run directory (holds recipe.json and best.pt / last.pt)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders of images, or list files")
    p.add_argument("--checkpoint", default="best", help="best | last | a checkpoint file (default best)")
    p.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--workers", type=int, default=2, help="decoding processes (default 2; 0: in this one)")
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"), help="default: the recipe's")
    p.add_argument("--out", default="predictions", help="writes OUT.csv and OUT.json (default predictions)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.top_k < 1 or args.batch_size < 1 or args.workers < 0:
        print("fastlt predict: --top-k and --batch-size must be >= 1, --workers >= 0", file=sys.stderr)
        return 2
    try:
        predictor = Predictor.load(args.run, args.checkpoint, args.device)
    except (PredictError, TrainingError, CheckpointError, RecipeError) as e:
        print(f"fastlt predict: {e}", file=sys.stderr)
        return 2
    paths = expand_inputs(args.paths)
    if not paths:
        print(f"fastlt predict: no images in {' '.join(args.paths)}", file=sys.stderr)
        return 2
    doc = predict(predictor, paths, args.top_k, args.batch_size, args.workers, not args.no_progress)
    csv_path, json_path = write_outputs(doc, args.out)
    for row in doc["predictions"][:20]:
        best = row["top"][0]
        print(f"{row['path']}: {best['class']} ({best['probability']:.1%})")
    if len(doc["predictions"]) > 20:
        print(f"… and {len(doc['predictions']) - 20} more")
    n, bad = len(doc["predictions"]), len(doc["skipped"])
    print(f"wrote {csv_path} and {json_path}: {n} images" + (f", {bad} skipped (listed there)" * bool(bad)))
    if n == 0:
        return 2
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
