"""The conformance cases as pytest items (collected only when the plugin is given a backend)."""

from __future__ import annotations

import json

import pytest

from attnspec.conformance.harness.isolation import InProcessRunner, ProcessRunner
from attnspec.conformance.judging.problems import get_problem, problem_names
from attnspec.conformance.harness.runner import NOT_APPLICABLE, judge_one


_RUNNER = pytest.StashKey()


def _runner(config):
    """The session's backend runner, made once (collection needs its declared problems)."""
    if _RUNNER not in config.stash:
        spec = config.getoption("--attnspec-backend")
        timeout = config.getoption("--attnspec-timeout")
        isolated = config.getoption("--attnspec-isolation") == "process"
        config.stash[_RUNNER] = ProcessRunner(spec, timeout=timeout) if isolated else InProcessRunner(spec, timeout=timeout)
    return config.stash[_RUNNER]


@pytest.fixture(scope="session")
def attnspec_runner(request):
    runner = _runner(request.config)
    if runner.load_error:
        pytest.fail(f"attnspec: cannot load backend: {runner.load_error}", pytrace=False)
    yield runner
    runner.close()


def pytest_generate_tests(metafunc):
    if "attnspec_case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    dtypes = tuple(config.getoption("--attnspec-dtype") or ("float64", "float32"))
    runner = _runner(config)
    # Only the problems the backend declares (all of them when it cannot be loaded: the fixture then
    # reports the load error on every item rather than collecting nothing).
    declared = runner.capabilities.problems if runner.capabilities is not None else set(problem_names())
    cases = []
    for name in problem_names():
        if name in declared:
            cases.extend(get_problem(name).generate_cases(config.getoption("--attnspec-profile"), dtypes, 0))
    metafunc.parametrize("attnspec_case", cases, ids=[c.case_id for c in cases])


def test_conformance(attnspec_case, attnspec_runner):
    record = judge_one(attnspec_case, attnspec_runner, attnspec_runner.capabilities)
    if record["status"] == NOT_APPLICABLE:
        pytest.skip(record["message"])
    evidence = json.dumps(record.get("evidence", {}), default=str, indent=1)
    assert record["status"] == "pass", f"{record['status']}: {record['message']}\nevidence: {evidence}"
