"""Shared helpers for benchmarks: robust timing, a printed table with ratios, a JSON record."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def median_time(
    fn: Callable[[], object], repeats: int = 5, warmup: int = 1, sync: Callable[[], None] | None = None
):
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
        if sync:
            sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def keep_freed_memory() -> bool:
    """Tell glibc's allocator to keep freed memory instead of returning it to the kernel.

    A 128 × 224² batch in fp32 is 77 MB: far above glibc's mmap threshold, so every such tensor is a fresh
    mapping whose first touch page-faults 19k pages. On a VM that costs more than the arithmetic (a numba mix
    goes from ~6 ms to ~55 ms), and it is not what a training loop sees in steady state (a caching allocator,
    or a long-lived heap, reuses its buffers). Applied to the whole process, so every row of a table — fastlt
    and baselines alike — is measured in that steady state. Returns False where unavailable (non-glibc).
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        kept = libc.mallopt(m_mmap_threshold, 1 << 30)
        return bool(kept) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def machine() -> dict:
    info = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def print_table(title: str, rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Print rows as an aligned text table; returns the text."""
    cells = [[str(c) for c in columns]] + [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = [title, "  ".join(c.ljust(w) for c, w in zip(cells[0], widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells[1:]]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def _fmt(v) -> str:
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    return str(v)


def write_json(out_dir: str | os.PathLike | None, name: str, record: dict) -> Path | None:
    if not out_dir:
        return None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **record}, indent=1))
    print(f"wrote {path}")
    return path
