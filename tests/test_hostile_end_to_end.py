"""End to end: `attnspec conform` on hostile backends and hostile saved case files.

Each hostile backend (tests/hostile_backends.py) runs through the real command in a fresh process, on two
selected cases. Whatever it does, the run must finish with a report that validates against the report
schema, holds every selected case, never counts the hostile behaviour as a pass, keeps stdout parseable
under ``--json``, and leaves no process behind: every process the run started (the worker, and whatever
the backend spawned) carries a marker in its environment, and none may be alive once the run is over.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from attnspec.conformance.harness.schemas import validate_report

import helper_backends as hb_helpers
import hostile_backends as hb

CASES = ["softmax_attention/float64/degenerate/000", "softmax_attention/float64/uniform/000"]
# backend → (exit code, statuses allowed for both cases)
OUTCOMES = {
    "ZeroesV": (1, {"fail"}),
    "ScalesQInPlace": (0, {"pass"}),
    "SysExit": (1, {"error"}),
    "OsExit": (1, {"error"}),
    "SelfSigkill": (1, {"error"}),
    "Segfaults": (1, {"error"}),
    "RaisesKeyboardInterrupt": (1, {"error"}),
    "SpawnsChild": (0, {"pass"}),
    "DoubleForks": (0, {"pass"}),
    "HangsIgnoringSigterm": (1, {"error"}),
    "Allocates100GB": (1, {"error"}),
    "HugeOutput": (1, {"error"}),
    "ReturnsString": (1, {"error"}),
    "ReturnsNaN": (1, {"error"}),
    "Prints": (0, {"pass"}),
    "ClosesStdout": (0, {"pass"}),
}
# in this process's own interpreter, for backends whose harm is to the caller's state or exit
IN_PROCESS = {"ZeroesV": (1, {"fail"}), "ScalesQInPlace": (0, {"pass"}), "SysExit": (1, {"error"}),
              "Prints": (0, {"pass"})}


def _conform(tmp_path: Path, backend: str, isolation: str = "process") -> tuple[subprocess.CompletedProcess, dict, str]:
    marker = f"ATTNSPEC_E2E_{uuid.uuid4().hex}"
    env = dict(os.environ, ATTNSPEC_E2E_MARKER=marker)
    cmd = [sys.executable, "-m", "attnspec.conformance.frontends.cli", "conform", "--backend", hb.SPEC_PREFIX + backend,
           "--report", str(tmp_path / "rep"), "--timeout", "3", "--isolation", isolation, "--json"]
    for case in CASES:
        cmd += ["--case", case]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    report = json.loads(proc.stdout)  # --json: stdout is the report and nothing else
    return proc, report, marker


def _no_survivors(marker: str, within: float = 10.0) -> list[int]:
    deadline = time.monotonic() + within
    while True:
        alive = hb_helpers.live_marked_processes(marker)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _check_report(report: dict, tmp_path: Path, allowed: set[str]) -> None:
    validate_report(report)
    on_disk = json.loads((tmp_path / "rep" / "report.json").read_text())
    validate_report(on_disk)
    assert sorted(c["case_id"] for c in on_disk["cases"]) == sorted(CASES)
    assert {c["status"] for c in on_disk["cases"]} <= allowed, on_disk["cases"]
    journal = (tmp_path / "rep" / "cases.jsonl").read_text().splitlines()
    assert len(journal) == 1 + len(CASES)  # run header, then one line per judged case


@pytest.mark.parametrize("backend", sorted(OUTCOMES))
def test_hostile_backend_costs_its_cases_and_leaves_nothing_behind(backend, tmp_path):
    code, allowed = OUTCOMES[backend]
    proc, report, marker = _conform(tmp_path, backend)
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    _check_report(report, tmp_path, allowed)
    assert _no_survivors(marker) == []


@pytest.mark.parametrize("backend", sorted(IN_PROCESS))
def test_in_process_backend_cannot_change_what_is_certified(backend, tmp_path):
    """``--isolation none``: an in-place writer still fails, a correct in-place kernel passes, and
    ``sys.exit(0)`` costs its case instead of ending the run with exit 0 and no report."""
    code, allowed = IN_PROCESS[backend]
    proc, report, _ = _conform(tmp_path, backend, isolation="none")
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    _check_report(report, tmp_path, allowed)


def _hostile_failure_files(directory: Path) -> None:
    directory.mkdir(parents=True)
    (directory / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (directory / "bigint.json").write_text('{"schema": "attnspec.case/1", "seed": ' + "9" * 10_000 + "}")
    (directory / "inf.json").write_text('{"schema": "attnspec.case/1", "seed": 1e400}')
    (directory / "nan.json").write_text('{"schema": "attnspec.case/1", "seed": NaN}')
    (directory / "zero.json").symlink_to("/dev/zero")
    os.mkfifo(directory / "fifo.json")
    (directory / "binary.json").write_bytes(np.random.default_rng(0).bytes(4096))
    (directory / "list.json").write_text("[1, 2, 3]")


def test_hostile_saved_failures_are_skipped_and_the_run_goes_on(tmp_path):
    """Malformed, huge, non-regular and hostile files in failures/ never break a later run."""
    _hostile_failure_files(tmp_path / "rep" / "failures")
    proc, report, marker = _conform(tmp_path, "ScalesQInPlace")
    assert proc.returncode == 0, proc.stderr[-2000:]
    _check_report(report, tmp_path, {"pass"})
    assert "skipping saved case" in proc.stderr
    assert _no_survivors(marker) == []
