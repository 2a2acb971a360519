"""Certified judging of a streaming run: best k-sparse error bounds and the per-column decision."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from attnspec.reference import streaming_attention as ref
from attnspec.reference.softmax_attention import enclose
from attnspec.spec.streaming_attention import make_streaming_instance


def exact_best_sq(y: np.ndarray, k: int) -> Fraction:
    sq = sorted(Fraction(float(x)) ** 2 for x in y)
    return sum(sq[: len(sq) - k], Fraction(0))


@given(hnp.arrays(np.float64, st.integers(2, 12), elements=st.floats(-4, 4, width=32)), st.data())
def test_best_k_sparse_error_bounds_contain_the_exact_value(y, data):
    k = data.draw(st.integers(1, y.size))
    lo, hi = ref.best_k_sparse_error_sq(y[:, None], y[:, None], k)
    exact = exact_best_sq(y, k)
    assert Fraction(float(lo[0])) <= exact <= Fraction(float(hi[0]))


def test_ties_between_enclosures_widen_the_interval_instead_of_guessing():
    lo = np.array([[0.9], [0.9], [0.1]])
    hi = np.array([[1.1], [1.1], [0.2]])
    b_lo, b_hi = ref.best_k_sparse_error_sq(lo, hi, 1)  # the 2 smallest squares: 0.01+0.81 … 0.04+1.21
    assert b_lo[0] <= 0.82 and b_hi[0] >= 1.25


def test_decisions_are_certain_and_undecided_in_between():
    y = np.array([[3.0], [0.0], [1.0], [0.0]])
    best = 1.0  # Err_1(y)
    idx = np.array([[0]])
    # error = Err_1 exactly: with ε₂ = 0 the outward rounding cannot certify equality, a tiny ε₂ can
    assert ref.check_run(y, y, idx, np.array([[3.0]]), 1, 0.0, 0.0)[0].status == ref.UNDECIDED
    assert ref.check_run(y, y, idx, np.array([[3.0]]), 1, 0.0, 1e-12)[0].status == ref.MET
    assert ref.check_run(y, y, idx, np.array([[2.0]]), 1, 0.0, 0.0)[0].status == ref.VIOLATED  # √2 > 1
    assert ref.check_run(y, y, idx, np.array([[2.0]]), 1, 0.5, 0.0)[0].status == ref.MET  # √2 ≤ 1.5
    wide = ref.check_run(y - 0.5, y + 0.5, idx, np.array([[3.0]]), 1, 0.0, 0.0)[0]
    assert wide.status == ref.UNDECIDED and wide.best[0] <= best <= wide.best[1]
    checks = ref.check_run(np.hstack([y, y]), np.hstack([y, y]), np.array([[0], [0]]), np.array([[3.0], [2.0]]), 1, 0.0, 1e-12)
    assert ref.run_status(checks) == ref.VIOLATED and ref.run_status(checks[:1]) == ref.MET


def test_certified_columns_enclose_the_softmax_output():
    rng = np.random.default_rng(5)
    q, k, v = (rng.integers(-256, 257, (12, 2)) / 256 for _ in range(3))
    inst = make_streaming_instance(q, k, v, scale=Fraction(1, 2), sparsity=2)
    lo, hi = ref.certified_columns(inst)
    mid = enclose(inst.attention).mid()
    assert (lo <= mid).all() and (mid <= hi).all() and float((hi - lo).max()) < 1e-12
