"""Certified relative error of a polynomial approximation of exp: sup_{x∈[−R,R]} |P(x)/eˣ − 1|.

P is given by its exact coefficients (float64 values taken exactly, or Fractions), so the result is a
theorem about the concrete polynomial that the accelerated code uses.

Method (rigorous branch and bound with Taylor models in Arb) [D]
----------------------------------------------------------------
Cover [−R, R] by intervals I = [m − h, m + h] with exact dyadic/rational m, h. On I write x = m + t,
|t| ≤ h, and

    f(m + t) = P(m + t)·e^{−m}·e^{−t} − 1
             = [P(m + t)·e^{−m}·E_K(t) − 1] + P(m + t)·e^{−m}·ρ_K(t),

with E_K(t) = Σ_{k<K} (−t)^k/k! and |ρ_K(t)| ≤ h^K/K!·1/(1 − h/(K+1)) (alternating-free geometric
tail bound, valid for h < K+1). The bracket is a polynomial Σ_k a_k t^k with Arb ball coefficients
(P(m + t) by exact composition), so on I

    |f| ≤ |a_0| + Σ_{k≥1} |a_k|·h^k + (Σ_k |p_k| h^k)·e^{−m}·|ρ_K|      (upper bound U(I))
    sup_I |f| ≥ |f(m)|  (a ball: its lower end is a certified lower bound L(I)).

The sup over [−R, R] lies in [max L, max U]. Intervals whose U exceeds the current global lower bound
by more than the requested relative tolerance are bisected until the enclosure is tight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

from flint import arb, arb_poly

from attnspec.reference.enclosure import arb_bounds_fraction, exact_arb, working_precision

TAYLOR_TERMS = 24
DEFAULT_PREC = 192


@dataclass(frozen=True)
class RelativeErrorBound:
    """Certified enclosure [lower, upper] of sup_{|x|≤R} |P(x)/eˣ − 1| (exact rationals), the worst point
    seen, the number of intervals used and the working precision."""

    lower: Fraction
    upper: Fraction
    worst_x: Fraction
    intervals: int
    prec: int

    @property
    def tight(self) -> float:
        """upper/lower − 1 (how tight the enclosure is)."""
        return float(self.upper / self.lower - 1) if self.lower > 0 else math.inf


def _exact(c) -> Fraction:
    return c if isinstance(c, Fraction) else Fraction(float(c)) if not isinstance(c, int) else Fraction(c)


def _upper(ball: arb) -> Fraction:
    return arb_bounds_fraction(ball)[1]


def _abs_upper(ball: arb) -> Fraction:
    lo, hi = arb_bounds_fraction(ball)
    return max(abs(lo), abs(hi))


def _abs_lower(ball: arb) -> Fraction:
    lo, hi = arb_bounds_fraction(ball)
    if lo <= 0 <= hi:
        return Fraction(0)
    return min(abs(lo), abs(hi))


def _interval_bounds(p: arb_poly, m: Fraction, h: Fraction, exp_series: arb_poly) -> tuple[Fraction, Fraction]:
    """(L, U) for sup |P(x)e^{−x} − 1| over [m − h, m + h] (module docstring)."""
    mb = exact_arb(m)
    shifted = p(arb_poly([mb, arb(1)]))  # P(m + t)
    em = (-mb).exp()
    body = shifted * exp_series * em - 1
    hb = exact_arb(h)
    coeffs = body.coeffs()
    upper = _abs_upper(coeffs[0]) if coeffs else Fraction(0)
    hk = arb(1)
    for a in coeffs[1:]:
        hk = hk * hb
        upper += _abs_upper(a * hk)
    # remainder: |P(m+t)| ≤ Σ|p_k| h^k; |ρ_K| ≤ h^K/K!/(1 − h/(K+1))
    pabs = Fraction(0)
    hk = arb(1)
    for a in shifted.coeffs():
        pabs += _abs_upper(a * hk)
        hk = hk * hb
    K = TAYLOR_TERMS
    rho = _upper(hb**K / math.factorial(K) / (1 - hb / (K + 1)))
    upper += pabs * _upper(em) * rho
    center = p(mb) * em - 1
    return _abs_lower(center), upper


def certified_relative_error(coeffs: Sequence, radius, *, rtol: float = 1e-3, prec: int = DEFAULT_PREC,
                             max_intervals: int = 200_000) -> RelativeErrorBound:
    """Certified [lower, upper] ∋ sup_{|x|≤R} |Σ_t c_t xᵗ / eˣ − 1|, refined until upper ≤ (1+rtol)·lower
    (or ``max_intervals`` is reached: the enclosure is still valid, only looser).

    ``coeffs``: power-basis coefficients (floats taken exactly, Fractions, ints); ``radius`` R ≥ 0
    (exact). Requires R < TAYLOR_TERMS (the remainder bound needs h < K+1).
    """
    R = _exact(radius)
    if R < 0:
        raise ValueError(f"radius must be ≥ 0, got {R}")
    cs = [_exact(c) for c in coeffs]
    with working_precision(prec):
        p = arb_poly([exact_arb(c) for c in cs])
        if R == 0:
            v = p(arb(0)) - 1
            lo, hi = _abs_lower(v), _abs_upper(v)
            return RelativeErrorBound(lo, hi, Fraction(0), 1, prec)
        exp_series = arb_poly([arb((-1) ** k) / math.factorial(k) for k in range(TAYLOR_TERMS)])
        n0 = max(16, 4 * len(cs))
        h0 = R / n0
        if h0 >= TAYLOR_TERMS:
            raise ValueError(f"radius {float(R)} too large for the Taylor remainder bound")
        work = [(-R + (2 * i + 1) * h0, h0) for i in range(n0)]
        lower, worst = Fraction(0), Fraction(0)
        done: list[Fraction] = []  # upper bounds of intervals that need no more splitting
        count = 0
        while work:
            evaluated = []
            for m, h in work:
                lo, up = _interval_bounds(p, m, h, exp_series)
                count += 1
                if lo > lower:
                    lower, worst = lo, m
                evaluated.append((m, h, up))
            target = lower * (1 + Fraction(rtol))
            work = []
            for m, h, up in evaluated:
                if up <= target or count + 2 * len(work) >= max_intervals:
                    done.append(up)
                else:
                    work += [(m - h / 2, h / 2), (m + h / 2, h / 2)]
            # earlier "done" uppers stay valid; only the global max matters
        upper = max(done)
        upper = max(upper, lower)
    return RelativeErrorBound(lower, upper, worst, count, prec)


def certified_abs_coeff_sum(coeffs: Sequence, radius) -> Fraction:
    """Σ_t |c_t|·Rᵗ exactly (rational arithmetic)."""
    R = abs(_exact(radius))
    return sum((abs(_exact(c)) * R**t for t, c in enumerate(coeffs)), Fraction(0))


def certified_exp_upper(x, prec: int = 128) -> Fraction:
    """A certified upper bound of eˣ (exact x) as a rational."""
    with working_precision(prec):
        return _upper(exact_arb(_exact(x)).exp())


def certified_cancellation_factor(coeffs: Sequence, radius) -> Fraction:
    """κ = e^R·Σ_t|c_t|Rᵗ, certified upper bound."""
    return certified_exp_upper(radius) * certified_abs_coeff_sum(coeffs, radius)


__all__ = [
    "RelativeErrorBound",
    "certified_relative_error",
    "certified_abs_coeff_sum",
    "certified_exp_upper",
    "certified_cancellation_factor",
]
