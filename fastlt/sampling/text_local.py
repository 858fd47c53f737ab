"""LFM: the text-local partner distribution (exact head + rejection-sampled tail) and its partner policy.

The partner class j of an anchor of class i follows ``p(j | i) = softmax_{j≠i}(s_ij/τ)`` over the class text
similarities; the partner row is uniform within j. :class:`TextLocal` samples that softmax exactly, from an
explicit head of the ``k`` most similar classes plus a rejection-sampled tail (why not truncate: its
docstring); :func:`truncation_k` counts the neighbours a truncated table would need. The tail's rejection loop
has no bound on its number of draws, so it takes one seed from the generator and runs a splitmix64 stream per
draw (:func:`_splitmix`).
"""

from __future__ import annotations

import numba
import numpy as np

from fastlt.sampling.common import _cat, _jit, _to_numpy
from fastlt.sampling.rows import _RowSpace, _uniform_index, class_of_rows

HEAD_K = 256  # text-local head size: ~1 ms per 512 exact draws at C = 8142 (tools/bench sampler)


@_jit
def _splitmix(state):
    """splitmix64 step: (next state, a uniform double in [0, 1) from the top 53 bits)."""
    state = state + np.uint64(0x9E3779B97F4A7C15)
    z = state
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return state, np.float64(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@_jit
def _in_sorted(a, lo, hi, v):
    """Whether the sorted a[lo:hi] holds v."""
    end = hi
    while lo < hi:
        m = (lo + hi) >> 1
        if a[m] < v:
            lo = m + 1
        else:
            hi = m
    return lo < end and a[lo] == v


@numba.njit(nogil=True, cache=True, fastmath=True)
def _dot(a, b):
    """float32 rows, float64 sum; reassociation allowed so the loop vectorises (a serial sum would wait
    one add latency per element). Products of float32 values are exact in float64, so only the order of
    the additions differs from the builder's matmul: ~1e-16, inside the acceptance test's min(1, ·)."""
    s = 0.0
    for d in range(a.shape[0]):
        s += np.float64(a[d]) * np.float64(b[d])
    return s


@_jit
def _draw_text(indptr, cols, cum, head_sorted, tail_mass, tail_max, row_max, allowed, emb, sim, mode, tau,
               anchors, x, seed):
    """Text-local partner class per anchor class (see :class:`TextLocal`); −1 where a row is empty.
    ``mode`` 0: head only; 1: tail similarities from ``emb`` (dot products); 2: from the ``sim`` matrix.
    Rejection proposals come from a splitmix64 stream per draw, seeded from ``seed`` and the draw index."""
    n = anchors.shape[0]
    out = np.empty(n, np.int64)
    A = allowed.shape[0]
    max_tries = 1000 + 64 * A  # only reached if every tail weight underflows (a tail of mass ~1e-300)
    for k in range(n):
        i = anchors[k]
        lo, hi = indptr[i], indptr[i + 1]
        H = cum[hi - 1] if hi > lo else 0.0
        T = tail_mass[i] if mode > 0 else 0.0
        if H + T <= 0.0:
            out[k] = -1
            continue
        u = x[k] * (H + T)
        if T > 0.0 and u >= H:  # the tail: propose uniform over allowed classes, accept ∝ w_ij / w̄_i
            state = seed ^ (np.uint64(k + 1) * np.uint64(0xD1B54A32D192ED03))
            found = False
            for _ in range(max_tries):
                state, r1 = _splitmix(state)
                j = allowed[min(np.int64(r1 * A), A - 1)]
                if j == i or _in_sorted(head_sorted, lo, hi, j):
                    continue
                if mode == 1:
                    s = _dot(emb[i], emb[j])
                else:
                    s = sim[i, j]
                w = np.exp((s - row_max[i]) / tau)
                state, r2 = _splitmix(state)
                if r2 * tail_max[i] < w:
                    out[k] = j
                    found = True
                    break
            if found or hi == lo:
                if not found:
                    out[k] = -1
                continue
            u = x[k] * H
        a, b = lo, hi - 1  # the head: first index whose cumulative weight exceeds u
        while a < b:
            m = (a + b) >> 1
            if cum[m] > u:
                b = m
            else:
                a = m + 1
        out[k] = cols[a]
    return out



class TextLocal:
    """LFM's local partner distribution ``p(j | i) = exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ)``, j ≠ i.

    Row i is split into a *head*, its ``k`` most similar classes with explicit cumulative weights
    ``w_ij = exp((s_ij − m_i)/τ)`` (``m_i = max_{j≠i} s_ij``, so the top weight is 1 and nothing overflows),
    and a *tail*, every other allowed class. A draw takes ``u`` uniform in ``[0, H_i + T_i)`` (head and tail
    mass): ``u < H_i`` picks a head class by binary search; otherwise the tail is sampled *exactly* by
    rejection — propose j uniform over the allowed classes, reject j = i or j in the head, accept with
    probability ``w_ij / w̄_i`` where ``w̄_i`` is the largest tail weight (that of the (k+1)-th neighbour).
    An accepted j has probability ∝ w_ij over the tail, so the draw follows the full softmax with no
    truncation, from O(C·k + C·d) memory and ``s_ij`` recomputed from the class embeddings on demand.

    Why not truncate: text embeddings put class names in a narrow cosine band (all-MiniLM-L6-v2 on the 1000
    ImageNet class prompts: s̄ ≈ 0.35, σ ≈ 0.08), and at τ = 0.05 the softmax over j is broad — keeping the
    dropped mass below 1e-3 needs k ≈ 930 of 999 neighbours there, i.e. a dense C×C table (≈ 1 GB as CSR at
    C = 8142). ``tail=False`` gives that truncated form anyway (top ``k``, or with ``k=None`` the fewest
    neighbours whose dropped mass is below ``eps``), renormalised over the kept neighbours;
    ``truncated_mass[i]`` is what row i drops (0 with the exact tail).

    The head must be explicit; the tail needs similarities: from embeddings (cosine, recomputed with one dot
    product per proposal) or a dense similarity matrix (looked up). ``allowed`` (bool[C]) removes classes
    that can never be a partner (a class that owns no rows of the shard) from numerator and denominator.
    """

    def __init__(self, indptr, cols, cum, tau: float, *, truncated_mass=None, tail_mass=None, tail_max=None,
                 row_max=None, allowed=None, emb=None, sim=None):
        self.indptr = np.ascontiguousarray(indptr, np.int64)
        self.cols = np.ascontiguousarray(cols, np.int32)  # class ids: 4 bytes of the 12 per head entry
        self.cum = np.ascontiguousarray(cum, np.float64)
        self.tau = float(tau)
        C = self.num_classes = self.indptr.shape[0] - 1
        zeros = np.zeros(C)
        self.truncated_mass = zeros if truncated_mass is None else np.asarray(truncated_mass, np.float64)
        self.tail_mass = zeros if tail_mass is None else np.ascontiguousarray(tail_mass, np.float64)
        self.tail_max = zeros if tail_max is None else np.ascontiguousarray(tail_max, np.float64)
        self.row_max = zeros if row_max is None else np.ascontiguousarray(row_max, np.float64)
        self.allowed = np.ones(C, bool) if allowed is None else np.asarray(allowed, bool)
        self._allowed_idx = np.flatnonzero(self.allowed).astype(np.int64)
        self.emb = np.zeros((0, 0), np.float32) if emb is None else np.ascontiguousarray(emb, np.float32)
        self.sim = np.zeros((0, 0)) if sim is None else np.ascontiguousarray(sim, np.float64)
        # head columns sorted per row: "is j in row i's head" is one binary search
        self._head_sorted = self.cols.copy()
        for i in range(C):
            self._head_sorted[self.indptr[i]:self.indptr[i + 1]].sort()

    @property
    def row_lengths(self) -> np.ndarray:
        """Head size of every row."""
        return np.diff(self.indptr)

    # ------------------------------------------------------------------------------------------ builders
    @classmethod
    def from_embeddings(cls, features, tau: float = 0.05, *, k: int | None = HEAD_K, tail: bool = True,
                        eps: float = 1e-3, allowed=None, block: int = 256) -> TextLocal:
        """From class text features ``float[C, d]`` (normalised here; s = cosine), a block of rows at a
        time (never the whole C×C matrix)."""
        f = _unit_rows(features)
        return cls._build(lambda lo, hi: f[lo:hi] @ f.T, f.shape[0], tau, k, tail, eps, allowed, block, emb=f)

    @classmethod
    def from_similarity(cls, sim, tau: float = 0.05, *, k: int | None = HEAD_K, tail: bool = True,
                        eps: float = 1e-3, allowed=None, block: int = 256) -> TextLocal:
        """From a dense class similarity matrix ``sim float[C, C]`` (kept for the tail when ``tail``)."""
        sim = np.asarray(_to_numpy(sim), np.float64)
        if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
            raise ValueError(f"sim: expected a square [C, C] similarity matrix, got shape {sim.shape}")
        return cls._build(lambda lo, hi: np.array(sim[lo:hi]), sim.shape[0], tau, k, tail, eps, allowed,
                          block, sim=sim if tail else None)

    @classmethod
    def _build(cls, rows_of, C, tau, k, tail, eps, allowed, block, emb=None, sim=None) -> TextLocal:
        if not tau > 0:
            raise ValueError(f"tau: expected a positive temperature, got {tau}")
        if k is not None and k < 1:
            raise ValueError(f"k: expected a positive head size, got {k}")
        if tail and k is None:
            raise ValueError("k=None (automatic truncation) needs tail=False; with the exact tail k is the "
                             "head size")
        ok = np.ones(C, bool) if allowed is None else np.asarray(allowed, bool)
        if ok.shape != (C,):
            raise ValueError(f"allowed: expected bool[{C}], got shape {ok.shape}")
        indptr, cols, cum = [0], [], []
        trunc, tail_mass, tail_max, row_max = (np.zeros(C) for _ in range(4))
        for lo in range(0, C, block):
            s = _masked_rows(rows_of(lo, min(lo + block, C)), lo, ok)
            m = s.max(axis=1, keepdims=True)
            w = np.exp((s - np.where(np.isfinite(m), m, 0.0)) / tau)  # 0 at −inf (self, not allowed)
            total = w.sum(axis=1)
            for t in range(s.shape[0]):
                i = lo + t
                avail = int(np.count_nonzero(w[t]))
                if k is None:  # fewest neighbours whose dropped mass is below eps
                    order = np.argsort(-w[t], kind="stable")[:avail]
                    c = np.cumsum(w[t, order])
                    kk = min(int(np.searchsorted(c, (1 - eps) * total[t], side="right")) + 1, avail)
                else:
                    kk = min(k, avail)
                    part = np.argpartition(-w[t], kk - 1)[:kk] if 0 < kk < C else np.arange(C)[:kk]
                    order = part[np.argsort(-w[t, part], kind="stable")]
                head = order[:kk].astype(np.int64)
                hw = w[t, head]
                cols.append(head)
                cum.append(np.cumsum(hw))
                indptr.append(indptr[-1] + kk)
                rest = max(total[t] - hw.sum(), 0.0) if kk < avail else 0.0
                row_max[i] = m[t, 0] if np.isfinite(m[t, 0]) else 0.0
                if tail and rest > 0:
                    tail_mass[i] = rest
                    outside = np.ones(C, bool)
                    outside[head] = False
                    tail_max[i] = w[t, outside].max()
                else:
                    trunc[i] = rest / total[t] if total[t] > 0 else 0.0
        return cls(np.array(indptr), _cat(cols, np.int64), _cat(cum, np.float64), tau, truncated_mass=trunc,
                   tail_mass=tail_mass if tail else None, tail_max=tail_max if tail else None,
                   row_max=row_max, allowed=ok, emb=emb if tail else None, sim=sim)

    # ------------------------------------------------------------------------------------------ queries
    def probabilities(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(classes, p) row i samples from: the head and, with the exact tail, every other allowed class."""
        lo, hi = self.indptr[i], self.indptr[i + 1]
        head, c = self.cols[lo:hi], self.cum[lo:hi]
        hw = np.diff(c, prepend=0.0)
        if self.tail_mass[i] == 0:
            return head, hw / (c[-1] if c.size else 1.0)
        cand = self._allowed_idx[(self._allowed_idx != i) & ~np.isin(self._allowed_idx, head)]
        if self.emb.size:
            e = self.emb.astype(np.float64)
            s = e[cand] @ e[i]
        else:
            s = self.sim[i, cand]
        tw = np.exp((s - self.row_max[i]) / self.tau)
        z = hw.sum() + tw.sum()
        return np.concatenate([head, cand]), np.concatenate([hw, tw]) / z

    def draw(self, anchor_classes, rng: np.random.Generator) -> np.ndarray:
        """Partner class per anchor class (−1 where the anchor has no possible partner)."""
        a = np.ascontiguousarray(anchor_classes, np.int64)
        x = rng.random(a.shape[0])
        seed = int(rng.integers(0, 2**63 - 1))
        mode = 0 if not np.any(self.tail_mass) else (1 if self.emb.size else 2)
        return _draw_text(self.indptr, self.cols, self.cum, self._head_sorted, self.tail_mass, self.tail_max,
                          self.row_max, self._allowed_idx, self.emb, self.sim, mode, self.tau, a, x,
                          np.uint64(seed))


def _unit_rows(features) -> np.ndarray:
    """Unit rows, rounded to float32 and returned as float64: the sampler keeps float32 embeddings (half the
    bytes per rejection proposal), and products of float32 values are exact in float64, so the builder's
    weights and the kernel's agree to float64 rounding — the sampled law is the softmax of these values."""
    f = np.asarray(_to_numpy(features), np.float64)
    if f.ndim != 2:
        raise ValueError(f"features: expected [C, d] class embeddings, got shape {f.shape}")
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    if np.any(norms == 0):
        bad = int(np.flatnonzero(norms[:, 0] == 0)[0])
        raise ValueError(f"features: class {bad} has a zero embedding")
    return (f / norms).astype(np.float32).astype(np.float64)


def _masked_rows(s: np.ndarray, lo: int, ok: np.ndarray) -> np.ndarray:
    """Similarity rows lo… with self and disallowed classes at −inf (out of numerator and denominator)."""
    s[np.arange(s.shape[0]), np.arange(lo, lo + s.shape[0])] = -np.inf
    s[:, ~ok] = -np.inf
    return s


def truncation_k(features, tau: float = 0.05, eps: float = 1e-3, block: int = 256) -> np.ndarray:
    """int64[C]: neighbours each class must keep so a truncated text-local row drops < ``eps`` of its
    softmax mass (what ``TextLocal(tail=False, k=None)`` would store), without storing them."""
    f = _unit_rows(features)
    C = f.shape[0]
    out = np.zeros(C, np.int64)
    ok = np.ones(C, bool)
    for lo in range(0, C, block):
        s = _masked_rows(f[lo:lo + block] @ f.T, lo, ok)
        w = np.exp((s - s.max(axis=1, keepdims=True)) / tau)
        w = -np.sort(-w, axis=1)
        c = np.cumsum(w, axis=1)
        for t in range(w.shape[0]):
            out[lo + t] = min(int(np.searchsorted(c[t], (1 - eps) * c[t, -1], side="right")) + 1, C - 1)
    return out


class TextLocalPartner(_RowSpace):
    """LFM: anchor instance-uniform (or given), partner class j ~ ``neighbours`` given the anchor's class,
    partner row uniform in j. An anchor class without neighbours gets an instance-uniform partner."""

    def __init__(self, offsets, neighbours: TextLocal):
        super().__init__(offsets)
        if neighbours.num_classes != self.num_classes:
            raise ValueError(f"neighbours cover {neighbours.num_classes} classes, the shard has "
                             f"{self.num_classes}")
        drawable = np.isin(np.arange(self.num_classes), neighbours.cols)
        if np.any(neighbours.tail_mass):
            drawable |= neighbours.allowed
        empty = np.flatnonzero((self.sizes == 0) & drawable)
        if empty.size:
            raise ValueError(f"neighbours may draw class {int(empty[0])}, which owns no rows; build them "
                             "with allowed=class_counts > 0")
        self.neighbours = neighbours

    def pairs(self, rng: np.random.Generator, n: int | None = None, anchors=None):
        a = self.anchor_rows(rng, n, anchors, self.uniform_rows)
        j = self.neighbours.draw(class_of_rows(self.offsets, a), rng)
        x = rng.random(a.shape[0])
        b = _uniform_index(x, self.num_rows)  # fallback for anchors without any partner class
        has = j >= 0
        b[has] = self.rows_in(j[has], x[has])
        return a, b

