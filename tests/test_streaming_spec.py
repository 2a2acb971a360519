"""The streaming model: orders, the one-pass stream, the state measurement, the output format."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from attnspec.spec.streaming_attention import (Guarantee, OnePassStream, SecondPassError, chunks_of,
                                               make_streaming_instance, reachable_bytes, validate_columns)
from attnspec.spec.validation import SpecError

RNG = np.random.default_rng(3)
Q, K, V = RNG.uniform(-1, 1, (10, 2)), RNG.uniform(-1, 1, (10, 2)), RNG.uniform(-1, 1, (10, 3))


def test_kv_first_sends_every_key_before_any_query():
    kinds = [(c.kind, c.start, c.size) for c in chunks_of(Q, K, V, "kv_first", 4)]
    assert kinds == [("kv", 0, 4), ("kv", 4, 4), ("kv", 8, 2), ("q", 0, 4), ("q", 4, 4), ("q", 8, 2)]


def test_interleaved_sends_whole_tokens_in_order():
    chunks = list(chunks_of(Q, K, V, "interleaved", 3))
    assert [c.kind for c in chunks] == ["token"] * 4
    assert np.array_equal(np.concatenate([c.q for c in chunks]), Q)
    assert np.array_equal(np.concatenate([c.v for c in chunks]), V)


def test_the_stream_can_be_consumed_once_and_remembers_a_second_attempt():
    s = OnePassStream(Q, K, V, "kv_first", 4)
    assert len(list(s)) == 6
    with pytest.raises(SecondPassError):
        iter(s)
    assert s.second_pass_attempted


def test_the_observer_runs_between_chunks_and_at_the_end():
    calls = []
    s = OnePassStream(Q, K, V, "kv_first", 5, observer=lambda: calls.append(1))
    n = sum(1 for _ in s)
    assert n == 4 and len(calls) == 4  # between the 4 chunks (3) and after the last one


def test_chunks_are_fresh_copies():
    c = next(iter(OnePassStream(Q, K, V, "kv_first", 4)))
    c.k[0, 0] = 99.0
    assert K[0, 0] != 99.0


class Holder:
    def __init__(self, n):
        self.small = np.zeros(8)
        self.table = {i: float(i) for i in range(n)}


def test_reachable_bytes_counts_a_hidden_table_of_size_n():
    assert reachable_bytes(Holder(10_000)) > 50 * reachable_bytes(Holder(10))


def test_reachable_bytes_counts_array_buffers_and_views_once():
    big = np.zeros(100_000)

    class H:
        pass

    h = H()
    h.a, h.b = big, big[10:20]
    assert 800_000 <= reachable_bytes(h) < 802_000


def test_output_format_is_checked():
    idx, val = validate_columns(np.array([[0, 1], [2, 3]]), np.zeros((2, 2)), n=4, dv=2, k=2)
    assert idx.dtype == np.int64 and val.dtype == np.float64
    for bad_idx, bad_val, what in [(np.array([[0, 0], [1, 2]]), np.zeros((2, 2)), "repeats"),
                                   (np.array([[0, 4], [1, 2]]), np.zeros((2, 2)), "lie in"),
                                   (np.array([[0, 1], [1, 2]]), np.full((2, 2), np.nan), "finite"),
                                   (np.zeros((2, 2)), np.zeros((2, 2)), "integers"),
                                   (np.array([[0, 1]]), np.zeros((1, 2)), "d_v×k")]:
        with pytest.raises(SpecError, match=what):
            validate_columns(bad_idx, bad_val, n=4, dv=2, k=2)


def test_instances_and_guarantees_are_validated():
    inst = make_streaming_instance(Q, K, V, scale=Fraction(1, 2), sparsity=3, order="interleaved", chunk=4)
    assert (inst.n, inst.d, inst.dv, inst.k) == (10, 2, 3, 3)
    with pytest.raises(SpecError):
        make_streaming_instance(Q, K, V, scale=1, sparsity=11)
    with pytest.raises(SpecError):
        make_streaming_instance(Q, K, V, scale=1, sparsity=2, order="queries_first")
    with pytest.raises(SpecError):
        Guarantee(0.1, 0.0, 1.0)
    with pytest.raises(SpecError):
        Guarantee(-1.0, 0.0, 0.1)
