"""reference/heavy_keys.py: exact leverage scores (rank-deficient K included), the p = 4 lifted bound, exact
heavy entries, and the softmax negative control (no universal set of size independent of n)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from attnspec.reference.heavy_keys import (decide_at_least, heavy_reference, leverage_scores, maximising_queries,
                                           softmax_weights, universal_reference)
from attnspec.spec.heavy_keys import attention_row, make_heavy_instance, make_universal_instance


def grid(rng, shape, bits=8):
    return np.round(rng.standard_normal(shape) * 2**bits) / 2**bits


def float_leverage(m):
    u, s, _ = np.linalg.svd(m, full_matrices=False)
    r = int((s > s[0] * 1e-10).sum())
    return (u[:, :r] ** 2).sum(axis=1)


def weighted_lift(k):
    d = k.shape[1]
    return np.stack([k[:, a] * k[:, b] * (math.sqrt(2) if a < b else 1) for a in range(d) for b in range(a, d)], axis=1)


def test_leverage_scores_agree_with_float64_and_sum_to_the_rank():
    k = grid(np.random.default_rng(1), (40, 5))
    lev = leverage_scores(k, 2)
    assert lev.rank == 5 and sum(lev.tau) == 5  # exact: Σ τ_j = rank(K)
    np.testing.assert_allclose([float(t) for t in lev.tau], float_leverage(k), rtol=0, atol=1e-12)


def test_rank_deficient_keys_are_handled_exactly():
    """K = A·B with inner dimension 2 < d = 5 and a zero column: the exact rank is 2 and Σ τ_j = 2,
    where a plain QR of the deficient K would invent directions."""
    rng = np.random.default_rng(2)
    k = rng.integers(-3, 4, (30, 2)).astype(float) @ rng.integers(-2, 3, (2, 5)).astype(float)
    k[:, 3] = 0.0
    lev = leverage_scores(k, 2)
    assert lev.rank == np.linalg.matrix_rank(k) == 2 and sum(lev.tau) == 2
    np.testing.assert_allclose([float(t) for t in lev.tau], float_leverage(k), atol=1e-12)
    assert leverage_scores(np.zeros((4, 3)), 2).tau == (0, 0, 0, 0)


def test_duplicated_keys_share_their_leverage_exactly():
    k = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.0, 3.0], [0.0, 3.0]])
    assert leverage_scores(k, 2).tau == (Fraction(1, 2), Fraction(1, 2), Fraction(1, 3), Fraction(1, 3), Fraction(1, 3))


def test_leverage_is_invariant_under_an_invertible_change_of_basis():
    rng = np.random.default_rng(3)
    k = grid(rng, (12, 3))
    r = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0], [3.0, 0.0, 1.0]])  # det 7
    for p in (2, 4):
        assert leverage_scores(k @ r, p).tau == leverage_scores(k, p).tau


def test_the_p4_bound_uses_a_lift_with_the_symmetric_column_space():
    """The unweighted lift [k_a k_b]_{a≤b} gives the leverage of the √2-weighted symmetric lift and of the
    full d² lift k ⊗ k (same column space); its rank is binom(d+1, 2) for generic keys."""
    k = grid(np.random.default_rng(4), (30, 3))
    lev = leverage_scores(k, 4)
    assert lev.rank == 6 and sum(lev.tau) == 6
    exact = [float(t) for t in lev.tau]
    np.testing.assert_allclose(exact, float_leverage(weighted_lift(k)), atol=1e-10)
    np.testing.assert_allclose(exact, float_leverage(np.einsum("na,nb->nab", k, k).reshape(30, 9)), atol=1e-10)


def test_maximising_queries_attain_the_leverage_exactly():
    rng = np.random.default_rng(5)
    for k in (grid(rng, (9, 3)), rng.integers(-2, 3, (8, 1)).astype(float) @ rng.integers(1, 3, (1, 3)).astype(float)):
        tau = leverage_scores(k, 2).tau
        for j, y in enumerate(maximising_queries(k)):
            assert attention_row(y, k, 2)[j] == tau[j]


@pytest.mark.parametrize("p", [2, 4])
def test_no_query_makes_a_key_heavier_than_its_bound(p):
    """A_{y,j} ≤ τ_j (p = 2) and ≤ τ_j(φ(K)) (p = 4) exactly, for random and adversarial queries."""
    rng = np.random.default_rng(6 + p)
    k = grid(rng, (10, 3))
    k[9] = [0.0, 0.0, 0.25]
    tau = leverage_scores(k, p).tau
    queries = [list(r) for r in grid(rng, (30, 3))] + maximising_queries(k)
    for y in queries:
        assert all(a <= t for a, t in zip(attention_row(y, k, p), tau))


@pytest.mark.parametrize("p", [2, 4])
def test_exact_heavy_entries_match_the_definition_ties_included(p):
    rng = np.random.default_rng(10 + p)
    k = grid(rng, (7, 3), bits=2)
    k[5] = k[4]  # duplicate keys
    q = np.vstack([grid(rng, (5, 3), bits=2), np.zeros((1, 3))])
    inst = make_heavy_instance(q, k, eps=0.125, p=p)
    ref = heavy_reference(inst)
    rows = [attention_row(y, k, p) for y in q]
    expected = [(i, j) for i, row in enumerate(rows) for j, a in enumerate(row) if a >= Fraction(1, 8)]
    assert list(map(tuple, ref.heavy().tolist())) == expected
    assert all(ref.weight(i, j) == rows[i][j] for i in range(6) for j in range(7))
    assert not ref.at_least(Fraction(1, 10**9))[5].any()  # the zero query has no heavy entry


def test_an_exact_tie_is_heavy():
    k = np.array([[1.0, 0.0], [0.0, 1.0]])
    inst = make_heavy_instance(np.array([[1.0, 1.0]]), k, eps=0.5, p=4)
    assert heavy_reference(inst).heavy().tolist() == [[0, 0], [0, 1]]
    assert universal_reference(make_universal_instance(np.vstack([k, k]), eps=0.5, p=2)).at_least(Fraction(1, 2)) == [0, 1, 2, 3]


def test_softmax_has_no_universal_set_of_size_independent_of_n():
    """Negative control (digest A3g): n = 48 sign vectors in d = 8, query y = 8·k_j. Every key is
    certainly ≥ 1/2-heavy for its own query, so any 1/2-universal set for exp is all of [n], which
    grows with n. The same keys under p = 2 have a 1/2-universal set of size ≤ d/ε = 16."""
    rng = np.random.default_rng(0)
    k = np.unique(rng.choice([-1.0, 1.0], (64, 8)), axis=0)[:48]
    enclosure = softmax_weights(8.0 * k, k)
    certainly_heavy = [decide_at_least(enclosure.ball((j, j)), Fraction(1, 2)) for j in range(48)]
    assert certainly_heavy == [True] * 48
    u_p2 = universal_reference(make_universal_instance(k, eps=0.5, p=2)).at_least(Fraction(1, 2))
    assert len(u_p2) <= 16 < 48


def test_softmax_decisions_are_certain_or_undecided():
    """A tie (the zero query: A = 1/3 exactly, enclosed in a ball of positive radius) is undecided, never
    guessed; values away from the threshold are decided."""
    from flint import arb

    k = np.array([[1.0, 0.5], [1.0, 0.5], [0.0, 1.0]])
    enclosure = softmax_weights(np.array([[3.0, 1.0], [0.0, 0.0], [0.0, 1.0]]), k)
    assert decide_at_least(enclosure.ball((1, 0)), Fraction(1, 3)) is None  # zero query: A = 1/3 exactly
    assert decide_at_least(enclosure.ball((1, 0)), Fraction(1, 4)) is True
    assert decide_at_least(enclosure.ball((0, 0)), Fraction(1, 2)) is False  # e³·⁵/(2e³·⁵ + e) < 1/2
    assert decide_at_least(enclosure.ball((0, 0)), Fraction(2, 5)) is True
    assert decide_at_least(arb(0.5, 2.0**-40), Fraction(1, 2)) is None
    assert decide_at_least(arb("nan"), Fraction(1, 2)) is None
