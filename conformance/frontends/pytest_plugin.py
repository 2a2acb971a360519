"""pytest plugin (entry point ``pytest11``): run the conformance suite inside a backend's own tests.

    pytest --attnspec-backend mypkg.kernels:FlashBackend [--attnspec-profile thorough] [--attnspec-dtype float32]

or set ``ATTNSPEC_BACKEND``. Each case becomes one test item (``test_conformance[<case id>]``): passes
are passes, failures carry the certified evidence, undecided cases fail with an explanation (they are
never passes), cases outside the declared capabilities are skipped with their reasons. Without a
backend the plugin is inert.

Defaults follow ``attnspec conform``: the backend runs in a worker process (``--attnspec-isolation
none`` calls it in the test process, for trusted code), the dtypes are the backend's declared ones, a
case that does not pass is saved under ``--attnspec-failures`` (default ``<rootdir>/.attnspec-failures``)
and its failure message prints the ``attnspec replay`` command, and the cases listed in
``--attnspec-known-failures`` (default ``<rootdir>/attnspec-known-failures.json`` when it exists) are
``xfail`` (a listed case that passes fails: remove it from the file). When every conformance item was
skipped, the terminal summary says that nothing was checked; ``--attnspec-strict`` makes that fail the
session (exit status 1).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

SUITE_FILE = Path(__file__).with_name("pytest_suite.py")
ITEM_NAME = "test_conformance"
KNOWN_FAILURES = pytest.StashKey[Any]()  # the session's KnownFailures (None: no file)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"must be a positive integer, got {text!r}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a finite number of seconds > 0, got {text!r}")
    return value


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("attnspec", "attnspec conformance suite")
    group.addoption("--attnspec-backend", default=os.environ.get("ATTNSPEC_BACKEND"),
                    help="backend to check: built-in name, module:attr or file.py:attr (env ATTNSPEC_BACKEND)")
    group.addoption("--attnspec-profile", default=os.environ.get("ATTNSPEC_SUITE_PROFILE", "quick"), choices=["quick", "thorough"])
    group.addoption("--attnspec-dtype", action="append", default=None, choices=["float64", "float32", "float16"],
                    help="repeatable; default: the backend's declared dtypes")
    group.addoption("--attnspec-isolation", default="process", choices=["process", "none"],
                    help="run the backend in a worker process with timeouts (default) or in this process (trusted code)")
    group.addoption("--attnspec-timeout", type=_seconds, default=60.0, help="seconds per backend call (worker isolation)")
    group.addoption("--attnspec-max-examples", type=_positive_int, default=None, metavar="N",
                    help="at most the first N cases of each family, per problem and dtype (hypothesis draws included)")
    group.addoption("--attnspec-failures", default=None, metavar="DIR",
                    help="where cases that do not pass are saved for `attnspec replay` (default: <rootdir>/.attnspec-failures)")
    group.addoption("--attnspec-known-failures", default=None, metavar="FILE",
                    help="cases expected not to pass, reported as xfail (default: <rootdir>/attnspec-known-failures.json if present)")
    group.addoption("--attnspec-strict", action="store_true", default=False,
                    help="fail the session when no conformance case was applicable (nothing checked)")


class OutcomeTracker:
    """Counts the conformance items' outcomes, to tell a run that checked nothing from a green one."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.outcomes: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # (the suite file lies outside the user's rootdir, so its node ids do not name it: the location does)
        if not report.nodeid.split("::")[-1].startswith(ITEM_NAME + "[") or not str(report.location[0]).endswith(SUITE_FILE.name):
            return
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self.outcomes[report.nodeid] = "xfailed" if hasattr(report, "wasxfail") else report.outcome

    def nothing_checked(self) -> bool:
        return bool(self.outcomes) and all(v == "skipped" for v in self.outcomes.values())

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.nothing_checked() and self.config.getoption("--attnspec-strict") and exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.nothing_checked():
            then = ("--attnspec-strict: the session fails" if self.config.getoption("--attnspec-strict")
                    else "use --attnspec-strict to fail the session")
            terminalreporter.write_line(f"attnspec: all {len(self.outcomes)} conformance cases were skipped as not "
                                        f"applicable: nothing was checked ({then})", yellow=True, bold=True)


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--attnspec-backend"):
        from attnspec.conformance.harness.known_failures import KnownFailuresError, load_known_failures

        try:  # read here, so that a malformed file is a usage error before collection
            config.stash[KNOWN_FAILURES] = load_known_failures(config.getoption("--attnspec-known-failures"),
                                                               default_dir=config.rootpath)
        except KnownFailuresError as exc:
            raise pytest.UsageError(f"attnspec: {exc}") from None
        config.args.append(str(SUITE_FILE))
        config.pluginmanager.register(OutcomeTracker(config), "attnspec-outcomes")


def pytest_report_header(config: pytest.Config) -> str | None:
    spec = config.getoption("--attnspec-backend")
    if spec:
        return (f"attnspec: backend {spec}, profile {config.getoption('--attnspec-profile')}, "
                f"isolation {config.getoption('--attnspec-isolation')}")
    return None
