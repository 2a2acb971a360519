"""Softmax attention with bounded entries: the AAttC problem of Alman–Song (2023).

Definition
----------
Inputs Q, K, V ∈ ℝ^{n×d} (exact values), a real ``scale`` s, optionally an entry bound B and an
additive tolerance ε_a.

    A = exp(s · Q Kᵀ)          (entrywise exp, n×n)
    D = diag(A · 1_n)
    Att(Q, K, V) = D⁻¹ A V     (n×d)

Row i of the output is the convex combination Σ_j softmax_j(s⟨q_i, k_j⟩) · v_j. The output is well
defined for every finite input: D_ii ≥ exp(s⟨q_i,k_j⟩) > 0. Subtracting any per-row constant from
the logits leaves it unchanged, so huge logits (±1000) have a perfectly ordinary answer.

Validity
--------
Q, K, V are 2-D with equal shapes n×d (n, d ≥ 1), finite, of a supported dtype (float16/32/64 or
exact rationals); if B is declared, ‖Q‖∞, ‖K‖∞, ‖V‖∞ ≤ B; ε_a, if declared, is positive.

Acceptance
----------
An approximate answer T is acceptable under the contract when ‖T − Att(Q,K,V)‖∞ ≤ ε_a (max-abs entry).
Alman–Song use s = 1/d; standard practice uses s = 1/√d: the instance states its scale explicitly, and
:func:`standard_scale` names both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from attnspec.spec.validation import (
    SpecError,
    as_exact_matrix,
    as_positive_bound,
    as_tolerance,
    check_bound,
    exact_scalar,
    max_abs_exact,
    require_same_shape,
)

PROBLEM = "softmax_attention"


@dataclass(frozen=True, eq=False)
class SoftmaxAttentionInstance:
    """A validated AAttC instance: exact inputs, exact scale, optional bound B and tolerance ε_a."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    scale: Fraction
    bound: Fraction | None = None
    eps: Fraction | None = None

    @property
    def n(self) -> int:
        return self.q.shape[0]

    @property
    def d(self) -> int:
        return self.q.shape[1]

    @property
    def dtype(self) -> np.dtype:
        """Common input dtype (object for exact rationals)."""
        return self.q.dtype

    @property
    def output_shape(self) -> tuple[int, int]:
        return (self.n, self.v.shape[1])


def make_instance(q: Any, k: Any, v: Any, *, scale: Any, bound: Any = None, eps: Any = None) -> SoftmaxAttentionInstance:
    """Validate inputs and build a :class:`SoftmaxAttentionInstance`.

    Raises :class:`SpecError` naming the problem: non-2-D or empty matrices, mismatched shapes,
    unsupported or mixed dtypes, NaN/Inf entries, a non-finite scale, a declared bound violated.
    """
    q = as_exact_matrix(q, "Q")
    k = as_exact_matrix(k, "K")
    v = as_exact_matrix(v, "V")
    if q.shape[1] != k.shape[1]:
        raise SpecError(f"Q and K must have the same number of columns d: {q.shape} vs {k.shape}")
    if k.shape[0] != v.shape[0]:
        raise SpecError(f"K and V must have the same number of rows n: {k.shape} vs {v.shape}")
    require_same_shape(q, k, "Q and K")
    if len({q.dtype, k.dtype, v.dtype}) != 1:
        raise SpecError(f"Q, K, V must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    s = exact_scalar(scale, "scale")
    b = as_positive_bound(bound)
    e = as_tolerance(eps)
    for name, mat in (("Q", q), ("K", k), ("V", v)):
        check_bound(mat, name, b)
    return SoftmaxAttentionInstance(q=q, k=k, v=v, scale=s, bound=b, eps=e)


def standard_scale(d: int, kind: str) -> Fraction:
    """The two usual scales as exact numbers.

    ``"1/d"`` (Alman–Song) is the exact rational 1/d. ``"1/sqrt(d)"`` (practice) is irrational unless
    d is a square; the instance then carries the float64 nearest to 1/√d, and that float *is* the
    scale whose exact answer is certified.
    """
    if d < 1:
        raise SpecError(f"d must be positive, got {d}")
    if kind == "1/d":
        return Fraction(1, d)
    if kind == "1/sqrt(d)":
        r = math.isqrt(d)
        return Fraction(1, r) if r * r == d else Fraction(1.0 / math.sqrt(d))
    raise SpecError(f"unknown scale kind {kind!r}; use '1/d' or '1/sqrt(d)'")


def logit_bound(inst: SoftmaxAttentionInstance) -> float:
    """max_ij |s⟨q_i,k_j⟩| bounded above by |s|·max_i Σ_l |q_il|·max_l|k_l| (a cheap upper bound)."""
    qa = np.abs(inst.q.astype(np.float64))
    ka_max = np.abs(inst.k.astype(np.float64)).max(axis=0)
    return float(abs(inst.scale)) * float((qa @ ka_max).max())


def conditioning(inst: SoftmaxAttentionInstance) -> dict[str, float | int]:
    """Numbers that govern how hard an instance is numerically (reported with every verdict)."""
    q = inst.q.astype(np.float64)
    k = inst.k.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # reported as inf: the numbers describe, never judge
        logits = float(inst.scale) * (q @ k.T)
    return {
        "n": inst.n,
        "d": inst.d,
        "max_abs_logit": float(np.abs(logits).max()),
        "max_row_logit_range": float((logits.max(axis=1) - logits.min(axis=1)).max()),
        "v_inf_norm": float(max_abs_exact(inst.v)),
    }
