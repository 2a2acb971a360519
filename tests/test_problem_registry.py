"""conformance/judging/problems.py: one registry, read by every layer; every problem implements the interface."""

from __future__ import annotations

import numpy as np
import pytest

from attnspec.conformance.harness.backends import read_capabilities
from attnspec.conformance.harness.builtin_backends import numpy_backend
from attnspec.conformance.judging import problems as registry
from attnspec.conformance.judging.problems import Problem, backend_methods, get_problem, problem_names

BUILTIN = ("softmax_attention", "tensor_attention", "dynamic_attention")


def test_builtin_problems_are_registered_with_their_methods():
    assert set(BUILTIN) <= set(problem_names())
    assert backend_methods()["softmax_attention"] == "attention"
    assert backend_methods()["tensor_attention"] == "tensor_attention"
    assert backend_methods()["dynamic_attention"] == "dynamic_attention"
    assert get_problem("dynamic_attention").request_kind == "drive"


def test_unknown_problem_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown problem 'softmax'.*softmax_attention"):
        get_problem("softmax")


def test_a_different_class_cannot_take_a_registered_name():
    class Impostor(type(get_problem("softmax_attention"))):  # type: ignore[misc]
        pass

    with pytest.raises(ValueError, match="already registered"):
        registry.register(Impostor())
    assert type(get_problem("softmax_attention")).__name__ == "SoftmaxAttention"


@pytest.mark.parametrize("name", BUILTIN)
def test_every_problem_implements_the_interface(name):
    """Cases, all reasons, the request, the output size, judging and the instance files, for the first
    case of each family."""
    problem = get_problem(name)
    assert isinstance(problem, Problem)
    caps = read_capabilities(numpy_backend())
    cases = problem.generate_cases("quick", ("float64",), 0)
    assert {c.family for c in cases} <= set(problem.families())
    seen: set[str] = set()
    for case in cases:
        if case.family in seen:
            continue
        seen.add(case.family)
        assert isinstance(case, problem.case_type) and case.problem == name
        kind, target, args, kwargs = problem.request(case)
        assert kind == problem.request_kind and target in (problem.method, name)
        assert problem.expected_output_elements(case) >= 1
        arrays = problem.instance_arrays(case.instance)
        back = problem.instance_from_files(arrays, problem.instance_params(case.instance))
        for key, arr in problem.instance_arrays(back).items():
            np.testing.assert_array_equal(arr, arrays[key])
        assert isinstance(problem.not_applicable_reasons(case, caps), list)


def test_every_reason_is_reported_not_only_the_first():
    problem = get_problem("softmax_attention")
    case = next(c for c in problem.generate_cases("quick", ("float32",), 0) if c.instance.n > 2 and c.instance.d > 2)
    caps = read_capabilities(numpy_backend())
    caps.problems = {"tensor_attention"}
    caps.dtypes = {"float64"}
    caps.max_n, caps.max_d = 1, 1
    reasons = problem.not_applicable_reasons(case, caps)
    assert len(reasons) == 4, reasons
    assert problem.applicable(case, caps) == "; ".join(reasons)


def test_instance_arrays_are_immutable_private_copies():
    """What is certified cannot change: the instance does not alias the caller's array, and its own
    arrays refuse writes, even after ``flags.writeable = True`` is attempted."""
    from attnspec.spec.softmax_attention import make_instance

    q = np.ones((2, 3))
    inst = make_instance(q, q, q, scale=0.5)
    q[0, 0] = 7.0
    assert inst.q[0, 0] == 1.0
    with pytest.raises(ValueError):
        inst.q[0, 0] = 3.0
    with pytest.raises(ValueError):
        inst.k.flags.writeable = True


def test_a_declared_deterministic_promise_is_checked_by_the_suite():
    """judge_one calls a backend declaring ``deterministic`` twice: one flipped last bit is an error,
    although each answer alone would pass."""
    import helper_backends as hb
    from attnspec.conformance.harness.isolation import InProcessRunner
    from attnspec.conformance.harness.runner import judge_one

    case = get_problem("softmax_attention").generate_cases("quick", ("float64",), 0)[0]
    runner = InProcessRunner(hb.Nondeterministic())
    record = judge_one(case, runner, runner.capabilities)
    assert record["status"] == "error" and "nondeterministic" in record["message"], record
    honest = InProcessRunner(hb.Correct())
    assert judge_one(case, honest, honest.capabilities)["status"] == "pass"
