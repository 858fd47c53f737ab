"""Nearest-name hints for unknown names: ``unknown method 'mixupp'; did you mean mixup? (choose from ...)``.

One wording for every "unknown X" message in fastlt. Stdlib only: the CLI imports it before anything heavy.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable


def did_you_mean(
    name: object, choices: Iterable, *, n: int = 3, cutoff: float = 0.6, fmt: Callable[[str], str] = str
) -> str:
    """``"; did you mean a, b or c?"`` naming up to ``n`` choices at least ``cutoff`` similar to ``name``
    (closest first, as difflib ranks them), each written by ``fmt``; ``""`` when none is close enough."""
    near = difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=cutoff)
    near = [fmt(c) for c in near]
    if not near:
        return ""
    listed = near[0] if len(near) == 1 else f"{', '.join(near[:-1])} or {near[-1]}"
    return f"; did you mean {listed}?"


def unknown_name(kind: str, name: object, choices: Iterable, *, n: int = 3, cutoff: float = 0.6) -> str:
    """The whole message: ``"unknown <kind> 'x'; did you mean y? (choose from a, b, c)"``."""
    choices = [str(c) for c in choices]
    hint = did_you_mean(name, choices, n=n, cutoff=cutoff)
    return f"unknown {kind} {name!r}{hint} (choose from {', '.join(choices)})"


__all__ = ["did_you_mean", "unknown_name"]
