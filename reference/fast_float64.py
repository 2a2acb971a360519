"""Rigorous float64 primitives for the fast enclosure engines (``reference/fast_softmax.py``,
``reference/fast_tensor.py``): certificates that rest only on IEEE-754 binary64 round-to-nearest
arithmetic with gradual underflow, written once for numpy and CuPy (``xp`` is the native module).

Notation (used in every docstring here and in docs/fast-engine.md):

- u = 2⁻⁵³ (unit roundoff), η = 2⁻¹⁰⁷⁴ (smallest subnormal), γ_k = k·u / (1 − k·u);
- fl(·): the computed float64 result, every operation rounded to nearest.

Three kinds of primitive:

1. *Directed helpers* (:func:`add_up`, :func:`mul_up`, :func:`div_up`, :func:`sub_down`, …) for the
   O(n·d) and O(m·d_v) quantities of an error bound: the result of one round-to-nearest operation is
   within half an ulp of the exact value, so the next float towards +∞ (``nextafter``) is an upper bound
   of the exact value (also for subnormal results, where the rounding error is ≤ η/2 and the step is η,
   and for overflow, which gives +∞). No rounding-mode switching.
2. *A-priori bounds* for the O(n²) work, which runs in plain round-to-nearest on BLAS:
   :func:`gamma_up`, :func:`sum_nonneg_up`, :func:`dot_error_bound` (Higham's Theorem 3.1 with
   underflow terms, derived here).
3. :func:`exp_inplace`: a vectorised exp with its own error analysis (Cody–Waite range reduction with a
   split ln 2, a degree-12 Taylor polynomial with a Lagrange remainder, Horner's evaluation bound,
   exact scaling by 2^k built from the exponent bits); constants :data:`EXP_REL_ERR`,
   :data:`EXP_ABS_ERR`. And :func:`div_bounds`, a certified interval division.
"""

from __future__ import annotations

import math
from fractions import Fraction
from types import ModuleType
from typing import Any

import numpy as np

U = 2.0**-53  # unit roundoff of binary64, round to nearest
ETA = 2.0**-1074  # smallest positive subnormal
_U = Fraction(1, 2**53)


def _float_up(x: Fraction) -> float:
    """The smallest float ≥ x (x ≥ 0 rational; exact when x is a float)."""
    f = float(x)  # correctly rounded
    return f if Fraction(f) >= x else math.nextafter(f, math.inf)


def gamma_up(k: int) -> float:
    """A float ≥ γ_k = k·u/(1 − k·u) (requires k·u < 1/2)."""
    if k <= 0:
        return 0.0
    if 2 * k * _U >= 1:
        raise ValueError(f"gamma_{k}: k·u must be < 1/2")
    return _float_up(k * _U / (1 - k * _U))


# ---------------------------------------------------------------------------------------------------
# Directed helpers (one nextafter after each round-to-nearest operation)
# ---------------------------------------------------------------------------------------------------

def _up(xp: ModuleType, x: Any) -> Any:
    return xp.nextafter(x, xp.inf)


def _down(xp: ModuleType, x: Any) -> Any:
    return xp.nextafter(x, -xp.inf)


def add_up(xp: ModuleType, a: Any, b: Any) -> Any:
    """An upper bound of a + b (exact reals a, b given as floats)."""
    return _up(xp, a + b)


def mul_up(xp: ModuleType, a: Any, b: Any) -> Any:
    """An upper bound of a·b for a, b ≥ 0 (0·∞ is not allowed: the caller guarantees finite factors
    or accepts NaN, which the enclosure treats as 'unbounded')."""
    return _up(xp, a * b)


def div_up(xp: ModuleType, a: Any, b: Any) -> Any:
    """An upper bound of a / b for a ≥ 0, b > 0."""
    return _up(xp, a / b)


def sub_down(xp: ModuleType, a: Any, b: Any) -> Any:
    """A lower bound of a − b."""
    return _down(xp, a - b)


def sub_up(xp: ModuleType, a: Any, b: Any) -> Any:
    """An upper bound of a − b."""
    return _up(xp, a - b)


def sqrt_up(xp: ModuleType, a: Any) -> Any:
    """An upper bound of √a (IEEE sqrt is correctly rounded)."""
    return _up(xp, xp.sqrt(a))


def sum_nonneg_up(xp: ModuleType, computed: Any, k: int) -> Any:
    """Upper bound of an exact sum Σ_{i≤k} a_i·b_i of k *nonnegative* products, from its computed value
    ``computed`` = fl(Σ a_i b_i) in any order (BLAS, pairwise, FMA …).

    Derived here: by :func:`dot_error_bound`'s lemma |fl(S) − S| ≤ γ_k·S + k·η for S = Σ|a_i b_i|, so
    S ≤ (fl(S) + k·η) / (1 − γ_k), evaluated with directed operations.
    """
    g = gamma_up(k)
    one_minus = math.nextafter(1.0 - g, 0.0)  # a float ≤ 1 − γ_k
    return div_up(xp, add_up(xp, computed, k * ETA), one_minus)


def dot_error_bound(xp: ModuleType, abs_computed: Any, k: int) -> Any:
    """A-priori bound of |fl(A·B) − A·B| entrywise, from ``abs_computed`` = fl(|A|·|B|) (inner
    dimension k), for any BLAS evaluation order (recursive, blocked, pairwise, with or without FMA),
    in binary64 round to nearest with gradual underflow:

        |fl(AB) − AB| ≤ γ_{2k}·fl(|A||B|) + 2k·η                                   (derived here)

    Lemma (Higham, Accuracy and Stability, Thm 3.1, with underflow terms added here): a dot product
    s = Σ_{i≤k} a_i b_i evaluated by any summation tree satisfies |fl(s) − s| ≤ γ_k Σ|a_i b_i| + k·η.
    Each product is fl(ab) = ab(1+δ) + e with |δ| ≤ u, |e| ≤ η/2 (e ≠ 0 only for a subnormal result);
    an addition (or the add of an FMA) has no underflow error when its result is subnormal (it is
    exact) and otherwise a relative error ≤ u; along any leaf-to-root path there are at most k
    roundings, so the relative part is ≤ γ_k Σ|a_i b_i| and the k underflow errors e, each ≤ η/2 and
    magnified by at most (1+u)^{k−1} ≤ 2, add ≤ k·η. Applying the lemma to |A||B| too (all terms ≥ 0)
    gives Σ|a_i b_i| ≤ (fl(|A||B|) + kη)/(1 − γ_k); with γ_k/(1 − γ_k) ≤ γ_{2k} and γ_{2k}·kη ≤ kη the
    bound follows. Valid only when nothing overflows (an overflow gives ∞ in ``abs_computed``, hence an
    infinite bound). Requires 4k·u < 1.
    """
    g2 = gamma_up(2 * k)
    return add_up(xp, mul_up(xp, abs_computed, g2), 2 * k * ETA)


def div_bounds(xp: ModuleType, nlo: Any, nhi: Any, dlo: Any, dhi: Any) -> tuple[Any, Any]:
    """Certified [lo, hi] ∋ n/d for every n ∈ [nlo, nhi], d ∈ [dlo, dhi] with 0 < dlo ≤ dhi.

    n/d is monotone in n and, for fixed n, in d (decreasing when n ≥ 0, increasing when n < 0), so the
    extremes are at the corners: lo = min(nlo/dlo, nlo/dhi), hi = max(nhi/dlo, nhi/dhi), each quotient
    rounded outwards by one ``nextafter``. A denominator that is not > 0 gives (−∞, +∞).
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lo = xp.minimum(_down(xp, nlo / dlo), _down(xp, nlo / dhi))
        hi = xp.maximum(_up(xp, nhi / dlo), _up(xp, nhi / dhi))
        bad = ~(dlo > 0)
        lo = xp.where(bad, -xp.inf, lo)
        hi = xp.where(bad, xp.inf, hi)
    return lo, hi


# ---------------------------------------------------------------------------------------------------
# The certified exp
# ---------------------------------------------------------------------------------------------------

EXP_DEGREE = 12
EXP_X_MIN = -1000.0  # inputs below are clipped here (the result is 0 anyway)
EXP_X_MAX = 709.0  # inputs above are clipped here: callers guarantee x ≤ 709 where bounds are used
_SHIFT = 1.5 * 2.0**52  # fl(y + SHIFT) − SHIFT = the integer nearest y, for |y| < 2^51
_SHIFT_BITS = int(np.array(_SHIFT).view(np.int64))
_INVLN2 = 1.0 / math.log(2.0)
_COEFFS = [float(Fraction(1, math.factorial(j))) for j in range(EXP_DEGREE + 1)]  # c̃_j = fl(1/j!)


def _horner_relative_error(arb: Any, r: Any, n: int) -> Any:
    """An upper bound (Arb) of |p̂(r̃) − e^{r̃}| / e^{r̃} for |r̃| ≤ r, p̂ the float64 Horner evaluation of
    Σ_{j≤n} c̃_j r̃ʲ as exp_inplace does it (p̂_n = c̃_n; p̂_j = fl(fl(p̂_{j+1}·r̃) + c̃_j)).

    Derived here, step by step rather than with Higham's γ_{2n}·Σ|c̃_j||r̃|ʲ (which charges every
    rounding at the full size of the result): with A_j = Σ_{i≥j} c̃_i rⁱ⁻ʲ ≥ |p̃_j(r̃)| (the exact tails;
    all c̃_i > 0) and E_j ≥ |p̂_j − p̃_j(r̃)|, E_n = 0,

        |fl(p̂_{j+1}·r̃) − p̂_{j+1}·r̃| ≤ u·r·(A_{j+1} + E_{j+1}) + η/2      (η/2: a subnormal product)
        B_j = A_j + r·E_{j+1} + u·r·(A_{j+1} + E_{j+1}) + η/2 ≥ |fl(p̂_{j+1}·r̃) + c̃_j|
        E_j = r·E_{j+1} + u·r·(A_{j+1} + E_{j+1}) + η/2 + u·B_j.

    Rounding errors of early steps are damped by rʲ (r < 0.35), so E_0 ≈ 2.4u instead of 24u·e^r.
    Add the coefficient rounding Σ_j |c̃_j − 1/j!|·rʲ (exact: c̃_0, c̃_1, c̃_2 are) and the Taylor
    remainder e^r·r^{n+1}/(n+1)!, and divide by min e^{r̃} = e^{−r}."""
    u, eta = arb(U), arb(ETA)
    coef = [arb(_COEFFS[j]) for j in range(n + 1)]  # floats: exact as Arb balls
    tails = [arb(0)] * (n + 2)
    for j in range(n, -1, -1):
        tails[j] = coef[j] + r * tails[j + 1]
    e = arb(0)
    for j in range(n - 1, -1, -1):
        prod_err = u * r * (tails[j + 1] + e) + eta / 2
        b = tails[j] + r * e + prod_err
        e = r * e + prod_err + u * b
    coef_err = sum((abs(coef[j] - arb(1) / math.factorial(j)) * r**j for j in range(n + 1)), arb(0))
    trunc = r.exp() * r ** (n + 1) / math.factorial(n + 1)
    return (e + coef_err + trunc) * r.exp()


def _exp_constants() -> dict[str, float]:
    """Split ln 2 and the exp error constants, computed once with rigorous Arb balls (constants of the
    analysis only: the certificate of each call is float64 round to nearest).

    Derived here (see exp_inplace): with K_max = 1443 (|k| for x ∈ [−1000, 709]),
    - C1 = ln 2 rounded to 32 bits (k·C1 is exact for |k| < 2²¹), C2 = fl(ln 2 − C1);
    - |fl(x·INVLN2) − x/ln2| ≤ 1000·|INVLN2 − 1/ln 2| + u·|fl(x·INVLN2)| ≤ e_k, so |x − k ln2| ≤
      (1/2 + e_k)·ln 2 =: r₀ and the reduced argument r̃ satisfies |r̃| ≤ R_MAX = r₀ + δ_red;
    - δ_red = u·(2·R_MAX) + u·K_max·|C2| + K_max·|ln 2 − C1 − C2| bounds |r̃ − (x − k ln 2)|;
    - ε_poly: :func:`_horner_relative_error` (a step-by-step Horner bound, N = 12);
    - EXP_REL_ERR = ε_poly + (e^{δ_red} − 1)(1 + ε_poly).
    """
    from flint import arb, ctx

    old = ctx.prec
    ctx.prec = 256
    try:
        ln2 = arb(2).log()
        c1 = float(Fraction(round(Fraction(float(ln2.mid())) * 2**32), 2**32))
        c2 = float(arb(ln2 - arb(c1)).mid())
        split_err = abs(ln2 - arb(c1) - arb(c2))
        split_up = float(split_err.upper()) * (1 + 2**-40)
        kmax = 1443
        inv_err = float(abs(arb(_INVLN2) - 1 / ln2).upper())
        e_k = 1000 * inv_err + U * 1000 * 1.45
        r0 = (0.5 + e_k) * float(ln2.upper())
        # δ_red depends on R_MAX only through the tiny u·2·R_MAX term: iterate once with R_MAX < 0.35
        delta = U * 0.7 + U * kmax * abs(c2) + kmax * split_up
        r_max = (r0 + delta) * (1 + 2**-40)
        if not r_max < 0.35:
            raise AssertionError("exp range reduction constant out of range")
        n = EXP_DEGREE
        eps_poly = _horner_relative_error(arb, arb(r_max), n)
        eps_red = arb(delta).exp() - 1
        rel = eps_poly + eps_red * (1 + eps_poly)
        return {
            "C1": c1,
            "C2": c2,
            "R_MAX": r_max,
            "DELTA_RED": delta,
            "REL": float(rel.upper()) * (1 + 2**-40),
        }
    finally:
        ctx.prec = old


_K = _exp_constants()
LN2_HI = _K["C1"]
LN2_LO = _K["C2"]
EXP_R_MAX = _K["R_MAX"]
EXP_REL_ERR = _K["REL"]  # |w̃ − eˣ| ≤ EXP_REL_ERR·eˣ + EXP_ABS_ERR for x ∈ [EXP_X_MIN, EXP_X_MAX]
EXP_ABS_ERR = 2.0**-1022  # results below 2^-1022 are returned as 0 (or as a rounded subnormal)
LIBM_EXP_REL_ERR = 2.0**-51  # the declared accuracy of trust_libm_exp=True: 2 ulp


def exp_inplace(x: Any, scratch: tuple[Any, Any, Any], xp: ModuleType) -> Any:
    """Certified vectorised exp of a float64 array ``x`` (overwritten), in binary64 round to nearest.

    Returns an array w̃ (one of ``scratch``, same shape as ``x``) with, for every entry x ≤ 709,

        |w̃ − eˣ| ≤ EXP_REL_ERR·eˣ + EXP_ABS_ERR,   EXP_REL_ERR ≈ 7.9e-16 (7.1u), EXP_ABS_ERR = 2⁻¹⁰²²,

    and w̃ = 0 for x = −∞ (a masked logit: exactly the true weight 0). Entries x > 709 are clipped to
    709 (their result is *not* eˣ: callers never use it). NaN propagates as garbage: callers mark such
    rows unbounded. ``scratch``: three float64 buffers of ``x``'s shape.

    Algorithm and error analysis (derived here):

    1. clip x to [−1000, 709];
    2. k = round-to-nearest-integer of fl(x·INVLN2), by t = fl(fl(x·INVLN2) + 1.5·2⁵²) (exact integer
       arithmetic in [2⁵², 2⁵³)); |k| ≤ 1443;
    3. Cody–Waite: r̃ = fl(fl(x − k·C1) − fl(k·C2)), ln 2 = C1 + C2 + e_split with C1 of 32 bits (so
       k·C1 is exact) and |e_split| < 2⁻⁸⁵. Each of the two subtractions and the product k·C2 rounds
       once, so |r̃ − (x − k ln 2)| ≤ u|r₁| + u|r̃| + u|k·C2| + |k|·|e_split| ≤ δ_red ≈ 0.7u, and
       |r̃| ≤ R_MAX < 0.3467;
    4. p̂ = Horner(c̃_12, …, c̃_0; r̃), c̃_j = fl(1/j!). Horner's bound (Higham eq. 5.3) gives
       |p̂ − p̃(r̃)| ≤ E_0 by a step-by-step bound (:func:`_horner_relative_error`: each step's rounding
       is damped by the later multiplications by r̃), the coefficients add Σ|c̃_j − 1/j!||r̃|ʲ, the
       Taylor remainder ≤ e^{|r̃|}|r̃|¹³/13!; relative to e^{r̃} ≥ e^{−|r̃|} this is ε_poly;
    5. w̃ = p̂·2ᵏ with 2ᵏ built from its exponent bits (k + 1023 clamped at 0, so 2ᵏ := 0 for
       k ≤ −1023): exact for a normal result, abs. error ≤ η/2 for a subnormal one, and for k ≤ −1023
       the true value is eˣ ≤ 2^{−1022.5} < EXP_ABS_ERR.

    So w̃ = eˣ·(1+θ)·e^{−δ} (+ the absolute term), |θ| ≤ ε_poly, |δ| ≤ δ_red:
    |w̃/eˣ − 1| ≤ ε_poly + (e^{δ_red} − 1)(1 + ε_poly) = EXP_REL_ERR. About 35 array passes.
    """
    t, p, s = scratch
    xp.clip(x, EXP_X_MIN, EXP_X_MAX, out=x)
    xp.multiply(x, _INVLN2, out=t)
    xp.add(t, _SHIFT, out=t)  # t = k + SHIFT exactly
    xp.subtract(t, _SHIFT, out=p)  # p = k (exact)
    xp.multiply(p, LN2_HI, out=s)  # exact
    xp.subtract(x, s, out=x)
    xp.multiply(p, LN2_LO, out=s)
    xp.subtract(x, s, out=x)  # x = r̃
    c = _COEFFS
    xp.multiply(x, c[EXP_DEGREE], out=p)
    xp.add(p, c[EXP_DEGREE - 1], out=p)
    for j in range(EXP_DEGREE - 2, -1, -1):
        xp.multiply(p, x, out=p)
        xp.add(p, c[j], out=p)
    ti = t.view(xp.int64)
    xp.subtract(ti, _SHIFT_BITS - 1023, out=ti)  # k + 1023
    xp.maximum(ti, 0, out=ti)  # k ≤ −1023 → the bit pattern of +0.0
    xp.left_shift(ti, 52, out=ti)  # 2ᵏ as a float64 bit pattern
    xp.multiply(p, t, out=p)
    return p


def exp_libm_inplace(x: Any, scratch: tuple[Any, Any, Any], xp: ModuleType) -> Any:
    """``trust_libm_exp=True``: the library's exp, *assumed* accurate to LIBM_EXP_REL_ERR (2 ulp) above
    2⁻¹⁰²² (absolute EXP_ABS_ERR below). A declared assumption, reported in the enclosure."""
    t, _, _ = scratch
    xp.clip(x, EXP_X_MIN, EXP_X_MAX, out=x)
    xp.exp(x, out=t)
    return t


def certified_exp(x: Any, xp: ModuleType | None = None) -> tuple[Any, float, float]:
    """(w̃, rel, abs): w̃ ≈ eˣ for a float64 array x ≤ 709 with |w̃ − eˣ| ≤ rel·eˣ + abs entrywise."""
    xp = xp or np
    arr = xp.array(x, dtype=xp.float64, copy=True)
    scratch = (xp.empty_like(arr), xp.empty_like(arr), xp.empty_like(arr))
    with np.errstate(invalid="ignore", over="ignore"):
        w = exp_inplace(arr, scratch, xp)
    return w.copy(), EXP_REL_ERR, EXP_ABS_ERR


__all__ = [
    "U", "ETA", "gamma_up", "add_up", "mul_up", "div_up", "sub_down", "sub_up", "sqrt_up",
    "sum_nonneg_up", "dot_error_bound", "div_bounds", "exp_inplace", "exp_libm_inplace", "certified_exp",
    "EXP_REL_ERR", "EXP_ABS_ERR", "EXP_R_MAX", "LN2_HI", "LN2_LO", "LIBM_EXP_REL_ERR",
]
