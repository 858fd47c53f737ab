"""A user's own images in each layout the converters accept, made from the long-tailed digits folder
(``fastlt.datasets.digit_folder``: real 32×32 PNGs, ``ROOT/<digit name>/*.png``), and short trainings on them.

``write_layouts(base)`` writes one folder of class folders and derives the other layouts from it:

* ``folder``       ``base/folder/<class>/*.png`` (the converter makes the held-out split);
* ``split``        ``base/split/{train,val}/<class>/*.png`` (every 4th image of a class in val);
* ``lists``        ``base/lists/train.csv`` + ``val.txt`` naming the ``folder`` images relative to ``base``
  (class names in the CSV, class indices in the text list, named by ``classes.txt``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fastlt.datasets.digit_folder import NAMES, write_digit_folder

N_MAX = 40  # 40 … 4 images a class, IF 10: many none, few four, the smallest give no image to val


def write_layouts(base: Path, n_max: int = N_MAX) -> dict[str, Path]:
    folder = base / "folder"
    write_digit_folder(folder, n_max=n_max)
    split = base / "split"
    lists = base / "lists"
    lists.mkdir(parents=True)
    classes = sorted(NAMES)  # ImageFolder's rule: sorted folder names
    (lists / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    train_rows, val_rows = ["path,label\n"], []
    for name in classes:
        for i, png in enumerate(sorted((folder / name).glob("*.png"))):
            part = "val" if i % 4 == 3 else "train"
            dest = split / part / name / png.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, dest)
            rel = f"folder/{name}/{png.name}"
            if part == "train":
                train_rows.append(f"{rel},{name}\n")
            else:
                val_rows.append(f"{rel} {classes.index(name)}\n")
    (lists / "train.csv").write_text("".join(train_rows))
    (lists / "val.txt").write_text("".join(val_rows))
    return {"folder": folder, "split": split, "lists": lists}


def convert_argv(layout: str, path: Path, out: Path, name: str, *extra: str) -> list[str]:
    """``tools/convert`` arguments that convert ``layout`` at ``path`` into ``out/name``."""
    if layout == "lists":
        source = ["imagelist", "--train", str(path / "train.csv"), "--val", str(path / "val.txt"),
                  "--classes", str(path / "classes.txt"), "--root", str(path.parent)]
    else:
        source = ["imagefolder", str(path)]
    return [*source, "--out", str(out), "--name", name, "--workers", "1", *extra]


TINY = ("--epochs", "2", "--steps-per-epoch", "3", "--batch-size", "16", "--eval-batch-size", "64",
        "--progress", "false", "--workers", "1")


def tiny_recipe(data: Path, dataset: str, method: str, *over: str):
    """The recipe ``fastlt train --dataset DATASET --method METHOD`` resolves, cut to a few steps."""
    from fastlt.recipes import resolve

    return resolve(dataset, method, ["--data-root", str(data), *TINY, *over])


def trained_run(base: Path, method: str = "bs") -> tuple[Path, Path, Path]:
    """(run directory, data root, image folder): the digits folder converted as ``digits`` and trained with
    ``method`` for a few steps (its last.pt and eval.json are what predict and export read)."""
    from fastlt.convert import main as convert_main
    from fastlt.train import train
    from helpers import quiet

    folder = base / "digits"
    write_digit_folder(folder, n_max=N_MAX)
    data = base / "data"
    assert convert_main(["imagefolder", str(folder), "--out", str(data), "--workers", "1"]) == 0
    recipe = tiny_recipe(data, "digits", method, "--epochs", "3", "--steps-per-epoch", "6")
    train(recipe, base / "runs", log=quiet)
    return base / "runs" / recipe.run_name, data, folder
