"""``tools/bench sampler``: CP-Mix confusion-pair draws and count updates vs straightforward numpy.

The case of the issue: C = 8142 classes (iNaturalist 2018), ~10⁶ distinct confusion pairs with power-law row
lengths and power-law counts, B_m = 512 pair draws per step, B = 512 predictions folded into the counts per
step.
Each step gets fresh random inputs; the figure is the median over steps. In the same command:

* numpy ``rng.choice`` per row: for each draw, ``rng.choice(cols_i, p=K_i/K_i·)`` — the per-sample loop;
* numpy cumsum + searchsorted: CSR rows with one global cumulative-count array; a draw is
  ``searchsorted(cum, cum[start_i] + ⌊x·K_i·⌋)``, vectorised over the 512 draws;
* numpy update: the same CSR kept as sorted ``y·C + ŷ`` keys: ``unique`` + ``searchsorted`` + add for known
  pairs, ``insert`` for new ones, and the cumulative sums rebuilt before the next draw can use them.

It also reports the neighbour count LFM's text-local sampler needs so the truncated softmax mass stays below
1e-3 at τ = 0.05, for C = 8142 class embeddings in 384-d (random unit vectors, and a clustered taxonomy
model).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fastlt.bench.report import print_table, write_json
from fastlt.sampling import HEAD_K, ConfusionCounts, ConfusionPartner, TextLocal, truncation_k


# ------------------------------------------------------------------------------------------------ synthetic
def synthetic_confusion(C: int, pairs: int, seed: int = 0):
    """COO (y, ŷ, count) with ~``pairs`` distinct pairs: row lengths ∝ rank^−0.6 (a few classes are confused
    with thousands of others, most with tens), columns distinct and ≠ y, counts Zipf(1.7) capped at 10⁵."""
    rng = np.random.default_rng(seed)
    r = (np.arange(C) + 1.0) ** -0.6
    rng.shuffle(r)
    nnz = np.clip(np.round(pairs * r / r.sum()), 1, C - 1).astype(np.int64)
    ys = np.repeat(np.arange(C, dtype=np.int64), nnz)
    js = np.concatenate([(i + 1 + rng.choice(C - 1, n, replace=False)) % C for i, n in enumerate(nnz)])
    w = np.minimum(rng.zipf(1.7, ys.size), 100_000).astype(np.int64)
    order = rng.permutation(ys.size)  # the order a run would have recorded them in
    return ys[order], js[order].astype(np.int64), w[order]


def long_tail_offsets(C: int, n_max: int = 1000, n_min: int = 2) -> np.ndarray:
    """Class offsets of an exponential long-tailed training set (n_c from n_max down to n_min)."""
    n = np.floor(n_max * (n_min / n_max) ** (np.arange(C) / max(C - 1, 1))).astype(np.int64)
    return np.concatenate([[0], np.cumsum(n)]).astype(np.int64)


def prediction_stream(C, offsets, ys, js, steps, B, seed, accuracy=0.5, new_frac=0.1):
    """Per step: labels of B instance-uniform rows; predictions correct with probability ``accuracy``, else a
    recorded confusion of that label (or, with probability ``new_frac``, a random class: a new pair)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(C, dtype=np.int64), np.diff(offsets))
    order = np.argsort(ys, kind="stable")
    ys_s, js_s = ys[order], js[order]
    start = np.searchsorted(ys_s, np.arange(C + 1))
    out = []
    for _ in range(steps):
        y = labels[rng.integers(0, labels.size, B)]
        lo, hi = start[y], start[y + 1]
        wrong = rng.random(B) >= accuracy
        known = js_s[np.minimum(lo + (rng.random(B) * (hi - lo)).astype(np.int64), hi - 1)]
        new = rng.integers(0, C, B)
        yhat = np.where(rng.random(B) < new_frac, new, known)
        out.append((y, np.where(wrong & (hi > lo), yhat, y)))
    return out


# ------------------------------------------------------------------------------------------------ numpy
class NumpyConfusion:
    """The straightforward reference: sorted keys y·C + ŷ, counts, a global cumulative sum."""

    def __init__(self, C, ys, js, w):
        self.C = C
        keys = ys * C + js
        order = np.argsort(keys)
        self.keys, self.counts = keys[order], w[order]
        self.refresh()

    def refresh(self):
        """Row starts and cumulative counts (what a draw needs) from the sorted keys."""
        self.start = np.searchsorted(self.keys, np.arange(self.C + 1, dtype=np.int64) * self.C)
        self.cum = np.cumsum(self.counts)
        self.before = np.concatenate([[0], self.cum])[self.start]  # cumulative count before each row
        self.total = self.before[1:] - self.before[:-1]

    def update(self, y, yhat):
        m = y != yhat
        u, c = np.unique(y[m] * self.C + yhat[m], return_counts=True)
        pos = np.searchsorted(self.keys, u)
        found = (pos < self.keys.size) & (self.keys[np.minimum(pos, self.keys.size - 1)] == u)
        self.counts[pos[found]] += c[found]
        if not found.all():
            self.keys = np.insert(self.keys, pos[~found], u[~found])
            self.counts = np.insert(self.counts, pos[~found], c[~found])

    def draw_searchsorted(self, rng, offsets, n):
        x = rng.random((4, n))
        i = np.minimum((x[3] * self.C).astype(np.int64), self.C - 1)
        T = self.total[i]
        ok = T > 0
        target = self.before[i] + np.minimum((x[0] * T).astype(np.int64), np.maximum(T - 1, 0))
        at = np.minimum(np.searchsorted(self.cum, target, side="right"), self.keys.size - 1)
        j = self.keys[at] % self.C
        N = offsets[-1]
        sizes = np.diff(offsets)
        row_a = offsets[i] + np.minimum((x[1] * sizes[i]).astype(np.int64), sizes[i] - 1)
        row_b = np.where(
            ok,
            offsets[j] + np.minimum((x[2] * sizes[j]).astype(np.int64), sizes[j] - 1),
            np.minimum((x[2] * N).astype(np.int64), N - 1),
        )
        return row_a, row_b

    def draw_choice(self, rng, offsets, n):
        sizes = np.diff(offsets)
        row_a = np.empty(n, np.int64)
        row_b = np.empty(n, np.int64)
        for k in range(n):
            i = int(rng.integers(self.C))
            lo, hi = self.start[i], self.start[i + 1]
            row_a[k] = offsets[i] + rng.integers(sizes[i])
            if hi > lo:
                cnt = self.counts[lo:hi]
                j = int(rng.choice(self.keys[lo:hi], p=cnt / cnt.sum())) % self.C
                row_b[k] = offsets[j] + rng.integers(sizes[j])
            else:
                row_b[k] = rng.integers(offsets[-1])
        return row_a, row_b


# ------------------------------------------------------------------------------------------------ timing
def per_step(fn, inputs) -> float:
    """Median seconds of ``fn(x)`` over the inputs (one call per step, fresh input each)."""
    times = []
    for x in inputs:
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def text_local(
    C: int, dim: int, tau: float, eps: float, seed: int, offsets, draws: int, steps: int, minilm: bool
) -> tuple[list[dict], list[dict]]:
    """LFM partners for C class embeddings: the neighbours truncation would need (dropped mass < eps), and
    the exact sampler (head of HEAD_K + rejection tail) vs a dense numpy softmax per step."""
    rng = np.random.default_rng(seed)
    models = {"random unit vectors": rng.standard_normal((C, dim))}
    # a taxonomy: 40 families → 800 genera → C species; each level a perturbation of its parent
    fam = rng.standard_normal((40, dim))
    gen = fam[rng.integers(0, 40, 800)] + 0.7 * rng.standard_normal((800, dim))
    models["clustered taxonomy"] = gen[rng.integers(0, 800, C)] + 0.5 * rng.standard_normal((C, dim))
    if minilm:
        from torchvision.models import ResNet50_Weights

        from fastlt.text import MiniLMEncoder, class_prompts

        names = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
        models["MiniLM, ImageNet-1k prompts"] = MiniLMEncoder().encode(class_prompts(names))
    need, speed = [], []
    for name, emb in models.items():
        e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        m = min(500, e.shape[0])  # similarity statistics from the first rows
        s = e[:m] @ e.T
        s[np.arange(m), np.arange(m)] = np.nan
        k = truncation_k(e, tau, eps)
        need.append(
            {
                "embeddings": name,
                "C": e.shape[0],
                "sim mean": float(np.nanmean(s)),
                "sim std": float(np.nanstd(s)),
                "k median": float(np.median(k)),
                "k p99": float(np.percentile(k, 99)),
                "k max": int(k.max()),
                "truncated CSR MB": float(k.sum()) * 16 / 2**20,
            }
        )
        if e.shape[0] == C:
            speed.append({"embeddings": name, **exact_text_local_speed(e, tau, offsets, draws, steps, seed)})
    return need, speed


def exact_text_local_speed(e, tau, offsets, draws, steps, seed) -> dict:
    """Per-step partner draws of the exact sampler vs a dense softmax row per anchor in numpy."""
    C = e.shape[0]
    t0 = time.perf_counter()
    tl = TextLocal.from_embeddings(e, tau, k=HEAD_K)
    build = time.perf_counter() - t0
    labels = np.repeat(np.arange(C), np.diff(offsets))
    anchors = [labels[np.random.default_rng(seed + t).integers(0, labels.size, draws)] for t in range(steps)]
    rngs = [np.random.default_rng(seed + 1000 + t) for t in range(steps)]
    tl.draw(anchors[0], rngs[0])
    fast = per_step(lambda t: tl.draw(anchors[t], rngs[t]), range(steps))

    def dense(t):  # the straightforward way: every anchor's full softmax row, then one searchsorted each
        a = anchors[t]
        w = np.exp((e[a] @ e.T - 1.0) / tau)
        w[np.arange(a.size), a] = 0.0
        c = np.cumsum(w, axis=1)
        u = np.random.default_rng(t).random(a.size) * c[:, -1]
        return (c < u[:, None]).sum(axis=1)

    ref = per_step(dense, range(min(steps, 10)))
    mb = (tl.cols.nbytes + tl.cum.nbytes + tl.emb.nbytes + tl._head_sorted.nbytes) / 2**20
    return {
        "exact draw µs/step": fast * 1e6,
        "numpy dense µs/step": ref * 1e6,
        "fastlt speed-up": ref / fast,
        "head k": HEAD_K,
        "MB": mb,
        "build s": build,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tools/bench sampler", description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", type=int, default=8142)
    ap.add_argument("--pairs", type=int, default=1_000_000, help="distinct confusion pairs (approximate)")
    ap.add_argument("--draws", type=int, default=512, help="B_m: CP-Mix pairs drawn per step")
    ap.add_argument("--batch", type=int, default=512, help="B: predictions folded into the counts per step")
    ap.add_argument("--steps", type=int, default=300, help="timed steps per method")
    ap.add_argument("--choice-steps", type=int, default=20, help="timed steps of the slow rng.choice loop")
    ap.add_argument("--tau", type=float, default=0.05)
    ap.add_argument("--no-text", action="store_true", help="skip the LFM text-local figures")
    ap.add_argument(
        "--minilm",
        action="store_true",
        help="also measure all-MiniLM-L6-v2 embeddings of the 1000 ImageNet class prompts",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="folder for sampler.json")
    a = ap.parse_args(argv)
    C, Bm = a.classes, a.draws

    t0 = time.perf_counter()
    ys, js, w = synthetic_confusion(C, a.pairs, a.seed)
    offsets = long_tail_offsets(C)
    counts = ConfusionCounts(C)
    counts.add(ys, js, w)
    ref = NumpyConfusion(C, ys, js, w)
    print(
        f"synthetic confusion: C={C}, {counts.nnz:,} distinct pairs, {counts.total:,} recorded, "
        f"{offsets[-1]:,} rows; built in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    policy = ConfusionPartner(offsets, counts)
    rng = np.random.default_rng(a.seed + 1)
    for _ in range(3):  # compile and warm
        policy.pairs(rng, Bm)
        ref.draw_searchsorted(rng, offsets, Bm)
    seeds = [np.random.default_rng(a.seed + 100 + s) for s in range(a.steps)]

    draw = {
        "fastlt (numba sum tree)": per_step(lambda r: policy.pairs(r, Bm), seeds),
        "numpy cumsum + searchsorted": per_step(lambda r: ref.draw_searchsorted(r, offsets, Bm), seeds),
        "numpy rng.choice per row": per_step(
            lambda r: ref.draw_choice(r, offsets, Bm), seeds[: a.choice_steps]
        ),
    }
    stream = prediction_stream(C, offsets, ys, js, a.steps + 3, a.batch, a.seed + 2)
    for y, yh in stream[:3]:
        counts.update(y, yh)
    upd_fast = per_step(lambda p: counts.update(*p), stream[3:])
    upd_np = per_step(lambda p: ref.update(*p), stream[3:])
    refresh = per_step(lambda _: ref.refresh(), range(min(a.steps, 30)))

    base = draw["fastlt (numba sum tree)"]
    nnz_at_draw = len(ys)
    rows = [{"method": k, "draw µs/step": v * 1e6, "fastlt speed-up": v / base} for k, v in draw.items()]
    print_table(
        f"\nCP-Mix pair draws: C={C}, {nnz_at_draw:,} pairs, B_m={Bm} (median of {a.steps} steps)",
        rows,
        ["method", "draw µs/step", "fastlt speed-up"],
    )
    urows = [
        {
            "method": "fastlt (numba hash + sum tree)",
            "update µs/step": upd_fast * 1e6,
            "fastlt speed-up": 1.0,
        },
        {
            "method": "numpy sorted keys (unique/searchsorted/insert)",
            "update µs/step": upd_np * 1e6,
            "fastlt speed-up": upd_np / upd_fast,
        },
        {
            "method": "numpy … + cumsum rebuild before next draw",
            "update µs/step": (upd_np + refresh) * 1e6,
            "fastlt speed-up": (upd_np + refresh) / upd_fast,
        },
    ]
    print_table(
        f"\nConfusion count updates: B={a.batch} predictions/step (median of {a.steps} steps)",
        urows,
        ["method", "update µs/step", "fastlt speed-up"],
    )
    ref_mb = (ref.keys.nbytes + ref.counts.nbytes + ref.cum.nbytes + ref.start.nbytes) / 2**20
    print(
        f"\nmemory: fastlt counts {counts.nbytes / 2**20:.1f} MB for {counts.nnz:,} pairs "
        f"({counts.nbytes / counts.nnz:.1f} B/pair incl. headroom); numpy CSR reference {ref_mb:.1f} MB; "
        f"dense int32 C×C would be {C * C * 4 / 2**20:,.0f} MB"
    )
    record = {
        "classes": C,
        "pairs": counts.nnz,
        "draws": Bm,
        "batch": a.batch,
        "draw_s": draw,
        "update_s": {"fastlt": upd_fast, "numpy": upd_np, "numpy_refresh": refresh},
        "counts_mb": counts.nbytes / 2**20,
        "numpy_mb": ref_mb,
    }
    if not a.no_text:
        need, speed = text_local(C, 384, a.tau, 1e-3, a.seed, offsets, Bm, min(a.steps, 50), a.minilm)
        title = f"\nLFM: neighbours a truncated text-local row needs for dropped mass < 1e-3 at τ={a.tau}"
        print_table(
            title,
            need,
            ["embeddings", "C", "sim mean", "sim std", "k median", "k p99", "k max", "truncated CSR MB"],
        )
        title = f"\nLFM: exact text-local partners (head {HEAD_K} + rejection tail), {Bm} anchors/step"
        print_table(
            title,
            speed,
            [
                "embeddings",
                "exact draw µs/step",
                "numpy dense µs/step",
                "fastlt speed-up",
                "head k",
                "MB",
                "build s",
            ],
        )
        record["text_local"] = {"truncation": need, "exact": speed}
    write_json(a.out, "sampler", record)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
