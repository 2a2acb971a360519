"""The accelerated softmax attention (blocked online softmax) against the certified reference.

Tolerance (forward-error argument) — :func:`forward_error_bound`. Arithmetic with unit roundoff u
(2⁻⁵³ float64, 2⁻²⁴ float32), γ_k = k·u/(1 − k·u), R = rescale_count(n, block) = ceil(n/block) − 1.
Row i, S_i = |s|·max_j Σ_t |q_it||k_jt| bounds every logit.

1. Logits: s is cast to the format (1 rounding), s·Q (1 rounding), a d-term dot product (any order,
   FMA or not): |L̂_ij − L_ij| ≤ γ_{d+2}·S_i =: Δ_i.
2. Weights ŵ_j = exp(L̂_j − m)·Π rescale factors, m the final row max (telescoping: the product of
   exp(m_b − m_{b+1}) over later blocks turns the block's shift into m exactly in exact arithmetic).
   Errors: the logit error (factor e^{±Δ}); R + 1 float subtractions inside exp arguments, each with
   absolute error ≤ u·W_i, W_i = 2(S_i + Δ_i) (both operands lie in [−S_i−Δ_i, S_i+Δ_i]); R + 1 exp
   calls of relative error ≤ 2·c·u (c ulps, 1 ulp ≤ 2u relative); R multiplications by the rescale
   factor (relative u). So ŵ_j = w_j(1 + ε_j) with
       log(1 + |ε_j|) ≤ Δ_i + (R+1)·u·W_i + (R+1)·log(1 + 2cu) + R·log(1 + u) =: log(1 + α_i).
   c = EXP_ULPS = 4: numpy's exp measured here at ≤ 0.65 ulp (float64) and ≤ 2.09 ulp (float32) over
   20 000 random arguments in the used range; CUDA documents ≤ 1 ulp (exp) and ≤ 2 ulp (expf). 4 covers
   both with margin; it is an assumption about the library, stated, not a fitted factor.
3. N = Σ ŵ_j·[v_j | 1]: each term rounded once as a product, then at most (block − 1) + R additions
   (in-block dot product, then one acc addition per later block): relative perturbation of every term
   ≤ γ_{n+R+1}. With β_i = (1 + α_i)(1 + γ_{n+R+1}) − 1, numerator N̂_l = N_l + E, |E| ≤ β_i‖v_l‖∞·D_i,
   and D̂ = D(1 + ρ), |ρ| ≤ β_i. Then |N̂/D̂ − N/D| = |E − N_l·ρ| / (D(1+ρ)) ≤ 2β_i‖v_l‖∞/(1 − β_i),
   since |N_l| ≤ ‖v_l‖∞·D. The final division adds a relative u of a value ≤ ‖v_l‖∞(1 + that).
4. Underflow (weights below the format's smallest normal λ, subnormal products): absolute errors
   ≤ λ per operation on an entry: (2n + 2R + 4)·λ·(‖v_l‖∞ + 1).

    τ_il = ‖v_l‖∞·[2β_i/(1−β_i) + u(1 + 2β_i/(1−β_i))] + (2n + 2R + 4)·λ·(‖v_l‖∞ + 1)

evaluated in float64 and inflated by (1 + 2⁻⁴⁰) for its own rounding. A case where β_i ≥ 1/2 would be
vacuous; the strategies keep S_i small enough that it never is (asserted).
"""

from __future__ import annotations

import math
import os
import tracemalloc
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attnspec.accelerated import softmax_attention as acc_mod
from attnspec.accelerated.array_namespace import namespace_for, to_numpy
from attnspec.accelerated.softmax_attention import default_block_size, rescale_count, softmax_attention
from attnspec.conformance.judging.verdict import judge
from attnspec.reference.softmax_attention import enclose
from attnspec.spec.softmax_attention import make_instance
from attnspec.spec.validation import SpecError

UNIT = {np.dtype(np.float64): 2.0**-53, np.dtype(np.float32): 2.0**-24}
SMALLEST_NORMAL = {np.dtype(np.float64): 2.0**-1022, np.dtype(np.float32): 2.0**-126}
EXP_ULPS = 4


def _gamma(k: int, u: float) -> float:
    return k * u / (1 - k * u)


def forward_error_bound(q, k, v, scale, block_size, dtype) -> np.ndarray:
    """Per-entry bound τ_il on |computed − exact| (derivation in the module docstring)."""
    dtype = np.dtype(dtype)
    u, lam = UNIT[dtype], SMALLEST_NORMAL[dtype]
    q64, k64, v64 = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    n, d = q64.shape
    r = rescale_count(n, block_size)
    # |q||k|ᵀ in float64 has relative error ≤ γ_d(2⁻⁵³); the inflation dominates it for d < 2¹².
    s_row = abs(float(scale)) * (np.abs(q64) @ np.abs(k64).T).max(axis=1) * (1 + (d + 2) * 2.0**-52)
    delta = _gamma(d + 2, u) * s_row
    w = 2 * (s_row + delta)
    log_alpha = delta + (r + 1) * u * w + (r + 1) * math.log1p(2 * EXP_ULPS * u) + r * math.log1p(u)
    beta = (1 + np.expm1(log_alpha)) * (1 + _gamma(n + r + 1, u)) - 1
    assert np.all(beta < 0.5), "test instance too ill-conditioned for a meaningful bound"
    rel = 2 * beta / (1 - beta)
    col = np.abs(v64).max(axis=0)
    tol = col[None, :] * (rel + u * (1 + rel))[:, None] + (2 * n + 2 * r + 4) * lam * (col[None, :] + 1)
    return tol * (1 + 2.0**-40)


def plain_softmax_attention(q, k, v, scale) -> np.ndarray:
    """The textbook float64 formula: shift by the row max, exp, normalise (n×n in memory)."""
    logits = float(scale) * (np.asarray(q, np.float64) @ np.asarray(k, np.float64).T)
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (w @ np.asarray(v, np.float64)) / w.sum(axis=1, keepdims=True)


def random_inputs(seed, n, d, dv, dtype, magnitude=1.0):
    rng = np.random.default_rng(seed)
    q = (magnitude * rng.standard_normal((n, d))).astype(dtype)
    k = (magnitude * rng.standard_normal((n, d))).astype(dtype)
    v = rng.standard_normal((n, dv)).astype(dtype)
    return q, k, v


def assert_certified(out, q, k, v, scale, block_size):
    """judge() says pass: every entry's certified error upper bound is within the derived τ."""
    inst = make_instance(q, k, v, scale=Fraction(float(scale)))
    tol = forward_error_bound(q, k, v, scale, block_size, out.dtype)
    verdict = judge(np.asarray(out, dtype=np.float64), lambda p: enclose(inst, p), tol)
    assert verdict.status == "pass", (verdict.message, verdict.evidence)


# Scales chosen so that logits span 0, small, moderate and huge (|s·⟨q,k⟩| up to several thousand).
SCALES = [0.0, 0.125, 1.0, -3.0, 50.0, -200.0]


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 23),
    d=st.integers(1, 7),
    dv=st.integers(1, 5),
    block_extra=st.integers(-30, 5),
    scale=st.sampled_from(SCALES),
    dtype=st.sampled_from([np.float64, np.float32]),
)
def test_matches_certified_reference(seed, n, d, dv, block_extra, scale, dtype):
    """Random shapes (n, d not multiples of the block), blocks from 1 to > n, any logit range."""
    block = max(1, n + block_extra) if block_extra > -30 else 1
    q, k, v = random_inputs(seed, n, d, dv, dtype)
    out = softmax_attention(q, k, v, scale=scale, block_size=block)
    assert out.dtype == np.dtype(dtype) and out.shape == (n, dv)
    assert_certified(out, q, k, v, scale, block)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("block", [1, 3, 7, 16, 64])
def test_huge_logits(dtype, block):
    """Logits of ±1000 and row ranges of ~2000: exp would overflow without the running max."""
    n, d = 19, 3
    q, k, v = random_inputs(7, n, d, 4, dtype)
    q[:, 0], k[:, 0] = dtype(1.0), dtype(0.0)
    k[::2, 0], k[1::2, 0] = dtype(1000.0), dtype(-1000.0)  # logit ≈ ±1000 + O(1)
    with np.errstate(over="ignore", invalid="ignore"):
        naive = np.exp(q.astype(np.float64) @ k.astype(np.float64).T)
    assert not np.all(np.isfinite(naive)), "instance must overflow an unshifted exp"
    out = softmax_attention(q, k, v, scale=1.0, block_size=block)
    assert np.all(np.isfinite(out))
    assert_certified(out, q, k, v, 1.0, block)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_constant_rows_and_zero_scale_give_the_mean(dtype):
    """Equal logits in a row (identical keys, or scale 0) give the mean of V, certified."""
    n, d = 13, 4
    q, k, v = random_inputs(3, n, d, 3, dtype)
    k_const = np.repeat(k[:1], n, axis=0)
    for q_, k_, s in ((q, k_const, 0.7), (q, k, 0.0), (q, k, -0.0)):
        out = softmax_attention(q_, k_, v, scale=s, block_size=5)
        assert_certified(out, q_, k_, v, s, 5)
        mean = v.astype(np.float64).mean(axis=0)
        assert np.allclose(out, np.broadcast_to(mean, out.shape), rtol=0, atol=float(forward_error_bound(q_, k_, v, s, 5, dtype).max()) + 2 * UNIT[np.dtype(dtype)] * float(np.abs(mean).max()))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_single_key_is_exact(dtype):
    """n = 1: the only weight is exp(0) = 1 and D = 1, so the output is V itself, bit for bit."""
    q, k, v = random_inputs(5, 1, 6, 4, dtype, magnitude=30.0)
    out = softmax_attention(q, k, v, scale=1000.0)
    assert out.dtype == np.dtype(dtype)
    assert np.array_equal(out, v)


@pytest.mark.parametrize("block", [1, 2, 5, 9, 10, 11, 500])
def test_d_equal_one(block):
    q, k, v = random_inputs(11, 10, 1, 1, np.float64, magnitude=4.0)
    out = softmax_attention(q, k, v, scale=0.5, block_size=block)
    assert_certified(out, q, k, v, 0.5, block)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("block", [1, 37, 128, 300, None])
def test_matches_plain_float64_formula(dtype, block):
    """Larger n than the certified tests: |ours − plain| ≤ τ_ours + τ_plain (both bound the distance
    to the same exact value; the plain formula is the one-block float64 case, R = 0)."""
    n, d, dv = 300, 17, 5
    q, k, v = random_inputs(13, n, d, dv, dtype, magnitude=1.5)
    out = softmax_attention(q, k, v, scale=0.25, block_size=block)
    plain = plain_softmax_attention(q, k, v, 0.25)
    tol = forward_error_bound(q, k, v, 0.25, block, dtype) + forward_error_bound(q, k, v, 0.25, n, np.float64)
    assert np.all(np.abs(out.astype(np.float64) - plain) <= tol)


def test_precision_model_covers_the_implementation():
    """The conformance precision model, told our rescale count, accepts our output (float32 case,
    where the model is tightest), with exp accuracy EXP_ULPS."""
    from attnspec.conformance.judging.precision_model import PrecisionModel, softmax_tolerance

    n, block = 40, 6
    q, k, v = random_inputs(17, n, 5, 3, np.float32, magnitude=2.0)
    out = softmax_attention(q, k, v, scale=3.0, block_size=block)
    inst = make_instance(q, k, v, scale=Fraction(3))
    tol = softmax_tolerance(inst, PrecisionModel("float32", exp_ulps=EXP_ULPS, max_rescales=rescale_count(n, block)))
    verdict = judge(out.astype(np.float64), lambda p: enclose(inst, p), tol)
    assert verdict.status == "pass", verdict.message


def test_rescale_count():
    """ceil(n/b) − 1: one rescale per later key block; a block ≥ n means no rescaling."""
    for n in (1, 2, 7, 64, 1000):
        for b in (1, 2, 3, 7, 64, n, n + 1, 10 * n):
            blocks = len(range(0, n, min(b, n)))
            assert rescale_count(n, b) == blocks - 1
    assert rescale_count(10**6) == math.ceil(10**6 / default_block_size(10**6)) - 1
    with pytest.raises(SpecError):
        rescale_count(10, 0)


def test_torch_tensors_in_torch_tensors_out():
    torch = pytest.importorskip("torch")
    q, k, v = random_inputs(19, 21, 4, 3, np.float64, magnitude=3.0)
    out = softmax_attention(*(torch.from_numpy(x) for x in (q, k, v)), scale=0.5, block_size=4)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    assert_certified(to_numpy(out), q, k, v, 0.5, 4)


def test_memory_is_linear_in_n():
    """Peak allocation: the logit tile plus O(n·dv) arrays, far below the n² of A (counted exactly
    from the arrays the code allocates: s·Q, [V|1], out, and per worker thread its tile, acc and its
    block contribution, the row maxima, and the output quotient's temporaries; 64 KiB per worker for
    Python objects)."""
    n, d, dv = 4096, 16, 16
    q, k, v = random_inputs(23, n, d, dv, np.float64)
    kb = default_block_size(n)
    rb = max(1, min(n, acc_mod.TILE_ELEMENTS // kb))
    softmax_attention(q, k, v, scale=0.25)  # warm-up: the thread pool and threadpoolctl's scan are made once
    tracemalloc.start()
    try:
        softmax_attention(q, k, v, scale=0.25)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    workers = acc_mod._cpu_workers(np, n, rb)  # each worker thread has its own tile and accumulators
    numbers = n * d + n * (dv + 1) + n * dv + workers * (rb * kb + 3 * rb * (dv + 1) + 4 * rb + 2 * rb * dv)
    assert peak <= 8 * numbers + 65536 * workers
    assert peak < n * n * 8 // 4


BAD_SHAPES = [
    ((5,), (5, 2), (5, 2), "2-D"),
    ((5, 2, 1), (5, 2), (5, 2), "2-D"),
    ((0, 2), (0, 2), (0, 2), "at least one"),
    ((5, 2), (5, 3), (5, 2), "same shape"),
    ((5, 2), (4, 2), (5, 2), "same shape"),
    ((5, 2), (5, 2), (4, 2), "same number of rows"),
]


@pytest.mark.parametrize("qs, ks, vs, words", BAD_SHAPES)
def test_bad_shapes_raise(qs, ks, vs, words):
    q, k, v = (np.ones(s) for s in (qs, ks, vs))
    with pytest.raises(SpecError, match=words):
        softmax_attention(q, k, v, scale=1.0)


@pytest.mark.parametrize("dtypes", [(np.int64,) * 3, (np.float16,) * 3, (np.complex128,) * 3, (np.float32, np.float64, np.float64)])
def test_bad_dtypes_raise(dtypes):
    q, k, v = (np.ones((4, 3), dtype=t) for t in dtypes)
    with pytest.raises(SpecError, match="dtype"):
        softmax_attention(q, k, v, scale=1.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("which", [0, 1, 2])
def test_non_finite_entries_raise(bad, which):
    arrays = [np.ones((4, 3)) for _ in range(3)]
    arrays[which][2, 1] = bad
    with pytest.raises(SpecError, match="non-finite"):
        softmax_attention(*arrays, scale=1.0)


@pytest.mark.parametrize("scale", [np.nan, np.inf, -np.inf, "1", None, True, 1j, Fraction(10) ** 400, np.ones(2)])
def test_bad_scale_raises(scale):
    q = np.ones((4, 3))
    with pytest.raises(SpecError, match="scale"):
        softmax_attention(q, q, q, scale=scale)


@pytest.mark.parametrize("block", [0, -1, True, 2.5, "8"])
def test_bad_block_size_raises(block):
    q = np.ones((4, 3))
    with pytest.raises(SpecError, match="block_size"):
        softmax_attention(q, q, q, scale=1.0, block_size=block)


def test_mixed_libraries_raise():
    torch = pytest.importorskip("torch")
    q = np.ones((4, 3))
    with pytest.raises(SpecError, match="one array library"):
        softmax_attention(q, torch.ones((4, 3), dtype=torch.float64), q, scale=1.0)


def test_exact_scale_types_accepted():
    """Fractions, ints and 0-d arrays are real scales (cast to the input format)."""
    q, k, v = random_inputs(29, 6, 2, 2, np.float64)
    ref = softmax_attention(q, k, v, scale=0.5)
    for s in (Fraction(1, 2), np.float64(0.5), np.array(0.5), np.float32(0.5)):
        assert np.array_equal(softmax_attention(q, k, v, scale=s), ref)


def test_namespace_for():
    assert namespace_for("cpu") is np
    with pytest.raises(SpecError, match="unknown device"):
        namespace_for("tpu")


@pytest.mark.gpu
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 23),
    d=st.integers(1, 7),
    dv=st.integers(1, 5),
    block=st.integers(1, 30),
    scale=st.sampled_from(SCALES),
    dtype=st.sampled_from([np.float64, np.float32]),
)
def test_cupy_matches_certified_reference(seed, n, d, dv, block, scale, dtype):
    cp = namespace_for("cuda")
    q, k, v = random_inputs(seed, n, d, dv, dtype)
    out = softmax_attention(cp.asarray(q), cp.asarray(k), cp.asarray(v), scale=scale, block_size=block)
    assert isinstance(out, cp.ndarray) and out.dtype == np.dtype(dtype)
    assert_certified(to_numpy(out), q, k, v, scale, block)


def test_threaded_row_ranges_give_the_serial_bits(monkeypatch):
    """Large numpy inputs run contiguous row ranges on worker threads: the same row blocks, so the very
    same bits as the serial path (with or without a row range ending mid-block)."""
    n, d, dv = 1031, 8, 5  # n prime: the last row block is partial
    q, k, v = random_inputs(29, n, d, dv, np.float64)
    monkeypatch.setattr(acc_mod, "PARALLEL_MIN_ELEMENTS", 1)
    monkeypatch.setattr(acc_mod, "TILE_ELEMENTS", 64 * 256)  # several row blocks per worker
    if acc_mod._blas_controller() is None:
        pytest.skip("threadpoolctl is not installed: the numpy path stays serial")
    calls = []
    real_pool = acc_mod._pool
    monkeypatch.setattr(acc_mod, "_pool", lambda w: calls.append(w) or real_pool(w))
    threaded = softmax_attention(q, k, v, scale=0.5, block_size=256)
    monkeypatch.setattr(acc_mod, "PARALLEL_MIN_ELEMENTS", 1 << 62)
    serial = softmax_attention(q, k, v, scale=0.5, block_size=256)
    if os.cpu_count() and len(os.sched_getaffinity(0)) > 1:
        assert calls and calls[0] > 1
    assert np.array_equal(threaded, serial)
