"""pytest plugin (entry point ``pytest11``): run the conformance suite inside a backend's own tests.

    pytest --attnspec-backend mypkg.kernels:FlashBackend [--attnspec-profile thorough] [--attnspec-dtype float32]

or set ``ATTNSPEC_BACKEND``. Each case becomes one test item (``test_conformance[<case id>]``): passes
are passes, failures carry the certified evidence, undecided cases fail with an explanation (they are
never passes), cases outside the declared capabilities are skipped. Without a backend the plugin is inert.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SUITE_FILE = Path(__file__).with_name("pytest_suite.py")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("attnspec", "attnspec conformance suite")
    group.addoption("--attnspec-backend", default=os.environ.get("ATTNSPEC_BACKEND"),
                    help="backend to check: built-in name, module:attr or file.py:attr (env ATTNSPEC_BACKEND)")
    group.addoption("--attnspec-profile", default=os.environ.get("ATTNSPEC_SUITE_PROFILE", "quick"), choices=["quick", "thorough"])
    group.addoption("--attnspec-dtype", action="append", default=None, help="repeatable; default: declared dtypes")
    group.addoption("--attnspec-isolation", default="none", choices=["none", "process"],
                    help="run the backend in this process (default) or in a worker process with timeouts")
    group.addoption("--attnspec-timeout", type=float, default=60.0)


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--attnspec-backend"):
        config.args.append(str(SUITE_FILE))


def pytest_report_header(config: pytest.Config) -> str | None:
    spec = config.getoption("--attnspec-backend")
    if spec:
        return f"attnspec: backend {spec}, profile {config.getoption('--attnspec-profile')}"
    return None
