"""Polynomial-method attention: the contract (spec), the implementation (accelerated), certified checks."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from attnspec.accelerated import polynomial_features as pf
from attnspec.accelerated.polynomial_attention import (
    PolynomialAttentionBackend,
    plan_polynomial_attention,
    polynomial_attention,
)
from attnspec.conformance.audits.polynomial_audit import certified_error, certify_configuration, generate_instances
from attnspec.spec import polynomial_attention as contract
from attnspec.spec.softmax_attention import make_instance
from attnspec.spec.validation import SpecError

# (n, d, B, scale, ε_a): several radii R = B²|s|d and tolerances
CONFIGS = [
    (48, 4, 1.0, 0.25, 1e-6),
    (40, 3, 2.0, 1 / 3, 1e-4),
    (32, 2, 1.5, 0.5, 1e-8),
    (32, 6, 0.5, 1.0, 1e-5),
    (24, 4, 2.5, 0.25, 1e-3),
]


# ------------------------------------------------------------------ spec formulas

def test_logit_radius_and_eps_target_are_exact():
    assert contract.logit_radius(Fraction(3, 2), Fraction(1, 3), 6) == Fraction(9, 4) * 2
    assert contract.logit_radius(2, 1, 3, order=3) == 24
    assert contract.relative_eps_target(Fraction(1, 10), 2) == Fraction(1, 40)


def test_gamma_and_end_to_end_bound():
    u = contract.UNIT_ROUNDOFF
    assert contract.gamma(3) == 3 * u / (1 - 3 * u)
    with pytest.raises(SpecError):
        contract.gamma(2**53)
    # δ = 0 leaves only the final division: u·‖V‖∞
    assert contract.end_to_end_bound(rel_eps=0, eval_rel=0, v_bound=2) == 2 * u
    b1 = contract.end_to_end_bound(rel_eps=Fraction(1, 10**6), eval_rel=0, v_bound=1)
    b2 = contract.end_to_end_bound(rel_eps=Fraction(2, 10**6), eval_rel=0, v_bound=1)
    assert Fraction(2, 10**6) < b1 < b2  # ≥ 2ε‖V‖∞ and monotone
    with pytest.raises(SpecError):
        contract.end_to_end_bound(rel_eps=Fraction(1, 2), eval_rel=Fraction(1, 2), v_bound=1)


def test_contract_validation():
    c = contract.make_contract(bound=1.5, eps=1e-3, scale=0.25)
    assert c.logit_radius(4) == Fraction(9, 4)
    for kw in ({"bound": 0, "eps": 1e-3}, {"bound": 1, "eps": -1.0}, {"bound": None, "eps": 1e-3}):
        with pytest.raises(SpecError):
            contract.make_contract(scale=1, **kw)


# ------------------------------------------------------------------ end-to-end certified bounds

@pytest.mark.parametrize("n,d,bound,scale,eps", CONFIGS)
def test_certified_end_to_end_bound_meets_eps(n, d, bound, scale, eps):
    cert = certify_configuration(n, d, bound=bound, scale=scale, eps=eps)
    assert cert.holds, cert.as_dict()
    assert cert.plan.rank == math.comb(d + cert.plan.degree, d)
    # the design claim used for the degree choice is ≥ the certified sup (so the plan is honest)
    assert cert.poly_rel_eps <= Fraction(cert.plan.poly.claimed_rel_eps)
    assert cert.end_to_end >= 2 * cert.poly_rel_eps_lower * Fraction(bound)  # the 2ε‖V‖∞ term is inside


@pytest.mark.parametrize("n,d,bound,scale,eps", CONFIGS)
def test_certified_actual_error_within_eps_on_generated_instances(n, d, bound, scale, eps):
    cert = certify_configuration(n, d, bound=bound, scale=scale, eps=eps)
    for name, q, k, v in generate_instances(n, d, bound, seed=n + d, count=3):
        inst = make_instance(q, k, v, scale=scale, bound=bound)
        t = polynomial_attention(q, k, v, scale=scale, bound=bound, eps=eps)
        err = certified_error(t, inst)
        assert err.upper <= eps, (name, err)
        # the actual error can never exceed the a priori theorem
        assert err.lower <= float(cert.end_to_end)


@settings(max_examples=10, deadline=None)
@given(st.integers(2, 20), st.integers(1, 4), st.sampled_from([0.5, 1.0, 1.5]), st.sampled_from([1e-3, 1e-6]),
       st.integers(0, 2**32 - 1))
def test_random_bounded_instances_meet_contract(n, d, bound, eps, seed):
    rng = np.random.default_rng(seed)
    scale = 1.0 / d
    q, k, v = (rng.uniform(-bound, bound, (n, d)) for _ in range(3))
    t = polynomial_attention(q, k, v, scale=scale, bound=bound, eps=eps)
    err = certified_error(t, make_instance(q, k, v, scale=scale))
    assert err.upper <= eps


def test_features_form_an_eps_r_approximation():
    n, d, bound, scale, eps = 30, 3, 1.0, 1 / 3, 1e-6
    plan = plan_polynomial_attention(n, d, bound=bound, scale=scale, eps=eps)
    rng = np.random.default_rng(5)
    q, k = rng.uniform(-bound, bound, (2, n, d))
    u1 = pf.query_features(q, plan.poly, scale)
    u2 = pf.key_features(k, plan.poly)
    a = np.exp(scale * (q @ k.T))
    # relative error of P is ≤ claimed ε; float evaluation of the entry and of exp adds ≤ η + 4u
    assert contract.is_eps_r_approximation(u1, u2, a, plan.poly.claimed_rel_eps + plan.eval_rel + 4 * 2**-53, r=plan.rank)
    assert not contract.is_eps_r_approximation(u1, u2, a, 1e-6, r=plan.rank + 1)


# ------------------------------------------------------------------ refusals and validation

@pytest.mark.parametrize("d,bound,scale,eps", [(4, 4.0, 1.0, 1e-6), (16, 3.0, 0.25, 1e-3), (4, 2.0, 1.0, 1e-12)])
def test_parameters_beyond_float64_are_refused(d, bound, scale, eps):
    with pytest.raises(SpecError, match="refuses"):
        plan_polynomial_attention(1000, d, bound=bound, scale=scale, eps=eps)
    q = np.zeros((4, d))
    with pytest.raises(SpecError, match="refuses"):
        polynomial_attention(q, q, q, scale=scale, bound=bound, eps=eps)


def test_rounding_dominated_configuration_is_refused_by_eta():
    """At R = 7 a polynomial exists, but the a priori evaluation error (≈ (n+r)·u·e^{2R}) at huge n
    exceeds ε_a: refused with a message naming the evaluation error."""
    with pytest.raises(SpecError, match="evaluation error"):
        plan_polynomial_attention(2**40, 7, bound=1.0, scale=1.0, eps=1e-5)


def test_entries_beyond_the_bound_are_rejected():
    q = np.full((3, 2), 0.5)
    v = q.copy()
    v[1, 1] = 1.25
    with pytest.raises(SpecError, match="V violates"):
        polynomial_attention(q, q, v, scale=0.5, bound=1.0, eps=1e-4)
    with pytest.raises(SpecError, match="violates"):
        polynomial_attention(q * np.nan, q, q, scale=0.5, bound=1.0, eps=1e-4)


def test_shape_and_dtype_errors():
    q = np.zeros((3, 2))
    with pytest.raises(SpecError):
        polynomial_attention(q, np.zeros((4, 2)), q, scale=0.5, bound=1, eps=1e-3)
    with pytest.raises(SpecError, match="float64"):
        polynomial_attention(q.astype(np.float32), q.astype(np.float32), q.astype(np.float32), scale=0.5, bound=1, eps=1e-3)


def test_backend_object_and_capabilities():
    b = PolynomialAttentionBackend(eps=1e-5, bound=1.0)
    assert b.capabilities == {"problems": {"softmax_attention"}, "dtypes": {"float64"}, "devices": {"cpu"},
                              "contract_eps": 1e-5, "bound": 1.0}
    rng = np.random.default_rng(0)
    q, k, v = rng.uniform(-1, 1, (3, 20, 4))
    out = b.attention(q.tolist(), k, v, scale=0.25)
    err = certified_error(out, make_instance(q, k, v, scale=0.25))
    assert out.shape == (20, 4) and err.upper <= 1e-5
    with pytest.raises(SpecError):
        PolynomialAttentionBackend(eps=0, bound=1)


def test_chunked_computation_matches_single_chunk(monkeypatch):
    from attnspec.accelerated import polynomial_attention as pa

    rng = np.random.default_rng(3)
    q, k, v = rng.uniform(-1, 1, (3, 50, 3))
    whole = pa.polynomial_attention(q, k, v, scale=1 / 3, bound=1, eps=1e-6)
    monkeypatch.setattr(pa, "CHUNK_ROWS", 7)
    chunked = pa.polynomial_attention(q, k, v, scale=1 / 3, bound=1, eps=1e-6)
    # both are within the certified bound of the same exact value: they differ by ≤ 2·bound
    plan = pa.plan_polynomial_attention(50, 3, bound=1, scale=1 / 3, eps=1e-6)
    assert np.max(np.abs(whole - chunked)) <= 2 * plan.design_bound
