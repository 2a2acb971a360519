"""HMV → OAMV / ODAMV: the source problem, the round trip on generated instances with the built-in
backends, the margin (numerically), refusal of imprecise declarations, and detection of broken structures."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from attnspec.conformance.harness.builtin_backends import numpy_backend, reference_backend
from attnspec.conformance.harness.capabilities import validate_capabilities
from attnspec.conformance.harness.isolation import InProcessRunner, ProcessRunner
from attnspec.conformance.judging.precision_model import PrecisionModel
from attnspec.reductions import hmv
from attnspec.reductions.base import ReductionError, run_reduction
from attnspec.reductions.hmv_to_dynamic_attention import HMV_TO_OAMV, HMV_TO_ODAMV, hint_scale
from attnspec.reductions.registry import get_reduction
from attnspec.spec.dynamic_attention import Query, UpdateK

import reduction_broken_backends as rb

REDUCTIONS = [HMV_TO_OAMV, HMV_TO_ODAMV]


def instances(count_per_family: int, sizes=(3, 5, 8, 11), taus=(0.5, 0.9), seed=0):
    """Seeded HMV instances of every family, several n and τ."""
    rng = np.random.default_rng(seed)
    out = []
    for fam, n, tau in itertools.product(hmv.FAMILIES, sizes, taus):
        for _ in range(count_per_family):
            out.append((fam, *HMV_TO_OAMV.generate(fam, n, rng, tau=tau)))
    return out


# ---------------------------------------------------------------- the source problem


def test_brute_force_is_the_boolean_product_and_families_keep_their_promise():
    for fam, inst, _ in instances(2):
        truth = hmv.solve(inst)
        dense = (inst.m.astype(int) @ inst.p.T.astype(int) @ inst.v.astype(int))[:, inst.index] > 0
        assert truth.witness == tuple(int(b) for b in dense)
        assert truth.decision == bool(dense.any())
        if hmv.expected_decision(fam) is not None:
            assert truth.decision == hmv.expected_decision(fam), fam
        assert int(inst.p.sum()) <= hmv.hint_budget(inst.n, inst.tau)


@pytest.mark.parametrize("bad, message", [
    (dict(m=np.full((3, 3), 2)), "only 0 and 1"),
    (dict(p=np.ones((3, 3))), "more than"),
    (dict(index=3), "index"),
    (dict(v=np.zeros((2, 2))), "is 2×2"),
    (dict(tau=0.0), "τ"),
])
def test_make_instance_refuses_bad_input(bad, message):
    args = dict(m=np.eye(3), v=np.eye(3), p=np.zeros((3, 3)), index=0, tau=0.5) | bad
    with pytest.raises(ValueError, match=message):
        hmv.make_instance(**args)


def test_hint_scale_is_an_exact_power_of_two_below_one_over_t_plus_one():
    for t in range(0, 300):
        s = hint_scale(t)
        assert s <= 1 / (t + 1) and s * t < 1 and np.frexp(s)[0] == 0.5


# ---------------------------------------------------------------- the construction


def test_trace_shape_init_updates_queries():
    inst = hmv.make_instance(np.eye(4), np.eye(4), np.diag([1, 0, 0, 0]), 2, 0.5)
    for red, queries, width in ((HMV_TO_OAMV, 4, 4), (HMV_TO_ODAMV, 8, 5)):
        built = red.build(inst, {})
        ops = built.cases[0].instance.ops
        assert np.asarray(ops[0].k).shape == (width, width) and not np.asarray(ops[0].k).any()
        assert [op for op in ops if isinstance(op, UpdateK)] == [UpdateK(0, 0, 0.5)]
        assert sum(isinstance(op, Query) for op in ops) == queries
        assert "conjecture_status" in built.meta["caveats"] and "query_accounting" in built.meta["caveats"]


def test_margin_holds_numerically_on_near_threshold_instances():
    """Perturb the exact answers by up to the margin (signs chosen against the decoding): still right."""
    runner = InProcessRunner(reference_backend())
    rng = np.random.default_rng(5)
    for red in REDUCTIONS:
        for fam in ("adversarial_yes", "adversarial_no", "random"):
            src, params = red.generate(fam, 9, rng, tau=0.9)
            built = red.build(src, params)
            exact = np.asarray(runner.request(*_request(built), max_output_elements=10**6).output)
            margin = red.required_accuracy(built)
            truth = red.brute_force(src)
            for signs in (1.0, -1.0):
                noise = margin * np.where(np.arange(exact.size) % 2 == 0, signs, -signs)
                assert red.decode(built, [exact + noise]).same_answer(truth)
            # the margin is not vacuous: one gap's error flips an OAMV bit
            if red is HMV_TO_OAMV and fam == "adversarial_yes":
                assert not red.decode(built, [exact - 2 * red._threshold(built)]).same_answer(truth)


def _request(built):
    from attnspec.conformance.judging.problems import get_problem

    kind, target, args, kwargs = get_problem("dynamic_attention").request(built.cases[0])
    return kind, target, args, kwargs


# ---------------------------------------------------------------- round trips (≥ 200 per reduction)


@pytest.mark.parametrize("red", REDUCTIONS, ids=lambda r: r.name)
def test_round_trip_reference_and_numpy_agree_with_brute_force(red):
    runners = {"reference": InProcessRunner(reference_backend()), "numpy": InProcessRunner(numpy_backend())}
    cases = instances(3, sizes=(2, 4, 7, 10), taus=(0.5, 0.9), seed=11)  # 5 families × 4 n × 2 τ × 3 = 120
    seen = {True: 0, False: 0}
    total = 0
    for name, runner in runners.items():
        for fam, src, params in cases:
            outcome = run_reduction(red, src, params, runner)
            assert outcome.status == "agree", (name, fam, outcome.to_json())
            seen[outcome.truth.decision] += 1
            total += 1
    assert total >= 200 and seen[True] > 40 and seen[False] > 40


def test_judged_outputs_are_certified_within_the_margin():
    runner = InProcessRunner(numpy_backend())
    for red, (fam, src, params) in zip(REDUCTIONS * 3, instances(1, sizes=(6,), taus=(0.9,), seed=3)):
        outcome = run_reduction(red, src, params, runner, judge=True)
        assert outcome.status == "agree"
        (call,) = outcome.calls
        assert call.status == "pass" and call.certified_error is not None and call.certified_error < outcome.margin


def test_process_runner_round_trip_and_broken_worker():
    rng = np.random.default_rng(8)
    srcs = [HMV_TO_ODAMV.generate(f, 6, rng, tau=0.9) for f in ("planted_yes", "adversarial_yes", "random")]
    with ProcessRunner("numpy", timeout=60) as runner:
        assert all(run_reduction(HMV_TO_ODAMV, s, p, runner).status == "agree" for s, p in srcs)
    with ProcessRunner(rb.SPEC_PREFIX + "UniformInitShortcutBackend", timeout=60) as runner:
        assert any(run_reduction(HMV_TO_ODAMV, s, p, runner).status == "wrong" for s, p in srcs)


# ---------------------------------------------------------------- refusal, faults, broken structures


@pytest.mark.parametrize("backend, needle", [(rb.CoarseBackend(), "bfloat16"), (rb.LooseContractBackend(), "ε_a = 0.5")])
def test_imprecise_declaration_is_refused_before_running(backend, needle):
    class Exploding(rb._Backend):
        capabilities = backend.capabilities
        structure = rb.RaisesOnQuery.structure

    runner = InProcessRunner(Exploding())
    rng = np.random.default_rng(2)
    for red in REDUCTIONS:
        src, params = red.generate("random", 12, rng, tau=0.9)
        outcome = run_reduction(red, src, params, runner)
        assert outcome.status == "refused" and not outcome.calls  # never sent
        assert needle in outcome.refused and "margin" in outcome.refused


def test_float64_model_margin_is_met_and_a_tighter_margin_is_refused(monkeypatch):
    caps = validate_capabilities({"problems": {"dynamic_attention"}}, default_problems=set())
    src, params = HMV_TO_ODAMV.generate("random", 8, np.random.default_rng(1), tau=0.5)
    built = HMV_TO_ODAMV.build(src, params)
    assert HMV_TO_ODAMV.refusal(built, caps) is None
    tol, origin = HMV_TO_ODAMV.declared_tolerance(built, caps)
    assert 0 < tol < HMV_TO_ODAMV.required_accuracy(built)
    monkeypatch.setattr(type(HMV_TO_ODAMV), "required_accuracy", lambda self, b: tol / 2)
    assert "not below the decoding margin" in HMV_TO_ODAMV.refusal(built, caps)
    exact = validate_capabilities({"problems": {"dynamic_attention"},
                                   "precision": {"float64": PrecisionModel("float64", exact_rounded=True)}}, default_problems=set())
    assert HMV_TO_ODAMV.declared_tolerance(built, exact)[1].startswith("exact_rounded")


def test_backend_fault_becomes_a_reduction_error_for_that_instance():
    runner = InProcessRunner(rb.RaisesOnQuery())
    src, params = HMV_TO_OAMV.generate("planted_yes", 5, np.random.default_rng(0), tau=0.5)
    outcome = run_reduction(HMV_TO_OAMV, src, params, runner)
    assert outcome.status == "error" and outcome.error_kind == "exception" and "query exploded" in outcome.error
    assert outcome.detected and outcome.agree is None
    assert issubclass(ReductionError, RuntimeError)


@pytest.mark.parametrize("name", sorted(rb.REDUCTION_SHAPED) + sorted(rb.CATALOGUE))
def test_broken_structures_are_detected(name):
    structure = rb.REDUCTION_SHAPED.get(name) or rb.CATALOGUE[name]
    runner = InProcessRunner(rb.backend_for(structure))
    reds = [HMV_TO_ODAMV] if name in rb.ODAMV_ONLY else REDUCTIONS
    for red in reds:
        rng = np.random.default_rng(4)
        srcs = [red.generate(f, 16, rng, tau=0.8) for f in hmv.FAMILIES]
        outcomes = [run_reduction(red, s, p, runner, judge=True) for s, p in srcs]
        assert any(o.detected for o in outcomes), (name, red.name, [o.status for o in outcomes])


def test_uniform_shortcut_passes_random_traces_but_not_the_reduction():
    """The bug is reduction-shaped: random traces never start at K = 0, every HMV trace does."""
    from attnspec.conformance.judging.dynamic_attention import _random_trace, run_trace

    rng = np.random.default_rng(6)
    for normalised in (True, False):
        trace = _random_trace(rng, normalised, n=7, d=3, dv=2, m=5, scale=1.0, steps=30, style="mixed")
        assert run_trace(trace, rb.UniformInitShortcut).passed
    src, params = HMV_TO_OAMV.generate("planted_yes", 8, rng, tau=0.9)
    runner = InProcessRunner(rb.backend_for(rb.UniformInitShortcut))
    for red in REDUCTIONS:
        assert run_reduction(red, src, params, runner).status == "wrong"


def test_registry_names_both_reductions():
    assert get_reduction("hmv_to_oamv") is HMV_TO_OAMV and get_reduction("hmv_to_odamv") is HMV_TO_ODAMV
    with pytest.raises(ValueError, match="known"):
        get_reduction("nope")
