"""Helpers every sampling module shares: the numba decorator of the kernels and array conversions."""

from __future__ import annotations

import numba
import numpy as np
import torch

_jit = numba.njit(nogil=True, cache=True)


def _to_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _cat(parts, dtype):
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
