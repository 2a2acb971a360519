"""The accelerated heavy-key algorithms against exact answers (Y's rational reference, small inputs).

- Cholesky scores lie within their certified relative bound η of the exact τ_j (fmpq), and QR/SVD
  scores close to them (QR/SVD are estimates: checked at the η-derived tolerance on well-conditioned K);
- thresholding at ε/(1+η) gives a superset of the exact U_ε within the declared slack;
- sketched selection (CountSketch + no JL when t ≥ D) keeps every key with τ ≥ ε on planted instances
  for 20 fixed seeds. Its failure-probability bound at these sizes is stated in the test
  (≤ 2(D²+D)/(m·δ_s²)); with the fixed seeds the test is deterministic;
- streaming and distributed U equal the offline U; streaming state does not depend on n;
- enumeration finds exactly the exact heavy entries on generic instances (nothing within α of ε).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from attnspec.accelerated import heavy_keys as hk
from attnspec.conformance.harness.builtin_backends import HEAVY_SLACK, numpy_backend
from attnspec.reference.heavy_keys import HeavyEntriesReference, leverage_scores as exact_scores
from attnspec.spec.heavy_keys import make_heavy_instance
from attnspec.spec.validation import SpecError


def _keys(seed: int, n: int, d: int, planted: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = np.round(rng.standard_normal((n, d)) * 64) / 64  # dyadic: exact in the reference
    k[:planted, :] *= 16
    return k


@pytest.mark.parametrize("p", [2, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cholesky_scores_within_certified_bound(seed, p):
    k = _keys(seed, 60, 3)
    lev = hk.leverage_scores(k, p=p)
    assert lev.certified and lev.method == "cholesky"
    exact = exact_scores(k, p).tau
    for j, t in enumerate(exact):
        tau_hat = Fraction(float(lev.scores[j]))
        assert t / (1 + Fraction(lev.rel_error)) <= tau_hat <= t * (1 + Fraction(lev.rel_error))


@pytest.mark.parametrize("p", [2, 4])
def test_qr_and_svd_scores_agree_with_exact(p):
    k = _keys(3, 80, 4)
    exact = np.array([float(t) for t in exact_scores(k, p).tau])
    tol = 100 * hk.leverage_scores(k, p=p).rel_error  # estimates; well-conditioned K, so near the certified η
    for lev in (hk.leverage_scores_qr(k, p=p), hk.leverage_scores_svd(k, p=p)):
        assert np.all(np.abs(lev.scores - exact) <= tol * exact + 1e-300)


def test_svd_handles_exact_rank_deficiency_and_qr_refuses_it():
    rng = np.random.default_rng(4)
    k = rng.integers(-3, 4, (40, 2)).astype(float) @ rng.integers(-3, 4, (2, 5)).astype(float)  # rank 2, exact
    exact = exact_scores(k, 2)
    lev = hk.leverage_scores(k, p=2)
    assert not lev.certified and lev.rank == exact.rank == 2
    assert np.allclose(lev.scores, [float(t) for t in exact.tau], rtol=1e-9, atol=1e-12)
    with pytest.raises(SpecError):
        hk.leverage_scores_qr(k, p=2)


@pytest.mark.parametrize("p", [2, 4])
@pytest.mark.parametrize("eps", [0.05, 0.2])
def test_universal_set_contains_exact_heavy_keys_within_slack(p, eps):
    k = _keys(5, 50, 3)
    u, lev = hk.universal_set(k, eps=eps, p=p)
    exact = exact_scores(k, p)
    heavy = set(exact.at_least(Fraction(eps)))
    assert heavy <= set(u.tolist())
    floor = Fraction(eps) / (1 + Fraction(hk.slack_needed(lev.rel_error)))
    assert all(exact.tau[j] >= floor for j in u.tolist())
    assert hk.slack_needed(lev.rel_error) <= HEAVY_SLACK


def _planted(seed: int, n: int = 400, d: int = 3, copies: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = rng.standard_normal((n, d))
    for a in range(d):
        k[a * copies:(a + 1) * copies, a] += 10 * np.sqrt(n)  # τ ≈ 1/copies = 0.25 ≥ ε
    return k


def test_sketched_selection_drops_no_heavy_key_across_seeds():
    eps, m, delta_s = 0.2, 6000, 0.5
    d = 3
    # failure bound per seed: 2(D²+D)/(m·δ_s²) = 24/1500 = 0.016 (JL skipped: t ≥ D)
    assert hk.sketch_failure_probability(d, m, 1, delta_s, 0.0, 0) == pytest.approx(0.016)
    for seed in range(20):
        k = _planted(seed)
        exact_u = set(hk.universal_set(k, eps=eps)[0].tolist())
        assert len(exact_u) == 3 * 4
        su, sk = hk.sketched_universal_set(k, eps=eps, sketch_rows=m, delta_s=delta_s, seed=seed)
        assert exact_u <= set(su.tolist()), seed
        assert sk.failure_probability == pytest.approx(0.016) and sk.delta == pytest.approx(1.25)


def test_unloosened_sketch_threshold_would_drop_keys():
    """The (1+δ) loosening is needed: with threshold ε a seed drops a key whose τ is just above ε."""
    k = _planted(0, copies=5)  # τ ≈ 0.2 = ε: right at the threshold
    eps = 0.19
    exact_u = set(hk.universal_set(k, eps=eps)[0].tolist())
    dropped_plain = 0
    for seed in range(10):
        sk = hk.sketched_leverage_scores(k, sketch_rows=200, seed=seed)
        plain = set(np.nonzero(sk.scores >= eps)[0].tolist())
        loose = set(np.nonzero(sk.scores >= eps / (1 + sk.delta))[0].tolist())
        dropped_plain += len(exact_u - plain)
        assert exact_u <= loose
    assert dropped_plain > 0


@pytest.mark.parametrize("p", [2, 4])
def test_streaming_and_distributed_equal_offline(p):
    k = _keys(6, 700, 3, planted=6)
    offline = hk.universal_set(k, eps=0.05, p=p)[0]
    for chunk in (1, 7, 64, 700):
        u, sel = hk.streaming_universal_set((k[i:i + chunk] for i in range(0, len(k), chunk)), 3, eps=0.05, p=p)
        assert np.array_equal(u, offline), chunk
        assert sel.max_held <= sel.capacity
    for shards in (1, 3, 8):
        assert np.array_equal(hk.distributed_universal_set(k, shards, eps=0.05, p=p), offline)


def test_streaming_state_independent_of_n():
    d, eps, chunk = 4, 0.1, 256
    states = []
    for n in (2**10, 2**12, 2**14):
        rng = np.random.default_rng(n)
        chunks = (rng.standard_normal((chunk, d)) * (1 + 20 * (i == 0)) for i in range(n // chunk))
        u, sel = hk.streaming_universal_set(chunks, d, eps=eps)
        states.append(sel.max_state_bytes)
        assert sel.seen == n and sel.max_held <= sel.capacity == int(d / eps) + 1
    assert len(set(states)) == 1
    assert states[0] == 8 * (2 * d * d + (int(d / eps) + 1) * (d + 1)) + 32


@pytest.mark.parametrize("p", [2, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_enumeration_finds_exactly_the_heavy_entries(seed, p):
    k = _keys(seed + 10, 40, 3)
    rng = np.random.default_rng(seed)
    q = np.round(rng.standard_normal((30, 3)) * 64) / 64
    q[:6] = k[:6]
    q[6] = 0.0
    eps = 0.1
    res = hk.heavy_entries(q, k, eps=eps, p=p)
    exact = HeavyEntriesReference(make_heavy_instance(q, k, eps=eps, p=p)).heavy()
    assert res.certified and res.slack(eps) <= HEAVY_SLACK and res.zero_rows == 1
    assert set(map(tuple, res.pairs.tolist())) == set(map(tuple, exact.tolist()))
    assert len(exact) > 0
    dense = hk.exact_heavy_entries_dense(q, k, eps=eps, p=p)
    assert set(map(tuple, dense.tolist())) == set(map(tuple, exact.tolist()))


def test_backend_falls_back_to_exact_on_rank_deficient_keys():
    backend = numpy_backend()
    k = np.zeros((6, 3))
    k[:3, 0] = 1.0
    k[3:, 1] = 1.0
    k[:, 2] = k[:, 0] + k[:, 1]  # rank 2 with no zero column: no certificate
    u = backend.universal_set(k, eps=1 / 3, p=2)
    assert u.tolist() == [0, 1, 2, 3, 4, 5] and backend.heavy_fallbacks == 1
    pairs = backend.heavy_entries(np.array([[1.0, 0.0, 0.0]]), k, eps=1 / 3, p=2)
    assert sorted(map(tuple, pairs.tolist())) == [(0, 0), (0, 1), (0, 2)] and backend.heavy_fallbacks == 2
    assert backend.capabilities["heavy_slack"] == HEAVY_SLACK


def test_lev_attention_modes():
    k = _planted(1, n=200)
    rng = np.random.default_rng(0)
    q, v = rng.standard_normal((5, 3)), rng.standard_normal((200, 2))
    out, sel = hk.lev_attention(q, k, v, mode="top_r", r=12)
    assert sel.tolist() == list(range(12)) and out.shape == (5, 2)
    out_t, sel_t = hk.lev_attention(q, k, v, mode="threshold", eps=0.2, f=2)
    ks = k[sel_t]
    w = (q @ ks.T) ** 2
    assert np.allclose(out_t, (w / w.sum(axis=1, keepdims=True)) @ v[sel_t])
    full, _ = hk.lev_attention(q, k, v, mode="top_r", r=200)
    logits = q @ k.T
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    assert np.allclose(full, (e / e.sum(axis=1, keepdims=True)) @ v)


def test_input_validation():
    with pytest.raises(SpecError):
        hk.leverage_scores(np.ones((3, 2)), p=3)
    with pytest.raises(SpecError):
        hk.heavy_entries(np.ones((3, 2)), np.ones((3, 2)), eps=0.0)
    with pytest.raises(SpecError):
        hk.leverage_scores(np.array([[np.nan, 1.0]]))
    assert not hk.in_safe_range(np.array([[1e-300, 1.0]])) and hk.in_safe_range(np.array([[0.0, 1e-50]]))
