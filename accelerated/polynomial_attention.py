"""Polynomial-method softmax attention (Alman–Song 2023) in O(n·r·d) time, r = binom(d+g, g).

Contract (:mod:`attnspec.spec.polynomial_attention`): for ‖Q‖∞, ‖K‖∞, ‖V‖∞ ≤ B the output is within ε_a
of D⁻¹AV, A = exp(s·QKᵀ), in every entry, *including* the float64 evaluation error.

Algorithm [D, digest §2.5]: R = B²|s|d; pick P (:func:`~.polynomial_features.choose_polynomial`) with
relative error ε on [−R, R]; U₁ = query features, U₂ = key features (n×r each, so U₁U₂ᵀ = P(s·QKᵀ));
w = U₂ᵀ1, Y = U₂ᵀV; N = U₁Y, D̃ = U₁w; T = N / D̃. Never forms n×n.

Degree choice (:func:`plan_polynomial_attention`): the smallest degree whose design relative error ε
and float64 evaluation error η (bounded a priori from n, g, r and κ = e^R·Σ|c_t|Rᵗ) give the end-to-end
bound of :func:`attnspec.spec.polynomial_attention.end_to_end_bound` ≤ ε_a. Parameters where no degree
does (large R: η ≈ (n + r)·u·e^{2R}) are refused with :class:`SpecError` instead of returning garbage.
The design ε is a dense-grid estimate; :mod:`attnspec.conformance.audits.polynomial_audit` recomputes the
whole bound from Arb-certified ε and κ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from fractions import Fraction
from typing import Any

import numpy as np

from attnspec.spec import polynomial_attention as contract
from attnspec.spec.validation import SpecError
from attnspec.accelerated import polynomial_features as pf
from attnspec.accelerated.array_namespace import array_namespace

PROBLEM = "softmax_attention"
# Rows of U₁ / U₂ formed at a time (bounds memory to CHUNK_ROWS·r numbers per factor).
CHUNK_ROWS = 8192
# Design split of ε_a: the polynomial gets this fraction of the ε_a/(2B) budget, rounding the rest.
POLY_SHARE = Fraction(7, 8)


@dataclass(frozen=True)
class PolynomialPlan:
    """Everything the method commits to for (n, d, B, s, ε_a): the polynomial, rank, and the a priori
    bound (floats computed from the design ε; the audit certifies the same formula with Arb)."""

    n: int
    d: int
    bound: float
    scale: float
    eps: float
    radius: float
    poly: pf.ExpPolynomial
    rank: int
    eval_rel: float
    design_bound: float

    @property
    def degree(self) -> int:
        return self.poly.degree


def weight_magnitude(poly: pf.ExpPolynomial, d: int, scale: float, bound: float) -> float:
    """M = max(1, max|w_α|)·max(1, B)^{2g+2}: largest factor applied after any product (underflow term)."""
    w = pf.query_column_weights(poly, d, scale)
    return max(1.0, float(np.max(np.abs(w)))) * max(1.0, float(bound)) ** (2 * poly.degree + 2)


def plan_polynomial_attention(n: int, d: int, *, bound: Any, scale: Any, eps: Any) -> PolynomialPlan:
    """Choose the degree for (n, d, B, s, ε_a) so that the end-to-end bound (ε from the design estimate,
    η a priori) is ≤ ε_a; raise :class:`SpecError` when float64 cannot deliver it. Cached per
    parameters (a plan is a pure function of them)."""
    c = contract.make_contract(bound=bound, eps=eps, scale=scale)
    return _plan_cached(int(n), int(d), c.bound, c.eps, c.scale)


@lru_cache(maxsize=128)
def _plan_cached(n: int, d: int, bound: Fraction, eps: Fraction, scale: Fraction) -> PolynomialPlan:
    c = contract.ApproximationContract(bound=bound, eps=eps, scale=scale)
    if n < 1 or d < 1:
        raise SpecError(f"n and d must be positive, got n={n}, d={d}")
    radius = c.logit_radius(d)
    rel_target = contract.relative_eps_target(c.eps, c.bound) * POLY_SHARE
    if rel_target >= 1:
        rel_target = Fraction(1, 2)
    last_error: tuple[int, float, float | None] = (0, math.inf, None)
    for shrink in range(12):  # tighten the polynomial while rounding leaves room
        target = float(rel_target) / 4**shrink
        try:
            poly = pf.choose_polynomial(float(radius), target)
        except SpecError as exc:
            raise SpecError(
                f"polynomial attention refuses B={float(c.bound):g}, scale={float(c.scale):g}, d={d}, "
                f"eps_a={float(c.eps):g}: logit radius R = B²|s|d = {float(radius):g} needs relative error "
                f"{target:.3g}, which float64 cannot deliver ({exc})"
            ) from None
        r = pf.rank(d, poly.degree)
        eta = contract.evaluation_error_bound(
            kappa=Fraction(poly.cancellation_factor()) * (1 + Fraction(1, 2**20)),
            n=n, g=poly.degree, r=r, radius=radius,
            magnitude=Fraction(weight_magnitude(poly, d, float(c.scale), float(c.bound))) * 2,
        )
        try:
            total = contract.end_to_end_bound(rel_eps=poly.claimed_rel_eps, eval_rel=eta, v_bound=c.bound)
        except SpecError:
            total = None
        if total is not None and total <= c.eps:
            return PolynomialPlan(n, d, float(c.bound), float(c.scale), float(c.eps), float(radius), poly, r,
                                  float(eta), float(total))
        last_error = (poly.degree, float(eta), None if total is None else float(total))
        if float(eta) * 2 * float(c.bound) > float(c.eps):
            break  # rounding alone exceeds ε_a: a better polynomial cannot help
    g, eta_f, total_f = last_error
    raise SpecError(
        f"polynomial attention refuses n={n}, d={d}, B={float(c.bound):g}, scale={float(c.scale):g}, "
        f"eps_a={float(c.eps):g}: float64 evaluation error η ≈ {eta_f:.3g} (cancellation factor "
        f"e^R·Σ|c_t|Rᵗ at R = {float(radius):g}, degree {g}) leaves the end-to-end bound "
        f"{'≥ 1' if total_f is None else f'{total_f:.3g}'} > eps_a; use a smaller B or |scale|, or a larger eps_a"
    )


def _max_abs(xp, x) -> float:
    return float(xp.max(xp.abs(x)))


def polynomial_attention(q: Any, k: Any, v: Any, *, scale: Any, bound: Any, eps: Any, plan: PolynomialPlan | None = None) -> Any:
    """T ≈ D⁻¹AV with ‖T − D⁻¹AV‖∞ ≤ eps whenever all entries of q, k, v lie in [−bound, bound].

    q, k: n×d, v: n×dv, float64, one array library. Raises :class:`SpecError` for bad shapes/dtypes,
    entries beyond ``bound`` (the contract would not apply), or parameters float64 cannot serve.
    """
    xp = array_namespace(q, k, v)
    if len(q.shape) != 2 or len(k.shape) != 2 or len(v.shape) != 2:
        raise SpecError("q, k, v must be 2-D")
    if q.shape[1] != k.shape[1] or k.shape[0] != v.shape[0] or q.shape[0] != k.shape[0]:
        raise SpecError(f"shapes must be q n×d, k n×d, v n×dv; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dtype != xp.float64:
            raise SpecError(f"polynomial attention computes in float64; {name} has dtype {x.dtype}")
    n, d = int(q.shape[0]), int(q.shape[1])
    if plan is None:
        plan = plan_polynomial_attention(n, d, bound=bound, scale=scale, eps=eps)
    elif (plan.n, plan.d) != (n, d) or plan.bound != float(bound) or plan.eps != float(eps) or plan.scale != float(scale):
        raise SpecError("the given plan was made for other (n, d, bound, scale, eps)")
    for name, x in (("Q", q), ("K", k), ("V", v)):
        m = _max_abs(xp, x)
        if not m <= plan.bound:  # also catches NaN
            raise SpecError(f"{name} violates the declared entry bound B = {plan.bound!r}: max |{name}| = {m!r}")
    poly = plan.poly
    # Key side: Y = U₂ᵀV and w = U₂ᵀ1 accumulated over row chunks (any summation order is covered by γ_m).
    y = None
    for j0 in range(0, n, CHUNK_ROWS):
        u2 = pf.key_features(k[j0:j0 + CHUNK_ROWS, :], poly.degree)
        v1 = xp.concat([v[j0:j0 + CHUNK_ROWS, :], xp.ones((u2.shape[0], 1), dtype=v.dtype)], axis=1)
        part = u2.T @ v1
        y = part if y is None else y + part
    out = []
    for i0 in range(0, n, CHUNK_ROWS):
        u1 = pf.query_features(q[i0:i0 + CHUNK_ROWS, :], poly, plan.scale)
        nd = u1 @ y
        out.append(nd[:, :-1] / nd[:, -1:])
    return xp.concat(out, axis=0) if len(out) > 1 else out[0]


class PolynomialAttentionBackend:
    """Backend object (contract tolerance): ``attention(q, k, v, *, scale)`` by the polynomial method
    with the declared ``eps`` (ε_a) and entry ``bound`` (B)."""

    def __init__(self, eps: float = 1e-6, bound: float = 1.0) -> None:
        contract.make_contract(bound=bound, eps=eps, scale=1)
        self.eps = float(eps)
        self.bound = float(bound)
        self.capabilities = {
            "problems": {"softmax_attention"},
            "dtypes": {"float64"},
            "devices": {"cpu"},
            "contract_eps": self.eps,
            "bound": self.bound,
        }

    def attention(self, q: Any, k: Any, v: Any, *, scale: Any) -> np.ndarray:
        q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
        return polynomial_attention(q, k, v, scale=float(scale), bound=self.bound, eps=self.eps)

    def __repr__(self) -> str:
        return f"PolynomialAttentionBackend(eps={self.eps!r}, bound={self.bound!r})"


__all__ = ["PolynomialPlan", "plan_polynomial_attention", "polynomial_attention", "PolynomialAttentionBackend"]
