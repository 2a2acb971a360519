"""Gap-MaxIP → softmax attention and → tensor attention: round trips against brute force, the margin
(numerically exact, and tight on the adversarial family), refusals naming the numbers, and backends that
are wrong only on reduction-shaped inputs."""

from __future__ import annotations

import itertools
import sys
from collections import Counter
from pathlib import Path

import mpmath
import numpy as np
import pytest

from attnspec.conformance.harness.backends import read_capabilities
from attnspec.conformance.harness.builtin_backends import PolynomialBackend, numpy_backend, poly_backend, reference_backend
from attnspec.conformance.harness.isolation import InProcessRunner, ProcessRunner
from attnspec.conformance.judging.precision_model import PrecisionModel
from attnspec.reductions import maxip
from attnspec.reductions.base import ReductionError, run_reduction
from attnspec.reductions.maxip_gadget import decode_gadget
from attnspec.reductions.maxip_to_softmax_attention import MAXIP_TO_SOFTMAX as SOFTMAX
from attnspec.reductions.maxip_to_tensor_attention import MAXIP_TO_TENSOR as TENSOR
from attnspec.reductions.registry import get_reduction

sys.path.insert(0, str(Path(__file__).parent))
import maxip_broken_backends as broken  # noqa: E402

TESTS = Path(__file__).parent
RUNNERS = {"reference": InProcessRunner(reference_backend()), "numpy": InProcessRunner(numpy_backend())}
# (reduction, n, extra generator/build parameters): every dummy kind, orders 2, 3 and 4
SOFTMAX_SETUPS = [(SOFTMAX, 8, {}), (SOFTMAX, 6, {"dummy": "zero"}), (SOFTMAX, 8, {"dummy": "max"}), (SOFTMAX, 5, {"lam": 1e4})]
TENSOR_SETUPS = [(TENSOR, 4, {}), (TENSOR, 5, {"dummy": "zero"}), (TENSOR, 3, {"order": 4}), (TENSOR, 4, {"order": 2})]


def _instances(setups, per_family, seed):
    rng = np.random.default_rng(seed)
    for reduction, n, extra in setups:
        for family in maxip.FAMILIES:
            for _ in range(per_family):
                source, params = reduction.generate(family, n, rng, **extra)
                yield reduction, family, source, params


@pytest.mark.parametrize("backend", sorted(RUNNERS))
@pytest.mark.parametrize("setups", [SOFTMAX_SETUPS, TENSOR_SETUPS], ids=["softmax", "tensor"])
def test_round_trip_on_200_instances_equals_brute_force(setups, backend):
    statuses, decisions, paths = Counter(), Counter(), Counter()
    for reduction, family, source, params in _instances(setups, 9, seed=len(setups)):
        outcome = run_reduction(reduction, source, params, RUNNERS[backend])
        statuses[outcome.status] += 1
        assert outcome.status == "agree", (family, outcome.to_json())
        assert outcome.decoded.decision == outcome.truth.decision == maxip.expected_decision(family)
        decisions[(family.split("_")[0], outcome.truth.decision)] += 1
        paths[outcome.decoded.certificate.get("witness_path")] += 1
        if outcome.truth.certificate["unique_above_lo"]:
            assert outcome.decoded.witness == outcome.truth.witness
    assert sum(statuses.values()) >= 200
    assert all(decisions[(kind, d)] >= 20 for kind in ("planted", "random", "adversarial") for d in (True, False))
    assert paths["bits"] >= 60  # the witness read from one row is the usual path


def _exact_t0(source, built):
    """T_i0 = S_i/(S_i + m) at 50 digits, straight from the source and the gadget's exact β and dummies."""
    case = built.cases[0].instance
    beta = built.meta["theorem"]["beta"]
    ips = maxip.inner_products(source.a, source.sets).reshape(source.n, -1)
    with mpmath.workdps(50):
        mass = mpmath.exp(built.meta["gadget"]["log_dummy_mass"])
        return [float((s := sum(mpmath.exp(beta * int(x)) for x in row)) / (s + mass)) for row in ips], case


@pytest.mark.parametrize("reduction,n,extra", SOFTMAX_SETUPS[:3] + TENSOR_SETUPS[:3])
def test_gadget_outputs_match_the_row_sum_formula(reduction, n, extra):
    """The reference output's column 0 equals S/(S + m) computed from the source (verifies the dummy
    mass and the logits), and the zero query rows equal the exact values the decoder checks."""
    source, params = reduction.generate("random_yes", n, np.random.default_rng(11), **extra)
    built = reduction.build(source, params)
    expected, _ = _exact_t0(source, built)
    out = RUNNERS["reference"].request("call", *_call(reduction, built)).output
    np.testing.assert_allclose(out[:n, 0], expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(out[n:], np.broadcast_to(built.decoder["padding_row"], out[n:].shape), atol=1e-15)


def _call(reduction, built):
    from attnspec.conformance.judging.problems import get_problem

    _, target, args, kwargs = get_problem(reduction.target_problem).request(built.cases[0])
    return target, args, kwargs


@pytest.mark.parametrize("reduction,n,extra", [(SOFTMAX, 6, {"dummy": "zero"}), (SOFTMAX, 6, {}), (TENSOR, 4, {})])
def test_margin_is_sufficient_and_tight_on_the_adversarial_family(reduction, n, extra):
    rng = np.random.default_rng(2)
    for family in ("adversarial_no", "adversarial_yes"):
        source, params = reduction.generate(family, n, rng, **extra)
        built = reduction.build(source, params)
        eps = built.decoder["required_accuracy"]
        exact = RUNNERS["reference"].request("call", *_call(reduction, built)).output
        truth = maxip.solve(source)
        # Worst admissible error: every real-row entry pushed by 0.999·ε towards the wrong answer.
        push = -1 if truth.decision else 1
        worst = exact.copy()
        worst[:n, 0] += push * 0.999 * eps
        bits = worst[:n, 1:]
        worst[:n, 1:] = np.where(bits > exact[:n, :1] / 2, bits - 0.999 * eps, bits + 0.999 * eps)
        assert reduction.agrees(source, decode_gadget(source, built.decoder, worst), truth)
        if not truth.decision:  # every NO row sits exactly at T(H): the NO side of the margin is attained
            np.testing.assert_allclose(exact[:n, 0], built.decoder["t_no"], rtol=1e-12)
            flipped = exact.copy()
            flipped[:n, 0] += (built.decoder["t_star"] - built.decoder["t_no"]) * (1 + 1e-6)
            assert decode_gadget(source, built.decoder, flipped).decision is True
        else:
            assert exact[:n, 0].max() >= built.decoder["t_yes"] - 1e-15


def test_margin_needs_beta_above_the_separation_condition():
    source, params = SOFTMAX.generate("planted_yes", 8, np.random.default_rng(0))
    built = SOFTMAX.build(source, {**params, "beta": np.log(8) / source.gap * 0.9})  # G < H
    assert built.decoder["required_accuracy"] == 0
    assert "no margin" in SOFTMAX.refusal(built, read_capabilities(reference_backend()))


def test_theorem_parameters_are_reported():
    source, params = TENSOR.generate("planted_yes", 5, np.random.default_rng(0))
    built = TENSOR.build(source, params)
    th = built.meta["theorem"]
    inst = built.cases[0].instance
    assert th["d"] == inst.d and th["c"] == pytest.approx(inst.d / np.log(5))
    assert th["B"] == float(max(np.abs(inst.q).max(), *(np.abs(k).max() for k in inst.keys)))
    assert th["C_b"] == pytest.approx(th["B"] / np.log(5) ** (1 / 3))
    assert 5 ** -th["C_a"] == pytest.approx(th["eps_a_needed"])
    assert th["beta"] * th["gap"] >= np.log(th["lambda"] * 25) - 1e-12


class _Counting:
    """Wraps a backend and counts its calls (a refused instance must never reach it)."""

    def __init__(self, inner, capabilities):
        self.inner, self.capabilities, self.calls = inner, capabilities, 0

    def attention(self, *args, **kwargs):
        self.calls += 1
        return self.inner.attention(*args, **kwargs)

    def tensor_attention(self, *args, **kwargs):
        self.calls += 1
        return self.inner.tensor_attention(*args, **kwargs)


def test_imprecise_precision_model_is_refused_before_the_run():
    caps = {"problems": {"softmax_attention"}, "dtypes": {"float64"}, "precision": {"float64": PrecisionModel("float16")}}
    backend = _Counting(numpy_backend(), caps)
    source, params = SOFTMAX.generate("planted_yes", 6, np.random.default_rng(0), dummy="zero")
    outcome = run_reduction(SOFTMAX, source, params, InProcessRunner(backend))
    assert outcome.status == "refused" and backend.calls == 0
    assert "float16 precision model allows errors up to" in outcome.refused
    assert f"{outcome.margin:.3g}" in outcome.refused


def test_contract_backend_refused_exactly_when_its_eps_reaches_the_margin():
    source, params = SOFTMAX.generate("adversarial_no", 6, np.random.default_rng(0), dummy="zero")
    built = SOFTMAX.build(source, params)
    margin = SOFTMAX.required_accuracy(built)
    for eps, refused in ((margin / 2, False), (margin * 1.01, True)):
        caps = read_capabilities(_Counting(numpy_backend(), {"contract_eps": eps, "bound": 100.0}))
        message = SOFTMAX.refusal(built, caps)
        assert (message is not None) == refused
        if refused:
            assert f"ε_a = {eps:g}" in message and "not below the margin" in message


def test_polynomial_backend_refused_past_the_entry_bound():
    """The tensor gadget needs entries B = (β·d)^(1/3) = C_b·∛ln n; the polynomial method's contract
    (ε_a = 1e-6, B = 1) does not cover them: refused before the run, with the numbers."""
    rng = np.random.default_rng(0)
    seen = []
    for n in (2, 4, 8):
        source, params = TENSOR.generate("planted_yes", n, rng, d=6, w=2, tau_hi=2, tau_lo=1, dummy="zero")
        outcome = run_reduction(TENSOR, source, params, InProcessRunner(poly_backend()))
        th = outcome.built.meta["theorem"]
        assert outcome.status == "refused" and th["B"] > 1
        assert f"entries reach {th['B']:g} > declared bound B = 1" in outcome.refused
        assert f"{th['C_b']:.3g}·(ln n)^(1/3)" in outcome.refused
        seen.append(th["B"])
    assert seen == sorted(seen)  # B grows with n at fixed d (β ≥ ln(λn²)/Δ)
    # A polynomial backend declaring a bound above the entries is judged by its ε_a against the margin.
    big = read_capabilities(PolynomialBackend(eps=1e-6, bound=8.0))
    built = TENSOR.build(source, params)
    assert (TENSOR.refusal(built, big) is None) == (1e-6 < TENSOR.required_accuracy(built))
    big_beta = TENSOR.build(source, {**params, "beta": 12.0})  # larger entries, margin below 1e-6
    assert TENSOR.required_accuracy(big_beta) < 1e-6
    assert "not below the margin" in TENSOR.refusal(big_beta, read_capabilities(PolynomialBackend(eps=1e-6, bound=64.0)))


CAUGHT = [
    (SOFTMAX, broken.MasksZeroKeys, {"dummy": "zero"}, False),
    (SOFTMAX, broken.DedupesRepeatedKeys, {"dummy": "max"}, False),
    (SOFTMAX, broken.DedupesRepeatedKeys, {}, False),
    (SOFTMAX, broken.LiesAboutFloat16, {"dummy": "zero"}, True),
    (TENSOR, broken.ReversesKroneckerOnBinaryValues, {}, True),
    (TENSOR, broken.DropsLastTupleWhenPadded, {}, True),
]


@pytest.mark.parametrize("reduction,backend,extra,judge", CAUGHT, ids=lambda x: getattr(x, "__name__", None))
def test_backends_wrong_only_on_reduction_inputs_are_caught(reduction, backend, extra, judge):
    runner = InProcessRunner(backend())
    rng = np.random.default_rng(4)
    outcomes = []
    for family in ("planted_yes", "adversarial_yes", "planted_no", "adversarial_no"):
        for _ in range(2):
            source, params = reduction.generate(family, 5, rng, **extra)
            outcomes.append(run_reduction(reduction, source, params, runner, judge=judge))
    shown = 0
    for o in outcomes:  # caught wherever the bug changes the output at all
        exact = RUNNERS["reference"].request("call", *_call(reduction, o.built)).output
        buggy = runner.request("call", *_call(reduction, o.built)).output
        if np.abs(buggy - exact).max() > 1e-12:
            shown += 1
            assert o.detected and o.status in ("wrong", "error", "judged_fail"), o.status
    assert shown >= len(outcomes) // 2


def test_wrong_kronecker_order_gives_a_wrong_witness_without_judging():
    runner = InProcessRunner(broken.ReversesKroneckerOnBinaryValues())
    rng = np.random.default_rng(8)
    wrong = 0
    for _ in range(6):
        source, params = TENSOR.generate("adversarial_yes", 5, rng)
        outcome = run_reduction(TENSOR, source, params, runner)
        planted = outcome.truth.witness
        assert outcome.status == ("agree" if planted[1] == planted[2] else "wrong")
        wrong += outcome.status == "wrong"
    assert wrong >= 3


def test_an_inconsistent_answer_is_an_error_naming_the_padding_rows():
    source, params = SOFTMAX.generate("planted_no", 5, np.random.default_rng(0))
    built = SOFTMAX.build(source, params)
    exact = RUNNERS["reference"].request("call", *_call(SOFTMAX, built)).output
    exact[-1, 0] += 2 * built.decoder["required_accuracy"]
    with pytest.raises(ReductionError, match="zero query row") as info:
        SOFTMAX.decode(built, [exact])
    assert info.value.kind == "inconsistent"


def test_correct_backends_pass_the_certified_judgement():
    rng = np.random.default_rng(6)
    for reduction, n, extra in (SOFTMAX_SETUPS[0], SOFTMAX_SETUPS[2], TENSOR_SETUPS[0], TENSOR_SETUPS[2]):
        for family in ("planted_yes", "random_no"):
            source, params = reduction.generate(family, n, rng, **extra)
            for runner in RUNNERS.values():
                outcome = run_reduction(reduction, source, params, runner, judge=True)
                assert outcome.status == "agree" and [c.status for c in outcome.calls] == ["pass"]


def test_through_worker_processes():
    rng = np.random.default_rng(9)
    jobs = [(SOFTMAX, *SOFTMAX.generate("adversarial_yes", 6, rng)), (TENSOR, *TENSOR.generate("planted_yes", 4, rng))]
    with ProcessRunner("numpy", timeout=60) as runner:
        for reduction, source, params in jobs:
            assert run_reduction(reduction, source, params, runner).status == "agree"
    with ProcessRunner(f"{TESTS / 'maxip_broken_backends.py'}:ReversesKroneckerOnBinaryValues", timeout=60) as runner:
        assert run_reduction(TENSOR, jobs[1][1], jobs[1][2], runner, judge=True).detected
    with ProcessRunner("poly", timeout=60) as runner:
        assert run_reduction(TENSOR, jobs[1][1], jobs[1][2], runner).status == "not_applicable"  # d > max_d


def test_registered_and_generated_from_the_instance_record_alone():
    for name in ("maxip_to_softmax", "maxip_to_tensor"):
        reduction = get_reduction(name)
        source, params = reduction.generate("planted_yes", 4, np.random.default_rng(1), dummy="zero")
        # instance sets rebuild from {"generator": record} only: the build options travel in the record
        assert reduction.build(source, {"generator": params["generator"]}).decoder == reduction.build(source, params).decoder
    with pytest.raises(ValueError, match="unknown maxip_to_softmax parameters"):
        SOFTMAX.generate("planted_yes", 4, np.random.default_rng(1), dumy="zero")
    with pytest.raises(ValueError, match="max-logit dummy needs k = 2"):
        TENSOR.build(*TENSOR.generate("planted_yes", 4, np.random.default_rng(1), dummy="max"))


@pytest.mark.parametrize("name,n", [("maxip_to_softmax", 5), ("maxip_to_tensor", 4)])
def test_instance_sets_round_trip_and_name_a_tampered_array(tmp_path, name, n):
    from attnspec.reductions.instance_sets import generate_set, load_manifest, run_set, verify_set

    out = tmp_path / "set"
    generate_set(name, "all", n, 6, 3, out, parameters={"dummy": "zero"})
    assert verify_set(out) == []
    assert all(r["status"] == "agree" for r in run_set(out, InProcessRunner(numpy_backend())))
    record = load_manifest(out)["instances"][0]
    path = out / record["npz"]
    with np.load(path) as data:
        arrays = dict(data)
    arrays["source_a"] = 1 - arrays["source_a"]
    np.savez(path, **arrays)
    assert any(m.field == "arrays.source_a" for m in verify_set(out))
