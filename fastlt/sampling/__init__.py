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

Modules: :mod:`~fastlt.sampling.rows` (the row space, instance-uniform and class-balanced partners),
:mod:`~fastlt.sampling.text_local` (LFM), :mod:`~fastlt.sampling.confusion` (CP-Mix counts and partners),
:mod:`~fastlt.sampling.common` (helpers they share).
"""

from fastlt.sampling.confusion import ConfusionCounts, ConfusionPartner
from fastlt.sampling.rows import ClassBalanced, InstanceUniform, check_offsets, class_of_rows
from fastlt.sampling.text_local import HEAD_K, TextLocal, TextLocalPartner, truncation_k

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
]
