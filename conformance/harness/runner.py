"""Running a backend through the conformance cases and collecting certified verdicts.

Order of work: saved failures from earlier runs (``<report>/failures``) are replayed first, then the
profile's generated cases. Each case is: applicability check against the declared capabilities → one
isolated backend call → certified judgement → a record streamed to the report. A backend exception, a
crash, a timeout or garbage output is an ``error`` for that case; the run goes on.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator


from attnspec.conformance.harness.backends import backend_identity
from attnspec.conformance.harness.case_files import CaseFileError, load_case, save_case
from attnspec.conformance.harness.distributed import SerialJudging
from attnspec.conformance.harness.isolation import DEFAULT_MEMORY_LIMIT, InProcessRunner, ProcessRunner, check_timeout
from attnspec.conformance.harness.known_failures import XFAIL, XPASS, KnownFailures
from attnspec.conformance.harness.selection import REPLAY_PREFIX, CaseSelection, SelectionError
from attnspec.conformance.judging.problems import get_problem, problem_names
from attnspec.conformance.harness.report import ReportWriter
from attnspec.conformance.judging.verdict import ERROR, FAIL, PASS, UNDECIDED

NOT_APPLICABLE = "not_applicable"


@dataclass
class RunOutcome:
    report: dict[str, Any]
    exit_code: int


@dataclass
class PendingJudgement:
    """A backend output waiting for its certified judgement: what :func:`judge_output` needs, fixed
    before the output exists (``tolerance``) or received from the runner (``output``, already coerced
    to a float, an int or a real numeric numpy array)."""

    case: Any
    output: Any
    tolerance: Any


def call_backend(case: Any, runner: Any, caps: Any) -> tuple[dict[str, Any], PendingJudgement | None]:
    """The first half of :func:`judge_one`: applicability, the tolerance, the one isolated backend call.

    Returns the case's record and, when the backend produced an output, the judgement still to do (the
    record is then complete only after :func:`judge_output`); ``None`` when the record is final
    (not applicable, or a backend error)."""
    problem = get_problem(case.problem)
    record: dict[str, Any] = {
        "case_id": case.case_id,
        "problem": case.problem,
        "family": case.family,
        "dtype": case.dtype,
        "seed": case.seed,
        "shape": problem.shape(case),
    }
    if getattr(case, "rows", None) is not None:  # a row-subset case: the rows its verdict covers
        record["rows"] = [int(r) for r in case.rows]
    reasons = problem.not_applicable_reasons(case, caps)
    if reasons:
        record.update(status=NOT_APPLICABLE, message="; ".join(reasons), reasons=reasons)
        return record, None
    tolerance = problem.tolerance_for(case, caps) if hasattr(problem, "tolerance_for") else None
    kind, target, args, kwargs = problem.request(case)
    limit = problem.expected_output_elements(case)
    if getattr(caps, "deterministic", False):  # the promise is checked, not trusted: two calls, same bits
        result = runner.check_deterministic(kind, target, args, kwargs, max_output_elements=limit)
    else:
        result = runner.request(kind, target, args, kwargs, max_output_elements=limit)
    record["backend_seconds"] = result.seconds
    if getattr(result, "captured", ""):
        record["captured"] = result.captured
    if not result.ok:
        record.update(status=ERROR, message=f"{result.error_kind}: {result.error}", evidence={"kind": result.error_kind})
        return record, None
    return record, PendingJudgement(case, result.output, tolerance)


def judge_output(case: Any, output: Any, caps: Any, tolerance: Any, *, max_prec: int = 1024) -> dict[str, Any]:
    """The second half of :func:`judge_one`: the certified verdict on ``output`` as the record's fields
    (``status``, ``message``, ``evidence``, ``judge_seconds``). A pure function of its arguments, so it can
    run in another process on a rebuilt case (:mod:`attnspec.conformance.harness.distributed`)."""
    t0 = time.perf_counter()
    verdict = get_problem(case.problem).judge(case, output, caps, max_prec=max_prec, tolerance=tolerance)
    return {"status": verdict.status, "message": verdict.message, "evidence": verdict.evidence,
            "judge_seconds": time.perf_counter() - t0}


def judge_one(case: Any, runner: Any, caps: Any, *, max_prec: int = 1024) -> dict[str, Any]:
    """Run and judge a single case; returns its report record (never raises for backend faults).

    What is certified is fixed before the backend runs: the instance holds immutable private arrays (the
    backend receives copies), and the tolerance is computed before the call."""
    record, pending = call_backend(case, runner, caps)
    if pending is not None:
        record.update(judge_output(case, pending.output, caps, pending.tolerance, max_prec=max_prec))
    return record


def _saved_failures(directory: Path) -> list[Any]:
    """The cases saved by earlier runs in ``directory``, as ``replay/<id>`` (an unreadable file is named
    on stderr and skipped: one bad file must not break every later run)."""
    cases = []
    if directory.is_dir():
        for path in sorted(directory.glob("*.json")):
            try:
                case, _ = load_case(path)
            except CaseFileError as exc:
                print(f"attnspec: skipping saved case {path.name}: {exc}", file=sys.stderr)
                continue
            case.case_id = f"{REPLAY_PREFIX}{case.case_id}"
            cases.append(case)
    return cases


def check_problems(problems: Iterable[str] | None) -> list[str] | None:
    """``problems`` as a list, each a registered problem (``ValueError`` naming the known ones)."""
    if problems is None:
        return None
    names = list(problems)
    for name in names:
        get_problem(name)
    return names


def _runner(spec: Any, isolation: str, timeout: float, memory_limit_bytes: int | None) -> Any:
    if isolation == "process":
        return ProcessRunner(spec, timeout=timeout, memory_limit_bytes=memory_limit_bytes)
    if isolation == "none":
        return InProcessRunner(spec, timeout=timeout)
    raise ValueError(f"isolation must be 'process' or 'none', got {isolation!r}")


def _identity(spec: str, runner: Any) -> dict[str, Any]:
    """The backend's class and version: reported by the worker under process isolation."""
    if isinstance(runner, InProcessRunner):
        return backend_identity(spec, runner.backend)
    return dict(getattr(runner, "identity", None) or {})


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
    memory_limit_bytes: int | None = DEFAULT_MEMORY_LIMIT,
    selection: CaseSelection | None = None,
    known_failures: KnownFailures | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    dask_client: Any = None,
) -> RunOutcome:
    """Run the suite on backend ``spec``; exit code 0 iff no case failed, errored, stayed undecided or
    passed while listed as a known failure (``xpass``), and at least one case passed or failed as known.

    Undecided cases are not passes: they make the exit code 1, like failures and errors. Usage errors
    are raised before any case runs: ``ValueError`` for an unknown problem, timeout or isolation,
    :class:`SelectionError` for an unknown family or a selection that matches no case, and the report
    writer's error for an unusable ``report_dir`` (raised before the backend is loaded).

    Judging runs in this process unless ``workers`` (a new Dask ``LocalCluster`` of that many worker
    processes), ``scheduler`` (the address of an existing cluster) or ``dask_client`` (a Dask client) is
    given; then the backend is still called here, one case after another, while the outputs are judged
    on the cluster (:mod:`~attnspec.conformance.harness.distributed`). The journal receives each record
    as it is judged; the report lists the cases in the run's order whatever the judging, so a serial
    and a distributed run give the same report apart from timings.
    """
    problems = check_problems(problems)
    check_timeout(timeout)
    selection = selection or CaseSelection()
    writer = ReportWriter(report_dir, command=command)  # an unusable directory fails here, before any backend code runs
    runner = _runner(spec, isolation, timeout, memory_limit_bytes)
    header: dict[str, Any] = {"backend": {"spec": spec}, "profile": profile, "seed": seed, "command": command}
    try:
        if runner.load_error:
            header["backend"]["load_error"] = runner.load_error
            report = writer.finish(header)
            return RunOutcome(report, 2)
        caps = runner.capabilities
        header["backend"].update(_identity(spec, runner))
        header["backend"]["capabilities"] = caps.to_json()
        worker_environment = getattr(runner, "environment", None)
        if worker_environment:  # merged into the report's environment: versions imported by the backend
            header["environment"] = worker_environment
        # default: every declared dtype (a bf16-only kernel is checked in bf16), in a fixed order
        wanted = list(dtypes) if dtypes else sorted(caps.dtypes) or ["float64"]
        chosen = [p for p in problem_names() if p in set(problems or caps.problems)]
        selection.check_families(f for name in chosen for f in get_problem(name).families())
        failures_dir = Path(report_dir) / "failures" if report_dir is not None else None
        cases = _saved_failures(failures_dir) if failures_dir is not None else []
        for name in chosen:
            cases.extend(get_problem(name).generate_cases(profile, tuple(wanted), seed))
        cases = selection.apply(cases)
        if not cases:
            raise SelectionError(f"the selection {selection.describe()} matches no case of {', '.join(chosen) or 'no problem'} "
                                 f"(dtypes {', '.join(wanted)})")
        total = len(cases)
        counts = {PASS: 0, FAIL: 0, UNDECIDED: 0, ERROR: 0, NOT_APPLICABLE: 0, XFAIL: 0, XPASS: 0}
        order: list[int] = []  # the case index of each record, in the order they reached the journal

        def finish(i: int, record: dict[str, Any]) -> None:
            case = cases[i]
            if record["status"] in (FAIL, ERROR, UNDECIDED) and failures_dir is not None and not case.case_id.startswith(REPLAY_PREFIX):
                try:
                    path = save_case(failures_dir, case, {"backend": spec, "status": record["status"], "message": record.get("message")})
                    record["replay_file"] = str(path)
                except Exception as exc:  # a case that cannot be saved is still reported
                    record["replay_file_error"] = str(exc)
            if known_failures is not None:
                known_failures.apply(record)
            writer.add(record)
            order.append(i)
            counts[record["status"]] += 1
            if progress:
                progress(len(order), total, counts)

        with judging_for(caps, writer, workers=workers, scheduler=scheduler, dask_client=dask_client) as judging:
            waiting: dict[int, dict[str, Any]] = {}
            for i, case in enumerate(cases):  # the next backend call overlaps the judging of the last ones
                record, pending = call_backend(case, runner, caps)
                if pending is None:
                    finish(i, record)
                else:
                    waiting[i] = record
                    judging.submit(i, pending)
                for j, fields in judging.ready():
                    waiting[j].update(fields)
                    finish(j, waiting.pop(j))
            for j, fields in judging.drain():
                waiting[j].update(fields)
                finish(j, waiting.pop(j))
        position = {i: k for k, i in enumerate(order)}
        writer.records = [writer.records[position[i]] for i in sorted(order)]  # the report: in the run's order
        header["dtypes"] = wanted
        header["problems"] = chosen
        if known_failures is not None:
            header["known_failures"] = known_failures.path
        report = writer.finish(header)
        return RunOutcome(report, 0 if run_succeeded(report["summary"]) else 1)
    finally:
        runner.close()
        writer.close()  # after finish, a no-op; after a usage error, the journal is closed as it stands


@contextlib.contextmanager
def judging_for(caps: Any, writer: ReportWriter, *, workers: int | None, scheduler: str | None,
                dask_client: Any) -> Iterator[Any]:
    """Where the outputs are judged: here (no cluster asked for), or on a Dask cluster whose retries and
    fallbacks are journal events."""
    if workers is None and scheduler is None and dask_client is None:
        yield SerialJudging(caps)
        return
    from attnspec.conformance.harness.distributed import DaskJudging, cluster_client, worker_count

    with contextlib.ExitStack() as stack:
        client = dask_client if dask_client is not None else stack.enter_context(cluster_client(workers, scheduler))
        writer.note({"event": "cluster", "scheduler": str(getattr(client, "scheduler", None) and client.scheduler.address),
                     "workers": worker_count(client)})
        yield DaskJudging(client, caps, note=writer.note)


def run_succeeded(summary: dict[str, int]) -> bool:
    """Nothing failed, errored, stayed undecided or passed unexpectedly, and something was checked."""
    bad = sum(summary.get(s, 0) for s in (FAIL, ERROR, UNDECIDED, XPASS))
    return bad == 0 and summary.get(PASS, 0) + summary.get(XFAIL, 0) > 0
