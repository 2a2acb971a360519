"""The exact binomial verdict for randomized guarantees."""

from __future__ import annotations

from fractions import Fraction
from math import comb

import pytest
from hypothesis import given, strategies as st
from scipy.stats import binom

from attnspec.conformance.judging.randomized_verdict import (binomial_verdict, lower_tail, runs_for_pass,
                                                             upper_tail)


def test_tails_are_exact_rational_sums():
    p = Fraction(1, 10)
    assert lower_tail(5, 1, p) == Fraction(9, 10) ** 5 + 5 * Fraction(1, 10) * Fraction(9, 10) ** 4
    assert upper_tail(5, 5, p) == Fraction(1, 10) ** 5
    assert lower_tail(5, 5, p) == 1 and upper_tail(5, 0, p) == 1 and lower_tail(5, -1, p) == 0


@given(st.integers(1, 60), st.integers(0, 60), st.sampled_from([0.01, 0.05, 0.2, 0.5]))
def test_tails_agree_with_scipy(r, x, p):
    x = min(x, r)
    assert float(lower_tail(r, x, p)) == pytest.approx(binom.cdf(x, r, p), rel=1e-9, abs=1e-300)
    assert lower_tail(r, x, p) + upper_tail(r, x + 1, p) == 1


def test_runs_needed_for_a_pass():
    assert runs_for_pass(0.01, Fraction(1, 1000)) == 688
    assert Fraction(99, 100) ** 688 <= Fraction(1, 1000) < Fraction(99, 100) ** 687
    assert runs_for_pass(0.05, Fraction(1, 1000)) == 135


def test_clean_runs_pass_only_with_enough_of_them():
    assert binomial_verdict(688, 0, 0, 0.01).status == "pass"
    assert binomial_verdict(687, 0, 0, 0.01).status == "undecided"


def test_many_violations_fail_and_a_few_are_undecided():
    assert binomial_verdict(40, 8, 0, 0.01).status == "fail"  # a rate ≈ 0.2 while 0.01 is declared
    v = binomial_verdict(40, 1, 0, 0.01)
    assert v.status == "undecided" and v.p_fail == upper_tail(40, 1, 0.01)


def test_undecided_runs_count_against_the_backend_both_ways():
    # counted as violations for a pass, not counted for a fail
    assert binomial_verdict(700, 0, 1, 0.01).status == "undecided"
    assert binomial_verdict(700, 0, 700, 0.01).status == "undecided"
    assert binomial_verdict(40, 8, 32, 0.01).status == "fail"


def test_delta_zero_is_judged_run_by_run():
    assert binomial_verdict(2, 0, 0, 0.0).status == "pass"
    assert binomial_verdict(2, 1, 0, 0.0).status == "fail"
    assert binomial_verdict(2, 0, 1, 0.0).status == "undecided"


@given(st.integers(1, 80), st.data())
def test_a_verdict_never_contradicts_its_tail(r, data):
    v = data.draw(st.integers(0, r))
    u = data.draw(st.integers(0, r - v))
    out = binomial_verdict(r, v, u, 0.05, Fraction(1, 100))
    if out.status == "fail":
        assert upper_tail(r, v, 0.05) <= Fraction(1, 100)
    if out.status == "pass":
        assert lower_tail(r, v + u, 0.05) <= Fraction(1, 100)
    assert out.status in ("pass", "fail", "undecided")


def test_bad_counts_are_refused():
    with pytest.raises(ValueError):
        binomial_verdict(3, 2, 2, 0.1)
    with pytest.raises(ValueError):
        binomial_verdict(3, 0, 0, 1.0)


def test_comb_identity_used_by_lower_tail():
    assert lower_tail(3, 1, Fraction(1, 2)) == Fraction(comb(3, 0) + comb(3, 1), 8)
