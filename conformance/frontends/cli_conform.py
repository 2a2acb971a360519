"""``attnspec conform``, ``attnspec replay`` and ``attnspec backends``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from attnspec.conformance.harness.backends import BackendLoadError, available_backends, load_backend, read_capabilities
from attnspec.conformance.harness.case_files import CaseFileError, load_case
from attnspec.conformance.harness.isolation import ProcessRunner
from attnspec.conformance.harness.runner import judge_one, run_conformance

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("conform", help="run the conformance suite on a backend")
    p.add_argument("--backend", required=True, help="built-in name (see `attnspec backends`), module:attr or file.py:attr")
    p.add_argument("--profile", choices=["quick", "thorough"], default="quick")
    p.add_argument("--dtype", action="append", choices=["float64", "float32", "float16"], help="repeatable; default: the backend's declared dtypes")
    p.add_argument("--problem", action="append", help="restrict to these problems (default: all the backend declares)")
    p.add_argument("--report", default="attnspec-report", metavar="DIR", help="report directory (default: ./attnspec-report)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per backend call before the case is an error")
    p.add_argument("--isolation", choices=["process", "none"], default="process", help="run the backend in a worker process (default) or in this process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    p.set_defaults(func=cmd_conform)

    r = sub.add_parser("replay", help="re-run a saved case file against a backend")
    r.add_argument("file", help="a case manifest (.json) or its .npz")
    r.add_argument("--backend", required=True)
    r.add_argument("--timeout", type=float, default=60.0)
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_replay)

    b = sub.add_parser("backends", help="list known backends and their capabilities")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_backends)


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
        text = (f"[{bar}] {done}/{total}  pass {counts['pass']}  fail {counts['fail']}  "
                f"undecided {counts['undecided']}  error {counts['error']}  n/a {counts['not_applicable']}")
        if self.tty:
            self.stream.write("\r" + text + ("\n" if done == total else ""))
            self.stream.flush()
        else:
            decile = 10 * done // max(total, 1)
            if decile != self.last_decile or done == total:
                self.last_decile = decile
                self.stream.write(text + "\n")


def cmd_conform(args: argparse.Namespace) -> int:
    command = "attnspec " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else ""
    outcome = run_conformance(
        args.backend,
        profile=args.profile,
        dtypes=args.dtype,
        problems=args.problem,
        report_dir=args.report,
        timeout=args.timeout,
        isolation=args.isolation,
        seed=args.seed,
        progress=Progress(),
        command=command,
    )
    report = outcome.report
    load_error = report.get("backend", {}).get("load_error")
    if load_error:
        print(f"attnspec: cannot load backend {args.backend!r}: {load_error}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        _print_summary(report, args.report)
    return outcome.exit_code


def _print_summary(report: dict[str, Any], directory: str) -> None:
    s = report["summary"]
    print(f"backend {report['backend']['spec']}: {s['pass']} passed, {s['fail']} failed, {s['undecided']} undecided, "
          f"{s['error']} errors, {s['not_applicable']} not applicable (of {s['total']})")
    bad = [r for r in report["cases"] if r["status"] in ("fail", "error", "undecided")]
    for r in bad[:10]:
        ev = r.get("evidence", {})
        where = f" worst entry {ev['worst_index']} error {ev.get('error_interval')} tolerance {ev.get('tolerance')}" if "worst_index" in ev else ""
        print(f"  {r['status'].upper():9s} {r['case_id']}:{where} {str(r.get('message', '')).splitlines()[0][:160]}")
    if len(bad) > 10:
        print(f"  … and {len(bad) - 10} more (see the report)")
    if s["undecided"]:
        print("  undecided cases are not passes: the reference could not decide them at the precision cap")
    if s["pass"] == 0 and not bad:
        print("  no applicable case: nothing was checked")
    print(f"report: {directory}/report.json, {directory}/report.md")


def cmd_replay(args: argparse.Namespace) -> int:
    try:
        case, manifest = load_case(args.file)
    except CaseFileError as exc:
        print(f"attnspec: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with ProcessRunner(args.backend, timeout=args.timeout) as runner:
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
