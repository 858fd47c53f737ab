"""``inat2018``: iNaturalist 2018 — dataset root + COCO-style ``train2018.json`` / ``val2018.json``.

Each JSON holds ``images`` [{id, file_name, ...}], ``annotations`` [{id, image_id, category_id}] and
``categories`` [{id, name, supercategory, ...}]; ``file_name`` is relative to the root
(``train_val2018/<Supercategory>/<category_id>/<hash>.jpg``). Annotations are joined to images by
``image_id``, never by list position. Labels are the category ids in sorted order (0..8141 for the real
data, so label == category id there); class names are the category ``name`` fields. The train file's
``categories`` define the classes for every split; their ``supercategory`` and ``kingdom`` go into the index
(``settings['class_taxonomy']``) so evaluation can report accuracy per super-category.

Problems are located as ``<file>: images[k] (id=…)`` or ``<file>: annotations[k] (id=…)``: a missing
key, a duplicate image id or file, an annotation for an unknown image or category, a second annotation
for one image, an image without an annotation. A malformed JSON file or one without
``images``/``annotations``/``categories`` stops the conversion outright.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fastlt.datasets.validate import Job, Problems, Split, is_int, load_json

NAME = "inat2018"
JSON_KEYS = ("images", "annotations", "categories")
TAXONOMY_LEVELS = ("supercategory", "kingdom")  # recorded per class in the index, for accuracy per level


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", type=Path, help="dataset root (holds train_val2018/ and the JSON files)")
    p.add_argument("--train-json", type=Path, default=None, help="default <root>/train2018.json")
    p.add_argument("--val-json", type=Path, default=None, help="default <root>/val2018.json")
    p.add_argument(
        "--splits", default="train,val", help="splits to write, comma-separated (default train,val)"
    )


def read_categories(doc: dict, where: str, problems: Problems) -> tuple[dict[int, int], list[str], list[int]]:
    """(category id → label, class names, sorted category ids) from a ``categories`` list."""
    cats = doc["categories"]
    if not isinstance(cats, list):
        problems.fatal(where, f"'categories' is a {type(cats).__name__}, expected a list")
        return {}, [], []
    by_id: dict[int, str] = {}
    for k, cat in enumerate(cats):
        at = f"{where}: categories[{k}]"
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            problems.fatal(at, "expected an object with keys 'id' and 'name'")
        elif not is_int(cat["id"]):
            problems.fatal(at, f"category id {cat['id']!r} is not an integer")
        elif int(cat["id"]) in by_id:
            problems.fatal(f"{at} (id={cat['id']})", "duplicate category id")
        else:
            by_id[int(cat["id"])] = str(cat["name"])
    ids = sorted(by_id)
    return {cid: label for label, cid in enumerate(ids)}, [by_id[i] for i in ids], ids


def read_taxonomy(doc: dict, ids: list[int]) -> dict[str, list[str]]:
    """Each level of TAXONOMY_LEVELS that every category names, as one value per class (label order); the
    index keeps it in ``settings['class_taxonomy']`` and evaluation reports accuracy per value."""
    by_id = {int(c["id"]): c for c in doc["categories"]}
    out = {}
    for level in TAXONOMY_LEVELS:
        values = [by_id[i].get(level) for i in ids]
        if ids and all(isinstance(v, str) and v for v in values):
            out[level] = values
    return out


def read_split(
    name: str, path: Path, root: Path, label_of: dict[int, int], problems: Problems, doc: dict | None = None
) -> Split | None:
    doc = load_json(path, JSON_KEYS, problems) if doc is None else doc
    if doc is None:
        return None
    for key in ("images", "annotations"):
        if not isinstance(doc[key], list):
            problems.fatal(f"{path}", f"'{key}' is a {type(doc[key]).__name__}, expected a list")
            return None
    paths, ids, where = [], [], []
    entry_of: dict[int, int] = {}  # image id -> entry index
    first_file: dict[str, str] = {}
    for k, im in enumerate(doc["images"]):
        at = f"{path}: images[{k}]"
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            missing = [key for key in ("id", "file_name") if not isinstance(im, dict) or key not in im]
            problems.add(at, f"missing key(s) {missing}", split=name)
            continue
        at = f"{at} (id={im['id']})"
        if not is_int(im["id"]) or not isinstance(im["file_name"], str):
            problems.add(at, "expected an integer 'id' and a string 'file_name'", split=name)
            continue
        if int(im["id"]) in entry_of:
            problems.add(at, f"duplicate image id (first at {where[entry_of[int(im['id'])]]})", split=name)
            continue
        if im["file_name"] in first_file:
            problems.add(
                at,
                f"duplicate file_name {im['file_name']!r} (first at {first_file[im['file_name']]})",
                split=name,
            )
            continue
        first_file[im["file_name"]] = at
        entry_of[int(im["id"])] = len(paths)
        paths.append(im["file_name"])
        ids.append(im["file_name"])
        where.append(at)

    labels = np.full(len(paths), -1, dtype=np.int64)
    annotated_at: dict[int, str] = {}
    reported: set[int] = set()  # images whose annotation was reported: they have one, a bad one
    for k, ann in enumerate(doc["annotations"]):
        at = f"{path}: annotations[{k}]"
        if not isinstance(ann, dict) or "image_id" not in ann or "category_id" not in ann:
            missing = [
                key for key in ("image_id", "category_id") if not isinstance(ann, dict) or key not in ann
            ]
            problems.add(at, f"missing key(s) {missing}", split=name)
            continue
        at = f"{at} (id={ann.get('id')}, image_id={ann['image_id']})"
        e = entry_of.get(int(ann["image_id"])) if is_int(ann["image_id"]) else None
        if e is None:
            problems.add(at, "annotation for an unknown image", split=name)
            continue
        if not is_int(ann["category_id"]) or int(ann["category_id"]) not in label_of:
            problems.add(
                at,
                f"category_id {ann['category_id']!r} is not one of the {len(label_of)} categories",
                split=name,
                entry=e,
                source_id=ids[e],
            )
            reported.add(e)
            continue
        if e in annotated_at:
            problems.add(
                at,
                f"duplicate annotation for this image (first at {annotated_at[e]})",
                split=name,
                entry=e,
                source_id=ids[e],
            )
            continue
        annotated_at[e] = at
        labels[e] = label_of[int(ann["category_id"])]
    for e in np.flatnonzero(labels < 0):
        if e not in annotated_at and e not in reported:
            problems.add(where[e], "image has no annotation", split=name, entry=int(e), source_id=ids[e])
    return Split(name, labels, ids, where, root=root, paths=paths)


def build(args) -> Job:
    root = Path(args.root)
    problems = Problems()
    wanted = [s.strip() for s in args.splits.split(",") if s.strip()]
    unknown = sorted(set(wanted) - {"train", "val"})
    if unknown or "train" not in wanted:
        problems.fatal("--splits", f"expected 'train' or 'train,val', got {args.splits!r}")
    files = {
        "train": args.train_json or root / "train2018.json",
        "val": args.val_json or root / "val2018.json",
    }
    if not root.is_dir():
        problems.fatal(str(root), "dataset root is not a directory")
    problems.raise_if_fatal()
    train_doc = load_json(files["train"], JSON_KEYS, problems)
    problems.raise_if_fatal()
    label_of, names, cat_ids = read_categories(train_doc, str(files["train"]), problems)
    problems.raise_if_fatal()
    if "val" in wanted and args.val_json is None and not files["val"].exists():
        problems.fatal(
            str(files["val"]), "file not found (pass --splits train to convert the train split alone)"
        )
        problems.raise_if_fatal()
    splits = []
    for split in wanted:
        s = read_split(
            split, Path(files[split]), root, label_of, problems, doc=train_doc if split == "train" else None
        )
        if s is not None:
            splits.append(s)
    contiguous = cat_ids == list(range(len(cat_ids)))
    taxonomy = read_taxonomy(train_doc, cat_ids)
    return Job(
        dataset=NAME,
        class_names=names,
        splits=splits,
        problems=problems,
        settings={
            "source": str(root),
            **{f"{s}_json": str(files[s]) for s in wanted},
            **({} if contiguous else {"category_ids": cat_ids}),
            **({"class_taxonomy": taxonomy} if taxonomy else {}),
        },
        default_write_mode="jpg",
    )
