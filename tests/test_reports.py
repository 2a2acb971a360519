"""harness/report.py: the journal and reports are written atomically and never left stale; report.md
renders as tables under a real Markdown parser (markdown-it-py), whatever the messages contain; JUnit XML
parses and counts what the report counts; report.json follows schemas/report.schema.json."""

from __future__ import annotations

import html
import json
import os
import re
import xml.etree.ElementTree as ET

import pytest
from markdown_it import MarkdownIt

from attnspec.conformance.harness import report as report_module
from attnspec.conformance.harness.report import (
    JOURNAL_SCHEMA,
    REPORT_SCHEMA,
    ReportError,
    ReportWriter,
    markdown,
    md_code,
    md_text,
    read_journal,
    ulp,
    ulp_hint,
    write_junit,
)
from attnspec.conformance.harness.schemas import SchemaValidationError, load_schema, validate_report
from attnspec.conformance.judging.problems import get_problem

HOSTILE = "|y - x| >= 1e-3 > 2e-5 | `q *= s` ``` \n<script>alert(1)</script> & *bold* _x_ [link](http://e) # \\ \x1b[31m"


def _evidence(output, ref, *, fmt="float32", ratio=0.5):
    err = abs(output - ref)
    return {"worst_index": [2, 1], "output": output, "reference_mid": ref, "reference_rad": 1e-40,
            "error_interval": [err, err], "tolerance": err / ratio if ratio else 1.0, "ratio": ratio, "ratio_lower": ratio,
            "prec": 128, "tolerance_source": {"kind": "precision_model", "model": {"fmt": fmt, "exp_ulps": 2.0,
                                                                                   "max_rescales": None, "exact_rounded": False}},
            "conditioning": {"max_abs_logit": 3.5}}


def _records():
    """One record of each status, with hostile text in every free-text field."""
    base = {"problem": "softmax_attention", "family": "uniform", "seed": 1, "shape": [4, 3]}
    one = 1.0 + 2 * 2.0**-23  # two float32 ulps above 1
    return [
        {**base, "case_id": "softmax_attention/float64/uniform/000", "dtype": "float64", "status": "pass",
         "message": "every entry within tolerance", "evidence": _evidence(one, 1.0, ratio=0.25)},
        {**base, "case_id": "softmax_attention/float64/uniform/001", "dtype": "float64", "status": "pass",
         "message": "ok", "evidence": _evidence(0.5, 0.5, fmt="float64", ratio=0.0)},
        {**base, "case_id": "soft|max/`odd`/002", "dtype": "float64", "status": "fail", "message": HOSTILE,
         "evidence": _evidence(one, 1.0, ratio=3.0), "captured": "printed ``` fences | and <script>x</script>\nline 2"},
        {**base, "case_id": "softmax_attention/float32/uniform/003", "dtype": "float32", "status": "error",
         "message": "exception: ValueError: " + HOSTILE, "evidence": {"kind": "exception"},
         "captured": {"stdout": "out|put", "stderr": "Traceback\n  | boom"}},
        {**base, "case_id": "softmax_attention/float32/degenerate/004", "dtype": "float32", "status": "undecided",
         "message": "3 entries could not be decided\nworst at [0, 0]", "evidence": _evidence(1.0, 1.0 + 2.0**-24, ratio=1.0)},
        {**base, "case_id": "softmax_attention/float16/uniform/005", "dtype": "float16", "status": "not_applicable",
         "message": "dtype float16 not declared (declared: float32, float64); d = 12 exceeds declared max_d = 6",
         "reasons": ["dtype float16 not declared (declared: float32, float64)", "d = 12 exceeds declared max_d = 6"]},
        {**base, "case_id": "softmax_attention/float16/uniform/006", "dtype": "float16", "status": "not_applicable",
         "message": "d = 7 exceeds declared max_d = 6", "reasons": ["d = 7 exceeds declared max_d = 6"]},
        {**base, "family": "bounded", "case_id": "softmax_attention/float64/bounded/007", "dtype": "float64", "status": "xfail",
         "message": "known | bad", "evidence": _evidence(one, 1.0, ratio=9.0), "original_status": "fail",
         "known_failure": {"case": "*/bounded/*", "reason": "issue #3 `x`", "file": "known.json"}},
        {**base, "family": "bounded", "case_id": "softmax_attention/float64/bounded/008", "dtype": "float64", "status": "xpass",
         "message": "known failure now passes: remove it from known.json", "evidence": _evidence(one, 1.0, ratio=0.1),
         "original_status": "pass", "known_failure": {"case": "*/bounded/008", "reason": "r", "file": "known.json"}},
    ]


HEADER = {"backend": {"spec": "evil|spec`.py:B", "class": "m.B", "version": "1|2"}, "profile": "quick", "seed": 0,
          "command": "attnspec conform --backend 'evil|spec`.py:B'", "dtypes": ["float64"], "problems": ["softmax_attention"]}


@pytest.fixture
def finished(tmp_path):
    writer = ReportWriter(tmp_path / "r", command=HEADER["command"])
    for record in _records():
        writer.add(record)
    return tmp_path / "r", writer.finish(HEADER)


# --------------------------------------------------------------------------- Markdown with a real parser


def _tables(md: str) -> list[list[list[str]]]:
    """Every table of ``md`` as rows of cell texts (the header row first), parsed by markdown-it-py."""
    tokens = MarkdownIt("commonmark").enable("table").parse(md)
    tables, rows, cells, depth = [], None, None, 0
    for tok in tokens:
        if tok.type == "table_open":
            rows = []
        elif tok.type == "table_close":
            tables.append(rows)
            rows = None
        elif tok.type == "tr_open":
            cells = []
        elif tok.type == "tr_close":
            rows.append(cells)
        elif tok.type in ("th_open", "td_open"):
            depth = len(cells)
            cells.append("")
        elif tok.type == "inline" and rows is not None:
            cells[depth] = _text(tok)
    return tables


def _text(inline) -> str:
    """The rendered text of an inline token (what a reader sees), tags stripped."""
    rendered = MarkdownIt("commonmark").renderer.renderInline(inline.children, {}, {})
    return html.unescape(re.sub(r"<[^>]+>", "", rendered))


def test_every_table_parses_with_the_right_rows_and_columns(finished):
    _, report = finished
    md = markdown(report)
    tables = _tables(md)
    # summary, rollup, not passing, closest passes, not-applicable reasons
    assert len(tables) == 5 == md.count("\n|---")
    summary, roll, bad, closest, reasons = tables
    statuses = ["pass", "fail", "undecided", "error", "not applicable", "xfail", "xpass"]
    assert summary == [statuses + ["total"], ["2", "1", "1", "1", "2", "1", "1", "9"]]
    assert len(roll) == 1 + len(report["rollup"]) and all(len(row) == 3 + len(statuses) + 1 for row in roll)
    assert [row[0] for row in bad[1:]] == [r["case_id"] for r in report["cases"] if r["status"] not in ("pass", "not_applicable")]
    assert all(len(row) == 8 for row in bad)
    assert len(closest) == 3 and all(len(row) == 6 for row in closest)
    assert reasons[1:] == [["d = # exceeds declared max_d = #", "2", "d = 12 exceeds declared max_d = 6"],
                           ["dtype float16 not declared (declared: float32, float64)", "1",
                            "dtype float16 not declared (declared: float32, float64)"]]


def test_hostile_messages_render_as_the_literal_text_in_one_cell(finished):
    _, report = finished
    md = markdown(report)
    bad = _tables(md)[2]
    fail_row = next(row for row in bad if row[1] == "fail")
    assert fail_row[0] == "soft|max/`odd`/002"
    expected = HOSTILE.replace(" \n", " ↵ ").replace("\x1b", "\\x1b")
    assert fail_row[7] == expected
    rendered = MarkdownIt("commonmark").enable("table").render(md)
    assert "<script>" not in rendered and "&lt;script&gt;" in rendered
    assert "<strong>" not in rendered and "<em>" not in rendered and "<a href" not in rendered


def test_header_lines_keep_code_spans_intact(finished):
    _, report = finished
    rendered = MarkdownIt("commonmark").enable("table").render(markdown(report))
    assert "<h1>attnspec conformance report: <code>evil|spec`.py:B</code></h1>" in rendered
    assert "<code>attnspec conform --backend 'evil|spec`.py:B'</code>" in rendered


def test_captured_output_is_shown_fenced_for_cases_that_did_not_pass(finished):
    _, report = finished
    tokens = MarkdownIt("commonmark").enable("table").parse(markdown(report))
    fences = [t.content for t in tokens if t.type == "fence"]
    assert fences == ["printed ``` fences | and <script>x</script>\nline 2\n", "[stdout]\nout|put\n[stderr]\nTraceback\n  | boom\n"]


def test_long_captured_output_is_truncated(tmp_path):
    writer = ReportWriter(None)
    writer.add({**_records()[2], "captured": "x" * 10_000})
    md = markdown(writer.finish(HEADER))
    fence = next(t.content for t in MarkdownIt().parse(md) if t.type == "fence")
    assert fence.startswith("x" * 4000 + "\n… (6000 more characters in report.json)")


@pytest.mark.parametrize("text", ["plain", "a|b", "`", "``x``", "` lead", "x\ny", "", "<b>", "a\\|b"])
def test_code_spans_round_trip_in_a_table_cell(text):
    md = f"| h |\n|---|\n| {md_code(text)} |\n"
    (cells,) = _tables(md)[0][1:]
    assert cells == [text.replace("\n", " ↵ ") if text else " "]


@pytest.mark.parametrize("text", ["a|b", "*x*", "_x_", "[a](b)", "<i>", "&amp;", "\\", "#", "~~x~~", "{x}", "!"])
def test_text_cells_round_trip(text):
    (cells,) = _tables(f"| h |\n|---|\n| {md_text(text)} |\n")[0][1:]
    assert cells == [text]


# --------------------------------------------------------------------------- rollup, hints, reasons


def test_rollup_counts_and_worst_ratio(finished):
    _, report = finished
    rows = {(r["problem"], r["dtype"], r["family"]): r for r in report["rollup"]}
    uniform64 = rows[("softmax_attention", "float64", "uniform")]
    assert uniform64["counts"]["pass"] == 2 and uniform64["counts"]["fail"] == 1
    assert uniform64["worst_ratio"] == 3.0 and uniform64["worst_case"] == "soft|max/`odd`/002"
    assert rows[("softmax_attention", "float64", "bounded")]["worst_ratio"] == 9.0
    assert rows[("softmax_attention", "float64", "bounded")]["worst_case"] == "softmax_attention/float64/bounded/007"
    assert rows[("softmax_attention", "float16", "uniform")]["worst_ratio"] is None
    assert sum(sum(r["counts"].values()) for r in report["rollup"]) == report["summary"]["total"]


def test_ulp_of_each_format():
    assert ulp(1.0, "float64") == 2.0**-52 and ulp(1.5, "float32") == 2.0**-23 and ulp(-3.0, "float16") == 2.0**-9
    assert ulp(0.0, "float32") == 2.0**-149 and ulp(2.0**-130, "float32") == 2.0**-149  # subnormal spacing
    assert ulp(1.0, "bfloat16") == 2.0**-7


def test_hint_names_ulps_of_the_model_format_in_the_case_dtype():
    records = _records()
    assert ulp_hint(records[0]) == "≈ 2 float32 ulps in a float64 case"
    assert ulp_hint(records[1]) == "exact in float64 at the worst entry"
    assert ulp_hint(records[4]) == "≈ 0.5 float32 ulps in a float32 case"  # 2^-24 at 1 + 2^-24
    assert ulp_hint(records[3]) == ""  # an error has no worst entry
    assert ulp_hint({"dtype": "float32", "evidence": {"reference_mid": 1.0, "output": "inf", "error_interval": [1, "inf"]}}) == ""


def test_hints_appear_in_the_failure_and_closest_pass_tables(finished):
    _, report = finished
    _, _, bad, closest, _ = _tables(markdown(report))
    assert next(row for row in bad if row[1] == "fail")[6] == "≈ 2 float32 ulps in a float64 case"
    assert closest[1][3] == "≈ 2 float32 ulps in a float64 case"


# --------------------------------------------------------------------------- files: journal, atomicity, rotation


def test_journal_starts_with_a_run_header_then_one_line_per_case(finished):
    directory, report = finished
    header, records = read_journal(directory / "cases.jsonl")
    assert header["journal"] == JOURNAL_SCHEMA and header["command"] == HEADER["command"] and "started" in header
    assert [r["case_id"] for r in records] == [c["case_id"] for c in report["cases"]]
    assert len((directory / "cases.jsonl").read_text().splitlines()) == 1 + len(report["cases"])


def test_a_killed_run_leaves_its_journal_and_no_report(tmp_path):
    writer = ReportWriter(tmp_path, command="first")
    writer.add(_records()[0])
    writer.finish(HEADER)
    killed = ReportWriter(tmp_path, command="second")  # never finished
    killed.add(_records()[2])
    assert not (tmp_path / "report.json").exists() and not (tmp_path / "report.md").exists()
    header, records = read_journal(tmp_path / "cases.jsonl")
    assert header["command"] == "second" and [r["case_id"] for r in records] == ["soft|max/`odd`/002"]
    assert json.loads((tmp_path / "previous" / "report.json").read_text())["summary"]["total"] == 1
    killed.close()


def test_the_previous_run_is_kept_whole_and_an_older_one_replaced(tmp_path):
    for command in ("run1", "run2", "run3"):
        writer = ReportWriter(tmp_path, command=command)
        writer.add(_records()[0])
        writer.finish({**HEADER, "command": command})
    assert json.loads((tmp_path / "report.json").read_text())["command"] == "run3"
    previous = tmp_path / "previous"
    assert sorted(p.name for p in previous.iterdir()) == ["cases.jsonl", "report.json", "report.md"]
    assert read_journal(previous / "cases.jsonl")[0]["command"] == "run2"
    assert len(read_journal(previous / "cases.jsonl")[1]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cases.jsonl", "previous", "report.json", "report.md"]


def test_a_journal_cut_mid_line_is_read_up_to_the_cut(tmp_path):
    writer = ReportWriter(tmp_path)
    for r in _records()[:3]:
        writer.add(r)
    writer.close()
    path = tmp_path / "cases.jsonl"
    path.write_text(path.read_text()[:-20])
    assert len(read_journal(path)[1]) == 2


def test_reports_are_replaced_atomically(tmp_path, monkeypatch):
    writer = ReportWriter(tmp_path)
    writer.add(_records()[0])
    writer.finish(HEADER)
    before = (tmp_path / "previous").exists(), (tmp_path / "report.json").read_bytes()
    writer = ReportWriter(tmp_path)

    def crash(report):
        raise KeyboardInterrupt  # a kill while report.md is being rendered

    monkeypatch.setattr(report_module, "markdown", crash)
    with pytest.raises(KeyboardInterrupt):
        writer.finish(HEADER)
    assert not before[0] and (tmp_path / "previous" / "report.json").read_bytes() == before[1]
    json.loads((tmp_path / "report.json").read_text())  # complete, never truncated
    assert not (tmp_path / "report.md").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_file_in_place_of_the_directory_is_a_report_error(tmp_path):
    (tmp_path / "r").write_text("not a directory")
    with pytest.raises(ReportError, match="exists and is not a directory"):
        ReportWriter(tmp_path / "r")
    (tmp_path / "f").write_text("")
    with pytest.raises(ReportError, match="cannot be created"):
        ReportWriter(tmp_path / "f" / "sub")


def test_a_user_file_called_previous_is_never_deleted(tmp_path):
    ReportWriter(tmp_path).finish(HEADER)
    (tmp_path / "previous").write_text("mine")
    with pytest.raises(ReportError, match="previous exists and is not a directory"):
        ReportWriter(tmp_path)
    assert (tmp_path / "previous").read_text() == "mine" and (tmp_path / "report.json").is_file()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions")
def test_an_unwritable_directory_is_a_report_error(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        with pytest.raises(ReportError, match="is not usable"):
            ReportWriter(d)
    finally:
        d.chmod(0o700)


def test_no_directory_keeps_everything_in_memory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    writer = ReportWriter(None)
    writer.add(_records()[0])
    assert writer.finish(HEADER)["summary"]["total"] == 1 and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- JUnit XML


def test_junit_parses_and_counts_match(finished, tmp_path):
    _, report = finished
    path = tmp_path / "junit.xml"
    write_junit(report, path)
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == int(suite.get("tests")) == int(root.get("tests")) == report["summary"]["total"]
    kinds = {tc.get("name"): [child.tag for child in tc if child.tag != "system-out"] for tc in cases}
    assert kinds == {
        "softmax_attention/float64/uniform/000": [], "softmax_attention/float64/uniform/001": [],
        "soft|max/`odd`/002": ["failure"], "softmax_attention/float32/uniform/003": ["error"],
        "softmax_attention/float32/degenerate/004": ["failure"], "softmax_attention/float16/uniform/005": ["skipped"],
        "softmax_attention/float16/uniform/006": ["skipped"], "softmax_attention/float64/bounded/007": ["skipped"],
        "softmax_attention/float64/bounded/008": ["failure"],
    }
    assert (suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("3", "1", "3")
    by_name = {tc.get("name"): tc for tc in cases}
    assert by_name["softmax_attention/float32/degenerate/004"].find("failure").get("message") == "undecided (not a pass)"
    assert by_name["softmax_attention/float64/bounded/007"].find("skipped").get("message").startswith("known failure (xfail): known | bad")
    assert "now passes" in by_name["softmax_attention/float64/bounded/008"].find("failure").get("message")
    failure = by_name["soft|max/`odd`/002"].find("failure")
    assert failure.get("message") == HOSTILE.replace("\x1b", "\ufffd")  # XML 1.0 cannot hold ESC
    assert "≈ 2 float32 ulps in a float64 case" in failure.text
    assert by_name["softmax_attention/float32/uniform/003"].find("system-out").text.startswith("[stdout]\nout|put")
    assert not list(tmp_path.glob("*.tmp"))


# --------------------------------------------------------------------------- JSON Schema


def test_the_report_schema_is_valid_draft_2020_12():
    import jsonschema

    schema = load_schema("report")
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["schema"]["const"] == REPORT_SCHEMA
    jsonschema.Draft202012Validator.check_schema(schema)


def test_a_report_built_from_hostile_records_follows_the_schema(finished):
    directory, report = finished
    validate_report(report)
    validate_report(json.loads((directory / "report.json").read_text()))


@pytest.mark.parametrize("change,message", [
    (lambda r: r.pop("summary"), "field 'summary' missing"),
    (lambda r: r["cases"][0].update(status="passed"), r"field 'cases.0.status': 'passed' is not one of"),
    (lambda r: r["cases"][0].pop("evidence"), r"field 'cases.0.evidence' missing"),
    (lambda r: r["cases"][0]["evidence"].update(ratio=[1]), r"field 'cases.0.evidence.ratio'"),
    (lambda r: r["summary"].update(total=-1), r"field 'summary.total': -1 is less than the minimum"),
    (lambda r: r.update(schema="attnspec.report/2"), r"field 'schema'"),
    (lambda r: r["cases"][5].update(message=""), r"field 'cases.5.message'"),
])
def test_the_schema_refuses_broken_reports(finished, change, message):
    _, report = finished
    report = json.loads(json.dumps(report))
    change(report)
    with pytest.raises(SchemaValidationError, match=message):
        validate_report(report)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A real in-process run of the numpy backend on a few softmax cases (the generator cut short)."""
    from attnspec.conformance.harness.runner import run_conformance

    problem = get_problem("softmax_attention")
    full = problem.generate_cases
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(problem, "generate_cases", lambda profile, dtypes, seed=0: [
            c for dtype in dtypes for c in full(profile, (dtype,), seed)[:4]])
        directory = tmp_path_factory.mktemp("real") / "r"
        outcome = run_conformance("numpy", profile="quick", problems=["softmax_attention"], report_dir=directory,
                                  isolation="none", dtypes=["float64", "float32", "float16"])
    return directory, outcome.report


def test_a_real_report_follows_the_schema_and_renders(real_run):
    directory, report = real_run
    assert report["summary"]["total"] == 12 and report["summary"]["pass"] == 8 and report["summary"]["not_applicable"] == 4
    validate_report(report)
    validate_report(json.loads((directory / "report.json").read_text()))
    tables = _tables((directory / "report.md").read_text())
    assert [len(t) - 1 for t in tables] == [1, len(report["rollup"]), 8, len(report["not_applicable_reasons"])]
    assert all(ulp_hint(c).startswith(("≈", "exact")) for c in report["cases"] if c["status"] == "pass")


def test_real_failure_files_follow_the_case_schema(tmp_path):
    from attnspec.conformance.harness.case_files import load_case, save_case
    from attnspec.conformance.harness.schemas import validate_case_manifest

    problem_cases = [(name, get_problem(name).generate_cases("quick", ("float64",), 0)[0])
                     for name in ("softmax_attention", "tensor_attention", "dynamic_attention")]
    for name, case in problem_cases:
        path = save_case(tmp_path, case, {"backend": "b", "status": "fail", "message": HOSTILE})
        validate_case_manifest(json.loads(path.read_text()))
        assert load_case(path)[0].case_id == case.case_id, name
