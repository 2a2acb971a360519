"""Reference layer of dynamic attention: exact replay and certified per-query enclosures.

Cross-checks against independent computations: the static softmax reference (Arb and mpmath engines)
on the final exact state for ODAMV, and mpmath at high precision for OAMV.
"""

from fractions import Fraction

import mpmath
import numpy as np
import pytest

from attnspec.reference import softmax_attention as static_ref
from attnspec.reference.dynamic_attention import DynamicReference, replay
from attnspec.reference.enclosure import arb_bounds_fraction
from attnspec.spec.dynamic_attention import Init, Query, Trace, UpdateK, UpdateV
from attnspec.spec.softmax_attention import make_instance


def _random_trace(seed, normalised, n=5, d=3, dv=2, updates=30):
    rng = np.random.default_rng(seed)
    ops = [Init(rng.uniform(-1, 1, (n, d)), rng.uniform(-1, 1, (n, d)), rng.uniform(-1, 1, (n, dv)), 0.5)]
    for _ in range(updates):
        if rng.random() < 0.5:
            ops.append(UpdateK(int(rng.integers(n)), int(rng.integers(d)), float(rng.uniform(-1, 1))))
        else:
            ops.append(UpdateV(int(rng.integers(n)), int(rng.integers(dv)), Fraction(int(rng.integers(-9, 9)), 7)))
    return Trace(normalised=normalised, ops=ops)


def _mp_value(logits, values, normalised, dps=60):
    with mpmath.workdps(dps):
        w = [mpmath.exp(mpmath.mpf(l.numerator) / l.denominator) for l in logits]
        num = mpmath.fsum(wk * (mpmath.mpf(v.numerator) / v.denominator) for wk, v in zip(w, values))
        return num / mpmath.fsum(w) if normalised else num


def _contains(ball, mp_value):
    lo, hi = arb_bounds_fraction(ball)
    with mpmath.workdps(60):
        x = mpmath.mpf(mp_value)
        slack = abs(x) * mpmath.mpf(2) ** -150  # the mpmath value's own rounding
        return mpmath.mpf(lo.numerator) / lo.denominator - slack <= x <= mpmath.mpf(hi.numerator) / hi.denominator + slack


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_odamv_query_matches_static_reference_on_final_state(seed):
    tr = _random_trace(seed, True)
    state = tr.validate()
    inst = make_instance(state.q, state.k, state.v, scale=state.scale)
    arb_static = static_ref.enclose(inst, 128)
    mp_static = static_ref.enclose_mpmath(inst, 128)
    ref = DynamicReference(True)
    for op in tr.ops:
        ref.apply(op)
    n, dv = inst.output_shape
    for i in range(n):
        for j in range(dv):
            enc = ref.apply(Query(i, j))(128)
            ball = enc.ball((0, 0))
            for other in (arb_static, mp_static):
                lo, hi = arb_bounds_fraction(ball)
                olo, ohi = arb_bounds_fraction(other.ball((i, j)))
                assert lo <= ohi and olo <= hi  # the independent enclosures intersect
            assert float(ball.rad()) <= 2.0**-100 * max(1.0, abs(float(ball.mid())))


@pytest.mark.parametrize("normalised", [True, False])
def test_query_enclosure_contains_high_precision_value(normalised):
    tr = _random_trace(7, normalised, n=4, d=2, dv=2, updates=20)
    ref = DynamicReference(normalised)
    for op in tr.ops:
        ref.apply(op)
    state = ref.state
    for i in range(state.q.shape[0]):
        enc = ref.apply(Query(i, 1))
        logits = state.logits_row(i)
        truth = _mp_value(logits, [state.v[k, 1] for k in range(state.v.shape[0])], normalised)
        for prec in (64, 128, 256):
            assert _contains(enc(prec).ball((0, 0)), truth)


def test_enclosure_is_captured_at_query_time():
    ops = [Init(np.zeros((1, 1)), np.zeros((2, 1)), np.array([[1.0], [0.0]]))]
    ref = DynamicReference(True)
    ref.apply(ops[0])
    before = ref.apply(Query(0, 0))
    ref.apply(UpdateV(0, 0, 1.0))
    after = ref.apply(Query(0, 0))
    assert float(before(128).ball((0, 0)).mid()) == 0.5  # (1 + 0)/2
    assert float(after(128).ball((0, 0)).mid()) == 1.0  # (2 + 0)/2, later updates do not leak back


def test_exact_meaning_of_float_updates_is_distinguished_from_float_accumulation():
    # K_00 receives 0.1 ten times: the exact state is 10·fl(0.1), not the float running sum.
    ops = [Init(np.array([[1.0]]), np.zeros((2, 1)), np.array([[1.0], [0.0]]))]
    ops += [UpdateK(0, 0, 0.1)] * 10 + [Query(0, 0)]
    (_, _, enc), = list(replay(Trace(True, ops)))
    ball = enc(256).ball((0, 0))
    float_sum = 0.0
    for _ in range(10):
        float_sum += 0.1
    exact = _mp_value([10 * Fraction(0.1), Fraction(0)], [Fraction(1), Fraction(0)], True, dps=90)
    rounded = _mp_value([Fraction(float_sum), Fraction(0)], [Fraction(1), Fraction(0)], True, dps=90)
    assert _contains(ball, exact)
    assert not _contains(ball, rounded)


def test_huge_logits_are_enclosed():
    ops = [Init(np.array([[1.0]]), np.array([[1000.0], [-1000.0], [999.0]]), np.array([[1.0], [2.0], [3.0]]))]
    ref = DynamicReference(True)
    ref.apply(ops[0])
    ball = ref.apply(Query(0, 0))(128).ball((0, 0))
    expected = (1 + 3 * mpmath.e ** -1) / (1 + mpmath.e ** -1)
    assert abs(float(ball.mid()) - float(expected)) < 1e-15
    oamv = DynamicReference(False)
    oamv.apply(ops[0])
    big = oamv.apply(Query(0, 0))(128).ball((0, 0))
    lo, _ = arb_bounds_fraction(big)
    assert lo > Fraction(10) ** 434  # e^1000 ≈ 2e434 is far beyond float64 and still enclosed
