"""Pair sampling: one numba engine that turns a class-pair distribution into explicit shard rows.

In long-tailed mixing the choice of partner *is* the method. Every policy here answers the same question —
"which two shard rows does mixed sample k combine?" — and returns explicit ``(row_a, row_b)`` int64 arrays.
Because a class-indexed shard stores class ``c`` in rows ``offsets[c]:offsets[c+1]``, "an image of class c"
is one integer draw, so every policy is a *class-level* draw followed by the same row draw:

    policy            anchor a                         partner b
    ----------------  -------------------------------  -------------------------------------------------
    InstanceUniform   given, or uniform over rows      uniform over rows            (Mixup/CutMix/Remix)
    ClassBalanced     given, or class-balanced         class uniform, row uniform in it (ConCutMix fg)
    TextLocal         given, or uniform over rows      class j ~ p(j|class(a)) = softmax_{j≠i}(s_ij/τ) (LFM)
    ConfusionPartner  class i uniform over the label   class j ∝ K[i, j], accumulated confusion counts
                      set (NOT ∝ K's row totals)       (CP-Mix)

The *label set* is the classes that own at least one row of the shard (a class with no rows cannot be drawn).

Randomness
----------
Every draw takes a ``numpy.random.Generator``; the plan producers (:mod:`fastlt.producers`) make one per step
from ``step_seed(seed, epoch, step, offset)``, so a step's rows are a pure function of the seed, the step and
the sampler state — no generator state has to be checkpointed. Kernels receive uniform doubles ``x ∈ [0, 1)``
and turn them into integers as ``min(⌊x·n⌋, n − 1)``; the bias of that map is below ``n·2⁻⁵³``. The one loop
with an unbounded number of draws (the text-local tail's rejection) takes a seed from the generator and runs a
splitmix64 stream per draw.

Confusion counts (CP-Mix)
-------------------------
:class:`ConfusionCounts` keeps K[y, ŷ] sparse, O(C + nnz) memory. Row ``i`` is an open-addressing hash
table of ``cap_i`` slots (a power of two, load ≤ 3/4) in one flat int32 arena: slot ``s`` holds
``(key_s, K[i, key_s])`` (key −1: empty). Above the slot counts sits a 16-ary sum tree: node t of level l
holds the sum of nodes 16t … 16t+15 of level l−1 (level 0 = the slot counts). Both operations the trainer
needs are O(log₁₆ cap_i) with no rebuild:

* update (y, ŷ): hash-probe row y for column ŷ (insert if new), then add 1 to the slot and its ancestors;
* draw j ∝ K[i, ·]: ``u`` uniform in ``[0, K_i·)``; at each level, walk the 16 child sums of the current node,
  subtracting each sum that u passes; the walk ends at the unique slot s with ``prefix(s) ≤ u < prefix(s+1)``,
  an event of probability ``K[i, key_s] / K_i·`` exactly. Empty slots count 0 and are never returned.

Why this shape: a per-row cumulative sum draws by binary search but makes every update O(row length); an alias
table draws in O(1) but is rebuilt after every update of its row; a binary Fenwick tree is logarithmic in both
but touches a new cache line on most of its ~log₂ cap levels. Sixteen int32 child sums fill one 64-byte line,
so a draw reads ~1 line per level (2 for the interleaved slots) and rows up to 4096 slots need two levels.
Row regions start on 128-byte boundaries. Draws are bound by memory latency (the arena is ~18 MB for 10⁶
pairs), so the walk runs level by level across all draws of a step: each round's loads are independent and
overlap, where draw by draw they would form one dependent chain.

A row grows by doubling into fresh arena space (its slots re-inserted in slot order, so the layout is a
deterministic function of the update stream); the arena is compacted into a 1.25× larger one when it is full.
The slot layout is part of the state: :meth:`ConfusionCounts.state_dict` stores it, so a restored run draws
exactly the pairs of the uninterrupted one. Row totals above 2³¹ − 1 raise ``OverflowError`` (int32 sums).

Classes without recorded pairs (fastlt's choice — the CP-Mix paper is silent)
------------------------------------------------------------------------------
``fallback='instance'`` (default): class i stays uniform over the label set; a class with no recorded pairs —
every class in the first steps, before any mistake is recorded — gets an instance-uniform partner (plain
Mixup for that sample). The tail is never starved of anchors and the early stage degrades to ordinary Mixup.
``fallback='redraw'``: i is uniform over the classes that *have* pairs; before any pair exists at all, the
partner is instance-uniform. A drawn partner class j that owns no rows of the shard (the model predicted a
class absent from training) also falls back to an instance-uniform partner.
"""

from __future__ import annotations

from collections.abc import Mapping

import numba
import numpy as np
import torch

__all__ = [
    "ConfusionCounts",
    "InstanceUniform",
    "ClassBalanced",
    "TextLocal",
    "TextLocalPartner",
    "truncation_k",
    "HEAD_K",
    "ConfusionPartner",
    "class_of_rows",
    "check_offsets",
    "make_producer",
]

_EMPTY = -1
_MIN_CAP = 8
_FALLBACKS = ("instance", "redraw")
HEAD_K = 256  # text-local head size: ~1 ms per 512 exact draws at C = 8142 (tools/bench sampler)
_jit = numba.njit(nogil=True, cache=True)


# ================================================================================================ kernels
# Row i of the confusion counts owns arena[base_i : base_i + region(cap_i)] (int32):
#   [key_0, count_0, key_1, count_1, …, key_{cap−1}, count_{cap−1}]   the hash table; count = K[i, key]
#   [level 1: cap/16 sums] [level 2: cap/256 sums] …                  16-ary sum tree over the counts
# Node t of level l holds the sum of nodes 16t … 16t+15 of level l−1 (level 0 = the slot counts); levels are
# stored while they have more than one node (the row total is kept in row_total). Sixteen int32 child sums
# fill one 64-byte cache line, so a draw reads one line per level and an update writes one per level.
_B = 16  # branching factor of the sum tree
_LOG_B = 4
_ALIGN = 32  # row regions start on 128-byte boundaries (the arena itself is 128-byte aligned)


@_jit
def _levels(cap):
    """Number of stored levels above the slot counts: level l has cap >> 4l nodes, kept while > 1."""
    L = 0
    n = cap >> _LOG_B
    while n > 1:
        L += 1
        n >>= _LOG_B
    return L


@_jit
def _region(cap):
    """int32s a row of ``cap`` slots occupies, rounded up to 32 (128 bytes: an aligned pair of cache lines,
    which the adjacent-line prefetcher fetches together) so every group of 16 slots starts a line pair."""
    size = 2 * cap
    n = cap >> _LOG_B
    while n > 1:
        size += n
        n >>= _LOG_B
    return (size + _ALIGN - 1) // _ALIGN * _ALIGN


@_jit
def _slot_hash(j, mask):
    """Slot of column j in a table of ``mask + 1`` slots: murmur3's 32-bit finaliser, so consecutive class
    ids (confusions cluster among neighbouring labels) scatter over the table instead of colliding."""
    h = np.uint32(j)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return np.int64(h) & mask


@_jit
def _probe(arena, base, cap, j):
    """Slot holding column j in the row at ``base``, or the empty slot where it would go (linear probing)."""
    mask = cap - 1
    s = _slot_hash(j, mask)
    while arena[base + 2 * s] != _EMPTY and arena[base + 2 * s] != j:
        s = (s + 1) & mask
    return s


@_jit
def _tree_add(arena, base, cap, s, w):
    """K[i, key_s] += w: the slot count and its ancestor on every level."""
    arena[base + 2 * s + 1] += w
    off = base + 2 * cap
    n = cap >> _LOG_B
    while n > 1:
        s >>= _LOG_B
        arena[off + s] += w
        off += n
        n >>= _LOG_B


@_jit
def _tree_build(arena, base, cap):
    """Fill every level from the slot counts below it, O(cap)."""
    off = base + 2 * cap
    n = cap >> _LOG_B
    prev_off, prev_stride, prev_n = base + 1, 2, cap  # level 0: counts at odd positions
    while n > 1:
        for t in range(n):
            acc = np.int32(0)
            for c in range(_B * t, min(_B * t + _B, prev_n)):
                acc += arena[prev_off + prev_stride * c]
            arena[off + t] = acc
        prev_off, prev_stride, prev_n = off, 1, n
        off += n
        n >>= _LOG_B


def _aligned_arena(size: int) -> np.ndarray:
    """Zeroed int32[size] whose first element sits on a 128-byte boundary."""
    buf = np.zeros(size + _ALIGN, np.int32)
    skip = (-buf.ctypes.data // 4) % _ALIGN
    return buf[skip:skip + size]


@_jit
def _live(row_cap):
    live = 0
    for i in range(row_cap.shape[0]):
        if row_cap[i] > 0:
            live += _region(row_cap[i])
    return live


@_jit
def _compact_into(row_base, row_cap, arena, out):
    """Copy every row's region, in row order, to the front of ``out``; returns the int32s used."""
    pos = 0
    for i in range(row_cap.shape[0]):
        if row_cap[i] > 0:
            r, b = _region(row_cap[i]), row_base[i]
            out[pos:pos + r] = arena[b:b + r]
            row_base[i] = pos
            pos += r
    return pos


@_jit
def _grow_row(i, row_base, row_cap, arena, used):
    """Move row i into a table twice its size (or the initial size) at ``used``, re-inserting its slots in
    slot order. The caller guarantees the room."""
    cap = row_cap[i]
    new_cap = max(_MIN_CAP, 2 * cap)
    r = _region(new_cap)
    old = row_base[i]
    nb = used
    arena[nb:nb + r] = 0
    for s in range(new_cap):
        arena[nb + 2 * s] = _EMPTY
    for s in range(cap):
        j = arena[old + 2 * s]
        if j != _EMPTY:
            t = _probe(arena, nb, new_cap, j)
            arena[nb + 2 * t] = j
            arena[nb + 2 * t + 1] = arena[old + 2 * s + 1]
    _tree_build(arena, nb, new_cap)
    row_base[i] = nb
    row_cap[i] = new_cap
    return used + r


_ADD_DONE, _ADD_BAD, _ADD_OVERFLOW, _ADD_FULL = 0, 1, 2, 3


@_jit
def _add_pairs(row_base, row_cap, row_nnz, row_total, arena, used, y, yhat, w, C, start):
    """K[y[k], yhat[k]] += w[k] for k ≥ start with y ≠ ŷ, in order. Returns (used, code, k, need):
    _ADD_DONE; _ADD_BAD (pair k has a class outside [0, C) or w < 0 — checked before anything is added);
    _ADD_OVERFLOW (row y[k] would pass 2³¹ − 1); _ADD_FULL (row y[k] must grow and the arena lacks ``need``
    int32s: the caller compacts into a larger arena and calls again with start = k)."""
    n = y.shape[0]
    if start == 0:
        for k in range(n):
            if y[k] < 0 or y[k] >= C or yhat[k] < 0 or yhat[k] >= C or w[k] < 0:
                return used, _ADD_BAD, k, 0
    for k in range(start, n):
        i, j, v = y[k], yhat[k], w[k]
        if i == j or v == 0:
            continue
        if row_total[i] + v > 2147483647:
            return used, _ADD_OVERFLOW, k, 0
        cap = row_cap[i]
        s = 0
        if cap > 0:
            s = _probe(arena, row_base[i], cap, j)
        if cap == 0 or (arena[row_base[i] + 2 * s] == _EMPTY and 4 * (row_nnz[i] + 1) > 3 * cap):
            # a new column would push the load past 3/4 (probes stay short): double the table first
            need = _region(max(_MIN_CAP, 2 * cap))
            if used + need > arena.shape[0]:
                return used, _ADD_FULL, k, need
            used = _grow_row(i, row_base, row_cap, arena, used)
            cap = row_cap[i]
            s = _probe(arena, row_base[i], cap, j)
        if arena[row_base[i] + 2 * s] == _EMPTY:
            arena[row_base[i] + 2 * s] = j
            row_nnz[i] += 1
        _tree_add(arena, row_base[i], cap, s, v)
        row_total[i] += v
    return used, _ADD_DONE, n, 0


@_jit
def _draw_confusion(row_base, row_cap, row_total, arena, offsets, pool, x, direct):
    """CP-Mix pairs. ``x`` float64[4, n]: partner mass, row in i, row in j, class choice. Anchor class
    i = pool[k] if ``direct`` (given anchors) else pool[⌊x3·P⌋] (uniform over the pool).

    If row i has pairs, u = ⌊x0·K_i·⌋ and j is the key of the slot s with prefix(s) ≤ u < prefix(s + 1);
    otherwise (or if j owns no rows) the partner row is uniform over the whole shard. The walk: from the top
    level down, scan the (≤ 16) child sums of the current node, subtracting each sum u passes, and descend
    into the child where u falls. It runs one level per round across all n draws: within a round the draws'
    cache misses are independent and overlap, where draw by draw they would form one dependent chain.
    """
    n = x.shape[1]
    N = offsets[offsets.shape[0] - 1]
    P = pool.shape[0]
    cls = np.empty(n, np.int64)
    row_a = np.empty(n, np.int64)
    row_b = np.empty(n, np.int64)
    u = np.empty(n, np.int64)
    off = np.empty(n, np.int64)  # offset of the level being scanned
    lo = np.empty(n, np.int64)  # node range [lo, hi) of that level
    hi = np.empty(n, np.int64)
    lev = np.full(n, -1, np.int64)  # level being scanned; 0 = slot counts, −1 = done / no pairs
    rounds = 0
    for k in range(n):
        i = pool[k] if direct else pool[min(np.int64(x[3, k] * P), P - 1)]
        cls[k] = i
        a, cnt = offsets[i], offsets[i + 1] - offsets[i]
        row_a[k] = a + min(np.int64(x[1, k] * cnt), cnt - 1)
        T = row_total[i]
        if T > 0:
            cap, b = row_cap[i], row_base[i]
            L = _levels(cap)
            u[k] = min(np.int64(x[0, k] * T), T - 1)
            o = b + 2 * cap
            for l in range(1, L):
                o += cap >> (_LOG_B * l)
            off[k] = o if L > 0 else b + 1
            lo[k], hi[k], lev[k] = 0, cap >> (_LOG_B * L), L
            rounds = max(rounds, L + 1)
    for _ in range(rounds):
        for k in range(n):
            L = lev[k]
            if L < 0:
                continue
            stride = 2 if L == 0 else 1
            o, uk = off[k], u[k]
            e = hi[k] - 1
            for t in range(lo[k], hi[k]):
                v = arena[o + stride * t]
                if uk < v:
                    e = t
                    break
                uk -= v
            u[k] = uk
            if L == 0:
                lo[k] = e  # the slot
                lev[k] = -2
                continue
            cap = row_cap[cls[k]]
            n_below = cap >> (_LOG_B * (L - 1))
            lo[k] = e * _B
            hi[k] = min(e * _B + _B, n_below)
            off[k] = o - n_below if L > 1 else row_base[cls[k]] + 1
            lev[k] = L - 1
    for k in range(n):
        cnt = np.int64(0)
        a = np.int64(0)
        if lev[k] == -2:
            j = arena[row_base[cls[k]] + 2 * lo[k]]
            a, cnt = offsets[j], offsets[j + 1] - offsets[j]
        if cnt > 0:
            row_b[k] = a + min(np.int64(x[2, k] * cnt), cnt - 1)
        else:
            row_b[k] = min(np.int64(x[2, k] * N), N - 1)
    return row_a, row_b


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


# ================================================================================================ rows
def check_offsets(offsets, name: str = "class_offsets") -> np.ndarray:
    """int64[C+1] class offsets of a class-sorted shard: 0 first, non-decreasing, at least one row."""
    o = np.asarray(offsets)
    if o.ndim != 1 or o.shape[0] < 2 or not np.issubdtype(o.dtype, np.integer):
        raise ValueError(f"{name}: expected a 1-D integer array of C+1 ≥ 2 offsets, got shape {o.shape} "
                         f"dtype {o.dtype}")
    o = o.astype(np.int64)
    if o[0] != 0:
        raise ValueError(f"{name}[0] = {o[0]}, expected 0")
    bad = np.flatnonzero(np.diff(o) < 0)
    if bad.size:
        raise ValueError(f"{name} decreases at class {bad[0]} ({o[bad[0]]} → {o[bad[0] + 1]})")
    if o[-1] == 0:
        raise ValueError(f"{name}: the shard has no rows")
    return np.ascontiguousarray(o)


def class_of_rows(offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Class of each row of a class-sorted shard (the c with offsets[c] ≤ row < offsets[c+1])."""
    return np.searchsorted(offsets, rows, side="right").astype(np.int64) - 1


def _uniform_index(x: np.ndarray, n: int) -> np.ndarray:
    return np.minimum((x * n).astype(np.int64), n - 1)


class _RowSpace:
    """The shard's row space: offsets, class sizes and the label set (classes that own rows).

    Every policy adds ``pairs(rng, n=None, anchors=None) -> (row_a, row_b)``: ``n`` pairs with anchors drawn
    the policy's way, or one partner per given anchor row.
    """

    def __init__(self, offsets):
        self.offsets = check_offsets(offsets)
        self.num_classes = self.offsets.shape[0] - 1
        self.num_rows = int(self.offsets[-1])
        self.sizes = np.diff(self.offsets)
        self.label_set = np.flatnonzero(self.sizes > 0).astype(np.int64)

    def uniform_rows(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return _uniform_index(rng.random(n), self.num_rows)

    def rows_in(self, classes: np.ndarray, x: np.ndarray) -> np.ndarray:
        """A row uniform within each class (classes must own rows)."""
        sizes = self.sizes[classes]
        return self.offsets[classes] + np.minimum((x * sizes).astype(np.int64), sizes - 1)

    def balanced_rows(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Class uniform over the label set, then a row uniform within it."""
        x = rng.random((2, n))
        classes = self.label_set[_uniform_index(x[0], self.label_set.shape[0])]
        return self.rows_in(classes, x[1])

    def anchor_rows(self, rng: np.random.Generator, n: int | None, anchors, draw) -> np.ndarray:
        """The given anchor rows (checked), or ``draw(rng, n)``."""
        if anchors is not None:
            return self.check_rows(anchors, "anchors")
        if n is None or n < 0:
            raise ValueError(f"{type(self).__name__}.pairs: give n ≥ 0 draws or explicit anchor rows")
        return draw(rng, int(n))

    def check_rows(self, rows, name: str) -> np.ndarray:
        r = np.ascontiguousarray(rows, dtype=np.int64).ravel()
        if r.size and (r.min() < 0 or r.max() >= self.num_rows):
            bad = r[(r < 0) | (r >= self.num_rows)][0]
            raise ValueError(f"{name}: row {bad} outside the shard's [0, {self.num_rows})")
        return r


# ================================================================================================ policies
class InstanceUniform(_RowSpace):
    """Mixup/CutMix/Remix: the partner is a row uniform over the whole shard (so classes ∝ n_c)."""

    def pairs(self, rng: np.random.Generator, n: int | None = None, anchors=None):
        a = self.anchor_rows(rng, n, anchors, self.uniform_rows)
        return a, self.uniform_rows(rng, a.shape[0])


class ClassBalanced(_RowSpace):
    """ConCutMix foreground / classifier fine-tuning: class uniform over the label set, row uniform in it."""

    def pairs(self, rng: np.random.Generator, n: int | None = None, anchors=None):
        a = self.anchor_rows(rng, n, anchors, self.balanced_rows)
        return a, self.balanced_rows(rng, a.shape[0])


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

    @property
    def exact(self) -> bool:
        return bool(np.all(self.truncated_mass == 0))

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
    def from_topk(cls, idx, sim, tau: float = 0.05) -> TextLocal:
        """Truncated table from precomputed neighbours ``idx int[C, k]`` and similarities ``sim float[C, k]``
        (self entries and ``idx < 0`` padding dropped). The mass outside them is unknown: NaN."""
        idx, sim = np.asarray(idx), np.asarray(sim, np.float64)
        if idx.shape != sim.shape or idx.ndim != 2:
            raise ValueError(f"idx {idx.shape} and sim {sim.shape}: expected two [C, k] arrays")
        C = idx.shape[0]
        if idx.size and idx.max() >= C:
            raise ValueError(f"idx: neighbour {int(idx.max())} outside [0, {C})")
        indptr, cols, cum = [0], [], []
        for i in range(C):
            keep = (idx[i] >= 0) & (idx[i] != i)
            j, s = idx[i][keep].astype(np.int64), sim[i][keep]
            order = np.argsort(-s, kind="stable")
            j, s = j[order], s[order]
            cols.append(j)
            cum.append(np.cumsum(np.exp((s - s.max()) / tau)) if s.size else s)
            indptr.append(indptr[-1] + j.size)
        return cls(np.array(indptr), _cat(cols, np.int64), _cat(cum, np.float64), tau,
                   truncated_mass=np.full(C, np.nan))

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


def _cat(parts, dtype):
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


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


# ================================================================================================ confusion
class ConfusionCounts:
    """Sparse accumulated confusion counts K[y, ŷ], O(C + nnz) memory (layout: module docstring and the
    comment above the kernels).

    ``update(y, yhat)`` adds one per pair with y ≠ ŷ; ``add(y, yhat, w)`` adds weights. One thread mutates it
    (the plan producer); take :meth:`state_dict` when that thread is idle (e.g. after ``PlanQueue.close()``).
    """

    def __init__(self, num_classes: int, capacity: int = 1 << 16):
        if int(num_classes) < 1:
            raise ValueError(f"num_classes: expected ≥ 1, got {num_classes}")
        C = int(num_classes)
        self.num_classes = C
        self.row_base = np.zeros(C, np.int64)
        self.row_cap = np.zeros(C, np.int64)
        self.row_nnz = np.zeros(C, np.int64)
        self.row_totals = np.zeros(C, np.int64)
        self._arena = _aligned_arena(max(int(capacity), 1024))
        self._used = 0
        self._ones = np.ones(0, np.int64)

    # ---------------------------------------------------------------------------------------- updates
    def add(self, y, yhat, w) -> None:
        """K[y[k], ŷ[k]] += w[k] for each k with y[k] ≠ ŷ[k] (equal-length int arrays, w ≥ 0).
        A bad entry raises before anything is added."""
        y = np.ascontiguousarray(_to_numpy(y), dtype=np.int64).ravel()
        yhat = np.ascontiguousarray(_to_numpy(yhat), dtype=np.int64).ravel()
        w = np.ascontiguousarray(_to_numpy(w), dtype=np.int64).ravel()
        if not y.shape == yhat.shape == w.shape:
            raise ValueError(f"y, yhat, w: lengths {y.shape[0]}, {yhat.shape[0]}, {w.shape[0]} differ")
        C, k = self.num_classes, 0
        while True:
            self._used, code, k, need = _add_pairs(self.row_base, self.row_cap, self.row_nnz, self.row_totals,
                                                   self._arena, self._used, y, yhat, w, C, k)
            if code == _ADD_DONE:
                return
            if code == _ADD_FULL:  # compact into a larger arena (growth ×1.25 amortises the copies)
                live = _live(self.row_cap)
                arena = _aligned_arena(max(live + need, (live * 5) // 4, 1024))
                self._used = _compact_into(self.row_base, self.row_cap, self._arena, arena)
                self._arena = arena
                continue
            if code == _ADD_OVERFLOW:
                raise OverflowError(f"confusion counts: row {y[k]} would pass 2^31 - 1 recorded pairs")
            raise ValueError(f"confusion pair {k}: (y={y[k]}, yhat={yhat[k]}, w={w[k]}); classes must lie in "
                             f"[0, {C}) and weights be ≥ 0")

    def update(self, y, yhat) -> None:
        """K[y[k], ŷ[k]] += 1 for each k with y[k] ≠ ŷ[k] (a step's labels and predictions)."""
        n = np.shape(y)[0] if np.ndim(y) else 1
        if self._ones.shape[0] < n:
            self._ones = np.ones(max(n, 2 * self._ones.shape[0]), np.int64)
        self.add(y, yhat, self._ones[:n])

    def merge(self, other: ConfusionCounts) -> None:
        """K += other.K (other's rows in order, each row's pairs in slot order: deterministic)."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"merge: counts over {other.num_classes} classes into {self.num_classes}")
        self.add(*other.pairs(order="slots"))

    # ---------------------------------------------------------------------------------------- queries
    @property
    def nnz(self) -> int:
        """Distinct recorded pairs."""
        return int(self.row_nnz.sum())

    @property
    def total(self) -> int:
        """Recorded pairs, with multiplicity."""
        return int(self.row_totals.sum())

    @property
    def nbytes(self) -> int:
        """Bytes held: the per-row arrays plus the whole arena (live rows, headroom and moved-out rows)."""
        per_row = self.row_base.nbytes + self.row_cap.nbytes + self.row_nnz.nbytes + self.row_totals.nbytes
        return int(per_row + self._arena.nbytes)

    def row_total(self, i: int) -> int:
        """Σ_j K[i, j]."""
        return int(self.row_totals[i])

    def _slots(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        b, c = int(self.row_base[i]), int(self.row_cap[i])
        region = self._arena[b:b + 2 * c]
        return region[0::2].astype(np.int64), region[1::2].astype(np.int64)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(columns ascending, counts) of row i."""
        cols, cnt = self._slots(i)
        keep = cols != _EMPTY
        o = np.argsort(cols[keep])
        return cols[keep][o], cnt[keep][o]

    def pairs(self, order: str = "sorted") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """COO (y, ŷ, count) of every recorded pair, ``order='sorted'`` (by y, then ŷ) or ``'slots'``."""
        if order not in ("sorted", "slots"):
            raise ValueError(f"order: expected 'sorted' or 'slots', got {order!r}")
        ys, js, ws = [], [], []
        for i in np.flatnonzero(self.row_nnz):
            if order == "sorted":
                cols, cnt = self.row(int(i))
            else:
                cols, cnt = self._slots(int(i))
                keep = cols != _EMPTY
                cols, cnt = cols[keep], cnt[keep]
            ys.append(np.full(cols.shape[0], i, np.int64))
            js.append(cols)
            ws.append(cnt)
        return _cat(ys, np.int64), _cat(js, np.int64), _cat(ws, np.int64)

    def to_dense(self) -> np.ndarray:
        """int64[C, C] — for tests and small C only."""
        K = np.zeros((self.num_classes, self.num_classes), np.int64)
        y, j, w = self.pairs()
        K[y, j] = w
        return K

    # ---------------------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        """Exact state including each row's slot layout (so draws continue identically): CPU tensors and ints,
        loadable with ``torch.load(weights_only=True)``. ``keys``/``counts`` are every row's slots in row
        order (−1 / 0 for empty slots); the sum tree is derived from them on load."""
        keys, counts = [], []
        for i in np.flatnonzero(self.row_cap):
            k, c = self._slots(int(i))
            keys.append(k)
            counts.append(c)
        return {
            "version": 1,
            "num_classes": self.num_classes,
            "row_cap": torch.from_numpy(self.row_cap.copy()),
            "keys": torch.from_numpy(_cat(keys, np.int64).astype(np.int32)),
            "counts": torch.from_numpy(_cat(counts, np.int64)),
        }

    def load_state_dict(self, state: Mapping) -> None:
        need = ("version", "num_classes", "row_cap", "keys", "counts")
        missing = [k for k in need if k not in state]
        if missing:
            raise KeyError(f"confusion counts state: missing keys {missing} (has {sorted(state)})")
        if int(state["version"]) != 1:
            raise ValueError(f"confusion counts state: version {state['version']}, this fastlt reads 1")
        C = self.num_classes
        if int(state["num_classes"]) != C:
            raise ValueError(f"confusion counts state: num_classes {state['num_classes']}, expected {C}")
        cap = _to_numpy(state["row_cap"]).astype(np.int64)
        keys = _to_numpy(state["keys"]).astype(np.int64)
        counts = _to_numpy(state["counts"]).astype(np.int64)
        if cap.shape != (C,) or np.any((cap != 0) & ((cap < _MIN_CAP) | ((cap & (cap - 1)) != 0))):
            raise ValueError(f"confusion counts state: row_cap must hold {C} entries, each 0 or a power of "
                             f"two ≥ {_MIN_CAP}")
        slots = int(cap.sum())
        if keys.shape != (slots,) or counts.shape != (slots,):
            raise ValueError(f"confusion counts state: keys {tuple(keys.shape)} / counts "
                             f"{tuple(counts.shape)} do not match the {slots} slots of row_cap")
        if slots and (keys.min() < _EMPTY or keys.max() >= C or counts.min() < 0
                      or np.any(counts[keys == _EMPTY] != 0)):
            raise ValueError(f"confusion counts state: keys must lie in [-1, {C}) and counts be ≥ 0 "
                             "(0 in empty slots)")
        row_of_slot = np.repeat(np.arange(C, dtype=np.int64), cap)
        totals = np.bincount(row_of_slot, weights=counts, minlength=C).astype(np.int64)
        if totals.max(initial=0) > 2147483647:
            raise ValueError("confusion counts state: a row total exceeds 2^31 - 1")
        self.row_cap = cap
        self.row_nnz = np.bincount(row_of_slot[keys != _EMPTY], minlength=C).astype(np.int64)
        self.row_totals = totals
        self.row_base, self._arena, self._used = _layout(cap, keys, counts)

    def copy(self) -> ConfusionCounts:
        c = ConfusionCounts(self.num_classes)
        c.load_state_dict(self.state_dict())
        return c

    def __repr__(self) -> str:
        return (f"ConfusionCounts(C={self.num_classes}, nnz={self.nnz}, total={self.total}, "
                f"{self.nbytes / 2**20:.2f} MB)")


def _layout(cap: np.ndarray, keys: np.ndarray, counts: np.ndarray):
    """Arena for rows of capacities ``cap`` holding the given slots (row order), sum trees rebuilt."""
    regions = np.array([_region(int(c)) if c else 0 for c in cap], np.int64)
    base = np.cumsum(regions) - regions
    used = int(regions.sum())
    arena = _aligned_arena(max(used + used // 4, 1024))
    pos = 0
    for i in np.flatnonzero(cap):
        c, b = int(cap[i]), int(base[i])
        arena[b:b + 2 * c:2] = keys[pos:pos + c]
        arena[b + 1:b + 2 * c:2] = counts[pos:pos + c]
        _tree_build(arena, b, c)
        pos += c
    return base.astype(np.int64), arena, used


def _to_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


class ConfusionPartner(_RowSpace):
    """CP-Mix: class i uniform over the label set, partner j ∝ K[i, j], one row uniform in each class.

    ``fallback`` says what a class with no recorded pairs does (module docstring): ``'instance'`` keeps i
    uniform and gives it an instance-uniform partner; ``'redraw'`` draws i only among classes with pairs.
    With ``anchors`` given, i is the class of each anchor row instead (j ∝ K[i, ·] still).
    """

    def __init__(self, offsets, counts: ConfusionCounts, fallback: str = "instance"):
        super().__init__(offsets)
        if counts.num_classes != self.num_classes:
            raise ValueError(f"counts cover {counts.num_classes} classes, the shard has {self.num_classes}")
        if fallback not in _FALLBACKS:
            raise ValueError(f"fallback: expected one of {_FALLBACKS}, got {fallback!r}")
        self.counts, self.fallback = counts, fallback

    def _pool(self) -> np.ndarray:
        if self.fallback == "redraw":
            have = self.label_set[self.counts.row_totals[self.label_set] > 0]
            if have.size:
                return have
        return self.label_set

    def pairs(self, rng: np.random.Generator, n: int | None = None, anchors=None):
        if anchors is None:
            if n is None or n < 0:
                raise ValueError("ConfusionPartner.pairs: give n ≥ 0 draws or explicit anchor rows")
            pool = self._pool()
        else:  # anchor rows given: i is each anchor's class, j ∝ K[i, ·] still
            anchors = self.check_rows(anchors, "anchors")
            pool, n = class_of_rows(self.offsets, anchors), anchors.shape[0]
        k = self.counts
        x = rng.random((4, n))
        ra, rb = _draw_confusion(k.row_base, k.row_cap, k.row_totals, k._arena, self.offsets, pool, x,
                                 anchors is not None)
        return (ra if anchors is None else anchors), rb


def make_producer(plan: str, index, batch_size: int, seed: int = 0, counts=None, recipe=None, **kw):
    """The plan producer for a stage's ``plan`` policy (see :func:`fastlt.producers.make_producer`)."""
    from fastlt.producers import make_producer as _make

    return _make(plan, index, batch_size=batch_size, seed=seed, counts=counts, recipe=recipe, **kw)
