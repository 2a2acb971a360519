"""spec/heavy_keys.py: validated instances, clear errors, the exact definitions."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from attnspec.spec.heavy_keys import (attention_row, heavy_in_row, is_universal_for, lift_dimension,
                                      make_heavy_instance, make_universal_instance, size_bound)
from attnspec.spec.validation import SpecError

K = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])


@pytest.mark.parametrize("eps, match", [(0, "eps must lie in"), (-0.5, "eps must lie in"), (1.5, "eps must lie in"),
                                        (float("nan"), "finite"), ("0.5", "real number"), (True, "boolean")])
def test_eps_outside_the_unit_interval_is_refused(eps, match):
    with pytest.raises(SpecError, match=match):
        make_universal_instance(K, eps=eps, p=2)


@pytest.mark.parametrize("p", [3, 1, 0, 6, 2.0, True, "2", None])
def test_p_must_be_the_integer_two_or_four(p):
    with pytest.raises(SpecError, match="p must be the integer 2 or 4"):
        make_heavy_instance(K, K, eps=0.5, p=p)


@pytest.mark.parametrize("bad, match", [
    (np.array([[np.nan, 1.0]]), "non-finite"), (np.array([[np.inf, 1.0]]), "non-finite"),
    (np.ones(3), "2-D"), (np.ones((0, 2)), "at least one row"), (np.ones((2, 3)), "same number of columns"),
    (np.ones((2, 2), dtype=np.float32), "one dtype"), (np.ones((2, 2), dtype=complex), "unsupported dtype"),
])
def test_bad_query_matrices_are_refused_with_a_clear_error(bad, match):
    with pytest.raises(SpecError, match=match):
        make_heavy_instance(bad, K, eps=0.5, p=2)


def test_instances_hold_immutable_private_copies():
    k = K.copy()
    inst = make_heavy_instance(k, k, eps=0.25, p=4)
    k[0, 0] = 9.0
    assert inst.k[0, 0] == 1.0 and inst.q[0, 0] == 1.0
    with pytest.raises(ValueError):
        inst.k[0, 0] = 3.0
    with pytest.raises(ValueError):
        inst.q.flags.writeable = True
    assert (inst.m, inst.n, inst.d, inst.eps, inst.p) == (3, 3, 2, Fraction(1, 4), 4)
    assert inst.keys().k is inst.k and inst.keys().lift_dim == 3


def test_eps_is_kept_exactly_and_one_is_allowed():
    assert make_universal_instance(K, eps=0.1, p=2).eps == Fraction(0.1)
    assert make_universal_instance(K, eps=1, p=2).eps == 1
    assert make_universal_instance(K, eps=Fraction(1, 3), p=2).eps == Fraction(1, 3)


def test_lift_dimension_is_binomial():
    assert [lift_dimension(d, 2) for d in (1, 4, 16)] == [1, 4, 16]
    assert [lift_dimension(d, 4) for d in (1, 4, 16)] == [1, 10, 136]


def test_attention_row_is_exact_normalised_and_scale_invariant():
    row = attention_row([1.0, 1.0], K, 2)
    assert row == [Fraction(1, 9), Fraction(4, 9), Fraction(4, 9)]
    assert attention_row([-3.0, -3.0], K, 2) == row  # A is invariant under q → c·q
    assert attention_row([1.0, 1.0], K, 4) == [Fraction(1, 33), Fraction(16, 33), Fraction(16, 33)]
    assert attention_row([0.0, 0.0], K, 2) == [0, 0, 0]  # Σ_l f = 0: no weight, no heavy entry


def test_ties_are_heavy_and_the_universal_property_names_what_escapes():
    row = attention_row([1.0, 1.0], K, 2)
    assert heavy_in_row(row, Fraction(4, 9)) == [1, 2]
    assert is_universal_for([1, 2], [row], Fraction(4, 9)) == []
    assert is_universal_for([1], [row], Fraction(4, 9)) == [(0, 2)]


def test_size_bound_is_one_plus_slack_times_psi_over_eps():
    assert size_bound(3, Fraction(1, 4)) == 12
    assert size_bound(3, Fraction(1, 4), Fraction(1, 2)) == 18
