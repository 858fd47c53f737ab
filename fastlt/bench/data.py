"""Benchmark data: synthetic iNat-2018-layout JPEGs (``tools/convert synth-inat``) converted into shards with
``tools/convert inat2018``, made once under a work folder and reused by later runs."""

from __future__ import annotations

from pathlib import Path


def synthetic_inat(work: Path, images: int, classes: int, workers: int) -> Path:
    """The dataset root of ``images`` synthetic train JPEGs (long side 500–800 px) in ``classes`` classes."""
    from fastlt.convert import main as convert

    src = Path(work) / f"synth-{images}-{classes}"
    if not (src / "val2018.json").exists():
        rc = convert(
            [
                "synth-inat",
                "--out",
                str(src),
                "--images",
                str(images),
                "--classes",
                str(classes),
                "--workers",
                str(workers),
            ]
        )
        if rc:
            raise SystemExit(rc)
    return src


def synthetic_shard(work: Path, images: int, classes: int, max_res: int | None, workers: int) -> Path:
    """Data root holding ``inat2018/{train,val}.beton`` of the synthetic set, written at ``max_res``
    (``None``: full resolution)."""
    from fastlt.convert import main as convert

    tag = max_res if max_res else "full"
    data = Path(work) / f"data-{images}-{classes}-{tag}"
    if (data / "inat2018" / "val.index.json").exists():
        return data
    src = synthetic_inat(work, images, classes, workers)
    argv = ["inat2018", str(src), "--out", str(data), "--workers", str(workers)]
    if max_res:
        argv += ["--max-resolution", str(max_res)]
    rc = convert(argv)
    if rc:
        raise SystemExit(rc)
    return data
