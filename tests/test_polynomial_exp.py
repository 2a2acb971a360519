"""Certified sup-norm of |P/exp − 1| (reference/polynomial_exp), cross-checked with mpmath and Sollya."""

from __future__ import annotations

import math
import shutil
import subprocess
from fractions import Fraction

import mpmath
import pytest
from hypothesis import given, settings, strategies as st

from attnspec.accelerated import polynomial_features as pf
from attnspec.reference.polynomial_exp import (
    certified_abs_coeff_sum,
    certified_cancellation_factor,
    certified_relative_error,
)


def _mp_rel_error(coeffs, x):
    with mpmath.workdps(50):
        xm = mpmath.mpf(x)
        p = sum(mpmath.mpf(float(c)) * xm**t for t, c in enumerate(coeffs))
        return abs(p * mpmath.exp(-xm) - 1)


def _taylor(g):
    return [Fraction(1, math.factorial(t)) for t in range(g + 1)]


@pytest.mark.parametrize("g,radius", [(5, Fraction(1, 2)), (7, Fraction(1)), (10, Fraction(2))])
def test_taylor_polynomial_known_worst_point(g, radius):
    """For the Taylor polynomial T_g of exp the relative error |T_g(x)e^{−x} − 1| is largest at x = −R
    (e^{−x}T_g(x) − 1 = −e^{−x}·Σ_{k>g} x^k/k!, whose size grows with |x| fastest on the negative side)."""
    b = certified_relative_error(_taylor(g), radius, rtol=1e-4)
    with mpmath.workdps(60):
        x = -mpmath.mpf(radius.numerator) / radius.denominator
        exact = abs(sum(mpmath.mpf(c.numerator) / c.denominator * x**t for t, c in enumerate(_taylor(g))) * mpmath.exp(-x) - 1)
    assert Fraction(str(mpmath.nstr(exact, 30))) * (1 - Fraction(1, 10**20)) <= b.upper
    assert b.lower <= b.upper <= b.lower * (1 + Fraction(1, 10**4))
    assert float(b.upper) == pytest.approx(float(exact), rel=1e-4)


@settings(max_examples=8)
@given(st.sampled_from([0.25, 1.0, 3.0, 6.0]), st.sampled_from([1e-3, 1e-6, 1e-9]))
def test_certified_bound_encloses_dense_high_precision_samples(radius, eps):
    try:
        poly = pf.choose_polynomial(radius, eps)
    except Exception:
        return  # refused (float64 floor): nothing to certify
    b = certified_relative_error(poly.coeffs, Fraction(radius))
    # 401 samples in 50-digit arithmetic are values of the function: each ≤ the certified sup bound
    xs = [radius * (2 * i / 400 - 1) for i in range(401)]
    sampled = max(_mp_rel_error(poly.coeffs, x) for x in xs)
    # compare exactly; 1e-40 covers the 50-digit evaluation of a quantity of size ≤ 1
    man, exp = sampled.man_exp
    assert Fraction(int(man)) * Fraction(2) ** int(exp) <= b.upper + Fraction(1, 10**40)
    # the lower end is a value of the function, so ≤ the true sup; it is tight to the requested rtol
    assert b.lower <= b.upper <= b.lower * Fraction(1001, 1000)
    # the design claim of choose_polynomial is a valid (certified) upper bound
    assert b.upper <= Fraction(poly.claimed_rel_eps)


def test_zero_radius_and_exact_polynomial():
    b = certified_relative_error([1.0], 0)
    assert b.upper == 0 and b.lower == 0
    b = certified_relative_error([1.0, 1.0], Fraction(1, 8))  # 1 + x vs e^x on [−1/8, 1/8]
    x = -0.125
    exact = abs((1 + x) * math.exp(-x) - 1)
    assert float(b.lower) <= exact * (1 + 1e-12) and exact <= float(b.upper) * (1 + 1e-12)


def test_cancellation_factor_is_exact_and_upward():
    coeffs = [1.0, -2.0, 0.5]
    assert certified_abs_coeff_sum(coeffs, 2) == 1 + 4 + 2
    k = certified_cancellation_factor(coeffs, 2)
    assert Fraction(7) * Fraction(math.exp(2)) * (1 - Fraction(1, 2**50)) <= k <= Fraction(7) * Fraction(math.exp(2)) * (1 + Fraction(1, 2**40))


def _sollya_supnorm(coeffs, radius):
    terms = []
    for t, c in enumerate(coeffs):
        num, den = float(c).as_integer_ratio()  # den is a power of two: the division is exact
        terms.append(f"({num}/{den})*x^{t}")
    script = (
        "prec=300;\n"
        f"p = {' + '.join(terms)};\n"
        f"r = supnorm(p, exp(x), [-{radius};{radius}], relative, 2^(-20));\n"
        "print(inf(r)); print(sup(r));\n"
    )
    out = subprocess.run(["sollya"], input=script, capture_output=True, text=True, timeout=60).stdout
    lines = [ln for ln in out.strip().splitlines() if ln and not ln.startswith("The precision")]
    return float(lines[-2]), float(lines[-1])


@pytest.mark.skipif(shutil.which("sollya") is None, reason="Sollya is not installed (apt-get install sollya)")
@pytest.mark.parametrize("radius,eps", [(1.0, 5e-7), (0.25, 1e-9), (4.0, 1e-6), (2.0, 1e-12)])
def test_agrees_with_sollya_supnorm(radius, eps):
    poly = pf.choose_polynomial(radius, eps)
    ours = certified_relative_error(poly.coeffs, Fraction(radius), rtol=1e-4)
    lo, hi = _sollya_supnorm(poly.coeffs, radius)
    # both are certified enclosures of the same number: they must intersect, and agree to the
    # tolerances asked of them (ours 1e-4, Sollya's 2^-20 relative)
    assert float(ours.lower) <= hi * (1 + 1e-12) and lo <= float(ours.upper) * (1 + 1e-12)
    assert float(ours.upper) == pytest.approx(hi, rel=2e-4)
