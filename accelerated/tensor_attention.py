"""Fast tensor attention on any array-API library (numpy on CPU, CuPy on GPU, torch).

Two algorithms for out = D⁻¹ exp(s·Q(K₁⊘…⊘K_{k−1})ᵀ)(V₁⊘…⊘V_{k−1}) (definition:
:mod:`attnspec.spec.tensor_attention`; key tuples in lexicographic order, j₁ slowest):

- :func:`tensor_attention` — exact attention, O(n^k·d) time, O(n·block) memory. The n^{k−1} key tuples
  are visited in contiguous blocks; a block's rows of K₁⊘…⊘K_{k−1} and V₁⊘…⊘V_{k−1} are gathered
  (block×d), its logits are an n×block matrix, and an *online softmax* (running row max m, running
  sum ℓ, accumulator acc, both rescaled by exp(m_old − m_new) when the max grows) keeps every exp
  argument ≤ 0, so any finite logit magnitude is safe (no overflow; underflow only of weights that are
  negligible against the row maximum).
- :func:`polynomial_tensor_attention` — the Alman–Song polynomial method, O(n·r·d) time, nothing of size
  n² formed: with a polynomial P̃ ≈ exp of relative error ε on [−R, R], query features U₁ and key features
  U_{m+1} of K_m (so that U₁(U₂⊘…⊘U_k)ᵀ = P̃(logits) entrywise, identity (I3) of
  :mod:`attnspec.reference.tensor_identities`),

      Y = (U₂ᵀV₁) ∘ … ∘ (U_kᵀV_{k−1})      (r×d_v, identity I1)
      w = (U₂ᵀ1) ∘ … ∘ (U_kᵀ1)             (r, identity I2)
      out = (U₁Y) / (U₁w)                  (row-wise division)

  The error lemma (digest §2.4) gives ‖out − Att‖∞ ≤ 2ε‖V₁⊘…⊘V_{k−1}‖∞ ≤ 2ε·B^{k−1}, so
  ε = ε_a / (2·B^{k−1}) meets the contract ε_a; R = |s|·d·B^k bounds every logit.
  Feature construction is :mod:`attnspec.accelerated.polynomial_features` (shared with the matrix case).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

try:  # the package-wide namespace helper (numpy / CuPy / torch); fall back to array-api-compat
    from attnspec.accelerated.array_namespace import array_namespace
except ImportError:  # pragma: no cover - depends on which helper modules are present
    from array_api_compat import array_namespace

DEFAULT_BLOCK_ELEMENTS = 1 << 21  # n × block logits per step (16 MiB in float64)


def default_block(n: int) -> int:
    """Key tuples per block so that the n×block logit block holds about 2²¹ numbers."""
    return max(16, DEFAULT_BLOCK_ELEMENTS // max(n, 1))


def _check_shapes(q, keys: Sequence[Any], values: Sequence[Any]) -> None:
    if len(keys) < 1 or len(keys) != len(values):
        raise ValueError(f"need k − 1 ≥ 1 key matrices and as many value matrices, got {len(keys)} and {len(values)}")
    n, d = q.shape
    for m, x in enumerate(keys):
        if tuple(x.shape) != (n, d):
            raise ValueError(f"K{m + 1} has shape {tuple(x.shape)}, expected {(n, d)}")
    dv = values[0].shape[1]
    for m, x in enumerate(values):
        if tuple(x.shape) != (n, dv):
            raise ValueError(f"V{m + 1} has shape {tuple(x.shape)}, expected {(n, dv)}")


def _gather_rows(xp, mats: Sequence[Any], t0: int, t1: int, n: int, device=None):
    """Rows t0..t1−1 of X₁⊘…⊘X_m (lexicographic: j₁ slowest), computed from gathered rows."""
    factors = len(mats)
    flat = xp.arange(t0, t1, dtype=xp.int64, device=device) if device is not None else xp.arange(t0, t1, dtype=xp.int64)
    out = None
    for m, x in enumerate(mats):
        j = (flat // (n ** (factors - 1 - m))) % n
        rows = xp.take(x, j, axis=0)
        out = rows if out is None else out * rows
    return out


def tensor_attention(q, keys: Sequence[Any], values: Sequence[Any], *, scale: float, block_size: int | None = None):
    """Exact tensor attention D⁻¹A(V₁⊘…⊘V_{k−1}) by blocked online softmax (see module docstring).

    ``q`` is n×d, ``keys`` k − 1 matrices n×d, ``values`` k − 1 matrices n×d_v, all of one array
    library and dtype; the result is n×d_v in that library and dtype. ``block_size`` is the number of
    key tuples per block (default :func:`default_block`).
    """
    keys, values = list(keys), list(values)
    _check_shapes(q, keys, values)
    xp = array_namespace(q, *keys, *values)
    n, _ = q.shape
    dv = values[0].shape[1]
    total = n ** len(keys)
    block = int(block_size) if block_size is not None else default_block(n)
    if block < 1:
        raise ValueError(f"block_size must be positive, got {block}")
    device = getattr(q, "device", None) if xp.__name__ != "numpy" and "numpy" not in xp.__name__ else None
    run_max = xp.full((n,), -math.inf, dtype=q.dtype)
    run_sum = xp.zeros((n,), dtype=q.dtype)
    acc = xp.zeros((n, dv), dtype=q.dtype)
    for t0 in range(0, total, block):
        t1 = min(t0 + block, total)
        kr = _gather_rows(xp, keys, t0, t1, n, device)
        vr = _gather_rows(xp, values, t0, t1, n, device)
        logits = (q @ kr.T) * scale
        new_max = xp.maximum(run_max, xp.max(logits, axis=1))
        factor = xp.exp(run_max - new_max)  # exp(−inf) = 0 on the first block
        p = xp.exp(logits - new_max[:, None])
        run_sum = run_sum * factor + xp.sum(p, axis=1)
        acc = acc * factor[:, None] + p @ vr
        run_max = new_max
    return acc / run_sum[:, None]


def polynomial_degree_and_eps(order: int, d: int, bound: float, scale: float, eps_a: float) -> tuple[float, float]:
    """(R, ε_rel) of the order-k polynomial method: R = |s|·d·B^k, ε_rel = ε_a / (2·B^{k−1})."""
    from attnspec.accelerated import polynomial_features as pf

    if not (bound > 0 and eps_a > 0):
        raise ValueError("bound and eps_a must be positive")
    return pf.logit_radius(bound, scale, d, order), eps_a / (2 * bound ** (order - 1))


def polynomial_tensor_attention(q, keys: Sequence[Any], values: Sequence[Any], *, scale: float, bound: float, eps: float):
    """Alman–Song polynomial method for tensor attention, O(n·r·d) time (module docstring).

    Contract: if every entry of q, keys, values lies in [−bound, bound], the result is within ``eps``
    of the exact output in every entry (up to the float64 evaluation error of the features, which is
    ≈ u·e^{2R} relative; digest §5.3).
    """
    from attnspec.accelerated import polynomial_features as pf

    keys, values = list(keys), list(values)
    _check_shapes(q, keys, values)
    xp = array_namespace(q, *keys, *values)
    order = len(keys) + 1
    d = q.shape[1]
    radius, eps_rel = polynomial_degree_and_eps(order, d, bound, scale, eps)
    poly = pf.choose_polynomial(radius, eps_rel)
    u1 = pf.query_features(q, poly, scale=scale)  # s folded into the column weights: q is not rounded
    y = None
    w = None
    for k_m, v_m in zip(keys, values):
        u_m = pf.key_features(k_m, poly)
        y_m = u_m.T @ v_m
        w_m = xp.sum(u_m, axis=0)
        y = y_m if y is None else y * y_m
        w = w_m if w is None else w * w_m
    return (u1 @ y) / (u1 @ w)[:, None]


__all__ = ["tensor_attention", "polynomial_tensor_attention", "polynomial_degree_and_eps", "default_block"]
