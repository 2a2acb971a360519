"""The fast float64 enclosure engines (reference/fast_float64.py, fast_softmax.py, fast_tensor.py) against
Arb: every fast bound must overlap the Arb ball (both contain the true value), on >1000 seeded instances
including extreme ones; radii are small on ordinary instances; unbounded entries appear only where the
analysis says so; rows= agrees with the full enclosure; the exp and GEMM primitives hold on dense
grids and adversarial inputs."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from flint import arb, ctx

from attnspec.reference import fast_float64 as ff
from attnspec.reference.enclosure import arb_bounds_fraction
from attnspec.reference.fast_softmax import enclose_fast, fast_softmax_bounds, scale_interval
from attnspec.reference.fast_tensor import enclose_fast as enclose_fast_tensor
from attnspec.reference.softmax_attention import enclose
from attnspec.reference.tensor_attention import enclose as enclose_tensor
from attnspec.spec.softmax_attention import make_instance
from attnspec.spec.tensor_attention import make_instance as make_tensor

XP = np  # test_fast_engine_gpu.py reruns these checks with cupy


def _agree(fast, arb_enc, *, midpoint: bool = False) -> int:
    """Assert every bounded fast entry overlaps its Arb ball (``midpoint``: contains the ball's
    midpoint, exactly); return the number of bounded entries."""
    lo, hi = fast.float_bounds()
    assert fast.shape == arb_enc.shape
    count = 0
    for idx in np.ndindex(fast.shape):
        if not (np.isfinite(lo[idx]) and np.isfinite(hi[idx])):
            continue
        ball = arb_enc.ball(idx)
        a0, a1 = arb_bounds_fraction(ball)
        f_lo, f_hi = Fraction(float(lo[idx])), Fraction(float(hi[idx]))
        assert f_lo <= a1 and a0 <= f_hi, (idx, lo[idx], hi[idx], float(a0))
        if midpoint:
            mid = (a0 + a1) / 2
            assert f_lo <= mid <= f_hi, (idx, lo[idx], hi[idx], float(mid))
        count += 1
    return count


def _kind_instance(rng, kind: str):
    n = int(rng.integers(1, 7))
    d = int(rng.integers(1, 5))
    dv = int(rng.integers(1, 4))
    g = lambda *s: rng.standard_normal(s)  # noqa: E731
    scale: object = Fraction(1, 2) ** int(rng.integers(0, 3))
    q, k, v = g(n, d), g(n, d), g(n, dv)
    if kind == "huge":
        mag = 10.0 ** float(rng.uniform(3, 150))
        q, k = q * mag, k * mag
    elif kind == "large":
        q, k = q * 8, k * 8
    elif kind == "subnormal":
        q, k, v = q * 1e-310, k * 1e-310, v * 1e-310
    elif kind == "cancel":
        v[:, 0] = rng.choice([1e16, -1e16, 1.0], size=n)
    elif kind == "scale0":
        scale = 0
    elif kind == "nondyadic":
        scale = Fraction(1, int(rng.choice([3, 5, 7, 10])))
    elif kind == "float32":
        q, k, v = q.astype(np.float32), k.astype(np.float32), v.astype(np.float32)
    elif kind == "float16":
        q, k, v = q.astype(np.float16), k.astype(np.float16), v.astype(np.float16)
    elif kind == "mixed":
        q = q * np.exp2(rng.integers(-30, 30, size=q.shape))
    return make_instance(q, k, v, scale=scale)


KINDS = ["plain", "huge", "large", "subnormal", "cancel", "scale0", "nondyadic", "float32", "float16", "mixed"]


def test_fast_softmax_contains_arb_midpoint_on_1000_instances():
    rng = np.random.default_rng(20261204)
    bounded = total = 0
    for i in range(1000):
        kind = KINDS[i % len(KINDS)]
        inst = _kind_instance(rng, kind)
        fast = enclose_fast(inst, xp=XP)
        bounded += _agree(fast, enclose(inst, 96), midpoint=True)
        total += fast.lo.size
        if kind not in ("huge",):  # everything ordinary must be bounded
            assert fast.bounded().all(), kind
    assert bounded > 0.85 * total


def test_radii_small_on_ordinary_instances():
    rng = np.random.default_rng(5)
    for n, d in [(1, 1), (3, 2), (16, 8), (64, 16), (200, 64)]:
        q, k, v = (rng.standard_normal((n, d)) for _ in range(3))
        for dtype in (np.float64, np.float32):
            inst = make_instance(q.astype(dtype), k.astype(dtype), v.astype(dtype), scale=1 / np.sqrt(d))
            fast = enclose_fast(inst, xp=XP)
            mid, rad = fast.mid(), fast.rad()
            vmax = float(np.abs(inst.v.astype(np.float64)).max())
            assert rad.max() <= 1e-12 * vmax  # absolute radius relative to the value scale
            big = np.abs(mid) >= 0.05 * vmax
            assert (rad[big] / np.abs(mid[big])).max(initial=0) <= 1e-12


def test_huge_logits_are_sound_and_unbounded_only_there():
    rng = np.random.default_rng(7)
    q, k, v = (rng.standard_normal((5, 3)) for _ in range(3))
    q[0] *= 1e300  # row 0: |logit| ~ 1e300 overflows s·q·k
    inst = make_instance(q, k, v, scale=1)
    fast = enclose_fast(inst, xp=XP)
    assert not fast.bounded()[0].any()
    assert fast.bounded()[1:].all()
    sub = enclose_fast(inst, rows=np.arange(1, 5), xp=XP)
    assert _agree(sub, enclose(inst, 96, rows=np.arange(1, 5))) == sub.lo.size
    # moderately large logits (hundreds): two-pass shift, still decided
    inst2 = make_instance(q[1:] * 40, k[1:] * 40, v[1:], scale=1)
    fast2 = enclose_fast(inst2, xp=XP)
    assert fast2.bounded().all()
    assert _agree(fast2, enclose(inst2, 96)) == fast2.lo.size


def test_rows_subset_agrees_with_full():
    rng = np.random.default_rng(11)
    q, k, v = (rng.standard_normal((37, 5)) for _ in range(3))
    inst = make_instance(q, k, v, scale=Fraction(1, 3))
    full = enclose_fast(inst, xp=XP, row_block=8, key_block=16)
    rows = np.array([0, 3, 17, 36])
    part = enclose_fast(inst, rows=rows, xp=XP, row_block=8, key_block=16)
    assert part.shape == (4, 5)
    assert np.all(part.lo <= full.hi[rows]) and np.all(full.lo[rows] <= part.hi)
    assert np.allclose(part.mid(), full.mid()[rows], rtol=0, atol=1e-13)
    assert _agree(part, enclose(inst, 96, rows=rows)) == part.lo.size
    empty = enclose_fast(inst, rows=np.array([], dtype=np.int64), xp=XP)
    assert empty.shape == (0, 5)


def test_masking_offsets_and_all_masked_rows():
    rng = np.random.default_rng(13)
    n, d = 9, 3
    q, k, v = (rng.standard_normal((n, d)) for _ in range(3))
    causal = np.where(np.tril(np.ones((n, n))) > 0, 0.0, -np.inf)
    causal[4, :] = -np.inf  # row 4: every key masked

    def offset(r0, r1, c0, c1):
        return causal[r0:r1, c0:c1]

    lo, hi = fast_softmax_bounds(q, k, v, scale_lo=0.5, scale_hi=0.5, logit_offset=offset, key_block=4, row_block=3)
    assert np.all(lo[4] == 0) and np.all(hi[4] == 0)
    for i in (0, 3, 8):  # row i of a causal softmax = softmax over keys ≤ i
        # an instance needs as many queries as keys: repeat the query, keep output row 0
        rep = make_instance(np.repeat(q[i:i + 1], i + 1, axis=0), k[:i + 1], v[:i + 1], scale=Fraction(1, 2))
        ref = enclose(rep, 96, rows=np.array([0]))
        a0, a1 = zip(*(arb_bounds_fraction(ref.ball((0, c))) for c in range(d)))
        assert all(Fraction(float(lo[i, c])) <= a1[c] and a0[c] <= Fraction(float(hi[i, c])) for c in range(d))


def test_rational_inputs_and_scales():
    q = np.array([[Fraction(1, 2), Fraction(3, 4)]], dtype=object)
    inst = make_instance(q, q.copy(), q.copy(), scale=Fraction(1, 3))
    fast = enclose_fast(inst, xp=XP)
    assert fast.bounded().all() and _agree(fast, enclose(inst, 96)) == 2
    third = np.array([[Fraction(1, 3)]], dtype=object)
    inst3 = make_instance(third, third.copy(), third.copy(), scale=1)
    assert not enclose_fast(inst3, xp=XP).bounded().any()  # non-dyadic entries: left to Arb
    lo, hi = scale_interval(Fraction(1, 10))
    assert Fraction(lo) < Fraction(1, 10) < Fraction(hi) and np.nextafter(lo, 1) == hi
    assert scale_interval(Fraction(3, 8)) == (0.375, 0.375)


def test_exp_certified_on_dense_grid_against_arb():
    ctx.prec = 160
    try:
        pts = [np.linspace(-745.5, 709, 6001), np.linspace(-1, 1, 2001),
               np.linspace(-709.2, -707.2, 801),  # the underflow threshold (k = −1022, −1023)
               (np.arange(-1030, 1024) + 0.5)[:, None] * np.log(2) + np.array([-1e-12, 0, 1e-12]),  # reduction boundaries
               np.array([0.0, -0.0, 5e-324, -5e-324, 1e-300, -1e-300, -1000.0])]
        x = np.concatenate([p.ravel() for p in pts])
        x = x[(x >= -1000) & (x <= 709)]
        w, rel, ab = ff.certified_exp(x)
        assert rel < 1e-14 and ab == 2.0**-1022
        for xi, wi in zip(x.tolist(), w.tolist()):
            e = arb(xi).exp()
            assert abs(arb(wi) - e) <= arb(rel) * e + ab, xi
        w_inf, _, _ = ff.certified_exp(np.array([-np.inf, -800.0]))
        assert np.all(w_inf == 0)
    finally:
        ctx.prec = 53


def test_gemm_error_bound_holds_on_adversarial_cancellation():
    rng = np.random.default_rng(3)
    for trial in range(30):
        k = int(rng.integers(1, 200))
        a = rng.standard_normal((4, k)) * np.exp2(rng.integers(-40, 40, size=(4, k)))
        b = rng.standard_normal((k, 3)) * np.exp2(rng.integers(-40, 40, size=(k, 3)))
        if trial % 3 == 0:  # exact cancellation: second half negates the first
            h = k // 2
            a[:, h:2 * h] = a[:, :h]
            b[h:2 * h] = -b[:h]
        if trial % 5 == 0:
            a *= 1e-160
            b *= 1e-160  # products underflow
        c = a @ b
        bound = ff.dot_error_bound(np, np.abs(a) @ np.abs(b), k)
        for i in range(4):
            for j in range(3):
                exact = sum(Fraction(float(x)) * Fraction(float(y)) for x, y in zip(a[i], b[:, j]))
                assert abs(Fraction(float(c[i, j])) - exact) <= Fraction(float(bound[i, j]))


def test_certified_division():
    nlo, nhi = np.array([-1.0, 1.0, 1e-300]), np.array([2.0, 3.0, 1e-299])
    dlo, dhi = np.array([3.0, 7.0, 1e10]), np.array([3.0, 9.0, 2e10])
    lo, hi = ff.div_bounds(np, nlo, nhi, dlo, dhi)
    for i in range(3):
        for nn in (nlo[i], nhi[i]):
            for dd in (dlo[i], dhi[i]):
                val = Fraction(float(nn)) / Fraction(float(dd))
                assert Fraction(float(lo[i])) <= val <= Fraction(float(hi[i]))
    bad_lo, bad_hi = ff.div_bounds(np, np.array([1.0]), np.array([1.0]), np.array([0.0]), np.array([1.0]))
    assert bad_lo[0] == -np.inf and bad_hi[0] == np.inf


def test_trust_libm_exp_is_declared():
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((6, 3)) for _ in range(3))
    inst = make_instance(q, k, v, scale=1)
    fast = enclose_fast(inst, xp=XP, trust_libm_exp=True)
    assert any("trust_libm_exp" in a for a in fast.assumptions)
    assert not any("trust_libm_exp" in a for a in enclose_fast(inst, xp=XP).assumptions)
    assert _agree(fast, enclose(inst, 96)) == fast.lo.size


def test_bad_inputs_are_refused():
    from attnspec.spec.validation import SpecError

    with pytest.raises(SpecError, match="rows"):
        fast_softmax_bounds(np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2)), scale_lo=1, scale_hi=1, rows=[1, 0])
    with pytest.raises(SpecError, match="scale"):
        fast_softmax_bounds(np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2)), scale_lo=2, scale_hi=1)
    with pytest.raises(SpecError, match="finite"):
        fast_softmax_bounds(np.full((2, 2), np.nan), np.ones((2, 2)), np.ones((2, 2)), scale_lo=1, scale_hi=1)


def test_blocking_never_allocates_n_squared(monkeypatch):
    import tracemalloc

    monkeypatch.setenv("ATTNSPEC_FAST_THREADS", "2")  # per-thread tile buffers: the same bound on any machine

    rng = np.random.default_rng(2)
    n, d = 4000, 8
    q, k, v = (rng.standard_normal((n, d)) for _ in range(3))
    tracemalloc.start()
    fast_softmax_bounds(q, k, v, scale_lo=0.25, scale_hi=0.25, row_block=64, key_block=256)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < n * n * 8 / 12  # O(n·block + threads·block²): far below one n×n float64 matrix (128 MB here)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_fast_tensor_overlaps_arb(order):
    rng = np.random.default_rng(100 + order)
    bounded = 0
    for i in range(40 if order < 4 else 12):
        n = int(rng.integers(1, 5 if order < 4 else 3))
        d = int(rng.integers(1, 4))
        kind = ["plain", "nondyadic", "huge", "float32", "subnormal"][i % 5]
        mats = [rng.standard_normal((n, d)) for _ in range(order)]
        vals = [rng.standard_normal((n, 2)) for _ in range(order - 1)]
        scale: object = Fraction(1, 2)
        if kind == "nondyadic":
            scale = Fraction(1, 3)
        elif kind == "huge":
            mats = [m * 1e40 for m in mats]
        elif kind == "float32":
            mats = [m.astype(np.float32) for m in mats]
            vals = [x.astype(np.float32) for x in vals]
        elif kind == "subnormal":
            vals = [x * 1e-160 for x in vals]
        inst = make_tensor(mats[0], mats[1:], vals, scale=scale)
        fast = enclose_fast_tensor(inst, xp=XP)
        bounded += _agree(fast, enclose_tensor(inst, 96), midpoint=True)
        if kind in ("plain", "nondyadic", "float32"):
            assert fast.bounded().all()
            assert fast.rad().max() <= 1e-12 * max(1.0, float(np.abs(fast.mid()).max()))
        rows = np.array([n - 1])
        part = enclose_fast_tensor(inst, rows=rows, xp=XP)
        assert np.array_equal(np.isfinite(part.lo), np.isfinite(fast.lo[rows]))
        assert _agree(part, enclose_tensor(inst, 96, rows=rows)) == int(np.isfinite(part.lo).sum())
    assert bounded > 0


def test_bench_judge_reports_ratios_side_by_side(capsys):
    import json
    import math

    pytest.importorskip("torch")
    from attnspec.conformance.frontends.cli import main

    assert main(["bench", "judge", "--n", "96", "--d", "8", "--arb-n", "16", "32", "--repeats", "1",
                 "--verdict-n", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    a = out["a_fast_vs_torch"]
    assert math.isclose(a["ratio_best"], a["fast_best_s"] / a["torch_best_s"])
    assert a["torch_output_inside_bounds"] and a["bounded_fraction"] == 1.0
    assert 0.0 <= a["undecided_row_fraction"] <= 1.0 and a["peak_over_n2"] > 0
    assert [r["n"] for r in out["b_fast_vs_arb"]] == [16, 32]
    for r in out["b_fast_vs_arb"]:
        assert r["enclosures_overlap"] and math.isclose(r["ratio_arb_over_fast"], r["arb_s"] / r["fast_s"])
    verdicts = {(r["dtype"], r["backend"]): r["status"] for r in out["c_verdicts"]}
    assert verdicts == {("float32", "correct torch"): "pass", ("float32", "broken"): "fail",
                        ("float64", "correct torch"): "pass", ("float64", "broken"): "fail"}
