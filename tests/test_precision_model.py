"""conformance/precision_model.py: shape of the bound, and empirical soundness.

Soundness is checked the only way that means something: real float64 and float32 computations (naive,
online softmax over key blocks of several sizes, keys in reverse order), judged by the certified verdict
engine against the exact answer, must pass with error/tolerance < 1.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attnspec.conformance.judging.precision_model import UNIT_ROUNDOFF, PrecisionModel, contract_tolerance, softmax_tolerance
from attnspec.conformance.frontends.strategies import softmax_instances
from attnspec.conformance.judging.verdict import PASS, judge
from attnspec.reference.softmax_attention import enclose
from attnspec.spec.softmax_attention import make_instance


def _inst(n=8, d=4, lim=1.0, scale=Fraction(1, 2), dtype="float64", seed=0, v_lim=1.0):
    rng = np.random.default_rng(seed)
    q, k = (rng.uniform(-lim, lim, (n, d)).astype(dtype) for _ in range(2))
    v = rng.uniform(-v_lim, v_lim, (n, d)).astype(dtype)
    return make_instance(q, k, v, scale=scale)


# --------------------------------------------------------------------------- monotonicity


def test_float32_is_looser_than_float64():
    for dtype in ("float32", "float64"):
        inst = _inst(dtype=dtype)
        t64 = softmax_tolerance(inst, PrecisionModel("float64"))
        t32 = softmax_tolerance(inst, PrecisionModel("float32"))
        t16 = softmax_tolerance(inst, PrecisionModel("float16"))
        assert (t32 > t64).all() and (t16 > t32).all()
        if dtype == "float64":
            # The bound is first order in u: the float32/float64 ratio is near 2^29.
            assert 2.0**27 < float((t32 / t64).min()) and float((t32 / t64).max()) < 2.0**31
        else:
            # A float32 case returns float32: a float64 computation still pays the final cast (u = 2^-24),
            # so the float64 model's bound is at least that rounding and well below the float32 model's.
            o = np.abs(enclose(inst).mid())
            assert (t64 >= 2.0**-24 * o).all() and float((t32 / t64).max()) < 2.0**10


def test_tolerance_grows_with_n():
    # Identical rows keep the logit magnitudes and ‖v‖ fixed while n grows.
    tols = []
    for n in (4, 16, 64, 256):
        row = np.array([[0.5, -0.25, 1.0]])
        x = np.repeat(row, n, axis=0)
        tols.append(float(softmax_tolerance(make_instance(x, x, x, scale=1), PrecisionModel("float32")).max()))
    assert all(a < b for a, b in zip(tols, tols[1:]))


def test_tolerance_grows_with_logit_magnitude():
    tols = [float(softmax_tolerance(_inst(scale=Fraction(s)), PrecisionModel("float64")).min()) for s in (1, 10, 100, 1000)]
    assert all(a < b for a, b in zip(tols, tols[1:]))


def test_tolerance_scales_with_value_column_norm():
    a = softmax_tolerance(_inst(v_lim=1.0), PrecisionModel("float64"))
    b = softmax_tolerance(_inst(v_lim=1024.0), PrecisionModel("float64"))  # same rng stream: v×1024
    assert np.allclose(b / a, 1024.0, rtol=1e-6)


def test_vacuous_for_float16_at_large_n():
    # n·u = 4096 · 2^-11 = 2: no relative bound can hold; the tolerance is infinite, not a number.
    x = np.full((4096, 1), 0.5, dtype=np.float16)
    tol = softmax_tolerance(make_instance(x, x, x, scale=1), PrecisionModel("float16"))
    assert np.isinf(tol).all()
    # The same instance is fine for float32 arithmetic.
    assert np.isfinite(softmax_tolerance(make_instance(x, x, x, scale=1), PrecisionModel("float32"))).all()


def test_exact_rounded_mode_is_two_u_times_the_column_norm():
    for fmt in ("float64", "float32"):
        inst = _inst(v_lim=3.0)
        tol = softmax_tolerance(inst, PrecisionModel(fmt, exact_rounded=True))
        u = UNIT_ROUNDOFF[fmt]
        col = np.abs(inst.v).max(axis=0)
        # 2u‖v_{:,l}‖∞ plus the smallest normal (underflow) and a 2^-40 evaluation slack, nothing more.
        assert (tol >= 2 * u * col).all()
        assert (tol <= 2 * u * col * (1 + 2.0**-30) + 2 * 2.0**-126).all()
        assert tol.shape == inst.output_shape
        # …and far tighter than the general model.
        assert (tol < softmax_tolerance(inst, PrecisionModel(fmt))).all()


def test_fewer_rescales_give_a_tighter_bound():
    inst = _inst(n=64)
    full = softmax_tolerance(inst, PrecisionModel("float32"))
    blocked = softmax_tolerance(inst, PrecisionModel("float32", max_rescales=4))
    assert (blocked < full).all()


def test_unknown_format_and_bad_contract():
    with pytest.raises(ValueError, match="unknown arithmetic format"):
        softmax_tolerance(_inst(), PrecisionModel("float8"))
    with pytest.raises(ValueError):
        contract_tolerance(0.0, (2, 2))
    assert (contract_tolerance(0.25, (2, 3)) == 0.25).all()


# --------------------------------------------------------------------------- empirical soundness


def naive(q, k, v, scale, dtype):
    s = dtype(scale)
    logits = s * (q @ k.T)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)) @ v


def online(q, k, v, scale, dtype, block, reverse=False):
    """Online softmax over key blocks (running max, running sum, rescaled accumulator) in ``dtype``."""
    n = k.shape[0]
    order = np.arange(n)[::-1] if reverse else np.arange(n)
    k, v = k[order], v[order]
    s = dtype(scale)
    m = np.full(q.shape[0], -np.inf, dtype=dtype)
    l = np.zeros(q.shape[0], dtype=dtype)
    acc = np.zeros((q.shape[0], v.shape[1]), dtype=dtype)
    for start in range(0, n, block):
        logits = s * (q @ k[start:start + block].T)
        m_new = np.maximum(m, logits.max(axis=1))
        factor = np.exp(m - m_new)
        p = np.exp(logits - m_new[:, None])
        l = l * factor + p.sum(axis=1, dtype=dtype)
        acc = acc * factor[:, None] + p @ v[start:start + block]
        m = m_new
    return acc / l[:, None]


METHODS = {
    "naive": naive,
    "online1": lambda *a: online(*a, block=1),
    "online3": lambda *a: online(*a, block=3),
    "online16": lambda *a: online(*a, block=16),
    "reversed": lambda *a: online(*a, block=1, reverse=True),
    "naive_reversed": lambda q, k, v, s, dt: naive(q, k[::-1], v[::-1], s, dt),
}


def _assert_sound(inst, dtype_name):
    dtype = np.dtype(dtype_name).type
    tol = softmax_tolerance(inst, PrecisionModel(dtype_name))
    assert np.isfinite(tol).all()
    enc = lambda prec: enclose(inst, prec)  # noqa: E731
    q, k, v = (np.asarray(x, dtype=dtype) for x in (inst.q, inst.k, inst.v))
    assert float(dtype(float(inst.scale))) == float(inst.scale)  # the scale is exact in the dtype
    for name, method in METHODS.items():
        with np.errstate(under="ignore"):
            out = method(q, k, v, float(inst.scale), dtype)
        assert out.dtype == np.dtype(dtype_name), name
        verdict = judge(out, enc, tol)
        assert verdict.status == PASS, (name, verdict.message, verdict.evidence)
        assert verdict.evidence["ratio"] < 1, name


@settings(max_examples=12)
@given(softmax_instances(max_n=24, max_d=6, dtype="float64"))
def test_float64_computations_are_within_the_model(inst):
    _assert_sound(inst, "float64")


@settings(max_examples=12)
@given(softmax_instances(max_n=24, max_d=6, dtype="float32"))
def test_float32_computations_are_within_the_model(inst):
    _assert_sound(inst, "float32")


def _large_logits(n, d, target, dtype, seed):
    rng = np.random.default_rng(seed)
    q = np.sign(rng.uniform(-1, 1, (n, d))) * target
    k = rng.uniform(-1, 1, (n, d))
    k /= np.abs(k).sum(axis=1, keepdims=True)  # |logit| ≤ target
    v = rng.uniform(-2, 2, (n, d))
    return make_instance(*(x.astype(dtype) for x in (q, k, v)), scale=1)


def _near_ties(n, d, dtype, seed, apart):
    rng = np.random.default_rng(seed)
    q = rng.uniform(-1, 1, (n, d)) * 200
    k = rng.uniform(-1, 1, (n, d))
    k[1] = k[0]
    if apart:
        k[1, 0] = np.nextafter(np.asarray(k[0, 0], dtype=dtype), np.asarray(np.inf, dtype=dtype))
    v = rng.uniform(-1, 1, (n, d))
    return make_instance(*(x.astype(dtype) for x in (q, k, v)), scale=Fraction(1, 8))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("target", [1000.0, 300.0])
def test_large_logits_within_the_model(dtype, target):
    _assert_sound(_large_logits(20, 3, target, dtype, seed=int(target)), dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("apart", [False, True])
def test_near_ties_within_the_model(dtype, apart):
    _assert_sound(_near_ties(17, 4, dtype, seed=3, apart=apart), dtype)


@given(st.integers(1, 40), st.integers(1, 8), st.sampled_from([Fraction(1, 8), Fraction(1), Fraction(4)]), st.integers(0, 2**16))
@settings(max_examples=10)
def test_random_sizes_float32(n, d, scale, seed):
    _assert_sound(_inst(n=n, d=d, lim=2.0, scale=scale, dtype="float32", seed=seed), "float32")
