"""Running a backend through the conformance cases and collecting certified verdicts.

Order of work: saved failures from earlier runs (``<report>/failures``) are replayed first, then the
profile's generated cases. Each case is: applicability check against the declared capabilities → one
isolated backend call → certified judgement → a record streamed to the report. A backend exception, a
crash, a timeout or garbage output is an ``error`` for that case; the run goes on.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from attnspec.conformance.harness.backends import backend_identity
from attnspec.conformance.harness.case_files import CaseFileError, load_case, save_case
from attnspec.conformance.harness.isolation import CallResult, InProcessRunner, ProcessRunner
from attnspec.conformance.judging.problems import get_problem, problem_names
from attnspec.conformance.harness.report import ReportWriter
from attnspec.conformance.judging.verdict import ERROR, FAIL, PASS, UNDECIDED

NOT_APPLICABLE = "not_applicable"


@dataclass
class RunOutcome:
    report: dict[str, Any]
    exit_code: int


def judge_one(case: Any, runner: Any, caps: Any, *, max_prec: int = 1024) -> dict[str, Any]:
    """Run and judge a single case; returns its report record (never raises for backend faults).

    What is certified is fixed before the backend runs: the instance holds immutable private arrays (the
    backend receives copies), and the tolerance is computed before the call."""
    problem = get_problem(case.problem)
    record: dict[str, Any] = {
        "case_id": case.case_id,
        "problem": case.problem,
        "family": case.family,
        "dtype": case.dtype,
        "seed": case.seed,
        "shape": problem.shape(case),
    }
    reasons = problem.not_applicable_reasons(case, caps)
    if reasons:
        record.update(status=NOT_APPLICABLE, message="; ".join(reasons), reasons=reasons)
        return record
    tolerance = problem.tolerance_for(case, caps) if hasattr(problem, "tolerance_for") else None
    kind, target, args, kwargs = problem.request(case)
    limit = problem.expected_output_elements(case)
    result = _send(runner, kind, target, args, kwargs, limit)
    if result.ok and getattr(caps, "deterministic", False):
        again = _send(runner, kind, target, args, kwargs, limit)
        result = same_bits(result, again)
    record["backend_seconds"] = result.seconds
    if getattr(result, "captured", ""):
        record["captured"] = result.captured
    if not result.ok:
        record.update(status=ERROR, message=f"{result.error_kind}: {result.error}", evidence={"kind": result.error_kind})
        return record
    t0 = time.perf_counter()
    verdict = problem.judge(case, result.output, caps, max_prec=max_prec, tolerance=tolerance)
    record.update(status=verdict.status, message=verdict.message, evidence=verdict.evidence, judge_seconds=time.perf_counter() - t0)
    return record


def _send(runner: Any, kind: str, target: str, args: tuple, kwargs: dict, limit: int) -> Any:
    # TEMPORARY until the runners grow request(): the old driver string for drive requests.
    if hasattr(runner, "request"):
        return runner.request(kind, target, args, kwargs, max_output_elements=limit)
    method = target if kind == "call" else "driver:attnspec.conformance.judging.dynamic_attention:drive_trace"
    return runner.call(method, *args, **kwargs)


def same_bits(first: Any, second: Any) -> Any:
    """``first`` when a backend that declares ``deterministic`` gave the same bits twice, else an error
    result (the promise is checked, not trusted)."""
    if not second.ok:
        return second
    a, b = np.asarray(first.output), np.asarray(second.output)
    if a.dtype != b.dtype or a.shape != b.shape or np.ascontiguousarray(a).tobytes() != np.ascontiguousarray(b).tobytes():
        return CallResult(False, error_kind="nondeterministic",
                          error="the backend declares deterministic, but two calls on the same input gave different bits",
                          seconds=first.seconds)
    return first


def _saved_failures(directory: Path) -> list[Any]:
    cases = []
    if directory.is_dir():
        for path in sorted(directory.glob("*.json")):
            try:
                case, _ = load_case(path)
            except CaseFileError as exc:
                print(f"attnspec: skipping saved case {path.name}: {exc}", file=sys.stderr)
                continue
            case.case_id = f"replay/{case.case_id}"
            cases.append(case)
    return cases


def run_conformance(
    spec: str,
    *,
    profile: str = "quick",
    dtypes: Iterable[str] | None = None,
    problems: Iterable[str] | None = None,
    report_dir: str | Path | None = "attnspec-report",
    timeout: float = 60.0,
    isolation: str = "process",
    seed: int = 0,
    progress: Callable[[int, int, dict[str, int]], None] | None = None,
    command: str = "",
) -> RunOutcome:
    """Run the suite on backend ``spec``; exit code 0 iff every applicable case passed.

    Undecided cases are not passes: they make the exit code 1, like failures and errors.
    """
    runner = ProcessRunner(spec, timeout=timeout) if isolation == "process" else InProcessRunner(spec, timeout=timeout)
    writer = ReportWriter(report_dir)
    header: dict[str, Any] = {"backend": {"spec": spec}, "profile": profile, "seed": seed, "command": command}
    try:
        if runner.load_error:
            header["backend"]["load_error"] = runner.load_error
            report = writer.finish(header)
            return RunOutcome(report, 2)
        caps = runner.capabilities
        header["backend"]["capabilities"] = caps.to_json()
        if isinstance(runner, InProcessRunner):
            header["backend"].update(backend_identity(spec, runner.backend))
        wanted = list(dtypes) if dtypes else sorted(caps.dtypes & {"float64", "float32", "float16"}) or ["float64"]
        chosen = [p for p in problem_names() if p in set(problems or caps.problems)]
        failures_dir = Path(report_dir) / "failures" if report_dir is not None else None
        cases = _saved_failures(failures_dir) if failures_dir is not None else []
        for name in chosen:
            cases.extend(get_problem(name).generate_cases(profile, tuple(wanted), seed))
        total = len(cases)
        counts = {PASS: 0, FAIL: 0, UNDECIDED: 0, ERROR: 0, NOT_APPLICABLE: 0}
        for i, case in enumerate(cases):
            record = judge_one(case, runner, caps)
            if record["status"] in (FAIL, ERROR, UNDECIDED) and failures_dir is not None and not case.case_id.startswith("replay/"):
                try:
                    path = save_case(failures_dir, case, {"backend": spec, "status": record["status"], "message": record.get("message")})
                    record["replay_file"] = str(path)
                except Exception as exc:  # a case that cannot be saved is still reported
                    record["replay_file_error"] = str(exc)
            writer.add(record)
            counts[record["status"]] += 1
            if progress:
                progress(i + 1, total, counts)
        header["dtypes"] = wanted
        header["problems"] = chosen
        report = writer.finish(header)
        s = report["summary"]
        ok = s["fail"] == 0 and s["error"] == 0 and s["undecided"] == 0 and s["pass"] > 0
        return RunOutcome(report, 0 if ok else 1)
    finally:
        runner.close()
