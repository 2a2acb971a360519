"""The two-tier verdict engine: fast certified float64 bounds first, Arb only on the rows they leave
undecided (``attnspec.conformance.judging.verdict.judge_two_tier``).

The fast engine here is a *stand-in* with the ``BoundsEnclosure`` interface: the outward float64 bounds of a
low-precision (24-bit) Arb enclosure. It is rigorous and looser than the Arb reference the verdict engine
refines with, as a real fast engine is. When ``attnspec.reference.fast_softmax`` is installed its
``enclose_fast`` is exercised too.
"""

from __future__ import annotations

import numpy as np
import pytest
from flint import arb

from attnspec.conformance.harness.backends import read_capabilities
from attnspec.conformance.harness.builtin_backends import numpy_backend, reference_backend
from attnspec.conformance.judging import verdict as verdict_mod
from attnspec.conformance.judging.case_common import EnclosureCache, optional_engine
from attnspec.conformance.judging.softmax_attention import SoftmaxAttention
from attnspec.conformance.judging.softmax_attention import problem as softmax_problem
from attnspec.conformance.judging.tensor_attention import TensorAttention
from attnspec.conformance.judging.tensor_attention import problem as tensor_problem
from attnspec.conformance.judging.verdict import ERROR, FAIL, PASS, UNDECIDED, judge_two_tier
from attnspec.reference.enclosure import BoundsEnclosure, Enclosure
from attnspec.reference.softmax_attention import enclose as softmax_enclose
from attnspec.reference.tensor_attention import enclose as tensor_enclose
from attnspec.spec.softmax_attention import make_instance

import softmax_catalogue as soft_cat
import tensor_broken_backends as tensor_cat

STANDIN_PREC = 24


def standin_fast(enclose, *, unbounded_rows=(), calls=None, prec=STANDIN_PREC):
    """A rigorous stand-in fast engine: float64 bounds of a ``prec``-bit Arb enclosure (rows restricted
    by slicing), with ``unbounded_rows`` (positions in the requested rows) left at ±inf."""

    def fast(inst, rows):
        if calls is not None:
            calls.append(None if rows is None else tuple(rows.tolist()))
        lo, hi = enclose(inst, prec).float_bounds()
        if rows is not None:
            lo, hi = lo[rows], hi[rows]
        lo, hi = lo.copy(), hi.copy()
        for r in unbounded_rows:
            lo[r], hi[r] = -np.inf, np.inf
        return BoundsEnclosure(lo, hi, engine="standin-float64", assumptions=(f"stand-in: {prec}-bit Arb bounds",))

    return fast


def _problems(cls, enclose, fast):
    arb_only = cls()
    arb_only.cached_enclosure = EnclosureCache(arb_only.enclose)
    two = cls()
    two.cached_enclosure = EnclosureCache(two.enclose, enclose_fast=fast)
    return arb_only, two


def _small(cases, max_n, limit):
    out = [c for c in cases if c.instance.n <= max_n and c.rows is None]
    return out[:limit]


SOFT_CASES = _small(softmax_problem.generate_cases("quick", ("float64", "float32")), 40, 60)
TENSOR_CASES = _small(tensor_problem.generate_cases("quick", ("float64",)), 9, 30)


def _torch_backend():
    pytest.importorskip("torch")
    from attnspec.conformance.harness.builtin_backends import torch_backend

    return torch_backend()


def _compare(problem_reg, arb_only, two, cases, backend, method):
    caps = read_capabilities(backend)
    judged = 0
    statuses = set()
    for case in cases:
        if problem_reg.not_applicable_reasons(case, caps):
            continue
        args, kwargs = problem_reg.call_args(case)
        try:
            out = getattr(backend, method)(*args, **kwargs)
        except Exception:  # a broken backend's exception is not the judge's business here
            continue
        v1 = arb_only.judge(case, out, caps)
        v2 = two.judge(case, out, caps)
        assert v1.status == v2.status, (case.case_id, v1.message, v2.message)
        if v2.status == FAIL:  # a fail is certain from either tier
            ev = v2.evidence
            assert ev["error_interval"][0] > ev["tolerance"]
        if v2.status != ERROR:  # a bad output (NaN, wrong shape) is refused before any enclosure
            assert v2.evidence["engines"][0] == "standin-float64"
        judged += 1
        statuses.add(v2.status)
    return judged, statuses


@pytest.mark.parametrize("factory", [numpy_backend, reference_backend, _torch_backend], ids=["numpy", "reference", "torch"])
def test_softmax_two_tier_matches_arb_only_on_builtin_backends(factory):
    backend = factory()
    arb_only, two = _problems(SoftmaxAttention, softmax_enclose, standin_fast(softmax_enclose))
    judged, statuses = _compare(softmax_problem, arb_only, two, SOFT_CASES, backend, "attention")
    assert judged >= 20 and statuses == {PASS}


def test_softmax_two_tier_matches_arb_only_on_broken_backends():
    arb_only, two = _problems(SoftmaxAttention, softmax_enclose, standin_fast(softmax_enclose))
    seen = set()
    for cls in soft_cat.BROKEN:
        _, statuses = _compare(softmax_problem, arb_only, two, SOFT_CASES[::3], cls(), "attention")
        seen |= statuses
    assert FAIL in seen and PASS in seen


@pytest.mark.parametrize("factory", [numpy_backend, reference_backend, _torch_backend], ids=["numpy", "reference", "torch"])
def test_tensor_two_tier_matches_arb_only_on_builtin_backends(factory):
    backend = factory()
    arb_only, two = _problems(TensorAttention, tensor_enclose, standin_fast(tensor_enclose))
    judged, statuses = _compare(tensor_problem, arb_only, two, TENSOR_CASES, backend, "tensor_attention")
    assert judged >= 10 and statuses == {PASS}


def test_tensor_two_tier_matches_arb_only_on_broken_backends():
    arb_only, two = _problems(TensorAttention, tensor_enclose, standin_fast(tensor_enclose))
    seen = set()
    for cls in tensor_cat.BROKEN:
        _, statuses = _compare(tensor_problem, arb_only, two, TENSOR_CASES[::3], cls(), "tensor_attention")
        seen |= statuses
    assert FAIL in seen


# --------------------------------------------------------------------------- which rows are refined


def _instance(n=12, d=3, seed=1):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.uniform(-1, 1, (n, d)) for _ in range(3))
    return make_instance(q, k, v, scale=0.5)


def _case(inst):
    return softmax_problem.make_case("unit", 0, 0, "float64", inst.q, inst.k, inst.v, inst.scale, None)


def test_unbounded_fast_rows_are_the_only_rows_refined():
    inst = _instance()
    case = _case(inst)
    calls: list = []
    prob = SoftmaxAttention()
    # 64-bit stand-in bounds are tight enough to decide a float64 row (24-bit ones, ~1e-7, are not).
    fast = standin_fast(softmax_enclose, unbounded_rows=(2, 7), calls=calls, prec=64)
    prob.cached_enclosure = EnclosureCache(prob.enclose, enclose_fast=fast)
    caps = read_capabilities(numpy_backend())
    out = numpy_backend().attention(case.instance.q, case.instance.k, case.instance.v, scale=float(inst.scale))
    v = prob.judge(case, out, caps)
    assert v.status == PASS
    ev = v.evidence
    assert ev["rows_refined"] == 2 and ev["rows_checked"] == 12
    assert ev["rows_refined_fraction"] == pytest.approx(2 / 12)
    assert ev["engines"] == ["standin-float64", "arb"]
    assert ev["fast_assumptions"] == ["stand-in: 64-bit Arb bounds"]
    assert ev["prec"] == 128
    assert prob.cached_enclosure.arb_rows_computed == 2
    # Memoised per instance: a replay judges against the same bounds, nothing is recomputed.
    again = prob.judge(case, out, caps)
    assert again.status == PASS and again.evidence["worst_index"] == ev["worst_index"]
    assert prob.cached_enclosure.arb_rows_computed == 2 and len(calls) == 1


def test_fail_from_the_fast_tier_needs_no_arb():
    inst = _instance()
    case = _case(inst)
    prob = SoftmaxAttention()
    prob.cached_enclosure = EnclosureCache(prob.enclose, enclose_fast=standin_fast(softmax_enclose))
    caps = read_capabilities(numpy_backend())
    out = numpy_backend().attention(inst.q, inst.k, inst.v, scale=float(inst.scale))
    out[4, 1] += 1e-6
    v = prob.judge(case, out, caps)
    assert v.status == FAIL and v.evidence["worst_index"] == [4, 1]
    assert v.evidence["rows_refined"] == 0 and v.evidence["engines"] == ["standin-float64"]
    assert prob.cached_enclosure.arb_rows_computed == 0


def _wide_rows(radius):
    """An ``enclose_rows`` whose balls around 0.5 keep the radius ``radius`` at every precision."""
    asked: list = []

    def enclose_rows(prec, rows):
        asked.append((prec, tuple(rows.tolist())))
        return Enclosure(balls=[arb(0.5, radius) for _ in range(len(rows) * 2)], shape=(len(rows), 2), prec=prec)

    return enclose_rows, asked


def test_undecided_at_the_cap_stays_undecided_and_precision_rises():
    enclose_rows, asked = _wide_rows(1e-3)
    y = np.full((5, 2), 0.5)
    lo = np.full((5, 2), 0.5 - 1e-9)
    hi = np.full((5, 2), 0.5 + 1e-9)
    lo[3, 1], hi[3, 1] = -np.inf, np.inf  # one entry the fast engine cannot bound
    fast = BoundsEnclosure(lo, hi, engine="fake-fast")
    v = judge_two_tier(y, lambda: fast, enclose_rows, 1e-6, shape=(5, 2), start_prec=128, max_prec=512)
    assert v.status == UNDECIDED and not v.passed
    assert [p for p, _ in asked] == [128, 256, 512] and all(r == (3,) for _, r in asked)
    assert v.evidence["rows_refined"] == 1 and v.evidence["prec"] == 512
    assert v.evidence["undecided_rows"] == [3]


def test_no_fast_engine_refines_every_row_like_arb_only():
    enclose_rows, asked = _wide_rows(0.0)
    y = np.full((4, 2), 0.5)
    v = judge_two_tier(y, None, enclose_rows, 0.0, shape=(4, 2))
    assert v.status == PASS and asked == [(128, (0, 1, 2, 3))]
    assert v.evidence["engines"] == ["arb"] and v.evidence["rows_refined"] == 4


def test_exact_comparison_settles_what_the_float_pass_cannot():
    """y = 1, bounds [1, 1 + 3u], τ = 3u (u = 2⁻⁵²): the rounded-up float error exceeds τ, the exact one
    equals it, so the entry passes from the fast bounds alone (Arb is never asked)."""
    u = 2.0**-52
    fast = BoundsEnclosure(np.array([[1.0]]), np.array([[1.0 + 3 * u]]))

    def no_arb(prec, rows):
        raise AssertionError("Arb asked for rows the exact check settles")

    v = judge_two_tier(np.array([[1.0]]), lambda: fast, no_arb, 3 * u, shape=(1, 1))
    assert v.status == PASS and v.evidence["rows_refined"] == 0
    same_ball, asked = _wide_rows(1.5 * u)  # Arb can do no better than [1, 1 + 3u] here

    def as_wide(prec, rows):
        enc = same_ball(prec, rows)
        return Enclosure(balls=[arb(1 + 1.5 * u, 1.5 * u)], shape=(1, 1), prec=enc.prec)

    v = judge_two_tier(np.array([[1.0]]), lambda: fast, as_wide, np.nextafter(3 * u, 0), shape=(1, 1),
                       max_prec=128)
    assert v.status == UNDECIDED  # just below the exact error bound: not a pass, and no certain fail
    assert asked == [(128, (0,))]


class LazyBalls:
    """Exact balls of a float array, made only for the entries read (the evidence reads one)."""

    def __init__(self, values, start=0):
        self.flat, self.start = np.asarray(values).reshape(-1), start

    def __getitem__(self, key):
        if isinstance(key, slice):
            return LazyBalls(self.flat, self.start + (key.start or 0))
        return arb(float(self.flat[self.start + key]))


def test_large_output_is_judged_without_per_entry_python(monkeypatch):
    """4096 × 64 entries whose fast bounds straddle τ everywhere (far from the threshold): the exact
    per-entry path is not entered, Arb refines every row (stand-in rows, tight) and the verdict is pass."""
    m, dv = 4096, 64
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, (m, dv))
    fast = BoundsEnclosure(y - 1e-3, y + 1e-3, engine="loose")
    exact_calls = []
    real = verdict_mod._exact_error_bounds
    monkeypatch.setattr(verdict_mod, "_exact_error_bounds", lambda *a: exact_calls.append(a) or real(*a))

    class Tight:
        """Float bounds equal to y (an Arb-like enclosure of exact rows), no per-ball Python."""

        def __init__(self, rows, prec):
            self.shape, self.prec = (len(rows), dv), prec
            self.balls = LazyBalls(y[rows])
            self._rows = rows

        def float_bounds(self):
            return y[self._rows], y[self._rows]

    v = judge_two_tier(y, lambda: fast, lambda prec, rows: Tight(rows, prec), 1e-6, shape=(m, dv))
    assert v.status == PASS and v.evidence["rows_refined"] == m
    assert exact_calls == []


def test_h1_fast_engine_when_installed_agrees_with_arb_only():
    fast = optional_engine("attnspec.reference.fast_softmax", "enclose_fast")
    if fast is None:
        pytest.skip("attnspec.reference.fast_softmax is not installed yet")
    arb_only, two = _problems(SoftmaxAttention, softmax_enclose, lambda inst, rows: fast(inst, rows=rows))
    two.cached_enclosure = EnclosureCache(two.enclose, enclose_fast=lambda inst, rows: fast(inst, rows=rows))
    backend = numpy_backend()
    caps = read_capabilities(backend)
    judged = 0
    for case in SOFT_CASES[:30]:
        if softmax_problem.not_applicable_reasons(case, caps):
            continue
        args, kwargs = softmax_problem.call_args(case)
        out = backend.attention(*args, **kwargs)
        v1, v2 = arb_only.judge(case, out, caps), two.judge(case, out, caps)
        assert v1.status == v2.status, case.case_id
        judged += 1
    assert judged >= 10
