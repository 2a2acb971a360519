"""conformance/judging/heavy_keys.py: the heavy_entries and universal_set problems, their verdicts, and the
catalogue (every broken backend caught by the quick profile, every correct one passes)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

import heavy_keys_catalogue as cat
from attnspec.conformance.harness.backends import read_capabilities
from attnspec.conformance.harness.builtin_backends import numpy_backend, reference_backend
from attnspec.conformance.harness.capabilities import CapabilityError, validate_capabilities
from attnspec.conformance.harness.isolation import InProcessRunner
from attnspec.conformance.harness.runner import judge_one
from attnspec.conformance.judging.heavy_keys import HeavyEntriesCase, heavy_entries_problem as HEAVY
from attnspec.conformance.judging.heavy_keys import universal_set_problem as UNIVERSAL
from attnspec.conformance.judging.problems import backend_methods, get_problem
from attnspec.reference.heavy_keys import heavy_reference, universal_reference
from attnspec.spec.heavy_keys import make_heavy_instance

CASES = HEAVY.generate_cases("quick") + UNIVERSAL.generate_cases("quick")


def caps_with(slack=0.0):
    return validate_capabilities({"problems": ["heavy_entries", "universal_set"], "heavy_slack": slack},
                                 default_problems=set())


def case_of(q, k, eps, p):
    return HeavyEntriesCase("heavy_entries/float64/test/000", "test", "float64", 0, make_heavy_instance(q, k, eps=eps, p=p))


def test_both_problems_are_registered_with_their_methods():
    assert get_problem("heavy_entries") is HEAVY and get_problem("universal_set") is UNIVERSAL
    assert backend_methods()["heavy_entries"] == "heavy_entries"
    assert backend_methods()["universal_set"] == "universal_set"


def test_the_quick_profile_is_small_deterministic_and_covers_every_family():
    for problem in (HEAVY, UNIVERSAL):
        cases = problem.generate_cases("quick")
        assert 20 <= len(cases) <= 40
        assert {c.family for c in cases} == set(problem.families())
        again = problem.generate_cases("quick")
        assert all(np.array_equal(a.instance.k, b.instance.k) for a, b in zip(cases, again))
        assert len({c.case_id for c in cases}) == len(cases)


@pytest.mark.parametrize("problem", [HEAVY, UNIVERSAL], ids=lambda p: p.name)
def test_interface_request_sizes_and_case_files(problem):
    for case in problem.generate_cases("quick", ("float32",)):
        kind, target, args, kwargs = problem.request(case)
        assert (kind, target) == ("call", problem.method) and set(kwargs) == {"eps", "p"}
        assert Fraction(kwargs["eps"]) == case.instance.eps  # the backend receives the exact ε judged
        assert all(a.dtype == np.float32 for a in args)
        arrays = problem.instance_arrays(case.instance)
        back = problem.instance_from_files(arrays, problem.instance_params(case.instance))
        assert (back.eps, back.p) == (case.instance.eps, case.instance.p)
        for key, arr in problem.instance_arrays(back).items():
            np.testing.assert_array_equal(arr, arrays[key])
        exact = heavy_reference(case.instance).heavy() if problem is HEAVY else universal_reference(case.instance).tau
        assert problem.expected_output_elements(case) >= np.size(exact)


def test_every_reason_is_reported():
    case = next(c for c in HEAVY.generate_cases("quick", ("float32",)) if c.instance.n > 2 and c.instance.d > 2)
    caps = caps_with()
    caps.problems, caps.dtypes, caps.max_n, caps.max_d = {"universal_set"}, {"float64"}, 1, 1
    assert len(HEAVY.not_applicable_reasons(case, caps)) == 4


def test_heavy_slack_capability_is_validated():
    assert validate_capabilities({}, default_problems=set()).heavy_slack == 0
    for bad in (-1e-3, float("inf"), True, "0.1"):
        with pytest.raises(CapabilityError, match="heavy_slack"):
            validate_capabilities({"heavy_slack": bad}, default_problems=set())


@pytest.mark.parametrize("output, message", [
    (np.array([[0.0, 1.0]]), "must be integers"), (np.array([0, 1]), "expected"), (np.array([[0, 5]]), "outside"),
    (np.array([[-1, 0]]), "outside"), (np.array([[0, 1], [0, 1]]), "repeats"), ("0 1", "must be integers"),
])
def test_malformed_heavy_entries_are_errors(output, message):
    case = case_of(np.eye(2), np.eye(2), 0.5, 2)
    verdict = HEAVY.judge(case, output, caps_with())
    assert verdict.status == "error" and message in verdict.message


def test_malformed_universal_sets_are_errors():
    case = UNIVERSAL.generate_cases("quick")[0]
    for output, message in ((np.array([1, 0]), "sorted"), (np.array([0, 0]), "sorted"), (np.array([[0]]), "shape"),
                            (np.array([case.instance.n]), "outside"), (np.array([0.0]), "integers")):
        verdict = UNIVERSAL.judge(case, output, caps_with())
        assert verdict.status == "error" and message in verdict.message


def test_a_missing_entry_fails_with_its_exact_value_and_the_exact_answer_passes():
    case = case_of(np.array([[1.0, 1.0], [0.0, 0.0]]), np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), 0.25, 2)
    exact = heavy_reference(case.instance).heavy()
    assert exact.tolist() == [[0, 0], [0, 1], [0, 2]]  # A = 1/3 each; the zero row has none
    assert HEAVY.judge(case, exact, caps_with()).status == "pass"
    verdict = HEAVY.judge(case, exact[:2], caps_with())
    assert verdict.status == "fail" and verdict.evidence["missing"] == [
        {"index": [0, 2], "value": {"exact": "1/3", "float": 1 / 3}}]
    empty = HEAVY.judge(case_of(np.zeros((1, 2)), np.eye(2), 0.5, 4), np.zeros((0, 2), dtype=np.int64), caps_with())
    assert empty.status == "pass"


def test_extra_answers_pass_only_within_the_declared_slack():
    """q = (1, 1), keys e_0, 2e_1 (p = 2): A = (1/5, 4/5). With ε = 1/4, the entry 1/5 is ≥ ε/(1+s) only for
    s ≥ 1/4."""
    case = case_of(np.array([[1.0, 1.0]]), np.array([[1.0, 0.0], [0.0, 2.0]]), 0.25, 2)
    both = np.array([[0, 0], [0, 1]])
    assert HEAVY.judge(case, both, caps_with(0.25)).status == "pass"
    low = HEAVY.judge(case, both, caps_with(0.2))
    assert low.status == "fail" and low.evidence["below_floor"][0]["value"]["exact"] == "1/5"
    u_case = UNIVERSAL.generate_cases("quick")[0]
    everything = np.arange(u_case.instance.n)
    verdict = UNIVERSAL.judge(u_case, everything, caps_with())
    assert verdict.status == "fail" and verdict.evidence["below_floor_count"] > 0


def _records(backend):
    runner = InProcessRunner(backend)
    caps = read_capabilities(backend)
    return [judge_one(c, runner, caps) for c in CASES]


@pytest.mark.parametrize("backend_cls", cat.BROKEN, ids=lambda c: c.__name__)
def test_broken_backend_is_caught(backend_cls):
    records = _records(backend_cls())
    caught = [r for r in records if r["status"] in ("fail", "error")]
    assert caught, f"{backend_cls.__name__} ({backend_cls.__doc__}) passed every case"
    assert all(r["status"] != "undecided" for r in records)


@pytest.mark.parametrize("backend_cls, family", [(cat.RowNorms, "planted"), (cat.Float32Gram, "near_dependent"),
                                                 (cat.DropsTies, "ties"), (cat.Ridge, "ties"),
                                                 (cat.DropsLastKey, "planted")], ids=lambda x: getattr(x, "__name__", x))
def test_the_family_aimed_at_a_mistake_catches_it(backend_cls, family):
    records = [r for r in _records(backend_cls()) if r["family"] == family]
    assert any(r["status"] == "fail" and "missing" in r["evidence"] for r in records)


@pytest.mark.parametrize("backend_cls", cat.CORRECT, ids=lambda c: c.__name__)
def test_correct_backend_passes(backend_cls):
    bad = [(r["case_id"], r["status"], r["message"]) for r in _records(backend_cls()) if r["status"] != "pass"]
    assert not bad, bad


def test_the_builtin_reference_backend_passes_exactly():
    backend = reference_backend()
    assert read_capabilities(backend).heavy_slack == 0
    bad = [(r["case_id"], r["status"], r["message"]) for r in _records(backend) if r["status"] != "pass"]
    assert not bad, bad


def test_the_builtin_numpy_backend_passes():
    bad = [(r["case_id"], r["status"], r["message"]) for r in _records(numpy_backend()) if r["status"] != "pass"]
    assert not bad, bad


@pytest.mark.parametrize("problem", [HEAVY, UNIVERSAL], ids=lambda p: p.name)
def test_case_files_round_trip_and_keep_the_verdict(problem, tmp_path):
    from attnspec.conformance.harness.case_files import load_case, save_case

    case = next(c for c in problem.generate_cases("quick") if c.family == "ties")
    loaded, _manifest = load_case(save_case(tmp_path, case))
    assert (loaded.case_id, loaded.problem, loaded.instance.eps, loaded.instance.p) == (
        case.case_id, case.problem, case.instance.eps, case.instance.p)
    exact = heavy_reference(case.instance).heavy() if problem is HEAVY else np.array(
        universal_reference(case.instance).at_least(case.instance.eps))
    assert problem.judge(loaded, exact, caps_with()).status == "pass"
    assert problem.judge(loaded, exact[:-1], caps_with()).status == "fail"
