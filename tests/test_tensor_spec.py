"""Spec layer of tensor attention: validation, the ⊘ convention, conditioning."""

from fractions import Fraction

import numpy as np
import pytest

from attnspec.spec.tensor_attention import (
    column_kronecker,
    conditioning,
    key_tuple_blocks,
    logit_radius,
    make_instance,
    tuple_indices,
)
from attnspec.spec.validation import SpecError


def _mats(seed, n=4, d=3, count=5):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, (n, d)) for _ in range(count)]


def test_valid_instance_properties():
    q, k1, k2, v1, v2 = _mats(0)
    inst = make_instance(q, [k1, k2], [v1, v2], scale=Fraction(1, 3), bound=1, eps=1e-3)
    assert (inst.n, inst.d, inst.order, inst.num_tuples, inst.output_shape) == (4, 3, 3, 16, (4, 3))
    assert inst.scale == Fraction(1, 3) and inst.bound == 1 and inst.eps == Fraction(1e-3)


@pytest.mark.parametrize("build, message", [
    (lambda q, k, v: make_instance(q, [], [], scale=1), "at least one key"),
    (lambda q, k, v: make_instance(q, [k, k], [v], scale=1), "same count"),
    (lambda q, k, v: make_instance(q, [k[:, :2], k], [v, v], scale=1), "K1 must have the shape"),
    (lambda q, k, v: make_instance(q, [k, k], [v, v[:3]], scale=1), "V2 must be"),
    (lambda q, k, v: make_instance(q, [k, k.astype(np.float32)], [v, v], scale=1), "one dtype"),
    (lambda q, k, v: make_instance(q, [k, np.where(k > 0, np.nan, k)], [v, v], scale=1), "non-finite"),
    (lambda q, k, v: make_instance(q, [k, k], [v, v], scale=float("inf")), "scale must be finite"),
    (lambda q, k, v: make_instance(q, [k, 3 * k], [v, v], scale=1, bound=1.5), "K2 violates the declared entry bound"),
    (lambda q, k, v: make_instance(q, [k, k], [v, v], scale=1, eps=0), "eps must be positive"),
    (lambda q, k, v: make_instance(q, "abc", [v], scale=1), "keys must be a list"),
    (lambda q, k, v: make_instance(q[0], [k], [v], scale=1), "Q must be 2-D"),
])
def test_bad_input_raises_spec_error(build, message):
    q, k, v = _mats(1, count=3)
    k[0, 0] = 0.9  # guarantees a positive entry for the NaN case and entries up to 2.7 after scaling
    with pytest.raises(SpecError, match=message):
        build(q, k, v)


def test_value_columns_may_differ_from_d():
    q, k1, k2 = _mats(2, count=3)
    v = np.ones((4, 7))
    assert make_instance(q, [k1, k2], [v, v], scale=1).output_shape == (4, 7)


def test_tuple_indices_lexicographic():
    idx = tuple_indices(np.arange(27), 3, 3)
    flat = idx[0] * 9 + idx[1] * 3 + idx[2]
    assert np.array_equal(flat, np.arange(27))
    assert list(idx[0][:4]) == [0, 0, 0, 0] and list(idx[2][:4]) == [0, 1, 2, 0]


def test_column_kronecker_rows_and_orders():
    a, b = _mats(3, n=3, d=2, count=2)
    lex = column_kronecker([a, b])
    paper = column_kronecker([a, b], order="paper")
    for j1 in range(3):
        for j2 in range(3):
            assert np.array_equal(lex[j1 * 3 + j2], a[j1] * b[j2])
            assert np.array_equal(paper[j1 + j2 * 3], a[j1] * b[j2])  # paper: i₁ + (i₂−1)n
    assert np.array_equal(column_kronecker([a, b], (2, 7)), lex[2:7])
    with pytest.raises(SpecError):
        column_kronecker([a, b], order="other")


def test_blocks_cover_all_tuples_once():
    seen = [t for t0, t1 in key_tuple_blocks(5, 2, 7) for t in range(t0, t1)]
    assert seen == list(range(25))
    with pytest.raises(SpecError):
        list(key_tuple_blocks(5, 2, 0))


def test_conditioning_matches_brute_force():
    q, k1, k2, v1, v2 = _mats(4)
    inst = make_instance(q, [k1, k2], [v1, v2], scale=0.5)
    logits = 0.5 * q @ column_kronecker([k1, k2]).T
    c = conditioning(inst)
    assert c["max_abs_logit"] == pytest.approx(np.abs(logits).max(), rel=1e-14)
    assert c["max_row_logit_range"] == pytest.approx((logits.max(1) - logits.min(1)).max(), rel=1e-14)
    assert c["v_inf_norm"] == pytest.approx(np.abs(column_kronecker([v1, v2])).max(), rel=1e-14)
    assert c["order"] == 3 and c["key_tuples"] == 16
    assert c["max_abs_logit"] <= logit_radius(3, 1.0, 3, 0.5)
