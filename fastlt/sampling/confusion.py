"""CP-Mix: sparse confusion counts K[y, ŷ] and the confusion partner policy (class i uniform, j ∝ K[i, j]).

Sparse counts
-------------
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

import numpy as np
import torch

from fastlt.sampling.common import _cat, _jit, _to_numpy
from fastlt.sampling.rows import _RowSpace, class_of_rows

_EMPTY = -1
_MIN_CAP = 8
_FALLBACKS = ("instance", "redraw")


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

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """COO (y, ŷ, count) of every recorded pair, sorted by y, then ŷ."""
        ys, js, ws = [], [], []
        for i in np.flatnonzero(self.row_nnz):
            cols, cnt = self.row(int(i))
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

