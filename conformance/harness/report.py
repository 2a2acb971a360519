"""Conformance reports: a JSONL journal while the run goes, then a versioned JSON document, a Markdown
summary and (on request) JUnit XML.

``cases.jsonl`` (the journal) starts with a header line ``{"journal": "attnspec.journal/1", "started":
…, "command": …}`` and then receives each case the moment it is judged (flushed), so a crash of the
runner loses nothing already judged. ``report.json`` (schema ``attnspec.report/1``, see
``schemas/report.schema.json``) and ``report.md`` are written only at the end, each atomically
(temporary file + ``os.replace``): a killed run leaves its journal and no report, never a stale or
truncated one. A new run first moves the previous run's three files into ``DIR/previous/`` (replacing
an older ``previous/``), so the previous journal is kept whole.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import IO, Any, Iterable

import numpy as np

from attnspec.conformance.harness.atomic import atomic_write
from attnspec.conformance.judging.precision_model import SMALLEST_NORMAL, UNIT_ROUNDOFF

REPORT_SCHEMA = "attnspec.report/1"
JOURNAL_SCHEMA = "attnspec.journal/1"
STATUSES = ("pass", "fail", "undecided", "error", "not_applicable")
NOT_PASSING = ("fail", "error", "undecided")
RUN_FILES = ("report.json", "report.md", "cases.jsonl")
PREVIOUS_DIR = "previous"
_CAPTURED_MAX = 4000


class ReportError(RuntimeError):
    """The report directory cannot be used (not a directory, not writable, …)."""


TIMING_FIELDS = ("backend_seconds", "judge_seconds")  # what two runs of one command may differ in, per case


def records_without_timings(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The case records less their timings: equal for two runs of one command (serial, on any number of
    workers, in any completion order)."""
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


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


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --------------------------------------------------------------------------- the writer


def _keep_previous_run(directory: Path) -> None:
    """Move the previous run's report files and journal into ``directory/previous`` (replacing it)."""
    present = [n for n in RUN_FILES if os.path.lexists(directory / n)]
    if not present:
        return
    previous = directory / PREVIOUS_DIR
    if os.path.lexists(previous) and not previous.is_dir():  # not ours: never delete a user's file
        raise ReportError(f"{previous} exists and is not a directory; move it away to keep the previous run")
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=".previous-"))
    for name in present:
        os.replace(directory / name, staging / name)
    if os.path.lexists(previous):
        old = staging.with_name(staging.name + ".old")
        os.replace(previous, old)
        os.replace(staging, previous)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    else:
        os.replace(staging, previous)


def _open_journal(directory: Path, command: str) -> IO[str]:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ReportError(f"report directory {directory} exists and is not a directory") from None
    except OSError as exc:
        raise ReportError(f"report directory {directory} cannot be created: {exc.strerror or exc}") from None
    if not directory.is_dir():
        raise ReportError(f"report directory {directory} is not a directory")
    try:
        _keep_previous_run(directory)
        stream = open(directory / "cases.jsonl", "x", encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"report directory {directory} is not usable: {exc.strerror or exc}") from None
    stream.write(json.dumps({"journal": JOURNAL_SCHEMA, "started": _now(), "command": command, "pid": os.getpid()}) + "\n")
    stream.flush()
    return stream


class ReportWriter:
    """Streams case records to the journal ``cases.jsonl`` and writes the final JSON and Markdown reports.

    The constructor prepares the directory (so call it before any backend work: an unusable directory
    is a :class:`ReportError` at once); ``directory=None`` keeps everything in memory.
    """

    def __init__(self, directory: str | os.PathLike | None, *, command: str = ""):
        self.directory = Path(directory) if directory is not None else None
        self.records: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self._stream: IO[str] | None = None
        if self.directory is not None:
            self._stream = _open_journal(self.directory, command)

    def add(self, record: dict[str, Any]) -> None:
        record = sanitize(record)
        self.records.append(record)
        if self._stream is not None:
            self._stream.write(json.dumps(record) + "\n")
            self._stream.flush()

    def note(self, event: dict[str, Any]) -> None:
        """An event line in the journal (``{"event": …}``: a retried task, a cluster), not a case."""
        event = sanitize(event)
        self.events.append(event)
        if self._stream is not None:
            self._stream.write(json.dumps(event) + "\n")
            self._stream.flush()

    def summary(self) -> dict[str, int]:
        return summarize(self.records)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def finish(self, header: dict[str, Any]) -> dict[str, Any]:
        """The report (written to ``report.json`` and ``report.md`` when there is a directory)."""
        report = build_report(header, self.records)
        self.close()
        if self.directory is not None:
            try:
                atomic_write(self.directory / "report.json", json.dumps(report, indent=1))
                atomic_write(self.directory / "report.md", markdown(report))
            except OSError as exc:
                raise ReportError(f"cannot write the report in {self.directory}: {exc.strerror or exc}") from None
        return report


def read_journal(path: str | os.PathLike) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(header, records) of a journal; a last line cut short by a killed run is ignored."""
    header: dict[str, Any] | None = None
    records: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and "journal" in obj and header is None and not records:
                header = obj
            elif isinstance(obj, dict) and not ("event" in obj and "status" not in obj):  # events are not cases
                records.append(obj)
    return header, records


# --------------------------------------------------------------------------- report contents


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Counts per status (every status of :data:`STATUSES`, plus any other status seen) and the total."""
    counts = {s: 0 for s in (*STATUSES, "xfail", "xpass")}  # known failures: always counted, apart
    total = 0
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
        total += 1
    counts["total"] = total
    return counts


def _ratio(record: dict[str, Any]) -> float | None:
    value: Any = (record.get("evidence") or {}).get("ratio")
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def rollup(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (problem, dtype, family): counts per status and the worst error/tolerance ratio."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in records:
        key = (str(r.get("problem", "")), str(r.get("dtype", "")), str(r.get("family", "")))
        row = rows.setdefault(key, {"problem": key[0], "dtype": key[1], "family": key[2],
                                    "counts": {s: 0 for s in STATUSES}, "worst_ratio": None, "worst_case": None})
        row["counts"][r["status"]] = row["counts"].get(r["status"], 0) + 1
        ratio = _ratio(r)
        if ratio is not None and (row["worst_ratio"] is None or ratio > row["worst_ratio"]):
            row["worst_ratio"], row["worst_case"] = ratio, r.get("case_id")
    return [rows[k] for k in sorted(rows)]


_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w])")  # not the 16 of float16


def not_applicable_reasons(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each not-applicable reason with its count, most frequent first; reasons that differ only in their
    numbers are one row (numbers shown as ``#``), with one real message as the example. A case with
    several reasons (its ``reasons`` list, else its message split at "; ") counts once for each."""
    counts: Counter[str] = Counter()
    example: dict[str, str] = {}
    for r in records:
        if r.get("status") != "not_applicable":
            continue
        listed = r.get("reasons")
        if not (isinstance(listed, list) and listed and all(isinstance(x, str) for x in listed)):
            listed = str(r.get("message") or "(no reason given)").split("; ")
        for reason in listed:
            pattern = _NUMBER.sub("#", reason.strip())
            counts[pattern] += 1
            example.setdefault(pattern, reason.strip())
    return [{"reason": p, "count": n, "example": example[p]} for p, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def build_report(header: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``attnspec.report/1`` document of a run (``header``: backend, profile, command, …)."""
    records = [sanitize(r) for r in records]
    return {
        "schema": REPORT_SCHEMA,
        "created": _now(),
        **sanitize(header),
        "environment": {**environment(), **sanitize(header.get("environment") or {})},  # + what the worker saw
        "summary": summarize(records),
        "rollup": sanitize(rollup(records)),
        "not_applicable_reasons": not_applicable_reasons(records),
        "cases": records,
    }


# --------------------------------------------------------------------------- ulp hints


def ulp(x: float, fmt: str) -> float:
    """Spacing of the format ``fmt`` at magnitude |x|: 2^(⌊log2|x|⌋ − p + 1) for |x| ≥ λ (the smallest
    normal), λ·2^(1 − p) below it (p: the precision in bits, u = 2^−p)."""
    p = 1 - math.frexp(UNIT_ROUNDOFF[fmt])[1]
    lam = SMALLEST_NORMAL[fmt]
    ax = abs(float(x))
    if ax < lam or not math.isfinite(ax):
        return math.ldexp(lam, 1 - p)
    return math.ldexp(1.0, math.frexp(ax)[1] - p)


def _finite(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def ulp_hint(record: dict[str, Any]) -> str:
    """The error at the worst entry in ulps of the format of the tolerance's precision model, at the
    reference value's magnitude (e.g. "≈ 2 float32 ulps in a float64 case"); "" when not computable."""
    ev = record.get("evidence") or {}
    model = (ev.get("tolerance_source") or {}).get("model") or {}
    dtype = str(record.get("dtype", ""))
    fmt = model.get("fmt") if model.get("fmt") in UNIT_ROUNDOFF else dtype
    ref, out = _finite(ev.get("reference_mid")), _finite(ev.get("output"))
    if fmt not in UNIT_ROUNDOFF or ref is None:
        return ""
    interval = ev.get("error_interval") or []
    err = abs(out - ref) if out is not None else _finite(interval[-1]) if interval else None
    if err is None:
        return ""
    if err == 0:
        return f"exact in {fmt} at the worst entry"
    n = err / ulp(ref, fmt)
    count = "0" if n == 0 else f"{n:.2g}" if n < 1e3 else f"{n:.1e}"
    unit = "ulp" if count == "1" else "ulps"
    return f"≈ {count} {fmt} {unit} in a {dtype} case"


# --------------------------------------------------------------------------- Markdown


_MD_PUNCT = re.compile(r"([\\`*_\[\]<>|#!~&{}])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_NEWLINES = re.compile(r"\s*(?:\r\n|\r|\n)\s*")


def _one_line(text: str, limit: int) -> str:
    text = _NEWLINES.sub(" ↵ ", text.strip())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def md_text(value: Any, limit: int = 300) -> str:
    """``value`` as literal text in one Markdown table cell: one line, Markdown's punctuation
    backslash-escaped (``|`` cannot end the cell, ``<`` cannot open HTML), control characters shown."""
    text = _MD_PUNCT.sub(r"\\\1", _one_line(str(value), limit))
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def md_code(value: Any, *, in_table: bool = True, limit: int = 300) -> str:
    """``value`` as a code span (a fence longer than any backtick run inside it); in a table cell a
    ``|`` is written ``\\|``, which GFM tables read as a literal pipe even inside code."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", _one_line(str(value), limit))
    if in_table:
        text = text.replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or (text.startswith(" ") and text.endswith(" ") and text.strip()) else ""
    return f"{fence}{pad}{text}{pad}{fence}" if text else "` `"


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.3g}"
    if isinstance(x, list):
        return "[" + ", ".join(_fmt(v) for v in x) + "]"
    return "" if x is None else str(x)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    """A GFM table; every cell must already be escaped (:func:`md_text`, :func:`md_code`)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell if cell else " " for cell in row) + " |" for row in rows]
    return lines + [""]


def _captured_text(value: Any) -> str:
    if isinstance(value, dict):
        return "\n".join(f"[{k}]\n{v}" for k, v in value.items() if v)
    return "" if value is None else str(value)


def _fenced(text: str) -> list[str]:
    if len(text) > _CAPTURED_MAX:
        text = text[:_CAPTURED_MAX] + f"\n… ({len(text) - _CAPTURED_MAX} more characters in report.json)"
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return [fence + "text", *text.splitlines(), fence, ""]


def row_ranges(rows: Iterable[int], limit: int = 12) -> str:
    """Sorted row indices as ranges (``0–1, 63–65, 1024``), at most ``limit`` ranges then ``… (+k)``."""
    parts: list[str] = []
    vals = sorted(int(r) for r in rows)
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        parts.append(str(vals[i]) if i == j else f"{vals[i]}–{vals[j]}")
        i = j + 1
    if len(parts) > limit:
        return ", ".join(parts[:limit]) + f", … (+{len(parts) - limit} ranges)"
    return ", ".join(parts)


def markdown(report: dict[str, Any]) -> str:
    """Human summary: counts, the rollup, every non-passing case with its evidence and a ulp hint, the
    closest passes, the not-applicable reasons and the output the failing cases printed."""
    s = report["summary"]
    backend = report.get("backend", {})
    env = report.get("environment", {})
    lines = [
        f"# attnspec conformance report: {md_code(backend.get('spec', '?'), in_table=False)}",
        "",
        f"- created: {md_text(report.get('created', ''))}, attnspec {md_text(env.get('attnspec', '?'))}, "
        f"profile {md_code(report.get('profile', ''), in_table=False)}",
        f"- backend: {md_code(backend.get('class', '?'), in_table=False)}"
        + (f" version {md_text(backend['version'])}" if backend.get("version") else ""),
    ]
    if report.get("command"):
        lines.append(f"- command: {md_code(report['command'], in_table=False, limit=1000)}")
    if backend.get("load_error"):
        lines.append(f"- **backend could not be loaded**: {md_text(backend['load_error'], 1000)}")
    lines.append("")
    statuses = list(STATUSES) + sorted(k for k in s if k not in STATUSES and k != "total")
    lines += _table([md_text(x.replace("_", " ")) for x in statuses] + ["total"],
                    [[str(s.get(x, 0)) for x in statuses] + [str(s.get("total", 0))]])

    roll = report.get("rollup") or rollup(report["cases"])
    if roll:
        lines += ["## Rollup by problem, dtype and family", ""]
        lines += _table(["problem", "dtype", "family"] + [md_text(x.replace("_", " ")) for x in statuses] + ["worst ratio"],
                        [[md_code(r["problem"]), md_text(r["dtype"]), md_code(r["family"])]
                         + [str(r["counts"].get(x, 0)) for x in statuses] + [md_text(_fmt(r.get("worst_ratio")))]
                         for r in roll])

    bad = [r for r in report["cases"] if r["status"] not in ("pass", "not_applicable")]
    if bad:
        rows = []
        for r in bad:
            ev = r.get("evidence") or {}
            err = ev.get("error_interval")
            rows.append([md_code(r["case_id"]), md_text(r["status"]), md_text(_fmt(ev.get("worst_index"))),
                         md_text(_fmt(err)) if err else "", md_text(_fmt(ev.get("tolerance"))),
                         md_text(_fmt(ev.get("ratio"))), md_text(ulp_hint(r)), md_text(r.get("message") or "")])
        lines += ["## Cases that did not pass", ""]
        lines += _table(["case", "status", "worst entry", "certified error", "tolerance", "ratio", "hint", "message"], rows)

    passed = sorted((r for r in report["cases"] if r["status"] == "pass"), key=lambda r: -(_ratio(r) or 0.0))[:10]
    if passed:
        rows = []
        for r in passed:
            ev = r.get("evidence") or {}
            cond = ev.get("conditioning") or {}
            rows.append([md_code(r["case_id"]), md_text(_fmt(ev.get("ratio"))), md_text(_fmt(ev.get("worst_index"))),
                         md_text(ulp_hint(r)), md_text((ev.get("tolerance_source") or {}).get("kind", "")),
                         md_text(_fmt(cond.get("max_abs_logit")))])
        lines += ["## Closest passes (largest error/tolerance)", ""]
        lines += _table(["case", "ratio", "worst entry", "hint", "tolerance source", "max abs logit"], rows)

    subset = [r for r in report["cases"] if r.get("rows") is not None and r["status"] != "not_applicable"]
    if subset:
        lines += ["## Row-subset cases (a pass covers the rows checked; a fail is certain)", ""]
        lines += _table(["case", "status", "rows checked", "rows", "refined with Arb"],
                        [[md_code(r["case_id"]), md_text(r["status"]),
                          md_text(f"{len(r['rows'])} of {(r.get('evidence') or {}).get('rows_total', '?')}"),
                          md_text(row_ranges(r["rows"])), md_text(_fmt((r.get("evidence") or {}).get("rows_refined")))]
                         for r in subset])
    tiered = [r for r in report["cases"] if "rows_refined" in (r.get("evidence") or {})]
    if tiered:
        refined = sum(int(r["evidence"]["rows_refined"]) for r in tiered)
        checked = sum(int(r["evidence"].get("rows_checked", 0)) for r in tiered)
        fast = sum(1 for r in tiered if any(e != "arb" for e in r["evidence"].get("engines") or []))
        lines += [f"Two-tier judging: {len(tiered)} cases ({fast} with a fast engine); "
                  f"{refined} of {checked} rows checked were refined with Arb.", ""]

    reasons = report.get("not_applicable_reasons") or not_applicable_reasons(report["cases"])
    if reasons:
        lines += ["## Why cases were not applicable", ""]
        lines += _table(["reason", "cases", "example"],
                        [[md_text(x["reason"]), str(x["count"]), md_text(x["example"])] for x in reasons])

    captured = [r for r in bad if _captured_text(r.get("captured")).strip()]
    if captured:
        lines += ["## Backend output of the cases that did not pass", ""]
        for r in captured:
            lines += [f"### {md_code(r['case_id'], in_table=False)} ({md_text(r['status'])})", ""]
            lines += _fenced(_captured_text(r["captured"]))
    return "\n".join(lines)


# --------------------------------------------------------------------------- JUnit XML


_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def _xml(text: Any, limit: int | None = None) -> str:
    text = "" if text is None else str(text)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    return _XML_ILLEGAL.sub("\ufffd", text)


def junit_outcome(record: dict[str, Any]) -> tuple[str, str] | None:
    """(element, message) of a case in JUnit terms, None for a plain pass.

    fail and undecided → ``failure`` (undecided is not a pass); error → ``error``; not applicable →
    ``skipped``; a known failure (status ``xfail`` or a ``known_failure`` key) that did not pass →
    ``skipped``; a known failure that passed (status ``xpass`` or ``known_failure`` with ``pass``) →
    ``failure``, so that the stale entry of the known-failures file is noticed.
    """
    status, message = record.get("status"), str(record.get("message") or "")
    known = status == "xfail" or bool(record.get("known_failure"))
    if status == "xpass" or (known and status == "pass"):
        return "failure", message or "known failure now passes: remove it from the known-failures file"
    if status == "pass":
        return None
    if known:
        return "skipped", f"known failure ({status}): {message}"
    if status == "not_applicable":
        return "skipped", f"not applicable: {message}"
    if status == "undecided":
        return "failure", "undecided (not a pass)"
    if status == "error":
        return "error", message or "error"
    return "failure", message or str(status)


def write_junit(report: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``report`` as JUnit XML (one ``testcase`` per case) to ``path``, atomically."""
    cases = report.get("cases", [])
    outcomes = [junit_outcome(r) for r in cases]
    counts = Counter(o[0] for o in outcomes if o is not None)
    seconds = [float(r.get("backend_seconds") or 0) + float(r.get("judge_seconds") or 0) for r in cases]
    totals = {"tests": str(len(cases)), "failures": str(counts["failure"]), "errors": str(counts["error"]),
              "skipped": str(counts["skipped"]), "time": f"{sum(seconds):.3f}"}
    root = ET.Element("testsuites", {"name": "attnspec", **totals})
    backend = report.get("backend", {})
    suite = ET.SubElement(root, "testsuite", {"name": _xml(f"attnspec {backend.get('spec', '')}"),
                                              "timestamp": _xml(report.get("created", "")), **totals})
    props = ET.SubElement(suite, "properties")
    for key, value in [("profile", report.get("profile")), ("command", report.get("command")),
                       *sorted((f"environment.{k}", v) for k, v in (report.get("environment") or {}).items())]:
        ET.SubElement(props, "property", name=_xml(key), value=_xml(value))
    for r, outcome, secs in zip(cases, outcomes, seconds):
        classname = ".".join(str(r.get(k, "")) for k in ("problem", "dtype", "family"))
        tc = ET.SubElement(suite, "testcase", classname=_xml(f"attnspec.{classname}"), name=_xml(r.get("case_id")),
                           time=f"{secs:.3f}")
        if outcome is not None:
            element, message = outcome
            child = ET.SubElement(tc, element, message=_xml(message, 1000), type=_xml(r.get("status")))
            hint = ulp_hint(r)
            details = "\n".join(x for x in (str(r.get("message") or ""), hint,
                                            json.dumps(r.get("evidence")) if r.get("evidence") else "") if x)
            if element != "skipped":
                child.text = _xml(details)
        captured = _captured_text(r.get("captured"))
        if captured:
            ET.SubElement(tc, "system-out").text = _xml(captured, 100_000)
    data = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    atomic_write(path, data)


def iter_statuses(records: Iterable[dict[str, Any]]) -> Iterable[str]:
    for r in records:
        yield r["status"]


__all__ = ["REPORT_SCHEMA", "JOURNAL_SCHEMA", "STATUSES", "ReportError", "ReportWriter", "build_report", "environment",
           "markdown", "md_code", "md_text", "not_applicable_reasons", "read_journal", "rollup", "sanitize",
           "summarize", "ulp", "ulp_hint", "write_junit"]
