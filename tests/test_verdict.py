"""conformance/verdict.py: pass / fail / undecided / error on constructed outputs.

The true values here are rationals chosen by the test (so every true error is known exactly with
Fractions), enclosed by honest Arb balls at the requested precision; a few tests use deliberately wide
("uncertain") enclosures to force undecided verdicts. Real softmax enclosures appear at the end.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from flint import arb, fmpq
from hypothesis import given
from hypothesis import strategies as st

from attnspec.conformance.judging.verdict import ERROR, FAIL, PASS, UNDECIDED, coerce_output, judge
from attnspec.reference.enclosure import Enclosure, working_precision
from attnspec.reference.softmax_attention import enclose as softmax_enclose
from attnspec.spec.softmax_attention import make_instance


class RationalEnclosure:
    """enclose(prec) for fixed rational true values: tight balls at ``prec`` bits; records the calls."""

    def __init__(self, values, shape=None):
        self.values = [Fraction(x) for x in np.asarray(values, dtype=object).reshape(-1)]
        self.shape = tuple(shape) if shape is not None else np.asarray(values, dtype=object).shape
        self.calls: list[int] = []

    def __call__(self, prec: int) -> Enclosure:
        self.calls.append(prec)
        with working_precision(prec):
            balls = [arb(fmpq(x.numerator, x.denominator)) for x in self.values]
        return Enclosure(balls=balls, shape=self.shape, prec=prec)


def fixed_radius(mid: Fraction, rad: Fraction, shape=(1,)):
    """An enclosure that never improves: [mid ± rad] whatever the precision."""
    def enclose(prec):
        with working_precision(max(prec, 300)):
            m = arb(fmpq(mid.numerator, mid.denominator))
            r = arb(fmpq(rad.numerator, rad.denominator))
            ball = arb(m.mid(), r.mid() + m.rad() + r.rad())
        return Enclosure(balls=[ball] * int(np.prod(shape)), shape=shape, prec=prec)
    return enclose


TRUE = [[Fraction(1, 3), Fraction(-2, 7)], [Fraction(5, 11), Fraction(1, 10)]]
TOL = 2.0**-20  # far above float64 rounding of the true values (≤ 2^-54), far below their size


def _nearest(values) -> np.ndarray:
    return np.array([[float(x) for x in row] for row in values])


# --------------------------------------------------------------------------- pass / fail


@pytest.mark.parametrize("k", [0.0, 0.5, -0.5, 0.9, -0.9])
def test_within_tolerance_passes(k):
    y = _nearest(TRUE) + k * TOL
    v = judge(y, RationalEnclosure(TRUE), TOL)
    assert v.status == PASS and v.passed
    assert v.evidence["ratio"] <= 1


@pytest.mark.parametrize("k", [1.1, -1.1, 2.0, -10.0, 1e6])
@pytest.mark.parametrize("where", [(0, 0), (1, 1), (0, 1)])
def test_outside_tolerance_fails_at_the_right_entry(k, where):
    y = _nearest(TRUE)
    y[where] += k * TOL
    v = judge(y, RationalEnclosure(TRUE), TOL)
    assert v.status == FAIL and not v.passed
    ev = v.evidence
    assert tuple(ev["worst_index"]) == where
    lo, hi = ev["error_interval"]
    assert TOL < lo <= hi
    assert ev["ratio"] >= ev["ratio_lower"] > 1
    assert ev["tolerance"] == TOL


def test_fail_reports_the_worst_entry():
    y = _nearest(TRUE)
    y[0, 1] += 3 * TOL
    y[1, 0] -= 7 * TOL
    v = judge(y, RationalEnclosure(TRUE), TOL)
    assert v.status == FAIL and v.evidence["worst_index"] == [1, 0]


def test_per_entry_tolerance():
    y = _nearest(TRUE)
    y[1, 1] += 3 * TOL
    tol = np.full((2, 2), TOL)
    assert judge(y, RationalEnclosure(TRUE), tol).status == FAIL
    tol[1, 1] = 4 * TOL
    assert judge(y, RationalEnclosure(TRUE), tol).status == PASS


def test_negative_or_nan_tolerance_is_refused():
    with pytest.raises(ValueError):
        judge(_nearest(TRUE), RationalEnclosure(TRUE), -1.0)
    with pytest.raises(ValueError):
        judge(_nearest(TRUE), RationalEnclosure(TRUE), np.nan)


# --------------------------------------------------------------------------- decided by refinement


@pytest.mark.parametrize("step", [-1, 0, 1])
def test_distance_equal_to_tolerance_from_one_third_is_decided_exactly(step):
    # y = 1/4, x = 1/3: the true error is 1/12, which no float equals; τ is fl(1/12) or a neighbour.
    # The verdict must agree with the exact comparison 1/12 ≤ τ, found by refinement from 16 bits
    # (where the ball radius ~2^-18 is far wider than |1/12 − τ| ~ 2^-57).
    tol = float(np.nextafter(float(Fraction(1, 12)), np.inf if step > 0 else -np.inf)) if step else float(Fraction(1, 12))
    enc = RationalEnclosure([Fraction(1, 3)])
    v = judge(np.array([0.25]), enc, tol, start_prec=16)
    expected = PASS if Fraction(1, 12) <= Fraction(tol) else FAIL
    assert v.status == expected
    assert len(enc.calls) > 1 and v.evidence["prec"] > 16
    assert enc.calls == sorted(enc.calls)


def test_exact_distance_with_a_never_exact_reference_is_undecided_not_pass():
    # True value 1/2 known only as [1/2 ± 2^-200]; y = 3/4, τ = 1/4: error ∈ [1/4 − 2^-200, 1/4 + 2^-200].
    v = judge(np.array([0.75]), fixed_radius(Fraction(1, 2), Fraction(1, 2**200)), 0.25, max_prec=512)
    assert v.status == UNDECIDED
    assert v.evidence["prec"] == 512
    assert v.evidence["undecided_entries"] == 1


def test_exact_distance_with_an_exact_reference_passes():
    # A dyadic true value is enclosed with radius 0: error exactly τ is certainly ≤ τ.
    v = judge(np.array([0.75]), RationalEnclosure([Fraction(1, 2)]), 0.25)
    assert v.status == PASS


def test_uncertain_reference_is_undecided_at_the_cap_after_refining():
    calls = []
    inner = fixed_radius(Fraction(1, 3), Fraction(1, 1000))

    def enclose(prec):
        calls.append(prec)
        return inner(prec)

    v = judge(np.array([float(Fraction(1, 3))]), enclose, 1e-6, start_prec=128, max_prec=1024)
    assert v.status == UNDECIDED and not v.passed
    assert calls == [128, 256, 512, 1024]
    lo, hi = v.evidence["error_interval"]
    assert lo <= 1e-6 < hi


def test_one_certain_failure_beats_undecided_entries():
    # Entry 0 is undecidable (wide ball), entry 1 is clearly wrong: the case fails.
    def enclose(prec):
        wide = fixed_radius(Fraction(1, 3), Fraction(1, 1000))(prec).balls[0]
        return Enclosure(balls=[wide, arb(0)], shape=(2,), prec=prec)

    v = judge(np.array([1 / 3, 1.0]), enclose, 1e-6)
    assert v.status == FAIL and v.evidence["worst_index"] == [1]


# --------------------------------------------------------------------------- zero tolerance


def test_zero_tolerance_with_inexact_true_value_never_passes():
    for y in (float(Fraction(1, 3)), np.nextafter(float(Fraction(1, 3)), 1)):
        v = judge(np.array([y]), RationalEnclosure([Fraction(1, 3)]), 0.0)
        assert v.status in (FAIL, UNDECIDED)


def test_zero_tolerance_with_exact_dyadic_value_passes():
    v = judge(np.array([[0.375, -2.0]]), RationalEnclosure([[Fraction(3, 8), Fraction(-2)]]), 0.0)
    assert v.status == PASS and v.evidence["ratio"] == 0.0


# --------------------------------------------------------------------------- unusable outputs


@pytest.mark.parametrize(
    "output,needle",
    [
        (np.array([[np.nan, 0.0], [0.0, 0.0]]), "non-finite"),
        (np.array([[0.0, 0.0], [0.0, np.inf]]), "non-finite"),
        (np.array([[0.0, 0.0], [-np.inf, 0.0]], dtype=np.float32), "non-finite"),
        (np.zeros((2, 2), dtype=np.complex128), "complex"),
        (np.zeros((2, 3)), "shape"),
        (np.zeros((1, 2, 2)), "shape"),
        (np.zeros(4), "shape"),
        (np.full((2, 2), "0.5"), "non-numeric"),
        (np.zeros((2, 2), dtype=object), "non-numeric"),
        (np.zeros((2, 2), dtype=bool), "non-numeric"),
        (None, "non-numeric"),
        ("garbage", "non-numeric"),
        ([[0.0, 1.0], [0.5]], "array"),
        (np.array([[2**53 + 1, 0], [0, 0]], dtype=np.int64), "integer"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_unusable_output_is_an_error(output, needle):
    v = judge(output, RationalEnclosure(TRUE), 1e30)  # a huge tolerance must not rescue garbage
    assert v.status == ERROR and not v.passed
    assert needle in v.message
    assert v.evidence["kind"] == "bad_output"


def test_nan_error_names_its_index():
    y = _nearest(TRUE)
    y[1, 0] = np.nan
    v = judge(y, RationalEnclosure(TRUE), TOL)
    assert v.status == ERROR and v.evidence["worst_index"] == [1, 0]


@pytest.mark.parametrize("dtype", [np.int8, np.int64, np.uint16])
def test_integer_outputs_are_accepted(dtype):
    true = [[Fraction(3), Fraction(-1)], [Fraction(0), Fraction(100)]] if dtype != np.uint16 else [[3, 1], [0, 100]]
    y = np.array([[int(x) for x in row] for row in true], dtype=dtype)
    assert judge(y, RationalEnclosure(true), 0.0).status == PASS
    y[0, 0] += 2
    assert judge(y, RationalEnclosure(true), 1.0).status == FAIL


def test_lists_and_float32_outputs_are_read_exactly():
    y32 = np.float32(0.1)
    true = [[Fraction(float(y32))]]
    assert judge(np.array([[y32]]), RationalEnclosure(true), 0.0).status == PASS
    assert judge([[float(y32)]], RationalEnclosure(true), 0.0).status == PASS


def test_coerce_output_shape_argument():
    assert coerce_output([1, 2], (2,)).dtype == np.float64
    v = judge(np.zeros((2, 2)), RationalEnclosure(TRUE), 1.0, shape=(4,))
    assert v.status == ERROR and "shape" in v.message


# --------------------------------------------------------------------------- evidence


def _true_error(y: float, x: Fraction) -> Fraction:
    return abs(Fraction(y) - x)


rationals = st.fractions(min_value=-4, max_value=4, max_denominator=10**6)


@given(st.lists(st.tuples(rationals, st.floats(-1e-3, 1e-3, allow_nan=False)), min_size=1, max_size=6),
       st.sampled_from([1e-4, 2.0**-20, 1e-9]))
def test_certified_interval_contains_the_true_error(pairs, tol):
    xs = [x for x, _ in pairs]
    y = np.array([float(x) + dy for x, dy in pairs])
    v = judge(y, RationalEnclosure(xs), tol)
    errors = [_true_error(float(yi), x) for yi, x in zip(y, xs)]
    expected = PASS if max(errors) <= Fraction(tol) else FAIL
    assert v.status == expected
    ev = v.evidence
    i = ev["worst_index"][0]
    lo, hi = ev["error_interval"]
    assert 0 <= lo <= hi
    assert Fraction(lo) <= errors[i] <= Fraction(hi)
    assert ev["ratio"] == pytest.approx(hi / tol, rel=1e-12)
    assert ev["output"] == y[i]
    if v.status == PASS:
        assert errors[i] == max(errors) or ev["ratio"] >= float(max(errors) / Fraction(tol)) * (1 - 1e-12)


@pytest.mark.parametrize("step", [-1, 0, 1])
def test_interval_from_the_exact_path_contains_the_true_error(step):
    # Tolerances within a few ulps of the error make the float bounds undecided, so the entry is
    # settled from the exact ball ends; the reported floats must still enclose the true error 1/12.
    tol = float(Fraction(1, 12))
    if step:
        tol = float(np.nextafter(tol, np.inf if step > 0 else -np.inf))
    v = judge(np.array([0.25]), RationalEnclosure([Fraction(1, 3)]), tol)
    lo, hi = v.evidence["error_interval"]
    assert Fraction(lo) <= Fraction(1, 12) <= Fraction(hi)
    if v.status == FAIL:
        assert lo >= tol  # the lower end, rounded down, cannot drop below τ


def test_evidence_on_real_softmax_enclosure():
    rng = np.random.default_rng(5)
    q, k, v = (rng.uniform(-1, 1, (5, 3)) for _ in range(3))
    inst = make_instance(q, k, v, scale=Fraction(1, 3))
    enclose = lambda prec: softmax_enclose(inst, prec)  # noqa: E731
    y = enclose(128).mid()
    ok = judge(y, enclose, 1e-12)
    assert ok.status == PASS and ok.evidence["ratio"] < 1e-3  # mid is within 2^-53 relative
    y[3, 2] += 1e-9
    bad = judge(y, enclose, 1e-12)
    assert bad.status == FAIL and bad.evidence["worst_index"] == [3, 2]
    assert bad.evidence["error_interval"][0] == pytest.approx(1e-9, rel=1e-3)
    assert bad.evidence["prec"] == 128 and bad.evidence["max_relative_radius"] < 2.0**-100


def test_non_finite_balls_are_refined_then_undecided_never_raised():
    from flint import arb

    asked = []

    def enclose_at(prec):
        asked.append(prec)
        ball = arb("nan") if prec < 512 else arb(1)  # finite only from 512 bits on
        return Enclosure(balls=[ball, arb(1)], shape=(1, 2), prec=prec)

    assert judge(np.array([[1.0, 1.0]]), enclose_at, 0.0).status == PASS
    assert asked == [128, 256, 512]
    never = lambda prec: Enclosure(balls=[arb("nan")], shape=(1, 1), prec=prec)  # noqa: E731
    verdict = judge(np.array([[0.0]]), never, 1e-3)
    assert verdict.status == UNDECIDED and verdict.evidence["prec"] == 1024
