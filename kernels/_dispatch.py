"""Which implementation of a kernel runs: Triton, numba or the torch reference.

Every op in ``fastlt.kernels`` has a torch reference that *defines* its semantics, a Triton kernel for CUDA
and (where the CPU path matters for speed) a numba kernel. The choice, in order of precedence:

1. the op's ``backend=`` argument, when given;
2. the environment variable ``FASTLT_KERNELS`` = ``auto`` (default) | ``triton`` | ``numba`` | ``torch``;
3. ``auto``: Triton for CUDA tensors; for CPU tensors whichever of the op's numba kernel and its torch
   reference ``tools/bench kernels`` measures faster there (each op states its choice: ``cpu_auto``).

``triton`` on CPU tensors runs the Triton interpreter and therefore needs ``TRITON_INTERPRET=1`` (the tests
set it in their own process). ``numba`` forced on an op without a numba kernel, or on CUDA tensors, runs the
reference: numba is a CPU fast path, never a semantic variant.

Triton fixes interpreter vs compiler when ``triton`` is first imported (its own ``tl.sum``, ``tl.max``,
``tl.zeros`` are ``triton.jit`` functions decorated then), so ``TRITON_INTERPRET=1`` must be in the
environment before anything imports triton — in practice, a process of its own (the tests spawn one).
fastlt's kernels are plain functions decorated on first launch (:func:`jit`), keyed by the interpreter
setting, so importing ``fastlt.kernels`` compiles nothing.
"""

from __future__ import annotations

import functools
import os

import torch

# The optional compilers, imported once for every kernel module. Triton's kernels are plain functions until
# their first launch (see :func:`jit`), so a CPU-only install without triton still imports fastlt.kernels.
try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = tl = None
try:  # numba compiles lazily, on the first CPU launch (cached on disk afterwards)
    import numba
    from numba import prange
except ImportError:  # pragma: no cover
    numba = None
    prange = range

ENV = "FASTLT_KERNELS"
BACKENDS = ("auto", "triton", "numba", "torch")


def requested(backend: str | None = None) -> str:
    """The backend asked for by the argument or, failing that, by ``FASTLT_KERNELS``."""
    choice = backend if backend is not None else os.environ.get(ENV, "auto") or "auto"
    if choice not in BACKENDS:
        where = "backend=" if backend is not None else f"environment variable {ENV}="
        raise ValueError(f"{where}{choice!r}: expected one of {', '.join(BACKENDS)}")
    return choice


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def pick(device: torch.device, backend: str | None = None, *, has_numba: bool = False,
         cpu_auto: str = "numba") -> str:
    """Resolve the implementation for tensors on ``device``: ``'triton'``, ``'numba'`` or ``'torch'``.

    ``has_numba``: the op has a numba kernel for these inputs; ``cpu_auto``: what ``auto`` runs on CPU
    tensors ('numba' or 'torch', the faster one in ``tools/bench kernels``)."""
    choice = requested(backend)
    cuda = device.type == "cuda"
    if choice == "auto":
        if cuda:
            return "triton"
        return "numba" if has_numba and cpu_auto == "numba" else "torch"
    if choice == "numba":
        return "numba" if has_numba and not cuda else "torch"
    if choice == "triton" and not cuda and not interpreting():
        raise RuntimeError(
            f"{ENV}=triton on {device.type} tensors needs the Triton interpreter: "
            "set TRITON_INTERPRET=1 in the "
            "environment before the first kernel launch (or use CUDA tensors)"
        )
    return choice


@functools.cache
def _jitted(fn, interpret: bool):
    # ``interpret`` is part of the cache key: triton.jit returns an InterpretedFunction or a JITFunction
    # depending on TRITON_INTERPRET at decoration time.
    return triton.jit(fn)


def jit(fn):
    """``triton.jit(fn)`` for the current interpreter setting, decorated on first use and cached."""
    return _jitted(fn, interpreting())


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()
