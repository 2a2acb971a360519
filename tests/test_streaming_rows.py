"""Certified rows (reference/streaming_attention.certified_rows): the O(rows·n·d) Arb enclosure agrees with
the full n² enclosure, and the statistics algorithm is judged on it under its polynomial contract η."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from attnspec.accelerated.streaming_attention import SufficientStatistics
from attnspec.bench.streaming_attention import _stream_arrays, certified_rows_check
from attnspec.reference.enclosure import arb_bounds_fraction, fraction_of
from attnspec.reference.softmax_attention import enclose
from attnspec.reference.streaming_attention import certified_rows
from attnspec.spec.softmax_attention import make_instance

N, D, DV, CHUNK = 2**10, 3, 2, 256


@pytest.fixture(scope="module")
def arrays():
    return _stream_arrays(N, D, DV, CHUNK, seed=0)


def test_row_enclosure_contains_the_full_references_midpoints(arrays):
    q, k, v = arrays
    rows = [0, 1, 517, N - 1]
    full = enclose(make_instance(q, k, v, scale=Fraction(1 / D)), 128)
    part = certified_rows(q[rows], k, v, 1 / D, 128)
    assert part.shape == (len(rows), DV)
    for r, i in enumerate(rows):
        for c in range(DV):
            lo, hi = arb_bounds_fraction(part.ball((r, c)))
            assert lo <= fraction_of(full.ball((i, c)).mid()) <= hi
            assert hi - lo < Fraction(1, 2**100)  # tight, so the containment says something


def test_statistics_pass_on_certified_rows():
    r = certified_rows_check(N, D, DV, 8, CHUNK, seed=0, random_rows=3)
    assert r["rows"]["status"] == "pass" and r["emitted"]["status"] == "pass"
    assert r["rows_checked"] >= 2 + 8  # first, last and the emitted indices
    assert r["rows"]["worst_error_over_eta"] <= 1


def perturbed(fraction_of_eta: float) -> type:
    class Perturbed(SufficientStatistics):
        """Rows off by a multiple of the declared η in column 0 of every 7th row (and so in what it emits)."""

        def rows(self, q):
            out = super().rows(q)
            out[::7, 0] += fraction_of_eta * self.entry_error()
            return out

    return Perturbed


def test_output_perturbed_beyond_eta_fails_and_within_eta_passes():
    bad = certified_rows_check(N, D, DV, 8, CHUNK, seed=0, random_rows=3, algorithm=perturbed(4.0))
    assert bad["rows"]["status"] == "fail"
    ok = certified_rows_check(N, D, DV, 8, CHUNK, seed=0, random_rows=3, algorithm=perturbed(0.5))
    assert ok["rows"]["status"] == "pass" and ok["emitted"]["status"] == "pass"


def test_perturbed_emitted_values_fail():
    class Shifted(SufficientStatistics):
        def finish(self):
            idx, val = super().finish()
            return idx, val + 4 * self.entry_error() * np.sign(val)

    r = certified_rows_check(N, D, DV, 8, CHUNK, seed=0, random_rows=3, algorithm=Shifted)
    assert r["rows"]["status"] == "pass" and r["emitted"]["status"] == "fail"
