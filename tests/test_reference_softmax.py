"""reference/softmax_attention.py and reference/enclosure.py: the enclosures contain the true values.

True values are computed here, independently of the code under test: exact rationals with Fractions
where the answer is rational (scale 0, n = 1, identical keys), and mpmath at 200 decimal digits
elsewhere. The two reference engines (Arb, mpmath intervals) must intersect.
"""

from __future__ import annotations

from fractions import Fraction

import mpmath
import numpy as np
import pytest
from flint import arb
from hypothesis import given, settings
from hypothesis import strategies as st

from attnspec.conformance.frontends.strategies import softmax_instances
from attnspec.reference.enclosure import Enclosure, arb_bounds_fraction, fraction_of, working_precision
from attnspec.reference.softmax_attention import enclose, enclose_mpmath
from attnspec.spec.softmax_attention import make_instance


def _exact(x) -> Fraction:
    return x if isinstance(x, Fraction) else Fraction(float(x))


def _contains(enc: Enclosure, truth) -> bool:
    """Every exact true value lies in its ball (exact rational comparison)."""
    flat = [(_exact(x)) for x in np.asarray(truth, dtype=object).reshape(-1)]
    return all(lo <= t <= hi for t, (lo, hi) in zip(flat, map(arb_bounds_fraction, enc.balls)))


def _max_rad(enc: Enclosure) -> Fraction:
    return max(fraction_of(b.rad()) for b in enc.balls)


def _row_mean(v) -> list[Fraction]:
    n = len(v)
    return [sum(_exact(v[j][c]) for j in range(n)) / n for c in range(len(v[0]))]


# --------------------------------------------------------------------------- engines agree


@settings(max_examples=25)
@given(softmax_instances(max_n=6, max_d=4))
def test_arb_and_mpmath_enclosures_intersect(inst):
    a = enclose(inst, 128)
    m = enclose_mpmath(inst, 128)
    assert a.shape == m.shape == inst.output_shape
    assert a.overlaps(m)
    # Both are tight: convex combinations of entries ≤ 16 in size, 128 bits leave far more than 2^-80.
    assert _max_rad(a) < Fraction(1, 2**80)
    assert _max_rad(m) < Fraction(1, 2**80)


@settings(max_examples=10)
@given(softmax_instances(max_n=5, max_d=3, dtype="float32"))
def test_engines_intersect_on_float32_inputs(inst):
    assert enclose(inst, 96).overlaps(enclose_mpmath(inst, 96))


def test_disjoint_enclosures_do_not_overlap():
    inst = make_instance([[1.0]], [[1.0]], [[0.5]], scale=1)
    other = make_instance([[1.0]], [[1.0]], [[0.25]], scale=1)
    assert not enclose(inst).overlaps(enclose(other))


# --------------------------------------------------------------------------- exact special cases


def _rng_matrix(rng, n, d, lim=3.0):
    return rng.uniform(-lim, lim, (n, d))


@pytest.mark.parametrize("n,d", [(1, 1), (3, 2), (6, 4), (17, 5)])
def test_scale_zero_is_the_mean_of_v_rows(n, d):
    rng = np.random.default_rng(n * 10 + d)
    q, k, v = (_rng_matrix(rng, n, d) for _ in range(3))
    enc = enclose(make_instance(q, k, v, scale=0), 128)
    mean = _row_mean(v.tolist())
    assert _contains(enc, [mean] * n)


def test_scale_zero_with_rational_inputs():
    v = [[Fraction(1, 3), Fraction(-2, 7)], [Fraction(5, 11), Fraction(1, 1)], [Fraction(0), Fraction(3, 13)]]
    q = [[Fraction(1, 5), Fraction(2, 3)]] * 3
    enc = enclose(make_instance(q, q, v, scale=0), 128)
    assert _contains(enc, [_row_mean(v)] * 3)


@pytest.mark.parametrize("scale", [Fraction(1, 3), Fraction(7), Fraction(-1000)])
def test_n_one_returns_v(scale):
    v = [[Fraction(2, 3), -0.75, 1e-300]]
    q = [[Fraction(5, 2), Fraction(-1, 7), Fraction(9)]]
    enc = enclose(make_instance(q, q, v, scale=scale), 128)
    assert _contains(enc, v)
    # Tightness: the logit L = s⟨q,q⟩ is rounded to 128 bits (absolute radius ~ few·|L|·2^-128), exp
    # turns that into a relative radius of the weight, and N/N doubles it; a few more roundings of
    # 2^-128 each. 16·(1 + |L|)·2^-128 relative covers all of it with room to spare.
    logit = abs(scale * sum(_exact(a) ** 2 for a in q[0]))
    for b, x in zip(enc.balls, v[0]):
        assert fraction_of(b.rad()) <= abs(_exact(x)) * 16 * (1 + logit) / 2**128 + Fraction(1, 2**2000)


@pytest.mark.parametrize("n,d", [(2, 1), (5, 3), (9, 4)])
def test_identical_keys_give_the_mean_of_v(n, d):
    rng = np.random.default_rng(100 + n)
    q, v = _rng_matrix(rng, n, d, 20.0), _rng_matrix(rng, n, d)
    k = np.repeat(_rng_matrix(rng, 1, d, 20.0), n, axis=0)
    enc = enclose(make_instance(q, k, v, scale=1), 128)
    assert _contains(enc, [_row_mean(v.tolist())] * n)


def test_contains_floats_on_a_representable_answer():
    # Integer V with n = 4 and scale 0: each mean is a multiple of 1/4, exactly a float64.
    v = np.array([[1.0, -8.0], [2.0, 4.0], [7.0, 0.0], [3.0, 1.0]])
    enc = enclose(make_instance(np.ones((4, 2)), np.ones((4, 2)), v, scale=0), 128)
    truth = v.mean(axis=0, keepdims=True).repeat(4, axis=0)
    assert enc.contains_floats(truth)
    # One ulp away is outside: the radius at 128 bits is far below an ulp (2^-52 relative).
    assert not enc.contains_floats(np.nextafter(truth, np.inf))
    assert not enc.contains_floats(np.nextafter(truth, -np.inf))


# --------------------------------------------------------------------------- precision, huge logits


def test_radii_shrink_as_precision_grows():
    rng = np.random.default_rng(3)
    q, k, v = (_rng_matrix(rng, 7, 3) for _ in range(3))
    inst = make_instance(q, k, v, scale=Fraction(1, 3))
    radii = [_max_rad(enclose(inst, p)) for p in (64, 128, 256)]
    # Arb radii scale like 2^-prec; each doubling must gain at least half of its new bits.
    assert radii[1] < radii[0] * Fraction(1, 2**32)
    assert radii[2] < radii[1] * Fraction(1, 2**64)
    assert radii[2] > 0  # 1/3 scale is not dyadic: a zero radius would be a lie


def _mp_attention(inst, dps=200):
    """Softmax attention by mpmath at ``dps`` digits from the exact inputs (independent of attnspec)."""
    with mpmath.workdps(dps):
        def mpf(x):
            f = _exact(x)
            return mpmath.mpf(f.numerator) / f.denominator
        q = [[mpf(x) for x in row] for row in inst.q.tolist()]
        k = [[mpf(x) for x in row] for row in inst.k.tolist()]
        v = [[mpf(x) for x in row] for row in inst.v.tolist()]
        s = mpf(inst.scale)
        out = []
        for qi in q:
            logits = [s * mpmath.fsum(a * b for a, b in zip(qi, kj)) for kj in k]
            top = max(logits)
            w = [mpmath.exp(x - top) for x in logits]
            z = mpmath.fsum(w)
            out.append([mpmath.fsum(wj * vj[c] for wj, vj in zip(w, v)) / z for c in range(len(v[0]))])
        return out


def _mp_fraction(x) -> Fraction:
    sign, man, exp, _ = x._mpf_  # (sign, |mantissa|, exponent, bitcount); man_exp drops the sign
    value = Fraction(int(man) * 2**int(exp)) if exp >= 0 else Fraction(int(man), 2**-int(exp))
    return -value if sign else value


def _contains_mp(enc: Enclosure, values) -> bool:
    # The mp value carries its own error ≲ 10^-195 (200 digits, a few dozen operations, outputs ≤ 16);
    # widen each ball by 10^-180 so that only a genuine miss can fail.
    slack = Fraction(1, 10**180)
    flat = [_mp_fraction(x) for row in values for x in row]
    return all(lo - slack <= t <= hi + slack for t, (lo, hi) in zip(flat, map(arb_bounds_fraction, enc.balls)))


@pytest.mark.parametrize("target", [1000.0, -1000.0, 745.0, 1e4])
def test_huge_logits_give_finite_tight_enclosures(target):
    q = np.array([[target, 0.0], [1.0, -target], [0.5, 0.25]])
    k = np.array([[1.0, 0.0], [-1.0, 0.5], [0.5, 1.0]])
    v = np.array([[1.0, -2.0], [0.25, 3.0], [-1.5, 0.5]])
    inst = make_instance(q, k, v, scale=1)
    enc = enclose(inst, 128)
    assert all(b.is_finite() for b in enc.balls)
    assert _max_rad(enc) < Fraction(1, 2**100)
    assert _contains_mp(enc, _mp_attention(inst))
    # Convex combination: every entry lies in [min_j v_jl, max_j v_jl].
    lo, hi = enc.float_bounds()
    assert (hi >= v.min(axis=0)).all() and (lo <= v.max(axis=0)).all()


@settings(max_examples=10)
@given(softmax_instances(max_n=6, max_d=4))
def test_enclosure_contains_mpmath_200_digits(inst):
    enc = enclose(inst, 128)
    assert _contains_mp(enc, _mp_attention(inst))


def test_rational_inputs_against_mpmath():
    q = [[Fraction(1, 3), Fraction(2, 5)], [Fraction(-7, 9), Fraction(1, 7)]]
    v = [[Fraction(1, 11), Fraction(4, 3)], [Fraction(-5, 6), Fraction(0)]]
    inst = make_instance(q, q, v, scale=Fraction(100, 3))
    assert _contains_mp(enclose(inst, 128), _mp_attention(inst))


# --------------------------------------------------------------------------- float bounds


def _ball(mid: Fraction, rad: Fraction, prec: int = 300) -> arb:
    with working_precision(prec):
        m = arb(mid.numerator) / mid.denominator
        return arb(m.mid(), arb(rad.numerator) / rad.denominator)


_MAGNITUDES = [Fraction(1, 2**1070), Fraction(1, 2**1030), Fraction(1, 2**60), Fraction(1), Fraction(2**500), Fraction(2**1000)]


@given(
    st.lists(
        st.tuples(
            st.integers(-(2**200), 2**200), st.integers(1, 2**200), st.sampled_from(_MAGNITUDES),
            st.integers(0, 2**64), st.sampled_from(_MAGNITUDES),
        ),
        min_size=1, max_size=8,
    )
)
def test_float_bounds_really_bound_the_balls(specs):
    balls = [_ball(Fraction(p, q) * m, Fraction(r, 2**64) * rm) for p, q, m, r, rm in specs]
    enc = Enclosure(balls=balls, shape=(len(balls),), prec=300)
    lo, hi = enc.float_bounds()
    assert lo.dtype == hi.dtype == np.float64
    for b, l, h in zip(balls, lo, hi):
        blo, bhi = arb_bounds_fraction(b)
        # ±inf is an honest (useless) bound; a finite one must be on the right side exactly.
        assert l == -np.inf or Fraction(float(l)) <= blo
        assert h == np.inf or Fraction(float(h)) >= bhi


def test_float_bounds_of_real_enclosures_and_midpoints():
    rng = np.random.default_rng(11)
    q, k, v = (_rng_matrix(rng, 6, 3) for _ in range(3))
    v[0, 0] = 1e-310  # subnormal value entries
    enc = enclose(make_instance(q, k, v, scale=Fraction(1, 3)), 128)
    lo, hi = enc.float_bounds()
    for idx in np.ndindex(enc.shape):
        blo, bhi = arb_bounds_fraction(enc.ball(idx))
        assert Fraction(float(lo[idx])) <= blo <= bhi <= Fraction(float(hi[idx]))
        # …and they are useful: within a few ulps of the ball (2^-49 relative covers the slack).
        assert hi[idx] - lo[idx] <= 2.0**-49 * max(abs(lo[idx]), abs(hi[idx])) + 1e-300


def test_enclosure_shape_is_checked():
    with pytest.raises(ValueError):
        Enclosure(balls=[arb(1)], shape=(2, 1), prec=53)


@pytest.mark.parametrize("magnitude", [1e50, 1e150])
def test_logits_beyond_float64_precision_give_finite_tight_balls_at_the_start_precision(magnitude):
    # logits ±2·magnitude²: 1e100 and 1e300; computed at prec + their bits, shifted by the exact row maximum
    q = np.array([[magnitude, magnitude], [-magnitude, magnitude], [magnitude, -magnitude]])
    k = np.array([[magnitude, -magnitude], [magnitude, magnitude], [-magnitude, -magnitude]])
    v = np.array([[1.0, -2.0], [0.25, 3.0], [-1.5, 0.5]])
    enc = enclose(make_instance(q, k, v, scale=1), 128)
    assert all(b.is_finite() for b in enc.balls)
    assert _max_rad(enc) < Fraction(1, 2**100)
    # every other weight is below e^(−magnitude²): the answer is the mean of the value rows of the keys
    # tied at the largest logit (exact rational logits: BLAS may fuse and round differently)
    lo, hi = enc.float_bounds()
    logits = np.array([[sum(Fraction(a) * Fraction(b) for a, b in zip(qi, kj)) for kj in k] for qi in q])
    expected = np.array([v[row == row.max()].mean(axis=0) for row in logits])
    assert (lo <= expected).all() and (expected <= hi).all()
