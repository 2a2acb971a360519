"""The three streaming algorithms: exactness of the statistics, linearity of the sketches, state against n."""

from __future__ import annotations

import numpy as np
import pytest

from attnspec.accelerated import polynomial_features as pf
from attnspec.accelerated.streaming_attention import (CountSketch, SeededHashes, SketchedStreaming,
                                                      SufficientStatistics, TiledOnlineSoftmax)
from attnspec.spec.streaming_attention import OnePassStream, reachable_bytes


def data(n, d=3, dv=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, d)), rng.uniform(-1, 1, (n, d)), rng.uniform(-1, 1, (n, dv))


def softmax(q, k, v, s):
    a = np.exp(s * q @ k.T)
    return (a @ v) / a.sum(axis=1, keepdims=True)


def run(cls, q, k, v, kk=4, order="kv_first", chunk=16, **opts):
    n, d = q.shape
    s = cls(n=n, d=d, dv=v.shape[1], k=kk, scale=1 / d, bound=1.0, **opts)
    return s, s.consume(OnePassStream(q, k, v, order, chunk))


def test_statistics_rows_equal_the_dense_polynomial_attention():
    q, k, v = data(200)
    s, _ = run(SufficientStatistics, q, k, v)
    u1 = pf.query_features(q, s.poly, 1 / 3)
    u2 = pf.key_features(k, s.poly)
    dense = (u1 @ u2.T @ v) / (u1 @ u2.T).sum(axis=1, keepdims=True)
    assert np.abs(s.rows(q) - dense).max() < 1e-12
    assert np.abs(s.rows(q) - softmax(q, k, v, 1 / 3)).max() < s.entry_error()


@pytest.mark.parametrize("cls", [SufficientStatistics, TiledOnlineSoftmax])
def test_exact_algorithms_return_the_top_k_of_each_column(cls):
    q, k, v = data(150)
    _, (idx, val) = run(cls, q, k, v, kk=5)
    exact = softmax(q, k, v, 1 / 3)
    for c in range(2):
        top = np.argsort(-np.abs(exact[:, c]))[:5]
        assert set(idx[c].tolist()) == set(top.tolist())
        assert np.abs(val[c] - exact[idx[c], c]).max() < 1e-9


def test_online_softmax_reads_interleaved_tokens():
    q, k, v = data(70)
    _, a = run(TiledOnlineSoftmax, q, k, v, order="interleaved", chunk=9)
    _, b = run(TiledOnlineSoftmax, q, k, v, order="kv_first", chunk=9)
    assert np.array_equal(a[0], b[0]) and np.allclose(a[1], b[1], atol=1e-15)


def test_sketches_are_linear_so_chunking_does_not_matter():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 2))
    whole, parts = CountSketch(5, 4, 2, seed=9), CountSketch(5, 4, 2, seed=9)
    whole.add(np.arange(300), x)
    for a in range(0, 300, 37):
        parts.add(np.arange(a, min(300, a + 37)), x[a:a + 37])
    assert np.allclose(whole.table, parts.table, atol=1e-12)


def test_hashes_come_from_seeds_not_tables():
    h = SeededHashes(7, 5, seed=3)
    b, s = h(np.arange(10**6, 10**6 + 1000))
    assert b.min() >= 0 and b.max() < 32 and set(np.unique(s).tolist()) == {-1.0, 1.0}
    assert reachable_bytes(h) < 2000  # O(rows), whatever range of indices it hashes
    b2, _ = SeededHashes(7, 5, seed=3)(np.arange(10**6, 10**6 + 1000))
    assert np.array_equal(b, b2)


def test_sketch_recovers_planted_heavy_rows():
    q, k, v = data(256, seed=4)
    s = SketchedStreaming(n=256, d=3, dv=2, k=4, scale=1 / 3, bound=1.0, seed=0)
    rows = np.zeros((256, 2))
    rows[[3, 50, 100, 200]] = [[5, -5], [4, 4], [-3, 3], [2, -2]]
    s.take_rows(0, rows)
    idx, val = s.finish()
    assert set(idx[0].tolist()) == {3, 50, 100, 200} and np.allclose(np.sort(np.abs(val[0])), [2, 3, 4, 5])


def state_at(cls, n, **opts):
    q, k, v = data(n, seed=n)
    s = cls(n=n, d=3, dv=2, k=4, scale=1 / 3, bound=1.0, **opts)
    peak = [0]
    stream = OnePassStream(q, k, v, "kv_first", 64, observer=lambda: peak.__setitem__(0, max(peak[0], reachable_bytes(s))))
    s.consume(stream)
    return peak[0]


@pytest.mark.parametrize("cls", [SufficientStatistics, SketchedStreaming])
def test_persistent_state_is_flat_in_n(cls):
    small, big = state_at(cls, 256), state_at(cls, 4096)
    assert big <= 1.1 * small


def test_the_baseline_state_grows_with_n():
    assert state_at(TiledOnlineSoftmax, 4096) > 8 * state_at(TiledOnlineSoftmax, 256)
