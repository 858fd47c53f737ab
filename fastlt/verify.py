"""``fastlt verify PATH...``: check shards in full — every byte hashed, whatever the ``.verified`` cache says.

A PATH is a ``.beton``, an ``.index.json``, or a folder (every shard below it: a dataset folder or a whole
data root). Each shard gets every check of ``fastlt.shards.open_shard`` — its index's digest and
consistency, its size, its label column against the class offsets — and a full sha256 with a progress bar;
splits of one conversion are then checked against their train split (``check_same_conversion``).

    fastlt verify data/inat2018            # both splits of one dataset
    fastlt verify data                     # every shard under the data root

Exit status: 0 when every shard verifies, 1 when one does not (each is named, with what is wrong), 2 when a
PATH names nothing to verify. A shard that verifies gets its ``.verified`` cache renewed; one that does not
loses it, so the next open hashes it again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastlt.shards import Shard, ShardError, check_same_conversion, open_shard


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastlt verify",
        description=__doc__.split("\n\n")[0].replace("``", ""),
        epilog="The fast check made by every open trusts a file whose size, mtime, ctime, inode and device "
        "are those it had when last hashed; this command does not.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help=".beton, .index.json, or a folder of shards")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while hashing")
    return p


def find_shards(path: Path) -> list[Path]:
    """The ``.index.json`` files ``path`` names: itself (or the one beside a ``.beton``), or all below it."""
    if path.is_dir():
        return sorted(path.rglob("*.index.json"))
    if path.name.endswith(".beton"):
        return [path.with_name(path.name[: -len(".beton")] + ".index.json")]
    return [path]


def check_conversions(shards: list[Shard]) -> list[str]:
    """Problems between splits of one conversion (one folder): the train split's counts must be the train
    counts every other split carries."""
    problems = []
    by_folder: dict[Path, list[Shard]] = {}
    for s in shards:
        by_folder.setdefault(s.beton_path.parent, []).append(s)
    for group in by_folder.values():
        splits = group[0].index.settings.get("splits")
        train = next((s for s in group if isinstance(splits, list) and splits[:1] == [s.index.split]), None)
        if train is None or len(group) < 2:
            continue
        try:
            check_same_conversion(train, *(s for s in group if s is not train))
        except ShardError as e:
            problems.append(str(e))
    return problems


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    found = []
    for raw in args.paths:
        path = Path(raw)
        if not path.exists():
            print(f"fastlt verify: {path}: no such file or folder", file=sys.stderr)
            return 2
        shards = find_shards(path)
        if not shards:
            print(f"fastlt verify: {path}: no shard (.index.json) below it", file=sys.stderr)
            return 2
        found += shards
    ok, failed = [], 0
    for index_path in dict.fromkeys(found):  # once each, in order
        try:
            shard = open_shard(index_path, full=True, progress=not args.no_progress)
        except ShardError as e:
            failed += 1
            print(f"FAILED  {e}")
            continue
        ok.append(shard)
        i = shard.index
        print(f"ok      {shard.beton_path} ({i.num_rows:,} rows, {i.num_classes:,} classes, "
              f"{i.beton_size:,} bytes, sha256 {i.beton_sha256[:16]}…)")
    for problem in check_conversions(ok):
        failed += 1
        print(f"FAILED  {problem}")
    print(f"{len(ok)} shard{'s' if len(ok) != 1 else ''} verified, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
