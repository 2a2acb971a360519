"""Edge instances (conformance/judging/edge_instances.py): correct backends never get fail or error, and
the precision-model terms they exercise are sound (brute force over evaluation orders) yet not vacuous."""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np
import pytest

from attnspec.conformance.harness import builtin_backends as builtin
from attnspec.conformance.harness.backends import read_capabilities
from attnspec.conformance.harness.isolation import InProcessRunner
from attnspec.conformance.harness.runner import judge_one
from attnspec.conformance.judging import edge_instances as edge
from attnspec.conformance.judging import precision_model as pm
from attnspec.conformance.judging.dynamic_attention import run_trace
from attnspec.conformance.judging.problems import get_problem
from attnspec.conformance.judging.verdict import FAIL, PASS, judge
from attnspec.reference.softmax_attention import enclose
from attnspec.spec.softmax_attention import make_instance

OK = ("pass", "not_applicable")


def _edge_cases():
    cases = []
    for name in ("softmax_attention", "tensor_attention"):
        cases += [c for c in get_problem(name).generate_cases("quick", ("float64", "float32")) if c.family == "edge"]
    return cases + edge.exact_scale_softmax_cases() + edge.exact_scale_tensor_cases()


CASES = _edge_cases()
BACKENDS = {"numpy": builtin.numpy_backend, "reference": builtin.reference_backend, "torch": builtin.torch_backend}


@functools.lru_cache(maxsize=None)
def _records(name):
    backend = BACKENDS[name]()
    runner, caps = InProcessRunner(backend), read_capabilities(backend)
    return name, {c.case_id: judge_one(c, runner, caps) for c in CASES}


@pytest.fixture(params=sorted(BACKENDS))
def records(request):
    return _records(request.param)


def test_edge_family_is_in_the_quick_profile():
    families = {(c.problem, c.family) for c in CASES}
    assert ("softmax_attention", "edge") in families and ("tensor_attention", "edge") in families
    assert sum(c.family == "edge" for c in CASES) == 2 * (edge.SOFTMAX_EDGE_COUNT + edge.TENSOR_EDGE_COUNT)


def test_no_false_alarm_on_any_edge_instance(records):
    name, recs = records
    bad = [(cid, r["status"], r["message"]) for cid, r in recs.items() if r["status"] not in OK]
    assert not bad, (name, bad)
    for r in recs.values():
        if r["status"] == "not_applicable":
            assert r["message"].strip()  # always a stated reason
    assert sum(r["status"] == PASS for r in recs.values()) >= len(recs) // 2


def test_crafted_issue_examples_are_judged_not_skipped(records):
    name, recs = records
    # q = 3·2⁻¹⁰⁷⁴, s = ½, k = 1.5·2¹⁰²³ (float64), subnormal V, logits near −740: applicable and passing
    for label in ("subnormal_product_magnified", "subnormal_v", "logits_near_minus_740", "all_subnormal"):
        index = [lab for lab, *_ in edge.softmax_edge_arrays(np.random.default_rng(0))].index(label)
        assert recs[f"softmax_attention/float64/edge/{index:03d}"]["status"] == PASS, (name, label)
    for cid, r in recs.items():
        if "edge_exact_scale" in cid:  # judged against the exact rational scale
            assert r["status"] == PASS, (name, cid, r["message"])


def test_reference_passes_huge_logits_and_overflow_prone_cases():
    _, recs = _records("reference")  # exact_rounded: no intermediates, the judge refines huge logits
    labels = [lab for lab, *_ in edge.softmax_edge_arrays(np.random.default_rng(0))]
    for label in ("logits_1e100", "logits_1e300", "qk_overflows_float64", "near_max_v_overflowing"):
        assert recs[f"softmax_attention/float64/edge/{labels.index(label):03d}"]["status"] == PASS, label


@pytest.mark.parametrize("name", ["numpy", "torch"])
def test_overflow_cases_name_the_overflow(name):
    _, recs = _records(name)
    labels = [lab for lab, *_ in edge.softmax_edge_arrays(np.random.default_rng(0))]
    msg = recs[f"softmax_attention/float32/edge/{labels.index('float32_qk_overflow'):03d}"]["message"]
    assert "q·kᵀ before scaling can reach 2e+40 > float32 max 3.4e+38" in msg
    msg = recs[f"softmax_attention/float64/edge/{labels.index('near_max_v_overflowing'):03d}"]["message"]
    assert "Σ_j p_j·v_jl" in msg and "float64 max" in msg
    assert recs[f"softmax_attention/float32/edge/{labels.index('float32_qk_large_fitting'):03d}"]["status"] == PASS


@pytest.mark.parametrize("factory", [builtin.numpy_backend, builtin.reference_backend], ids=["numpy", "reference"])
def test_dynamic_edge_traces_pass(factory):
    backend = factory()
    for label, trace in edge.dynamic_edge_traces():
        result = run_trace(trace, backend.dynamic_attention)
        assert result.counts() == {PASS: len(result.verdicts)}, (label, [v.verdict.message for v in result.verdicts])
    runner, caps = InProcessRunner(backend), read_capabilities(backend)
    for case in get_problem("dynamic_attention").generate_cases("quick"):
        if case.family == "edge":
            assert judge_one(case, runner, caps)["status"] in OK


# --------------------------------------------------------------------------- brute force over orders


def _orders(q, k, s):
    """Logits s·q·kᵀ in the dtype of q, by every grouping the model allows."""
    dt = q.dtype.type
    s_ = dt(s)
    root = dt(math.sqrt(float(s)))
    terms = {
        "(s·q)·k": (s_ * q) @ k.T,
        "s·(q·k)": s_ * (q @ k.T),
        "q·(s·k)": q @ (s_ * k).T,
        "(√s·q)·(√s·k)": (root * q) @ (root * k).T,
        "per-term (q_t·k_t)·s": (q[:, None, :] * k[None, :, :] * s_).sum(axis=2, dtype=q.dtype),
    }
    return terms


def _softmax_rows(logits, v):
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (w @ v) / w.sum(axis=1, keepdims=True)


def _crafted(dtype, d=32):
    """The issue's example (q = 3·μ, s = ½, k ≈ the format maximum; μ the smallest subnormal), exact in
    ``dtype``: s·q = 1.5μ rounds to 2μ, and k multiplies that rounding, d times per logit; two keys of
    opposite sign turn the logit errors into a weight error."""
    fi = np.finfo(dtype)
    tiny, big = float(fi.smallest_subnormal), float(fi.max) / 1.2
    q = np.full((2, d), 3 * tiny, dtype=dtype)
    k = np.array([[big] * d, [-big] * d], dtype=dtype)
    v = np.array([[1.0], [-1.0]], dtype=dtype)
    return make_instance(q, k, v, scale=Fraction(1, 2))


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_every_evaluation_order_is_within_the_new_bound(dtype):
    inst = _crafted(dtype)
    model = pm.PrecisionModel(dtype)
    tol = pm.softmax_tolerance(inst, model)
    assert np.isfinite(tol).all()
    enc = lambda prec: enclose(inst, prec)  # noqa: E731
    for name, logits in _orders(inst.q, inst.k, inst.scale).items():
        out = _softmax_rows(logits, inst.v)
        assert judge(out, enc, tol).status == PASS, name


def test_the_old_bound_fails_some_evaluation_order(monkeypatch):
    inst = _crafted("float64")
    monkeypatch.setattr(pm, "_underflow_logit_error", lambda *args: 0.0)  # the model before this change
    tol = pm.softmax_tolerance(inst, pm.PrecisionModel("float64"))
    outs = [_softmax_rows(x, inst.v) for x in _orders(inst.q, inst.k, inst.scale).values()]
    assert FAIL in {judge(out, lambda p: enclose(inst, p), tol).status for out in outs}


def test_underflow_term_covers_each_order_of_one_logit_term():
    # |computed − exact| for every grouping of s·q·k, checked against the model's absolute term alone
    q, k, s = 3 * edge.TINY, edge.HUGE_K, 0.5
    exact = Fraction(q) * Fraction(k) * Fraction(s)
    computed = [(s * q) * k, s * (q * k) if math.isfinite(q * k) else 0.0, q * (s * k),
                (math.sqrt(s) * q) * (math.sqrt(s) * k)]
    r = np.array([max(s, q, k, math.sqrt(s) * q, math.sqrt(s) * k)])
    bound = float(pm._underflow_logit_error(r, 2, 1, "float64", 0.0)[0])
    rel = 2 * 2.0**-53 * float(abs(exact))  # two relative roundings
    for c in computed:
        assert float(abs(Fraction(c) - exact)) <= bound + rel
    assert max(float(abs(Fraction(c) - exact)) for c in computed) > rel  # the relative part alone is not enough


def test_ordinary_tolerances_stay_tight(monkeypatch):
    rng = np.random.default_rng(3)
    inst = make_instance(*(rng.uniform(-1, 1, (64, 16)) for _ in range(3)), scale=Fraction(1, 4))
    tol = pm.softmax_tolerance(inst, pm.PrecisionModel("float64"))
    assert float(tol.max()) < 1e-12 * float(np.abs(inst.v).max())
    # the formula before this change (no underflow term; the scale-rounding term is 0 for a float scale)
    monkeypatch.setattr(pm, "_underflow_logit_error", lambda *args: 0.0)
    old = pm.softmax_tolerance(inst, pm.PrecisionModel("float64"))
    assert np.all(tol >= old) and float((tol / old).max()) < 1 + 1e-12


def test_scale_rounding_error():
    assert pm.scale_rounding_error(Fraction(1, 2), "float64", "float64") == 0
    assert pm.scale_rounding_error(Fraction(float(np.float32(0.1))), "float32", "float32") == 0
    e64 = pm.scale_rounding_error(Fraction(1, 3), "float64", "float64")
    e32 = pm.scale_rounding_error(Fraction(1, 3), "float32", "float32")
    assert Fraction(e64) >= abs(Fraction(1.0 / 3) - Fraction(1, 3)) > 0
    assert Fraction(e32) >= abs(Fraction(float(np.float32(1 / 3))) - Fraction(1, 3)) and e32 > 1e3 * e64


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_exact_rounded_tolerance_covers_the_rounded_scale(dtype):
    rng = np.random.default_rng(5)
    inst = make_instance(*(rng.uniform(-3, 3, (6, 3)).astype(dtype) for _ in range(3)), scale=Fraction(1, 3))
    model = pm.PrecisionModel(dtype, exact_rounded=True)
    tol = pm.softmax_tolerance(inst, model)
    col = np.abs(inst.v.astype(np.float64)).max(axis=0)
    base = 2 * model.u * col + pm.SMALLEST_NORMAL[dtype]
    assert (tol > base).all() and float((tol / base).max()) < 40  # the scale term, not a blanket widening
    exact = enclose(inst, 256).mid()
    for received in (float(inst.scale), float(np.float32(float(inst.scale)))):  # float64, then the dtype
        if dtype == "float64" and received != float(inst.scale):
            continue
        other = enclose(make_instance(inst.q, inst.k, inst.v, scale=received), 128).mid()
        # the sensitivity bound alone: |o(s') − o(s)| ≤ |s' − s|·P_i·‖v_{:,l}‖∞
        assert (np.abs(other - exact) <= tol - base * (1 - 2.0**-30)).all()
        rounded = other.astype(dtype)  # the exact answer for the received scale, rounded once
        assert judge(rounded, lambda p: enclose(inst, p), tol).status == PASS


def test_dynamic_tolerance_is_positive_for_subnormal_values():
    label, trace = edge.dynamic_edge_traces()[0]
    assert label.startswith("subnormal_v")
    h = pm.History()
    h.start(trace.ops[0])
    tol = pm.dynamic_tolerance(h, True)
    assert 0 < tol < 1e-300 and not pm.vacuous(tol, h, True)
