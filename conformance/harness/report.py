"""Conformance reports: a versioned JSON document, a Markdown summary, and a JSONL stream.

``cases.jsonl`` receives each case the moment it is judged (flushed), so a crash of the runner loses
nothing already judged; ``report.json`` (schema ``attnspec.report/1``) and ``report.md`` are written at
the end from the same records.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

REPORT_SCHEMA = "attnspec.report/1"
STATUSES = ("pass", "fail", "undecided", "error", "not_applicable")


def sanitize(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become strings, numpy scalars plain numbers, sets lists."""
    if isinstance(obj, dict):
        return {str(k): sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        items = sorted(obj) if isinstance(obj, set) else obj
        return [sanitize(v) for v in items]
    if isinstance(obj, (np.floating, float)):
        x = float(obj)
        return x if math.isfinite(x) else repr(x)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return sanitize(obj.tolist())
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


def environment() -> dict[str, Any]:
    """Versions of everything that can change a verdict or a timing."""
    env: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(), "numpy": np.__version__}
    for mod in ("flint", "mpmath", "hypothesis", "torch", "cupy"):
        m = sys.modules.get(mod)
        if m is not None:
            env[mod if mod != "flint" else "python-flint"] = getattr(m, "__version__", "?")
    from attnspec import __version__

    env["attnspec"] = __version__
    return env


class ReportWriter:
    """Streams case records to ``cases.jsonl`` and writes the final JSON and Markdown reports."""

    def __init__(self, directory: str | os.PathLike | None):
        self.directory = Path(directory) if directory is not None else None
        self.records: list[dict[str, Any]] = []
        self._stream = None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._stream = open(self.directory / "cases.jsonl", "w")

    def add(self, record: dict[str, Any]) -> None:
        record = sanitize(record)
        self.records.append(record)
        if self._stream is not None:
            self._stream.write(json.dumps(record) + "\n")
            self._stream.flush()

    def summary(self) -> dict[str, int]:
        counts = {s: 0 for s in STATUSES}
        for r in self.records:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        counts["total"] = len(self.records)
        return counts

    def finish(self, header: dict[str, Any]) -> dict[str, Any]:
        report = {
            "schema": REPORT_SCHEMA,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **sanitize(header),
            "environment": environment(),
            "summary": self.summary(),
            "cases": self.records,
        }
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self.directory is not None:
            (self.directory / "report.json").write_text(json.dumps(report, indent=1))
            (self.directory / "report.md").write_text(markdown(report))
        return report


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)


def markdown(report: dict[str, Any]) -> str:
    """Human summary: counts, then every non-passing case with its evidence, then the worst passes."""
    s = report["summary"]
    backend = report.get("backend", {})
    lines = [
        f"# attnspec conformance report: `{backend.get('spec', '?')}`",
        "",
        f"- created: {report['created']}, attnspec {report['environment'].get('attnspec')}, profile `{report.get('profile')}`",
        f"- backend: `{backend.get('class', '?')}`" + (f" version {backend['version']}" if backend.get("version") else ""),
        f"- command: `{report.get('command', '')}`",
        "",
        "| passed | failed | undecided | error | not applicable | total |",
        "|---|---|---|---|---|---|",
        f"| {s['pass']} | {s['fail']} | {s['undecided']} | {s['error']} | {s['not_applicable']} | {s['total']} |",
        "",
    ]
    bad = [r for r in report["cases"] if r["status"] in ("fail", "error", "undecided")]
    if bad:
        lines += ["## Cases that did not pass", "", "| case | status | worst entry | certified error | tolerance | ratio | message |", "|---|---|---|---|---|---|---|"]
        for r in bad:
            ev = r.get("evidence", {})
            err = ev.get("error_interval")
            err_s = f"[{_fmt(err[0])}, {_fmt(err[1])}]" if err else ""
            msg = str(r.get("message", "")).splitlines()[0][:120] if r.get("message") else ""
            lines.append(f"| `{r['case_id']}` | {r['status']} | {ev.get('worst_index', '')} | {err_s} | {_fmt(ev.get('tolerance', ''))} | {_fmt(ev.get('ratio', ''))} | {msg} |")
        lines.append("")
    passed = sorted((r for r in report["cases"] if r["status"] == "pass"), key=lambda r: -_num(r.get("evidence", {}).get("ratio")))[:10]
    if passed:
        lines += ["## Closest passes (largest error/tolerance)", "", "| case | ratio | worst entry | tolerance source | max |logit| |", "|---|---|---|---|---|"]
        for r in passed:
            ev = r.get("evidence", {})
            cond = ev.get("conditioning", {})
            lines.append(f"| `{r['case_id']}` | {_fmt(ev.get('ratio'))} | {ev.get('worst_index')} | {ev.get('tolerance_source', {}).get('kind', '')} | {_fmt(cond.get('max_abs_logit', ''))} |")
        lines.append("")
    return "\n".join(lines)


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return 0.0


def iter_statuses(records: Iterable[dict[str, Any]]) -> Iterable[str]:
    for r in records:
        yield r["status"]
