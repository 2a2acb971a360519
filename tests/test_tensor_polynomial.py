"""The polynomial method for tensor attention: contract ε_a certified, identities, no n² memory."""

import numpy as np
import pytest

from attnspec.accelerated import polynomial_features as pf
from attnspec.accelerated.tensor_attention import polynomial_degree_and_eps, polynomial_tensor_attention
from attnspec.bench.timing import peak_python_memory
from attnspec.conformance.judging.verdict import judge
from attnspec.reference.tensor_attention import enclose
from attnspec.spec.tensor_attention import column_kronecker, make_instance


def _arrays(seed, n, d, k, bound):
    rng = np.random.default_rng(seed)
    q = rng.uniform(-bound, bound, (n, d))
    keys = [rng.uniform(-bound, bound, (n, d)) for _ in range(k - 1)]
    values = [rng.uniform(-bound, bound, (n, d)) for _ in range(k - 1)]
    return q, keys, values


@pytest.mark.parametrize("n, d, k, bound, eps", [
    (13, 3, 3, 1.0, 1e-6), (31, 2, 3, 1.5, 1e-6), (17, 3, 3, 0.5, 1e-9), (7, 2, 4, 1.0, 1e-6), (5, 3, 4, 1.2, 1e-5),
])
def test_polynomial_meets_contract_certified(n, d, k, bound, eps):
    q, keys, values = _arrays(n * k, n, d, k, bound)
    out = polynomial_tensor_attention(q, keys, values, scale=1 / d, bound=bound, eps=eps)
    inst = make_instance(q, keys, values, scale=1 / d, bound=bound)
    v = judge(out, lambda prec: enclose(inst, prec), eps)
    assert v.status == "pass", v.message
    # Not vacuous: the output is an approximation (nonzero error), and a contract 1000x tighter fails,
    # except where the polynomial happens to be that good; then at least it is not exact to rounding.
    assert v.evidence["error_interval"][1] > 1e-15


def test_error_bound_two_eps_norm_v_is_respected_with_margin():
    """Digest §2.4: ‖out − Att‖∞ ≤ 2ε_rel‖V⊘‖∞ where ε_rel is the polynomial's relative error."""
    q, keys, values = _arrays(3, 20, 3, 3, 1.0)
    radius, eps_rel = polynomial_degree_and_eps(3, 3, 1.0, 1 / 3, 1e-4)
    poly = pf.choose_polynomial(radius, eps_rel)
    out = polynomial_tensor_attention(q, keys, values, scale=1 / 3, bound=1.0, eps=1e-4)
    exact = enclose(make_instance(q, keys, values, scale=1 / 3)).mid()
    v_norm = np.abs(column_kronecker(values)).max()
    assert np.abs(out - exact).max() <= 2 * poly.claimed_rel_eps * v_norm
    assert eps_rel == 1e-4 / 2 and radius == pytest.approx(1.0)


def test_features_reproduce_polynomial_of_logits():
    """U₁(U₂⊘U₃)ᵀ = P(s·Q(K₁⊘K₂)ᵀ) entrywise (identity I3), checked on a materialised small case."""
    q, keys, _ = _arrays(4, 6, 2, 3, 1.0)
    poly = pf.choose_polynomial(1.0, 1e-7)
    u1 = pf.query_features(q, poly, scale=0.5)
    u_kr = column_kronecker([pf.key_features(k, poly) for k in keys])
    logits = 0.5 * q @ column_kronecker(keys).T
    approx = u1 @ u_kr.T
    assert np.abs(approx - poly(logits)).max() < 1e-13
    assert np.abs(approx / np.exp(logits) - 1).max() <= poly.claimed_rel_eps


def test_no_quadratic_memory():
    n, d = 3000, 3
    q, keys, values = _arrays(5, n, d, 3, 1.0)
    peak = peak_python_memory(lambda: polynomial_tensor_attention(q, keys, values, scale=1 / d, bound=1.0, eps=1e-6))
    radius, eps_rel = polynomial_degree_and_eps(3, d, 1.0, 1 / d, 1e-6)
    r = pf.rank(d, pf.choose_polynomial(radius, eps_rel).degree)
    feature_bytes = n * r * 8
    # A few n×r feature matrices alive at once (building blocks + concat), never an n×n one (72 MB).
    assert peak < 6 * feature_bytes  # U₁ (monomials + weighted copy), one U_m (blocks + concat)
    assert peak < n * n * 8 / 4


def test_out_of_range_radius_is_refused():
    q, keys, values = _arrays(6, 4, 3, 3, 1.0)
    with pytest.raises(Exception, match="radius|float64"):
        polynomial_tensor_attention(q, keys, values, scale=100.0, bound=3.0, eps=1e-6)
