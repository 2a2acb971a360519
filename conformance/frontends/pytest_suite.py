"""The conformance cases as pytest items (collected only when the plugin is given a backend).

Options: see :mod:`attnspec.conformance.frontends.pytest_plugin`.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from attnspec.conformance.harness.case_files import save_case
from attnspec.conformance.harness.isolation import InProcessRunner, ProcessRunner
from attnspec.conformance.frontends.pytest_plugin import KNOWN_FAILURES
from attnspec.conformance.harness.known_failures import XFAIL, XPASS, KnownFailures
from attnspec.conformance.harness.runner import NOT_APPLICABLE, judge_one
from attnspec.conformance.harness.selection import cap_per_family
from attnspec.conformance.judging.problems import get_problem, problem_names

FLOAT_DTYPES = ("float64", "float32", "float16")
FAILURES_DIR = ".attnspec-failures"


@dataclass
class SuiteSession:
    """What every conformance item of a session shares."""

    spec: str
    runner: Any
    known_failures: KnownFailures | None
    failures_dir: Path


_SESSION = pytest.StashKey[SuiteSession]()


def _session(config: pytest.Config) -> SuiteSession:
    """The session's backend runner and files, made once (collection needs the declared problems)."""
    if _SESSION not in config.stash:
        spec = config.getoption("--attnspec-backend")
        known = config.stash.get(KNOWN_FAILURES, None)  # read (and validated) by the plugin's configure
        failures = config.getoption("--attnspec-failures")
        failures_dir = Path(failures) if failures else config.rootpath / FAILURES_DIR
        timeout = config.getoption("--attnspec-timeout")
        isolated = config.getoption("--attnspec-isolation") == "process"
        runner = ProcessRunner(spec, timeout=timeout) if isolated else InProcessRunner(spec, timeout=timeout)
        config.stash[_SESSION] = SuiteSession(spec, runner, known, failures_dir)
    return config.stash[_SESSION]


@pytest.fixture(scope="session")
def attnspec_session(request):
    session = _session(request.config)
    if session.runner.load_error:
        pytest.fail(f"attnspec: cannot load backend: {session.runner.load_error}", pytrace=False)
    yield session
    session.runner.close()


def declared_dtypes(caps: Any) -> tuple[str, ...]:
    """The backend's declared float dtypes (float64 when it declares none of them, or cannot be loaded)."""
    declared = tuple(d for d in FLOAT_DTYPES if caps is not None and d in caps.dtypes)
    return declared or ("float64",)


def pytest_generate_tests(metafunc):
    if "attnspec_case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    runner = _session(config).runner
    caps = runner.capabilities
    dtypes = tuple(config.getoption("--attnspec-dtype") or declared_dtypes(caps))
    # Only the problems the backend declares (all of them when it cannot be loaded: the fixture then
    # reports the load error on every item rather than collecting nothing).
    declared = caps.problems if caps is not None else set(problem_names())
    cases = []
    for name in problem_names():
        if name in declared:
            cases.extend(get_problem(name).generate_cases(config.getoption("--attnspec-profile"), dtypes, 0))
    cases = cap_per_family(cases, config.getoption("--attnspec-max-examples"))
    metafunc.parametrize("attnspec_case", cases, ids=[c.case_id for c in cases])


def _save(session: SuiteSession, case: Any, record: dict[str, Any]) -> str:
    """The case saved for replay; the replay command, or why it could not be saved."""
    status = record.get("original_status", record["status"])
    try:
        path = save_case(session.failures_dir, case, {"backend": session.spec, "status": status, "message": record.get("message")})
    except Exception as exc:  # the verdict still stands; only the replay file is missing
        return f"(the case could not be saved for replay: {exc})"
    return f"replay: attnspec replay {shlex.quote(str(path))} --backend {shlex.quote(session.spec)}"


def test_conformance(attnspec_case, attnspec_session):
    session = attnspec_session
    record = judge_one(attnspec_case, session.runner, session.runner.capabilities)
    if session.known_failures is not None:
        session.known_failures.apply(record)
    status = record["status"]
    if status == NOT_APPLICABLE:
        pytest.skip(record["message"])
    if status == XPASS:
        pytest.fail(record["message"], pytrace=False)
    if status == "pass":
        return
    replay = _save(session, attnspec_case, record)
    if status == XFAIL:
        pytest.xfail(f"known failure ({record['original_status']}): {record['known_failure']['reason']}; {replay}")
    evidence = json.dumps(record.get("evidence", {}), default=str, indent=1)
    raise AssertionError(f"{status}: {record['message']}\nevidence: {evidence}\n{replay}")
