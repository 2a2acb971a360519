"""Spec layer of dynamic attention: the exact state machine, its SpecErrors, and exact JSON traces."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attnspec.spec.dynamic_attention import (
    DynamicState,
    Init,
    Query,
    Trace,
    UpdateK,
    UpdateV,
    decode_exact,
    encode_exact,
)
from attnspec.spec.validation import SpecError


def _init(n=3, d=2, dv=2, m=2):
    rng = np.random.default_rng(0)
    return Init(rng.uniform(-1, 1, (m, d)), rng.uniform(-1, 1, (n, d)), rng.uniform(-1, 1, (n, dv)), 1)


@pytest.mark.parametrize("op", [Query(0, 0), UpdateK(0, 0, 1.0), UpdateV(0, 0, 1.0)])
def test_operations_before_init_are_spec_errors(op):
    with pytest.raises(SpecError, match="before Init"):
        DynamicState().apply(op)


@pytest.mark.parametrize(
    "op, match",
    [
        (UpdateK(3, 0, 0.5), "UpdateK row i = 3 is out of range"),
        (UpdateK(0, 2, 0.5), "UpdateK column j = 2 is out of range"),
        (UpdateK(-1, 0, 0.5), "out of range"),
        (UpdateV(0, 2, 0.5), "UpdateV column j"),
        (Query(2, 0), "Query row i = 2"),
        (Query(0, 5), "Query column j = 5"),
        (UpdateK(0, 0, float("nan")), "delta must be finite"),
        (UpdateV(0, 0, float("inf")), "delta must be finite"),
        (UpdateK(True, 0, 0.5), "integer index"),
        (UpdateK(0.0, 0, 0.5), "integer index"),
        (UpdateK(0, 0, "1"), "real number"),
    ],
)
def test_bad_operations_name_the_problem(op, match):
    s = DynamicState()
    s.apply(_init())
    with pytest.raises(SpecError, match=match):
        s.apply(op)


def test_init_validation_and_single_init():
    s = DynamicState()
    with pytest.raises(SpecError, match="same number of columns"):
        s.apply(Init(np.ones((2, 3)), np.ones((2, 2)), np.ones((2, 1))))
    with pytest.raises(SpecError, match="same number of rows"):
        s.apply(Init(np.ones((2, 2)), np.ones((3, 2)), np.ones((2, 1))))
    with pytest.raises(SpecError, match="non-finite"):
        s.apply(Init(np.ones((2, 2)), np.full((2, 2), np.nan), np.ones((2, 1))))
    with pytest.raises(SpecError, match="scale must be finite"):
        s.apply(Init(np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 1)), float("inf")))
    s.apply(_init())
    with pytest.raises(SpecError, match="Init called twice"):
        s.apply(_init())


def test_updates_are_exact_rational_sums_not_float_sums():
    s = DynamicState()
    s.apply(Init(np.zeros((1, 1)), np.zeros((1, 1)), np.zeros((1, 1))))
    acc = 0.0
    for _ in range(10):
        s.apply(UpdateK(0, 0, 0.1))
        acc += 0.1
    assert s.k[0, 0] == 10 * Fraction(0.1)
    assert s.k[0, 0] != Fraction(acc)  # the float running sum is a different number
    s.apply(UpdateV(0, 0, Fraction(1, 3)))
    assert s.v[0, 0] == Fraction(1, 3)
    assert s.updates == 11


def test_trace_json_round_trip_is_exact(tmp_path):
    q = np.array([[0.1, -2.5]])
    k = np.array([[Fraction(1, 3), Fraction(-7, 5)], [Fraction(0), Fraction(2)]], dtype=object)
    v = np.array([[1e-300], [3.0]], dtype=np.float32).astype(np.float64)
    tr = Trace(normalised=False, ops=[Init(q, k, v, Fraction(1, 7)), UpdateK(1, 0, 0.1), UpdateV(0, 0, Fraction(-2, 9)),
                                      Query(0, 0)])
    path = tr.save(tmp_path / "t.json")
    back = Trace.load(path)
    assert back.normalised is False
    assert [type(o) for o in back.ops] == [type(o) for o in tr.ops]
    b0 = back.ops[0]
    assert b0.q.dtype == np.float64 and np.array_equal(b0.q, q)
    assert b0.k.dtype == object and (b0.k == k).all()
    assert np.array_equal(b0.v, v) and Fraction(b0.scale) == Fraction(1, 7)
    assert back.ops[1].delta == 0.1 and back.ops[2].delta == Fraction(-2, 9)
    # replaying both gives the same exact state
    assert (back.validate().k == tr.validate().k).all()


def test_trace_rejects_foreign_json():
    with pytest.raises(SpecError, match="not a dynamic-attention trace"):
        Trace.from_json({"format": "something else", "ops": []})
    with pytest.raises(SpecError, match="not an exact value"):
        decode_exact("0.1")


@given(st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                 st.fractions(), st.integers(-10**30, 10**30)))
def test_encode_decode_exact(x):
    assert Fraction(decode_exact(encode_exact(x))) == Fraction(x)
