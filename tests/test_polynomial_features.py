"""Symmetric monomial features and the choice of the exp polynomial (accelerated/polynomial_features)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, strategies as st

from attnspec.accelerated import polynomial_features as pf
from attnspec.spec.validation import SpecError

U = 2.0**-53


@given(st.integers(1, 6), st.integers(0, 6))
def test_multi_indices_are_all_exponents_once_graded_with_parents(d, g):
    plan = pf.monomial_plan(d, g)
    exps = plan.exponents
    assert plan.rank == pf.rank(d, g) == math.comb(d + g, g) == exps.shape[0]
    # every α with |α| ≤ g exactly once
    assert len({tuple(a) for a in exps}) == exps.shape[0]
    assert np.all(exps.sum(axis=1) == plan.degrees) and plan.degrees.max(initial=0) <= g
    # graded order, and each column = parent column times one variable
    assert np.all(np.diff(plan.degrees) >= 0)
    for c in range(1, plan.rank):
        parent = exps[plan.parents[c]].copy()
        parent[plan.variables[c]] += 1
        assert np.array_equal(parent, exps[c])
        assert plan.parents[c] < c
    # multinomials are |α|!/Π α_l!
    for a, m in zip(exps, plan.multinomials):
        assert m == math.factorial(int(a.sum())) // math.prod(math.factorial(int(x)) for x in a)


def test_documented_order_example():
    assert pf.multi_indices(2, 2).tolist() == [[0, 0], [1, 0], [0, 1], [2, 0], [1, 1], [0, 2]]


@given(st.integers(1, 5), st.integers(0, 6), st.integers(0, 2**32 - 1))
def test_key_features_are_monomials(d, g, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, (7, d))
    u = pf.key_features(x, g)
    exps = pf.multi_indices(d, g)
    exact = np.prod(x[:, None, :] ** exps[None, :, :], axis=2)
    # t−1 ≤ g roundings per entry in either computation: relative difference ≤ 2γ_g
    assert u.shape == (7, pf.rank(d, g))
    assert np.all(np.abs(u - exact) <= 2 * pf.rounding_gamma(max(g, 1)) * np.abs(exact) + 1e-300)


@given(st.integers(1, 4), st.sampled_from([0.5, 1.0, 2.0]), st.integers(0, 2**32 - 1))
def test_features_factor_the_polynomial_of_the_logits(d, radius, seed):
    """U₁U₂ᵀ = P(s·QKᵀ): compared in exact rational arithmetic (Fractions) on a small case."""
    rng = np.random.default_rng(seed)
    poly = pf.choose_polynomial(radius, 1e-5)
    s = 0.5
    q = rng.uniform(-1, 1, (3, d))
    k = rng.uniform(-1, 1, (4, d))
    got = pf.query_features(q, poly, s) @ pf.key_features(k, poly).T
    for i in range(3):
        for j in range(4):
            x = Fraction(s) * sum(Fraction(a) * Fraction(b) for a, b in zip(q[i], k[j]))
            exact = sum(Fraction(float(c)) * x**t for t, c in enumerate(poly.coeffs))
            # the float computation is the exact sum with every term perturbed by ≤ γ_m (m = 3g + r + 2)
            m = 3 * poly.degree + pf.rank(d, poly.degree) + 2
            scale_terms = poly.abs_coeff_sum(float(abs(s) * sum(abs(Fraction(a) * Fraction(b)) for a, b in zip(q[i], k[j]))))
            assert abs(Fraction(float(got[i, j])) - exact) <= Fraction(pf.rounding_gamma(m)) * Fraction(scale_terms)


@given(st.integers(1, 4), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_key_features_are_multiplicative_for_tensor_attention(d, g, seed):
    rng = np.random.default_rng(seed)
    k1, k2 = rng.uniform(-1.5, 1.5, (2, 5, d))
    lhs = pf.key_features(k1 * k2, g)
    rhs = pf.key_features(k1, g) * pf.key_features(k2, g)
    # each side is the exact monomial up to ≤ 2g+1 roundings
    assert np.all(np.abs(lhs - rhs) <= 2 * pf.rounding_gamma(2 * g + 2) * np.abs(rhs) + 1e-300)


@pytest.mark.parametrize("radius,eps", [(0.25, 1e-9), (1.0, 1e-6), (2.0, 1e-9), (4.0, 1e-6), (8.0, 1e-6)])
def test_choose_polynomial_meets_its_claim_on_a_fine_grid(radius, eps):
    poly = pf.choose_polynomial(radius, eps)
    assert poly.claimed_rel_eps <= eps
    assert poly.interval == (-radius, radius)
    # an independent, denser grid (odd count, different points) must not exceed the claim
    assert pf.grid_relative_error(poly.coeffs, radius, points=20011) <= poly.claimed_rel_eps
    # and the previous degree would not have met ε (lowest degree is chosen)
    if poly.degree > 0:
        with pytest.raises(SpecError):
            pf.choose_polynomial(radius, eps, max_degree=poly.degree - 1)


def test_degree_grows_with_radius_and_accuracy():
    degs = [pf.choose_polynomial(r, 1e-6).degree for r in (0.25, 1, 2, 4)]
    assert degs == sorted(degs) and degs[0] < degs[-1]
    assert pf.choose_polynomial(1, 1e-9).degree > pf.choose_polynomial(1, 1e-3).degree


@pytest.mark.parametrize("radius,eps", [(16.0, 1e-6), (12.0, 1e-9), (400.0, 1e-3)])
def test_float64_infeasible_radius_is_refused(radius, eps):
    with pytest.raises(SpecError, match="float64"):
        pf.choose_polynomial(radius, eps)


@pytest.mark.parametrize("radius,eps", [(-1.0, 1e-3), (math.inf, 1e-3), (1.0, 0.0), (1.0, 1.5), (math.nan, 1e-3)])
def test_bad_arguments_are_spec_errors(radius, eps):
    with pytest.raises(SpecError):
        pf.choose_polynomial(radius, eps)


def test_features_reject_non_matrices():
    with pytest.raises(SpecError):
        pf.key_features(np.ones(3), 2)


def test_cancellation_factor_is_about_e_to_the_2R():
    for r in (1.0, 4.0):
        kappa = pf.choose_polynomial(r, 1e-6).cancellation_factor()
        # Σ|c_t|Rᵗ ≥ P(R) ≥ e^R(1 − ε), so κ ≥ e^{2R}(1 − ε); the upper cap only asserts that the fit
        # has no large alternating coefficients (which would inflate the rounding error)
        assert math.exp(2 * r) * (1 - 1e-3) <= kappa <= math.exp(2 * r) * 3
