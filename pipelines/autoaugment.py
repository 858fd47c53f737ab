"""AutoAugment (CIFAR-10 policy) and RandAugment (timm's ``rand-n2-m10-mstd0.5``), batched.

Each row draws everything a per-image implementation draws for it — which sub-policy or which ops, whether
each op applies, its sign, its magnitude, its interpolation — as numpy arrays (:meth:`draw`), and then every
operation runs *once* over the rows that chose it (:meth:`apply`), through the kernels of
:mod:`fastlt.pipelines.augment_ops` — or, on the CPU, as numba slots (:meth:`slots`) that run each row's ops
in one parallel pass with the rest of the step's (:func:`fastlt.pipelines.augment_numba.run_ops`).

**AutoAugment** follows ``torchvision.transforms.v2.AutoAugment(AutoAugmentPolicy.CIFAR10, fill=…)`` exactly:
one of the 25 sub-policies uniformly, each of its two ops applied when ``u ≤ p``, torchvision's ten magnitude
bins (``linspace`` in float32), a sign flip with probability ½ for the signed ops, nearest interpolation. The
released ConCutMix code uses the ``CIFAR10Policy`` of the AutoAugment reference implementation on PIL images
(same 25 sub-policies and magnitude ranges, solarize thresholds ``linspace(256, 0)`` instead of ``(255, 0)``);
fastlt's policy fills with grey 128 as that one does.

**RandAugment** follows timm's ``rand_augment_transform('rand-n2-m10-mstd0.5', {img_mean, translate_pct})``:
two of the 15 ops drawn with replacement, each applied when ``u ≤ 0.5`` at magnitude ``clip(N(10, 0.5), 0,
10)``, timm's level-to-argument rules (rotate ±30·m/10°, shear ±0.3·m/10, translate ±0.45·m/10 of the
side, enhance factor 0.1 + 1.8·m/10, posterize ``int(4·m/10)`` bits, solarize ``min(256, int(256·m/10))``,
solarize-add ``min(128, int(110·m/10))``), geometric ops bilinear or bicubic with probability ½ each and
filled with ``img_mean``. timm runs those ops on Pillow images. fastlt's photometric ops give Pillow's bytes
exactly (Pillow's integer luma, integer contrast mean and blend rounding for colour, contrast and
autocontrast); the geometric ones resample with ``grid_sample``, which cannot be Pillow's: bicubic A = −0.75
where Pillow's is −0.5, and a sample point within half a pixel outside the image blends toward the fill where
Pillow clamps it to the edge (``tests/test_augment_policies.py`` states the tolerance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fastlt.pipelines import augment_numba as fast
from fastlt.pipelines import augment_ops as ops

# AutoAugment's CIFAR-10 policy (Cubuk et al., 2019): 25 sub-policies of two (op, probability, magnitude bin).
CIFAR10_POLICY = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)
SIGNED = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
                    "Contrast", "Sharpness"})


def autoaugment_magnitudes(name: str, height: int, width: int) -> np.ndarray | None:
    """The ten magnitude bins of op ``name`` (torchvision's AutoAugment space, float32 values)."""
    bins = {
        "ShearX": (0.0, 0.3), "ShearY": (0.0, 0.3), "Rotate": (0.0, 30.0),
        "TranslateX": (0.0, 150.0 / 331.0 * width), "TranslateY": (0.0, 150.0 / 331.0 * height),
        "Brightness": (0.0, 0.9), "Color": (0.0, 0.9), "Contrast": (0.0, 0.9), "Sharpness": (0.0, 0.9),
        "Solarize": (1.0, 0.0),
    }
    if name in bins:
        return torch.linspace(*bins[name], 10).double().numpy()
    if name == "Posterize":
        return (8 - (torch.arange(10) / ((10 - 1) / 4)).round().int()).double().numpy()
    return None


def _shear_matrix(shear_deg: tuple[float, float], width: int, height: int) -> list[float]:
    """Shear about the top-left corner (the reference AutoAugment's PIL transform)."""
    return ops.inverse_affine([-width * 0.5, -height * 0.5], 0.0, [0.0, 0.0], shear_deg)


def _rotate_matrix(angle: float) -> list[float]:
    """Counter-clockwise rotation by ``angle`` degrees about the image centre."""
    return ops.inverse_affine([0.0, 0.0], -(angle % 360.0), [0.0, 0.0], [0.0, 0.0])


def _pil_matrix(coeffs, width: int, height: int) -> list[float]:
    """A PIL ``Image.transform(AFFINE, (a, b, c, d, e, f))`` (top-left origin) as an :func:`ops.affine`
    matrix (coordinates relative to the centre)."""
    a, b, c, d, e, f = coeffs
    return [a, b, a * width / 2 + b * height / 2 + c - width / 2,
            d, e, d * width / 2 + e * height / 2 + f - height / 2]


_TV_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def _tv_matrices(name: str, mags: np.ndarray, height: int, width: int) -> list[list[float]]:
    """The inverse matrices of AutoAugment's geometric op ``name`` at signed magnitudes ``mags``."""
    if name in ("ShearX", "ShearY"):
        k = 0 if name == "ShearX" else 1
        return [_shear_matrix(tuple(math.degrees(math.atan(m)) if i == k else 0.0 for i in (0, 1)), width,
                              height) for m in mags]
    if name in ("TranslateX", "TranslateY"):
        shift = [[float(int(m)), 0.0] if name == "TranslateX" else [0.0, float(int(m))] for m in mags]
        return [ops.inverse_affine([0.0, 0.0], 0.0, t, [0.0, 0.0]) for t in shift]
    return [_rotate_matrix(float(m)) for m in mags]


_TV_CODES = {"Invert": fast.INVERT, "Contrast": fast.CONTRAST, "Sharpness": fast.SHARPNESS,
             "AutoContrast": fast.AUTOCONTRAST, "Equalize": fast.EQUALIZE, "Posterize": fast.POSTERIZE,
             "Color": fast.SATURATION, "Brightness": fast.BRIGHTNESS, "Solarize": fast.SOLARIZE}


def _tv_factors(name: str, mags: np.ndarray) -> np.ndarray:
    """The numba kernel's factor of a photometric AutoAugment op at signed magnitudes ``mags``."""
    if name == "Solarize":
        return 255.0 * mags
    if name == "Posterize":
        return mags
    return 1.0 + mags


def _run_tv(name: str, x: torch.Tensor, mags: np.ndarray, fill) -> torch.Tensor:
    """AutoAugment op ``name`` at signed magnitudes ``mags`` (one per row), torchvision's meaning."""
    if name in _TV_GEOMETRIC:
        return ops.affine(x, _tv_matrices(name, mags, *x.shape[-2:]), "nearest", fill)
    if name == "Solarize":
        return ops.solarize(x, 255.0 * mags)
    if name == "Posterize":
        return ops.posterize(x, mags.astype(np.int64))
    return _run_plain(name, x, 1.0 + mags)


def _run_plain(name: str, x: torch.Tensor, factors: np.ndarray) -> torch.Tensor:
    """The ops whose meaning AutoAugment and RandAugment share (enhance ops take their factors)."""
    enhance = {"Brightness": ops.brightness, "Color": ops.saturation, "Contrast": ops.contrast,
               "Sharpness": ops.sharpness}
    if name in enhance:
        return enhance[name](x, factors)
    fixed = {"AutoContrast": ops.autocontrast, "Equalize": ops.equalize, "Invert": ops.invert}
    return fixed[name](x)


@dataclass(frozen=True)
class AutoAugment(fast.Slotted):
    """torchvision v2 ``AutoAugment(CIFAR10, fill=fill)`` (module docstring)."""

    fill: tuple[int, int, int] = (128, 128, 128)

    def draw(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        return {"sub": rng.integers(0, len(CIFAR10_POLICY), n), "u": rng.random((n, 2)),
                "neg": rng.random((n, 2)) <= 0.5}

    def apply_torch(self, x: torch.Tensor, p: dict[str, np.ndarray]) -> None:
        H, W = x.shape[-2:]
        for k in (0, 1):
            names, on, mags = self._slot(k, p, H, W)
            for name in np.unique(names[on]):
                rows = on & (names == name)
                ops.update_rows(x, rows, lambda t, i, n=str(name), m=mags: _run_tv(n, t, m[i], self.fill))

    def slots(self, x: torch.Tensor, p: dict[str, np.ndarray]):
        """The rows' two ops as :func:`fastlt.pipelines.augment_numba.run_ops` slots: codes, factors, inverse
        matrices and fills ``[n, 2, …]``."""
        H, W = x.shape[-2:]
        n = len(p["sub"])
        codes, factors = np.full((n, 2), fast.NONE), np.zeros((n, 2))
        mats, fills = np.zeros((n, 2, 6)), np.broadcast_to(np.asarray(self.fill, np.float64), (n, 2, 3))
        for k in (0, 1):
            names, on, mags = self._slot(k, p, H, W)
            for name in np.unique(names[on]):
                name = str(name)
                rows = on & (names == name)
                if name in _TV_GEOMETRIC:
                    codes[rows, k] = fast.AFFINE_NEAREST
                    mats[rows, k] = _tv_matrices(name, mags[rows], H, W)
                else:
                    codes[rows, k], factors[rows, k] = _TV_CODES[name], _tv_factors(name, mags)[rows]
        return codes, factors, mats, fills

    def _slot(self, k: int, p: dict[str, np.ndarray], H: int, W: int):
        """Op ``k`` of every row's sub-policy: its names, whether it applies, its signed magnitudes."""
        names = np.array([sub[k][0] for sub in CIFAR10_POLICY])[p["sub"]]
        prob = np.array([sub[k][1] for sub in CIFAR10_POLICY])[p["sub"]]
        bins = np.array([sub[k][2] or 0 for sub in CIFAR10_POLICY])[p["sub"]]
        on = p["u"][:, k] <= prob
        mags = np.zeros(len(names))
        for name in np.unique(names[on]):
            table = autoaugment_magnitudes(str(name), H, W)
            if table is not None:
                rows = names == name
                mags[rows] = table[bins[rows]]
        signed = np.isin(names, list(SIGNED)) & p["neg"][:, k]
        return names, on, np.where(signed, -mags, mags)


_RA_CODES = {"AutoContrast": fast.AUTOCONTRAST_PIL, "Equalize": fast.EQUALIZE, "Invert": fast.INVERT,
             "Posterize": fast.POSTERIZE, "Solarize": fast.SOLARIZE, "SolarizeAdd": fast.SOLARIZE_ADD,
             "Color": fast.SATURATION_PIL, "Contrast": fast.CONTRAST_PIL, "Brightness": fast.BRIGHTNESS,
             "Sharpness": fast.SHARPNESS}


def _ra_argument(name: str, level: np.ndarray) -> np.ndarray:
    """timm's argument of photometric op ``name`` at levels ``m / 10`` (zeros for the ops that take none)."""
    if name == "Posterize":
        return np.floor(level * 4)
    if name == "Solarize":
        return np.minimum(256, np.floor(level * 256))
    if name == "SolarizeAdd":
        return np.minimum(128, np.floor(level * 110))
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return level * 1.8 + 0.1
    return np.zeros_like(level)


def _ra_photometric(name: str, x: torch.Tensor, level: np.ndarray) -> torch.Tensor:
    """timm's photometric op ``name`` (Pillow's forms; torchvision's brightness, sharpness are Pillow's)."""
    arg = _ra_argument(name, level)
    by_argument = {"Posterize": ops.posterize, "Solarize": ops.solarize, "SolarizeAdd": ops.solarize_add,
                   "Color": ops.saturation_pil, "Contrast": ops.contrast_pil, "Brightness": ops.brightness,
                   "Sharpness": ops.sharpness}
    if name in by_argument:
        return by_argument[name](x, arg.astype(np.int64) if name in ("Posterize", "SolarizeAdd") else arg)
    if name == "AutoContrast":
        return ops.autocontrast_pil(x)
    return _run_plain(name, x, arg)


RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
_GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


@dataclass(frozen=True)
class RandAugment(fast.Slotted):
    """timm ``rand-n{layers}-m{magnitude}-mstd{magnitude_std}``, ``img_mean = fill`` (module docstring)."""

    layers: int = 2
    magnitude: float = 10.0
    magnitude_std: float = 0.5
    prob: float = 0.5
    translate_pct: float = 0.45
    fill: tuple[int, int, int] = (124, 116, 104)  # the released code's img_mean: ImageNet's mean × 255
    max_level: float = 10.0

    def draw(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        shape = (n, self.layers)
        m = rng.normal(self.magnitude, self.magnitude_std, shape) if self.magnitude_std > 0 else \
            np.full(shape, float(self.magnitude))
        return {"op": rng.integers(0, len(RAND_OPS), shape), "u": rng.random(shape),
                "m": np.clip(m, 0.0, self.max_level), "neg": rng.random(shape) > 0.5,
                "bicubic": rng.random(shape) < 0.5}

    def apply_torch(self, x: torch.Tensor, p: dict[str, np.ndarray]) -> None:
        for k in range(self.layers):
            on, level, signed = self._layer(k, p)
            for j in np.unique(p["op"][on, k]):
                name = RAND_OPS[j]
                rows = on & (p["op"][:, k] == j)
                if name not in _GEOMETRIC:
                    ops.update_rows(x, rows, lambda t, i, n=name, lv=level: _ra_photometric(n, t, lv[i]))
                    continue
                for bicubic in (False, True):
                    mode = "bicubic" if bicubic else "bilinear"
                    run = lambda t, i, n=name, md=mode, s=signed: self._geometric(n, t, s[i], md)  # noqa: E731
                    ops.update_rows(x, rows & (p["bicubic"][:, k] == bicubic), run)

    def slots(self, x: torch.Tensor, p: dict[str, np.ndarray]):
        """The rows' layers as :func:`fastlt.pipelines.augment_numba.run_ops` slots: codes, factors, inverse
        matrices and fills ``[n, layers, …]``."""
        n = len(p["op"])
        codes, factors = np.full((n, self.layers), fast.NONE), np.zeros((n, self.layers))
        mats = np.zeros((n, self.layers, 6))
        fills = np.broadcast_to(np.asarray(self.fill, np.float64), (n, self.layers, 3))
        for k in range(self.layers):
            on, level, signed = self._layer(k, p)
            for j in np.unique(p["op"][on, k]):
                name = RAND_OPS[j]
                rows = on & (p["op"][:, k] == j)
                if name in _GEOMETRIC:
                    bicubic = p["bicubic"][rows, k]
                    codes[rows, k] = np.where(bicubic, fast.AFFINE_BICUBIC, fast.AFFINE_BILINEAR)
                    mats[rows, k] = self._matrices(name, signed[rows], *x.shape[-2:])
                else:
                    codes[rows, k], factors[rows, k] = _RA_CODES[name], _ra_argument(name, level)[rows]
        return codes, factors, mats, fills

    def _layer(self, k: int, p: dict[str, np.ndarray]):
        """Layer ``k``: whether each row applies its op, its level ``m / 10`` and that level signed."""
        level = p["m"][:, k] / self.max_level
        return p["u"][:, k] <= self.prob, level, level * np.where(p["neg"][:, k], -1.0, 1.0)

    def _geometric(self, name: str, x: torch.Tensor, signed: np.ndarray, mode: str) -> torch.Tensor:
        return ops.affine(x, self._matrices(name, signed, *x.shape[-2:]), mode, self.fill)

    def _matrices(self, name: str, signed: np.ndarray, H: int, W: int) -> list[list[float]]:
        """Inverse matrices of timm's geometric op ``name`` at signed levels (Pillow's affine maps)."""
        if name == "Rotate":
            mats = [_rotate_matrix(float(v) * 30.0) for v in signed]
        elif name in ("ShearX", "ShearY"):
            s = signed * 0.3
            coeffs = [(1, v, 0, 0, 1, 0) if name == "ShearX" else (1, 0, 0, v, 1, 0) for v in s]
            mats = [_pil_matrix(c, W, H) for c in coeffs]
        else:
            t = signed * self.translate_pct
            mats = [_pil_matrix((1, 0, v * W, 0, 1, 0) if name == "TranslateXRel" else (1, 0, 0, 0, 1, v * H),
                                W, H) for v in t]
        return mats
