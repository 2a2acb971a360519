"""Accelerated dynamic attention: every structure against float64 brute force, rebuild bookkeeping,
overflow and cancellation handling, validation. (Certified checks are in test_dynamic_conformance.)"""

import math

import numpy as np
import pytest

from attnspec.accelerated.dynamic_attention import (
    HEADROOM,
    EagerDynamicAttention,
    LazyDynamicAttention,
    LazyRecomputeDynamicAttention,
    WorstCaseDynamicAttention,
)
from attnspec.spec.validation import SpecError

STRUCTS = {
    "eager": lambda norm: EagerDynamicAttention(norm),
    "lazy_recompute": lambda norm: LazyRecomputeDynamicAttention(norm),
    "lazy_tau_0.3": lambda norm: LazyDynamicAttention(norm, tau=0.3),
    "lazy_tau_0.6": lambda norm: LazyDynamicAttention(norm, tau=0.6),
    "worst_case_tau_0.5": lambda norm: WorstCaseDynamicAttention(norm, tau=0.5),
}


def brute(q, k, v, s, normalised):
    logits = s * (q @ k.T)
    if normalised:
        w = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (w @ v) / w.sum(axis=1, keepdims=True)
    return np.exp(logits) @ v


def drive(struct, rng, q, k, v, s, steps, *, p_k=0.4, p_v=0.3, delta=1.0, same_entry=False):
    """Random interleaved trace; returns the worst error of a query relative to max(|x|, ‖row‖)."""
    struct.init(q, k, v, s)
    k, v = k.copy(), v.copy()
    worst = 0.0
    n, d = k.shape
    for t in range(steps):
        r = rng.random()
        if r < p_k:
            i, j = (0, 0) if same_entry else (int(rng.integers(n)), int(rng.integers(d)))
            dl = float(rng.uniform(-delta, delta))
            k[i, j] += dl
            struct.update_k(i, j, dl)
        elif r < p_k + p_v:
            i, j = (0, 0) if same_entry else (int(rng.integers(n)), int(rng.integers(v.shape[1])))
            dl = float(rng.uniform(-delta, delta))
            v[i, j] += dl
            struct.update_v(i, j, dl)
        else:
            i, j = int(rng.integers(q.shape[0])), int(rng.integers(v.shape[1]))
            x = brute(q, k, v, s, struct.normalised)
            y = struct.query(i, j)
            worst = max(worst, abs(y - x[i, j]) / max(abs(x[i, j]), np.abs(x[i]).max(), 1e-300))
    return worst


@pytest.mark.parametrize("normalised", [True, False])
@pytest.mark.parametrize("name", list(STRUCTS))
def test_structures_agree_with_brute_force(name, normalised):
    rng = np.random.default_rng(42)
    m, n, d, dv = 40, 48, 12, 6
    q, k, v = rng.uniform(-1, 1, (m, d)), rng.uniform(-1, 1, (n, d)), rng.uniform(-1, 1, (n, dv))
    # 1e-10 relative: the digest's differential bound; the float error here is ~1e-14.
    assert drive(STRUCTS[name](normalised), rng, q, k, v, 0.3, 300) < 1e-10
    assert drive(STRUCTS[name](normalised), rng, q, k, v, 0.3, 150, same_entry=True) < 1e-10


@pytest.mark.parametrize("normalised", [True, False])
@pytest.mark.parametrize("name", list(STRUCTS))
def test_only_value_updates_and_only_key_updates(name, normalised):
    rng = np.random.default_rng(3)
    q, k, v = rng.uniform(-1, 1, (9, 4)), rng.uniform(-1, 1, (16, 4)), rng.uniform(-1, 1, (16, 3))
    assert drive(STRUCTS[name](normalised), rng, q, k, v, 1.0, 120, p_k=0.0, p_v=0.7) < 1e-10
    assert drive(STRUCTS[name](normalised), rng, q, k, v, 1.0, 120, p_k=0.7, p_v=0.0) < 1e-10


def test_rebuild_fires_every_period_updates():
    s = LazyDynamicAttention(True, tau=0.5)
    rng = np.random.default_rng(0)
    s.init(rng.normal(size=(5, 3)), rng.normal(size=(100, 3)), rng.normal(size=(100, 2)))
    assert s.rebuild_period == 10  # ⌈100^0.5⌉
    for t in range(1, 36):
        (s.update_k if t % 2 else s.update_v)(t % 100, t % 2, 0.25)
        assert s.rebuilds == t // 10 and s.pending_updates == t % 10


def test_worst_case_spreads_the_rebuild_over_the_next_period():
    s = WorstCaseDynamicAttention(True, period=4)
    rng = np.random.default_rng(1)
    q, k, v = rng.normal(size=(10, 3)), rng.normal(size=(8, 3)), rng.normal(size=(8, 2))
    s.init(q, k, v)
    for t in range(4):
        s.update_k(t, 0, 0.5)
        k[t, 0] += 0.5
    assert s._batch is not None and s._batch.done == 0 and s.rebuilds == 0
    for t in range(4):
        s.update_v(t, 1, -0.5)
        v[t, 1] -= 0.5
        if t < 3:
            assert s._batch.done == 3 * (t + 1)  # ⌈10/4⌉ rows per update
        else:  # the 4th update finished the batch and froze the next one
            assert s.rebuilds == 1 and s._batch.done == 0 and set(s._batch.vrows) == {0, 1, 2, 3}
        x = brute(q, k, v, 1.0, True)
        for i in range(10):  # rows on both sides of the half-finished rebuild
            assert abs(s.query(i, 1) - x[i, 1]) < 1e-12


@pytest.mark.parametrize("normalised", [True, False])
@pytest.mark.parametrize("name", list(STRUCTS))
def test_key_update_raising_a_row_max_far_above_its_shift(name, normalised):
    # ODAMV: logits ±1000 and a key jumping by +800; OAMV: logits kept below 700 so AV is finite.
    big = 1000.0 if normalised else 300.0
    jump = 800.0 if normalised else 350.0
    q = np.array([[1.0], [-1.0], [0.5]])
    k = np.array([[big], [-big], [0.0], [big / 2]])
    v = np.array([[1.0, -1.0], [2.0, 0.5], [3.0, 0.0], [-4.0, 1.0]])
    s = STRUCTS[name](normalised)
    s.init(q, k, v)
    kk = k.copy()
    for _ in range(3):
        s.update_k(2, 0, jump / 3)
        kk[2, 0] += jump / 3
        x = brute(q, kk, v, 1.0, normalised)
        for i in range(3):
            for j in range(2):
                y = s.query(i, j)
                assert math.isfinite(y)
                assert abs(y - x[i, j]) <= 1e-12 * max(abs(x[i, j]), np.abs(x[i]).max())
    assert jump / 3 > HEADROOM  # the test really crosses the rescaling threshold


@pytest.mark.parametrize("name", list(STRUCTS))
def test_removing_a_dominant_key_does_not_cancel_the_normaliser(name):
    q = np.array([[1.0]])
    k = np.array([[40.0], [0.0], [0.5]])
    v = np.array([[100.0], [1.0], [2.0]])
    s = STRUCTS[name](True)
    s.init(q, k, v)
    s.update_k(0, 0, -80.0)  # the weight e^40 leaves; D keeps only ~e^0.5 + 1
    kk = k.copy()
    kk[0, 0] -= 80.0
    x = brute(q, kk, v, 1.0, True)[0, 0]
    for _ in range(3):  # also after a rebuild has folded the update in
        assert abs(s.query(0, 0) - x) <= 1e-12 * abs(x)
        s.update_v(2, 0, 0.0)


@pytest.mark.parametrize("name", list(STRUCTS))
def test_validation(name):
    s = STRUCTS[name](True)
    with pytest.raises(SpecError, match="before init"):
        s.query(0, 0)
    with pytest.raises(SpecError, match="same number of rows"):
        s.init(np.ones((2, 2)), np.ones((3, 2)), np.ones((2, 1)))
    s.init(np.ones((2, 2)), np.ones((3, 2)), np.ones((3, 1)))
    with pytest.raises(SpecError, match="out of range"):
        s.update_k(3, 0, 1.0)
    with pytest.raises(SpecError, match="out of range"):
        s.query(0, 1)
    with pytest.raises(SpecError, match="finite"):
        s.update_v(0, 0, float("nan"))
    with pytest.raises(SpecError, match="integer index"):
        s.update_k(0.5, 0, 1.0)


def test_tau_is_validated():
    with pytest.raises(SpecError, match="tau"):
        LazyDynamicAttention(True, tau=0.0)
    with pytest.raises(SpecError, match="period"):
        LazyDynamicAttention(True, period=0)


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(STRUCTS))
def test_cupy_matches_numpy(name):
    import cupy

    rng = np.random.default_rng(5)
    q, k, v = rng.uniform(-1, 1, (30, 8)), rng.uniform(-1, 1, (40, 8)), rng.uniform(-1, 1, (40, 4))
    a, b = STRUCTS[name](True), STRUCTS[name](True)
    a.init(q, k, v, 0.5)
    b.init(cupy.asarray(q), cupy.asarray(k), cupy.asarray(v), 0.5)
    for t in range(60):
        i, j = t % 40, t % 4
        (a.update_k if t % 3 else a.update_v)(i, j, 0.1 * (t % 7 - 3))
        (b.update_k if t % 3 else b.update_v)(i, j, 0.1 * (t % 7 - 3))
        assert abs(a.query(t % 30, j) - b.query(t % 30, j)) < 1e-12


def test_device_argument_places_the_state():
    rng = np.random.default_rng(11)
    q, k, v = rng.uniform(-1, 1, (4, 3)), rng.uniform(-1, 1, (5, 3)), rng.uniform(-1, 1, (5, 2))
    a, b = LazyDynamicAttention(True, tau=0.5, device="cpu"), LazyDynamicAttention(True, tau=0.5)
    for s in (a, b):
        s.init(q, k, v, 0.5)
        s.update_k(1, 2, 0.25)
    assert a.query(3, 1) == b.query(3, 1) and isinstance(a.k, np.ndarray)
    with pytest.raises(SpecError, match="unknown device"):
        LazyDynamicAttention(True, device="tpu").init(q, k, v, 0.5)


@pytest.mark.gpu
def test_cuda_device_takes_numpy_inputs():
    import cupy

    rng = np.random.default_rng(12)
    q, k, v = rng.uniform(-1, 1, (6, 3)), rng.uniform(-1, 1, (7, 3)), rng.uniform(-1, 1, (7, 2))
    on_gpu, on_cpu = LazyDynamicAttention(True, device="cuda"), LazyDynamicAttention(True)
    for s in (on_gpu, on_cpu):
        s.init(q, k, v, 0.5)
        s.update_v(2, 1, -0.125)
    assert isinstance(on_gpu.k, cupy.ndarray)
    assert abs(on_gpu.query(5, 1) - on_cpu.query(5, 1)) < 1e-14
