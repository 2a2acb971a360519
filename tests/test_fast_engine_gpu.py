"""The fast engine's checks rerun on CuPy (cuBLAS pinned to pedantic math): skipped without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture
def on_cupy(monkeypatch):
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA GPU")
    except Exception as exc:  # driver missing
        pytest.skip(f"CUDA unusable: {exc}")
    import test_fast_engine as t

    monkeypatch.setattr(t, "XP", cupy)
    return t, cupy


@pytest.mark.parametrize("name", ["test_fast_softmax_overlaps_arb_on_1000_instances", "test_radii_small_on_ordinary_instances",
                                  "test_huge_logits_are_sound_and_unbounded_only_there", "test_rows_subset_agrees_with_full",
                                  "test_rational_inputs_and_scales", "test_trust_libm_exp_is_declared"])
def test_same_checks_on_cupy(on_cupy, name):
    t, _ = on_cupy
    getattr(t, name)()


def test_tensor_on_cupy(on_cupy):
    t, _ = on_cupy
    t.test_fast_tensor_overlaps_arb(3)


def test_exp_and_gemm_bound_on_cupy(on_cupy):
    from fractions import Fraction

    from flint import arb

    from attnspec.reference import fast_float64 as ff

    _, cp = on_cupy
    x = np.concatenate([np.linspace(-745.5, 709, 4001), np.linspace(-709.2, -707.2, 401)])
    w, rel, ab = ff.certified_exp(cp.asarray(x), xp=cp)
    for xi, wi in zip(x.tolist(), cp.asnumpy(w).tolist()):
        e = arb(xi).exp()
        assert abs(arb(wi) - e) <= arb(rel) * e + ab
    from attnspec.reference.fast_softmax import gpu_math_modes

    assert any("PEDANTIC" in m for m in gpu_math_modes(cp))
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, 300)) * np.exp2(rng.integers(-30, 30, size=(8, 300)))
    b = rng.standard_normal((300, 4))
    c = cp.asnumpy(cp.asarray(a) @ cp.asarray(b))
    bound = cp.asnumpy(ff.dot_error_bound(cp, cp.abs(cp.asarray(a)) @ cp.abs(cp.asarray(b)), 300))
    for i in range(8):
        for j in range(4):
            exact = sum(Fraction(float(p)) * Fraction(float(q)) for p, q in zip(a[i], b[:, j]))
            assert abs(Fraction(float(c[i, j])) - exact) <= Fraction(float(bound[i, j]))
