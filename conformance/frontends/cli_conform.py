"""``attnspec conform``, ``attnspec replay`` and ``attnspec backends``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from attnspec.conformance.harness.backends import BackendLoadError, available_backends, load_backend, read_capabilities
from attnspec.conformance.harness.case_files import CaseFileError, load_case
from attnspec.conformance.harness.isolation import DEFAULT_MEMORY_LIMIT, ProcessRunner, check_timeout
from attnspec.conformance.harness.known_failures import DEFAULT_FILE as DEFAULT_KNOWN_FAILURES
from attnspec.conformance.harness.known_failures import XFAIL, XPASS, KnownFailuresError, load_known_failures
from attnspec.conformance.harness.runner import NOT_APPLICABLE, judge_one, run_conformance
from attnspec.conformance.harness.report import not_applicable_reasons
from attnspec.conformance.harness.selection import CaseSelection, SelectionError
from attnspec.conformance.judging.problems import problem_names

try:
    from attnspec.conformance.harness.report import ReportError
except ImportError:  # the report writer's own error type (until it exists, its OSError)
    ReportError = OSError  # type: ignore[misc,assignment]

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("conform", help="run the conformance suite on a backend")
    p.add_argument("--backend", required=True, help="built-in name (see `attnspec backends`), module:attr or file.py:attr")
    p.add_argument("--profile", choices=["quick", "thorough"], default="quick")
    p.add_argument("--dtype", action="append", choices=["float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"], help="repeatable; default: the backend's declared dtypes")
    p.add_argument("--problem", action="append", choices=problem_names(),
                   help="repeatable; restrict to these problems (default: all the backend declares)")
    p.add_argument("--case", action="append", metavar="ID", help="repeatable; only cases whose id is ID or matches the glob ID")
    p.add_argument("--family", action="append", metavar="NAME", help="repeatable; only cases of these families")
    p.add_argument("-k", dest="keyword", metavar="EXPR",
                   help="only cases whose id matches EXPR: case-insensitive substrings with and, or, not, ( )")
    p.add_argument("--report", default="attnspec-report", metavar="DIR", help="report directory (default: ./attnspec-report)")
    p.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report (one testcase per case)")
    p.add_argument("--known-failures", metavar="FILE",
                   help=f"cases expected not to pass (default: ./{DEFAULT_KNOWN_FAILURES} when it exists)")
    add_runner_arguments(p)
    p.add_argument("--isolation", choices=["process", "none"], default="process", help="run the backend in a worker process (default) or in this process")
    add_cluster_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the JSON report on stdout (and nothing else)")
    p.add_argument("--instances", metavar="DIR", help="judge the backend on a hard-instance set (attnspec instances "
                   "generate) instead of the suite: decoded answers and certified errors against the margins")
    p.set_defaults(func=cmd_conform)

    r = sub.add_parser("replay", help="re-run a saved case file against a backend")
    r.add_argument("file", help="a case manifest (.json) or its .npz")
    r.add_argument("--backend", required=True)
    add_runner_arguments(r)
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_replay)

    b = sub.add_parser("backends", help="list known backends and their capabilities")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_backends)


def add_runner_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=seconds, default=60.0, help="seconds per backend call before the case is an error (finite, > 0)")
    p.add_argument("--memory-limit", type=memory_size, default=DEFAULT_MEMORY_LIMIT, metavar="BYTES",
                   help="the worker's address-space limit: bytes with an optional K, M or G suffix (powers of 1024), "
                        f"or 'none' (default {DEFAULT_MEMORY_LIMIT >> 20}M; GPU backends usually need 'none')")


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    """``--workers N`` / ``--scheduler ADDRESS``: where the certified judging runs (docs/distributed.md)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=worker_count, metavar="N",
                   help="judge on a local Dask cluster of N worker processes ('auto': one per core); default: serially here")
    g.add_argument("--scheduler", metavar="ADDRESS", help="judge on an existing Dask cluster (e.g. tcp://host:8786)")


def worker_count(text: str) -> int:
    """A positive number of workers, or ``auto`` (the cores this process may use)."""
    if text.strip().lower() == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of workers or 'auto', got {text!r}")
    return value


def seconds(text: str) -> float:
    """A finite number of seconds > 0 (argparse type: a bad value exits 2 with the reason)."""
    try:
        return float(check_timeout(float(text)) or 0.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text!r}") from None


_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def memory_size(text: str) -> int | None:
    """``none`` or a positive byte count with an optional K/M/G/T suffix (powers of 1024; ``2G``, ``512M``)."""
    if text.strip().lower() == "none":
        return None
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, flags=re.IGNORECASE)
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of bytes (suffix K, M or G allowed) or 'none', got {text!r}")
    return int(match.group(1)) * _SUFFIX[match.group(2).upper()]


class Progress:
    """A one-line progress bar on stderr (a line per 10% when stderr is not a terminal)."""

    def __init__(self, stream=None):
        self.stream = sys.stderr if stream is None else stream  # looked up now: tests swap sys.stderr
        self.tty = self.stream.isatty()
        self.last_decile = -1

    def __call__(self, done: int, total: int, counts: dict[str, int]) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        bar = "#" * filled + "." * (width - filled)
        known = f"  xfail {counts['xfail']}" if counts.get("xfail") else ""
        known += f"  xpass {counts['xpass']}" if counts.get("xpass") else ""
        text = (f"[{bar}] {done}/{total}  pass {counts['pass']}  fail {counts['fail']}  "
                f"undecided {counts['undecided']}  error {counts['error']}  n/a {counts['not_applicable']}{known}")
        if self.tty:
            self.stream.write("\r" + text + ("\n" if done == total else ""))
            self.stream.flush()
        else:
            decile = 10 * done // max(total, 1)
            if decile != self.last_decile or done == total:
                self.last_decile = decile
                self.stream.write(text + "\n")


def cmd_conform(args: argparse.Namespace) -> int:
    if args.instances:
        from attnspec.conformance.frontends.cli_conform_instances import conform_instances

        return conform_instances(args)
    command = "attnspec " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else ""
    # Usage errors first, before any backend code runs.
    problem = report_dir_problem(args.report) or (junit_problem(args.junit) if args.junit else None)
    if problem:
        return usage_error(problem)
    try:
        selection = CaseSelection(args.case or (), args.family or (), args.keyword)
        known = load_known_failures(args.known_failures)
    except (SelectionError, KnownFailuresError) as exc:
        return usage_error(str(exc))
    # With --json, stdout carries the JSON only: anything else printed meanwhile goes to stderr.
    quiet = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    try:
        with quiet:
            outcome = run_conformance(
                args.backend, profile=args.profile, dtypes=args.dtype, problems=args.problem, report_dir=args.report,
                timeout=args.timeout, memory_limit_bytes=args.memory_limit, isolation=args.isolation, seed=args.seed,
                progress=Progress(), command=command, selection=selection, known_failures=known,
                workers=args.workers, scheduler=args.scheduler,
            )
    except ReportError as exc:
        return usage_error(f"cannot write the report to {args.report!r}: {exc}")
    except ValueError as exc:  # SelectionError, unknown problem: raised before any case runs
        return usage_error(str(exc))
    report = outcome.report
    load_error = report.get("backend", {}).get("load_error")
    if load_error:
        return usage_error(f"cannot load backend {args.backend!r}: {load_error}")
    if args.junit:
        _write_junit(report, args.junit)
    if args.json:
        print(json.dumps(report, indent=1))
        for line in nothing_checked_hint(report):
            print(line, file=sys.stderr)
    else:
        _print_summary(report, args.report)
    return outcome.exit_code


def usage_error(message: str) -> int:
    print(f"attnspec: {message}", file=sys.stderr)
    return EXIT_USAGE


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def report_dir_problem(directory: str) -> str | None:
    """Why ``directory`` cannot hold a report (None: it can), checked before the backend loads."""
    path = Path(directory)
    if path.exists() and not path.is_dir():
        return f"--report {directory!r} exists and is not a directory"
    existing = _nearest_existing(path.absolute())
    if not existing.is_dir():
        return f"--report {directory!r}: {str(existing)!r} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"--report {directory!r}: {str(existing)!r} is not writable"
    return None


def junit_problem(file: str) -> str | None:
    """Why a JUnit file cannot be written at ``file`` (None: it can)."""
    path = Path(file)
    if path.is_dir():
        return f"--junit {file!r} is a directory"
    parent = path.absolute().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return f"--junit {file!r}: its directory {str(parent)!r} does not exist or is not writable"
    return None


def _write_junit(report: dict[str, Any], file: str) -> None:
    from attnspec.conformance.harness import report as report_module

    write_junit = getattr(report_module, "write_junit", None)
    if write_junit is None:  # helper B's writer not landed yet
        print("attnspec: --junit: this version has no JUnit writer", file=sys.stderr)
        return
    write_junit(report, file)


_DTYPE_REASON = re.compile(r"^dtype \S+ not declared|does not declare float64")


def nothing_checked_hint(report: dict[str, Any]) -> list[str]:
    """Lines explaining a run where every case was not applicable because of its dtype (else none)."""
    cases = report["cases"]
    if not cases or any(r["status"] != NOT_APPLICABLE for r in cases):
        return []
    if not all(any(_DTYPE_REASON.search(x) for x in (r.get("reasons") or [r.get("message", "")])) for r in cases):
        return []
    backend = report.get("backend", {})
    declared = backend.get("capabilities", {}).get("dtypes", [])
    asked = ", ".join(report.get("dtypes", [])) or "?"
    if str(backend.get("class", "")).endswith("FunctionBackend"):
        return [f"  nothing was checked: a bare function declares float64 only; to check {asked}, make it an object "
                f"with an attention method and capabilities = {{\"dtypes\": {{{', '.join(json.dumps(d) for d in report.get('dtypes', []))}}}}}",
                "  (see `Declaring capabilities` in docs/conformance.md)"]
    return [f"  nothing was checked: the backend declares dtypes {', '.join(declared) or '?'}, the run asked for {asked}; "
            "declare them in its capabilities[\"dtypes\"] or drop --dtype"]


def _print_summary(report: dict[str, Any], directory: str) -> None:
    s = report["summary"]
    known = f", {s.get(XFAIL, 0)} known failures (xfail)" if s.get(XFAIL) else ""
    xpass = f", {s.get(XPASS, 0)} known failures now passing (xpass)" if s.get(XPASS) else ""
    print(f"backend {report['backend']['spec']}: {s['pass']} passed, {s['fail']} failed, {s['undecided']} undecided, "
          f"{s['error']} errors, {s['not_applicable']} not applicable{known}{xpass} (of {s['total']})")
    bad = [r for r in report["cases"] if r["status"] in ("fail", "error", "undecided", XPASS)]
    for r in bad[:10]:
        ev = r.get("evidence", {}) if r["status"] != XPASS else {}
        where = f" worst entry {ev['worst_index']} error {ev.get('error_interval')} tolerance {ev.get('tolerance')}" if "worst_index" in ev else ""
        print(f"  {r['status'].upper():9s} {r['case_id']}:{where} {(str(r.get('message', '')).splitlines() or [''])[0][:160]}")
    if len(bad) > 10:
        print(f"  … and {len(bad) - 10} more (see the report)")
    if s["undecided"]:
        print("  undecided cases are not passes: the reference could not decide them at the precision cap")
    reasons = not_applicable_reasons(report["cases"])  # grouped: reasons differing only in numbers are one
    if reasons:
        print("  not applicable, by reason:")
        for row in reasons[:5]:
            text = row["example"] if row["count"] == 1 else row["reason"].replace("#", "…")
            print(f"    {row['count']:5d}  {text[:150]}")
        if len(reasons) > 5:
            print(f"           … and {len(reasons) - 5} more reasons (see report.md)")
    hint = nothing_checked_hint(report)
    for line in hint:
        print(line)
    if not hint and s["pass"] == 0 and s.get(XFAIL, 0) == 0 and not bad:
        print("  no applicable case: nothing was checked")
    print(f"report: {directory}/report.json, {directory}/report.md")


def cmd_replay(args: argparse.Namespace) -> int:
    try:
        case, manifest = load_case(args.file)
    except CaseFileError as exc:
        print(f"attnspec: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with ProcessRunner(args.backend, timeout=args.timeout, memory_limit_bytes=args.memory_limit) as runner:
        if runner.load_error:
            print(f"attnspec: cannot load backend {args.backend!r}: {runner.load_error}", file=sys.stderr)
            return EXIT_USAGE
        record = judge_one(case, runner, runner.capabilities)
    if args.json:
        print(json.dumps(record, indent=1, default=str))
    else:
        ev = record.get("evidence", {})
        print(f"{record['status'].upper()} {case.case_id}: {record.get('message', '')}")
        if "worst_index" in ev:
            print(f"  worst entry {ev['worst_index']}: output {ev['output']!r}, reference {ev['reference_mid']!r} ± {ev['reference_rad']:.2e}, "
                  f"certified error {ev['error_interval']}, tolerance {ev['tolerance']!r}")
    return EXIT_OK if record["status"] == "pass" else EXIT_FAIL


def cmd_backends(args: argparse.Namespace) -> int:
    rows = []
    for name, target in sorted(available_backends().items()):
        row: dict[str, Any] = {"name": name, "target": target}
        try:
            row["capabilities"] = read_capabilities(load_backend(name)).to_json()
            row["available"] = True
        except (BackendLoadError, Exception) as exc:  # listing must survive any broken backend
            row["available"] = False
            row["reason"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
        return EXIT_OK
    for row in rows:
        if row["available"]:
            c = row["capabilities"]
            extra = f", contract eps {c['contract_eps']}" if c.get("contract_eps") is not None else ""
            print(f"{row['name']:10s} problems {','.join(c['problems'])}; dtypes {','.join(c['dtypes'])}; devices {','.join(c['devices'])}{extra}")
        else:
            print(f"{row['name']:10s} unavailable: {row['reason'].splitlines()[0][:150]}")
    return EXIT_OK
