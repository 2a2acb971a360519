"""spec/softmax_attention.py and spec/validation.py: what a valid instance is, and clear rejections.

Every rejection must be a SpecError whose message names the offending input (and index where there is
one); every valid degenerate instance must keep its inputs' exact values.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attnspec.conformance.frontends.strategies import softmax_instances
from attnspec.spec.softmax_attention import conditioning, logit_bound, make_instance, standard_scale
from attnspec.spec.validation import SpecError


def _mats(n=3, d=2, dtype=np.float64):
    rng = np.random.default_rng(0)
    return tuple(rng.uniform(-1, 1, (n, d)).astype(dtype) for _ in range(3))


def _rejects(match, *args, **kwargs):
    with pytest.raises(SpecError, match=match):
        make_instance(*args, **kwargs)


# --------------------------------------------------------------------------- non-finite entries


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_entry_is_named_with_its_index(which, bad):
    mats = [m.copy() for m in _mats(4, 3)]
    mats[which][2, 1] = bad
    name = "QKV"[which]
    _rejects(rf"{name} has a non-finite entry .*at \[2, 1\]", *mats, scale=0.5)


def test_non_finite_float_inside_an_object_array_is_named():
    q, k, v = _mats(2, 2)
    qo = np.array([[Fraction(1, 3), 0.5], [float("nan"), 1]], dtype=object)
    _rejects(r"Q\[1, 0\] must be finite", qo, k.astype(object), v.astype(object), scale=1)


def test_object_array_with_non_numbers_is_rejected():
    q, k, v = _mats(2, 2)
    ko = np.array([[Fraction(1), "x"], [0.5, 1]], dtype=object)
    _rejects(r"K\[0, 1\] must be a real number", q.astype(object), ko, v.astype(object), scale=1)
    ko = np.array([[Fraction(1), None], [0.5, 1]], dtype=object)
    _rejects(r"K\[0, 1\] must be a real number", q.astype(object), ko, v.astype(object), scale=1)
    ko = np.array([[Fraction(1), True], [0.5, 1]], dtype=object)
    _rejects(r"K\[0, 1\] must be a number, got a boolean", q.astype(object), ko, v.astype(object), scale=1)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("shape", [(3,), (2, 3, 2), ()])
def test_wrong_ndim(shape):
    q, k, v = _mats()
    bad = np.zeros(shape)
    _rejects(r"Q must be 2-D", bad, k, v, scale=1)
    _rejects(r"V must be 2-D", q, k, bad, scale=1)


@pytest.mark.parametrize("shape", [(0, 2), (3, 0), (0, 0)])
def test_empty_dimensions(shape):
    q, k, v = _mats()
    _rejects(r"K must have at least one row and one column", q, np.zeros(shape), v, scale=1)


def test_q_k_column_mismatch():
    q, k, v = _mats(3, 2)
    _rejects(r"Q and K must have the same number of columns", q, np.zeros((3, 4)), v, scale=1)


def test_k_v_row_mismatch():
    q, k, v = _mats(3, 2)
    _rejects(r"K and V must have the same number of rows", q, k, np.zeros((4, 2)), scale=1)


def test_q_k_row_mismatch():
    q, k, v = _mats(3, 2)
    _rejects(r"shape mismatch between Q and K", np.zeros((5, 2)), k, v, scale=1)


def test_ragged_list_is_rejected():
    q, k, v = _mats(2, 2)
    _rejects(r"Q is not a rectangular array", [[1.0, 2.0], [3.0]], k, v, scale=1)


# --------------------------------------------------------------------------- dtypes


def test_mixed_float_dtypes():
    q, k, v = _mats()
    _rejects(r"share one dtype.*float32", q.astype(np.float32), k, v, scale=1)


def test_mixed_exact_and_float():
    q, k, v = _mats()
    _rejects(r"share one dtype", q.astype(object), k, v, scale=1)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((3, 2), dtype=np.complex128),
        np.zeros((3, 2), dtype=bool),
        np.full((3, 2), "a"),
        np.zeros((3, 2), dtype="datetime64[s]"),
        np.zeros((3, 2), dtype="timedelta64[s]"),
        np.zeros((3, 2), dtype=np.longdouble) if np.dtype(np.longdouble).itemsize > 8 else np.zeros((3, 2), dtype="S1"),
    ],
    ids=lambda a: str(a.dtype),
)
def test_unsupported_dtypes(bad):
    q, k, v = _mats()
    _rejects(r"V has unsupported dtype", q, k, bad, scale=1)


# --------------------------------------------------------------------------- scalars


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf"), np.float32("nan")])
def test_non_finite_scale(scale):
    _rejects(r"scale must be finite", *_mats(), scale=scale)


@pytest.mark.parametrize("scale", [True, np.bool_(False)])
def test_boolean_scale(scale):
    _rejects(r"scale must be a number, got a boolean", *_mats(), scale=scale)


@pytest.mark.parametrize("scale", ["0.5", None, 1j, [1.0]])
def test_non_numeric_scale(scale):
    _rejects(r"scale must be a real number", *_mats(), scale=scale)


@pytest.mark.parametrize("value", [0, -1.0, Fraction(-1, 3)])
def test_non_positive_bound_and_eps(value):
    _rejects(r"bound must be positive", *_mats(), scale=1, bound=value)
    _rejects(r"eps must be positive", *_mats(), scale=1, eps=value)


def test_non_finite_bound():
    _rejects(r"bound must be finite", *_mats(), scale=1, bound=float("inf"))


def test_declared_bound_violated_names_matrix_and_index():
    q, k, v = _mats(4, 3)
    v = v.copy()
    v[3, 2] = -2.5
    _rejects(r"V violates the declared entry bound B = 2\.0: \|V\[3, 2\]\| = 2\.5", q, k, v, scale=1, bound=2)


def test_declared_bound_is_compared_exactly():
    # 1/3 as an exact rational is above the float nearest 1/3 (0.333…331) and below 1/3 + 2^-60.
    one_third = np.array([[Fraction(1, 3)]], dtype=object)
    below = float(Fraction(1, 3))
    assert Fraction(below) < Fraction(1, 3)
    _rejects(r"Q violates the declared entry bound", one_third, one_third, one_third, scale=1, bound=below)
    inst = make_instance(one_third, one_third, one_third, scale=1, bound=Fraction(1, 3))
    assert inst.bound == Fraction(1, 3)


# --------------------------------------------------------------------------- valid degenerate instances


def test_n_equals_one_and_d_equals_one():
    inst = make_instance([[0.5]], [[-2.0]], [[3.0]], scale=1)
    assert (inst.n, inst.d, inst.output_shape) == (1, 1, (1, 1))
    inst = make_instance(np.ones((1, 7)), np.ones((1, 7)), np.ones((1, 7)), scale=0.125)
    assert (inst.n, inst.d) == (1, 7)


def test_scale_zero_and_identical_rows():
    q = np.ones((5, 3))
    inst = make_instance(q, q, q, scale=0)
    assert inst.scale == 0
    assert conditioning(inst)["max_abs_logit"] == 0.0


def test_large_logits_are_valid():
    q = np.array([[1000.0], [-1000.0]])
    k = np.array([[1.0], [-1.0]])
    inst = make_instance(q, k, np.eye(2)[:, :1], scale=1)
    cond = conditioning(inst)
    assert cond["max_abs_logit"] == 1000.0
    assert cond["max_row_logit_range"] == 2000.0


def test_fractions_are_kept_exactly():
    q = [[Fraction(1, 3), Fraction(-2, 7)]]
    inst = make_instance(q, q, [[Fraction(5, 11), 0]], scale=Fraction(1, 3), eps=Fraction(1, 10))
    assert inst.q[0, 0] == Fraction(1, 3) and inst.v[0, 0] == Fraction(5, 11)
    assert inst.dtype == object
    assert inst.scale == Fraction(1, 3) and inst.eps == Fraction(1, 10)


def test_integer_arrays_become_exact_rationals():
    big = 2**60 + 1  # not representable in float64: must not be rounded
    a = np.array([[big, -3], [0, 7]], dtype=np.int64)
    inst = make_instance(a, a, a, scale=1)
    assert inst.dtype == object
    assert inst.q[0, 0] == Fraction(big) and inst.v[0, 1] == Fraction(-3)
    u = np.array([[2**64 - 1]], dtype=np.uint64)
    assert make_instance(u, u, u, scale=1).q[0, 0] == Fraction(2**64 - 1)


def test_float_inputs_mean_their_dyadic_value():
    inst = make_instance([[0.1]], [[0.1]], [[0.1]], scale=0.1)
    assert inst.scale == Fraction(0.1) != Fraction(1, 10)
    assert inst.q.dtype == np.float64 and inst.q[0, 0] == 0.1


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_supported_float_dtypes_are_kept(dtype):
    inst = make_instance(*_mats(dtype=dtype), scale=1)
    assert inst.dtype == np.dtype(dtype)


# --------------------------------------------------------------------------- standard_scale


@pytest.mark.parametrize("d", [1, 2, 3, 7, 64, 1000])
def test_standard_scale_one_over_d(d):
    assert standard_scale(d, "1/d") == Fraction(1, d)


@pytest.mark.parametrize("d", [1, 4, 9, 16, 64, 10_000])
def test_standard_scale_perfect_squares_are_exact(d):
    assert standard_scale(d, "1/sqrt(d)") == Fraction(1, math.isqrt(d))


@pytest.mark.parametrize("d", [2, 3, 5, 8, 128, 1000])
def test_standard_scale_non_squares_are_the_nearest_double(d):
    s = standard_scale(d, "1/sqrt(d)")
    assert s.denominator & (s.denominator - 1) == 0  # dyadic: a float64 value
    # |s − 1/√d| ≤ 1 ulp: compare s² d with 1 exactly (ulp of s ≤ 2^-52 · s).
    rel = abs(s * s * d - 1)
    assert rel <= Fraction(2, 2**52) * 2 + Fraction(1, 2**100)


@pytest.mark.parametrize("d,kind", [(0, "1/d"), (-3, "1/sqrt(d)"), (4, "1/d2"), (4, "sqrt")])
def test_standard_scale_rejects(d, kind):
    with pytest.raises(SpecError):
        standard_scale(d, kind)


# --------------------------------------------------------------------------- derived quantities


@given(softmax_instances(max_n=6, max_d=4))
def test_logit_bound_bounds_every_exact_logit(inst):
    bound = Fraction(logit_bound(inst))
    # exact logits s⟨q_i, k_j⟩ from the exact inputs; logit_bound is computed in float64, so allow
    # its own relative rounding (≤ (d+2)·2^-53, dominated by 2^-40 for d ≤ 4).
    q = [[Fraction(float(x)) for x in row] for row in inst.q]
    k = [[Fraction(float(x)) for x in row] for row in inst.k]
    worst = max(abs(inst.scale * sum(a * b for a, b in zip(qi, kj))) for qi in q for kj in k)
    assert worst <= bound * (1 + Fraction(1, 2**40))


@given(st.integers(1, 5), st.integers(1, 4), st.sampled_from(["float16", "float32", "float64"]))
def test_instance_shape_properties(n, d, dtype):
    inst = make_instance(*(np.ones((n, d), dtype=dtype) for _ in range(3)), scale=1)
    assert (inst.n, inst.d, inst.output_shape, str(inst.dtype)) == (n, d, (n, d), dtype)
