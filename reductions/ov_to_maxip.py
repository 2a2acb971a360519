"""k-OV → Gap-k-MaxIP: the equal-weight complement map with additive gap 1 (docs/reductions.md,
"SAT → k-OV → k-MaxIP → attention", §8.3; every step [I], tested exhaustively in
``tests/test_reductions_sat_chain.py``).

Each OV coordinate l becomes a block of ``block_width(k)`` coordinates: k *shared* positions p = 1..k
and, for each group g = 1..k, a *private* region of r_g = max(k − g, 1) positions (only group g's
vectors are ever 1 there). Group g maps its bit x = u_{g,l} to

    shared position p:   1 if p < g,   1 − x if p = g,   x if p > g;
    private region g:    k − g ones if x = 0, one 1 if x = 1 (the rest 0); other regions 0.

Weight [I]: the shared part has (g − 1) + (1 − x) + x(k − g) ones, the private part (k − g)(1 − x) + x,
so every block of every vector has weight k, and every vector weight w = k·m.

Inner product [I]: a private position meets only one group's ones, so it adds 0 (k ≥ 2). At shared
position p the product over groups is Π_{g<p} x_g · (1 − x_p) · Π_{g>p} 1: the indicator that p is the
*first* group with x_p = 0. Summed over p it is 1 − Π_g x_g (at most one first zero; none iff all are 1).
Hence for mapped vectors

    ⟨f₁(u₁), …, f_k(u_k)⟩ = Σ_l (1 − Π_g u_{g,l}) = m − ⟨u₁, …, u_k⟩.

An orthogonal tuple has k-way inner product exactly m; every other tuple at most m − 1: Gap-MaxIP with
τ_hi = m, τ_lo = m − 1 (gap Δ = 1), the promise holds for every input, YES iff the OV instance has an
orthogonal tuple, and the witnesses (tuples above τ_lo) are exactly the orthogonal tuples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attnspec.reductions import maxip
from attnspec.reductions.sat_to_ov import OVInstance


def private_sizes(k: int) -> list[int]:
    """r_g = max(k − g, 1) for g = 1..k."""
    return [max(k - g, 1) for g in range(1, k + 1)]


def block_width(k: int) -> int:
    """k shared positions plus the private regions: k + k(k − 1)/2 + 1 (4 for k = 2, 7 for k = 3)."""
    return k + sum(private_sizes(k))


def map_group(u: np.ndarray, g: int, k: int) -> np.ndarray:
    """f_g applied to every row of the 0/1 matrix ``u`` (group g, 1-based): shape (rows, m·block_width(k)),
    block l holding coordinate l's image (module docstring)."""
    x = np.asarray(u, dtype=np.uint8)
    rows, m = x.shape
    sizes = private_sizes(k)
    out = np.zeros((rows, m, block_width(k)), dtype=np.uint8)
    for p in range(1, k + 1):
        out[:, :, p - 1] = 1 if p < g else (1 - x) if p == g else x
    start = k + sum(sizes[: g - 1])
    for r in range(sizes[g - 1]):  # position r of region g is 1 when r < k − g (x = 0) or r = 0 (x = 1)
        out[:, :, start + r] = np.where(x == 1, 1 if r == 0 else 0, 1 if r < k - g else 0)
    return out.reshape(rows, m * block_width(k))


def ov_to_maxip(ov: OVInstance) -> maxip.MaxIPInstance:
    """The Gap-MaxIP instance: A = f₁(group 1), B_{g−1} = f_g(group g), τ_hi = m, τ_lo = m − 1."""
    k, m = ov.order, ov.dim
    mapped = [map_group(u, g + 1, k) for g, u in enumerate(ov.sets)]
    return maxip.make_instance(mapped[0], mapped[1:], tau_hi=m, tau_lo=m - 1)


def maxip_parameters(inst: maxip.MaxIPInstance) -> dict[str, Any]:
    return {**maxip.instance_params(inst), "gap": inst.gap, "block_width": block_width(inst.order)}


__all__ = ["ov_to_maxip", "map_group", "block_width", "private_sizes", "maxip_parameters"]
