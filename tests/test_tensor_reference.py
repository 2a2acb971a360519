"""Reference layer of tensor attention: two independent certified engines and invariances."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings

from attnspec.conformance.judging.tensor_attention import tensor_instances
from attnspec.reference import softmax_attention as softmax_ref
from attnspec.reference.tensor_attention import enclose, enclose_mpmath
from attnspec.spec.softmax_attention import make_instance as make_softmax
from attnspec.spec.tensor_attention import column_kronecker, make_instance


def _inst(seed, n, d, k, scale=0.5, dv=None, big=1.0):
    rng = np.random.default_rng(seed)
    q = rng.uniform(-big, big, (n, d))
    keys = [rng.uniform(-1, 1, (n, d)) for _ in range(k - 1)]
    values = [rng.uniform(-1, 1, (n, dv or d)) for _ in range(k - 1)]
    return make_instance(q, keys, values, scale=scale)


def _brute(inst, order="lexicographic"):
    kr = column_kronecker(inst.keys, order=order)
    vr = column_kronecker(inst.values, order=order)
    logits = float(inst.scale) * (inst.q.astype(np.float64) @ kr.T)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e @ vr) / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("n, d, k", [(1, 1, 3), (3, 2, 3), (5, 3, 3), (4, 2, 4), (3, 3, 5)])
def test_arb_and_mpmath_engines_agree(n, d, k):
    inst = _inst(n * 10 + k, n, d, k, dv=2)
    a, m = enclose(inst, 128), enclose_mpmath(inst, 128)
    assert a.overlaps(m)
    assert a.rad().max() < 1e-30 and m.rad().max() < 1e-30  # tight at 128 bits: the overlap means something


def test_engines_agree_on_exact_rationals():
    third = np.array([[Fraction(1, 3), Fraction(-2, 7)], [Fraction(5, 11), Fraction(1, 2)]], dtype=object)
    inst = make_instance(third, [third, third.T.copy()], [third, third], scale=Fraction(2, 3))
    a, m = enclose(inst, 160), enclose_mpmath(inst, 160)
    assert a.overlaps(m) and a.rad().max() < 1e-40


@pytest.mark.parametrize("n, k", [(6, 3), (4, 4)])
def test_enclosure_close_to_float_brute_force_in_both_row_orders(n, k):
    inst = _inst(7, n, 3, k)
    enc = enclose(inst)
    for order in ("lexicographic", "paper"):
        # float64 brute force on O(1) data is accurate to ~1e-15; a wrong enclosure would be off by O(1e-2)
        assert np.abs(enc.mid() - _brute(inst, order)).max() < 1e-13


def test_large_logits_are_finite_and_tight():
    inst = _inst(8, 5, 2, 3, scale=1.0, big=900.0)
    enc = enclose(inst)
    assert np.isfinite(enc.mid()).all() and enc.max_relative_radius() < 1e-25
    assert np.abs(enc.mid() - _brute(inst)).max() < 1e-10


def test_order_two_is_softmax_attention():
    rng = np.random.default_rng(9)
    q, k, v = (rng.uniform(-1, 1, (6, 3)) for _ in range(3))
    tensor = enclose(make_instance(q, [k], [v], scale=0.7))
    matrix = softmax_ref.enclose(make_softmax(q, k, v, scale=0.7))
    assert tensor.overlaps(matrix)


def test_scale_zero_is_average_of_value_tuples():
    inst = _inst(10, 4, 2, 3, scale=0.0)
    vr = column_kronecker(inst.values)
    enc = enclose(inst)
    assert np.abs(enc.mid() - vr.mean(axis=0)[None, :]).max() < 1e-15 and enc.rad().max() < 1e-30


@settings(max_examples=8, deadline=None)
@given(tensor_instances(max_n=5, max_d=3, orders=(3,)))
def test_output_invariant_under_swapping_factor_pairs_and_permuting_keys(inst):
    """(K₁,V₁) ↔ (K₂,V₂) swaps the tuple order; permuting the rows of K_m and V_m together permutes
    tuples: neither changes the output (enclosures must intersect)."""
    base = enclose(inst)
    swapped = make_instance(inst.q, inst.keys[::-1], inst.values[::-1], scale=inst.scale)
    perm = np.random.default_rng(inst.n).permutation(inst.n)
    permuted = make_instance(inst.q, [x[perm] for x in inst.keys], [x[perm] for x in inst.values], scale=inst.scale)
    assert base.overlaps(enclose(swapped))
    assert base.overlaps(enclose(permuted))
    assert np.all(np.abs(base.mid()) <= float(max(np.abs(column_kronecker(inst.values)).max(), 0)) + 1e-300)
