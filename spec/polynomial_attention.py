"""Approximate softmax attention under the bounded-entry contract (Alman–Song 2023), and the error
budget of the polynomial method. Derivations and labels: ``docs/polynomial-method.md``.

(ε, r)-approximation [R, digest §2.2]
------------------------------------
Ã ∈ ℝ^{n×m} is an (ε, r)-approximation of an entrywise-positive A when Ã = U₁U₂ᵀ with U₁ ∈ ℝ^{n×r},
U₂ ∈ ℝ^{m×r}, and |Ã_ij − A_ij| ≤ ε·A_ij for all i, j (relative, entrywise).
:func:`is_eps_r_approximation` checks the definition for given factors and a given A.

Approximate-attention contract (AAttC) [V, digest §1.2]
------------------------------------------------------
Given the declared entry bound B, the scale s and ε_a: for every Q, K, V ∈ ℝ^{n×d} with
‖Q‖∞, ‖K‖∞, ‖V‖∞ ≤ B, the output T must satisfy ‖T − D⁻¹AV‖∞ ≤ ε_a, A = exp(s·QKᵀ). Logits then lie in
[−R, R] with R = B²·|s|·d (:func:`logit_radius`) [D].

End-to-end bound of the polynomial method [D]
---------------------------------------------
If the polynomial P satisfies |P(x)/eˣ − 1| ≤ ε on [−R, R] (certified), and the float64 evaluation of
N = U₁(U₂ᵀV) and D̃ = U₁(U₂ᵀ1) is within η·‖V‖∞·D_ii and η·D_ii of the exact-arithmetic values
(D_ii = Σ_j A_ij), then with δ := ε + η < 1

    ‖T − D⁻¹AV‖∞ ≤ [2δ·‖V‖∞ + u·‖V‖∞·(1 + δ)] / (1 − δ)              (:func:`end_to_end_bound`)

(the u-term is the final division's rounding). η is bounded by :func:`evaluation_error_bound`:
η = γ_m·κ + τ with m = :func:`rounding_count` (n, g, r), κ = e^R·Σ_t|c_t|Rᵗ, τ an underflow allowance.
Every function here computes in exact rationals when given Fractions, so the audit can evaluate the
bound as a theorem from Arb-certified ε and κ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from attnspec.spec.validation import SpecError, as_positive_bound, as_tolerance, exact_scalar

PROBLEM = "softmax_attention"
UNIT_ROUNDOFF = Fraction(1, 2**53)
SMALLEST_SUBNORMAL = Fraction(1, 2**1074)


@dataclass(frozen=True)
class ApproximationContract:
    """The AAttC contract: entries bounded by ``bound`` (B), output within ``eps`` (ε_a) in every entry."""

    bound: Fraction
    eps: Fraction
    scale: Fraction

    def logit_radius(self, d: int) -> Fraction:
        return logit_radius(self.bound, self.scale, d)


def make_contract(*, bound: Any, eps: Any, scale: Any) -> ApproximationContract:
    """Validate (B > 0, ε_a > 0, finite s) and build an :class:`ApproximationContract`."""
    b = as_positive_bound(bound, "bound B")
    e = as_tolerance(eps, "eps_a")
    if b is None or e is None:
        raise SpecError("the approximation contract needs both an entry bound B and a tolerance eps_a")
    return ApproximationContract(bound=b, eps=e, scale=exact_scalar(scale, "scale"))


def logit_radius(bound: Any, scale: Any, d: int, order: int = 2) -> Fraction:
    """R = B^order·|s|·d exactly: |s·Σ_l q_l k_l| ≤ |s|·d·B² for entries in [−B, B] (order 3: tensor)."""
    if int(d) < 1:
        raise SpecError(f"d must be positive, got {d}")
    b = exact_scalar(bound, "bound B")
    return abs(exact_scalar(scale, "scale")) * int(d) * abs(b) ** int(order)


def relative_eps_target(eps_a: Any, v_bound: Any) -> Fraction:
    """ε = ε_a / (2‖V‖∞): the polynomial accuracy that the 2ε‖V‖∞ propagation bound turns into ε_a."""
    return exact_scalar(eps_a, "eps_a") / (2 * exact_scalar(v_bound, "V bound"))


def gamma(m: int, u: Fraction = UNIT_ROUNDOFF) -> Fraction:
    """γ_m = m·u / (1 − m·u) exactly (Higham, Accuracy and Stability, Lemma 3.1)."""
    if m * u >= 1:
        raise SpecError(f"γ_{m} is undefined: {m} roundings at unit roundoff {float(u):g} exceed 1")
    return m * u / (1 - m * u)


def rounding_count(n: int, g: int, r: int) -> int:
    """m = 3g + n + r + 2: roundings along any path of one term U₁[i,α]·U₂[j,α]·V[j,l] into N_il
    (U₁: monomial ≤ g−1, weight ≤ g+2, product 1; U₂: ≤ g−1; U₂·V 1; n−1 sums; U₁·Y 1; r−1 sums),
    rounded up by 2 for slack (docs/polynomial-method.md §3)."""
    return 3 * int(g) + int(n) + int(r) + 2


def evaluation_error_bound(*, kappa: Any, n: int, g: int, r: int, radius: Any, magnitude: Any = 1) -> Fraction:
    """η = γ_m·κ + τ: relative (to D_ii, resp. ‖V‖∞·D_ii) float64 evaluation error of D̃ and N.

    κ = e^R·Σ_t|c_t|Rᵗ (an upper bound); τ = r·m·2⁻¹⁰⁷⁴·M·e^R covers underflow (absolute error ≤ 2⁻¹⁰⁷⁴
    per operation, magnified by later factors of size ≤ M, against D_ii ≥ n·e^{−R}); pass as
    ``magnitude`` an upper bound on M (e.g. max(1, max|w_α|)·max(1, B)^{2g+2}).
    """
    m = rounding_count(n, g, r)
    k = exact_scalar(kappa, "kappa")
    e_r = Fraction(math.exp(float(exact_scalar(radius, "radius")))) * (1 + Fraction(1, 2**40))
    tau = r * m * SMALLEST_SUBNORMAL * exact_scalar(magnitude, "magnitude") * e_r
    return gamma(m) * k + tau


def end_to_end_bound(*, rel_eps: Any, eval_rel: Any, v_bound: Any, u: Fraction = UNIT_ROUNDOFF) -> Fraction:
    """[2δ‖V‖∞ + u‖V‖∞(1+δ)]/(1−δ), δ = ε + η (module docstring); raises if δ ≥ 1."""
    delta = exact_scalar(rel_eps, "rel_eps") + exact_scalar(eval_rel, "eval_rel")
    vb = exact_scalar(v_bound, "V bound")
    if delta >= 1:
        raise SpecError(f"relative error ε + η = {float(delta):.3g} ≥ 1: the approximation may vanish")
    return (2 * delta * vb + u * vb * (1 + delta)) / (1 - delta)


def is_eps_r_approximation(u1: np.ndarray, u2: np.ndarray, a: np.ndarray, eps: float, r: int | None = None) -> bool:
    """Definition check (float64): U₁ (n×r), U₂ (m×r), |U₁U₂ᵀ − A| ≤ ε·A entrywise, A > 0.

    ``r`` (optional) must equal the factors' column count. Raises SpecError for A not positive or
    mismatched shapes.
    """
    u1, u2, a = (np.asarray(x, dtype=np.float64) for x in (u1, u2, a))
    if u1.ndim != 2 or u2.ndim != 2 or u1.shape[1] != u2.shape[1]:
        raise SpecError(f"factors must be n×r and m×r, got {u1.shape} and {u2.shape}")
    if a.shape != (u1.shape[0], u2.shape[0]):
        raise SpecError(f"A must be {(u1.shape[0], u2.shape[0])}, got {a.shape}")
    if not np.all(a > 0):
        raise SpecError("the (ε, r)-approximation is defined for entrywise-positive A")
    if r is not None and u1.shape[1] != r:
        return False
    return bool(np.all(np.abs(u1 @ u2.T - a) <= eps * a))


__all__ = [
    "ApproximationContract",
    "make_contract",
    "logit_radius",
    "relative_eps_target",
    "gamma",
    "rounding_count",
    "evaluation_error_bound",
    "end_to_end_bound",
    "is_eps_r_approximation",
]
