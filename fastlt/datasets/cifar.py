"""``cifar10-lt`` / ``cifar100-lt``: the standard CIFAR python pickles → CIFAR-LT (Cui et al. 2019).

Input folders, as distributed:

* ``cifar-10-batches-py/``: ``data_batch_1`` … ``data_batch_5``, ``test_batch``, ``batches.meta``
  (keys ``data`` uint8[N,3072], ``labels``; meta ``label_names``);
* ``cifar-100-python/``: ``train``, ``test``, ``meta`` (keys ``data``, ``fine_labels``; meta
  ``fine_label_names``).

``data`` rows are three 32x32 planes (R, G, B), each row-major. The train split keeps
``int(n_max · IF^(-c/(C-1)))`` images of class ``c`` chosen by the reference draw
(:func:`fastlt.datasets.longtail.cifar_lt_indices`: ``np.random.seed(seed)``, per class shuffle, keep the
first n_c); ``n_max`` is the largest class (5000 / 500). The test split stays full and balanced. Pixels
are stored raw by default (a 32x32 JPEG would lose more than it saves).

The pickles were written by Python 2. They are read with a restricted unpickler that rebuilds numpy
arrays, dicts, lists and strings and refuses anything else, so a doctored file cannot run code.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np

from fastlt.datasets.longtail import cifar_lt_indices
from fastlt.datasets.validate import ConversionError, Job, Problems, Split, is_int

LAYOUTS = {
    # name: (train files, test files, meta file, label key, names key)
    "cifar10-lt": (
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "batches.meta",
        "labels",
        "label_names",
    ),
    "cifar100-lt": (["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}

# What a CIFAR pickle may contain besides builtins: numpy arrays (old and new numpy module paths).
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
    ("builtins", "bytes"),
    ("__builtin__", "bytes"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (a CIFAR pickle holds only arrays)")


def load_pickle(path: Path, problems: Problems) -> dict | None:
    """A CIFAR pickle as a dict with str keys, or None after recording a fatal problem."""
    try:
        with open(path, "rb") as f:
            # latin1 is how Python 3 reads Python 2 str objects holding binary numpy data.
            d = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        problems.fatal(str(path), "file not found")
        return None
    except Exception as e:  # truncated or foreign files raise anything from EOFError to UnpicklingError
        problems.fatal(str(path), f"not a readable CIFAR pickle: {type(e).__name__}: {e}")
        return None
    if not isinstance(d, dict):
        problems.fatal(str(path), f"holds a {type(d).__name__}, expected a dict")
        return None
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def read_batches(files: list[Path], label_key: str, num_classes: int, split: str, problems: Problems):
    """(images uint8[N,32,32,3], labels int64[N], where[N]) of the valid rows of ``files``.

    A row whose label is not an integer in [0, C) is reported (file[row]) and left out.
    """
    images, labels, where = [], [], []
    for path in files:
        d = load_pickle(path, problems)
        if d is None:
            continue
        missing = [k for k in ("data", label_key) if k not in d]
        if missing:
            problems.fatal(str(path), f"missing key(s) {missing} (has {sorted(d)})")
            continue
        data, lab = np.asarray(d["data"]), list(d[label_key])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            problems.fatal(f"{path}: data", f"is {data.dtype}{list(data.shape)}, expected uint8[N, 3072]")
            continue
        if len(lab) != len(data):
            problems.fatal(f"{path}: {label_key}", f"has {len(lab)} labels for {len(data)} images")
            continue
        ok = np.zeros(len(lab), dtype=bool)
        for i, y in enumerate(lab):
            at = f"{path.name}[{i}]"
            if not is_int(y):
                problems.add(f"{path}[{i}]", f"label {y!r} is not an integer", split=split, source_id=at)
            elif not 0 <= int(y) < num_classes:
                problems.add(
                    f"{path}[{i}]",
                    f"label {y} out of range, expected 0..{num_classes - 1}",
                    split=split,
                    source_id=at,
                )
            else:
                ok[i] = True
        keep = np.flatnonzero(ok)
        images.append(data[keep].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.array([int(lab[i]) for i in keep], dtype=np.int64))
        where += [f"{path.name}[{i}]" for i in keep]
    if not images:
        return np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64), []
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), where


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", type=Path, help="cifar-10-batches-py/ or cifar-100-python/ folder")
    p.add_argument("--imbalance-factor", type=float, default=100.0, help="n_max / n_min (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the reference draw (default 0)")
    p.add_argument(
        "--n-max",
        type=int,
        default=None,
        help="images kept of class 0 (default: the largest class, 5000 / 500)",
    )


def build(args) -> Job:
    name = args.command
    train_files, test_files, meta_file, label_key, names_key = LAYOUTS[name]
    root = Path(args.root)
    problems = Problems()
    meta = load_pickle(root / meta_file, problems)
    problems.raise_if_fatal()
    if names_key not in meta:
        problems.fatal(str(root / meta_file), f"missing key {names_key!r} (has {sorted(meta)})")
        problems.raise_if_fatal()
    class_names = [str(n) for n in meta[names_key]]
    C = len(class_names)
    splits = []
    for split, files in (("train", train_files), ("test", test_files)):
        images, labels, where = read_batches([root / f for f in files], label_key, C, split, problems)
        problems.raise_if_fatal()
        if split == "train" and len(labels):
            try:
                keep = cifar_lt_indices(
                    labels, args.imbalance_factor, args.seed, n_max=args.n_max, num_classes=C
                )
            except ValueError as e:
                raise ConversionError(f"{root}: {e}") from None
            images, labels, where = images[keep], labels[keep], [where[i] for i in keep]
        splits.append(Split(split, labels, list(where), list(where), images=images))
    return Job(
        dataset=name,
        class_names=class_names,
        splits=splits,
        problems=problems,
        settings={
            "source": str(root),
            "imbalance_factor": args.imbalance_factor,
            "seed": args.seed,
            "n_max": args.n_max,
        },
        default_write_mode="raw",
    )
