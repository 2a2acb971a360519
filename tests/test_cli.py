"""The runner and the ``attnspec`` command line: exit codes, reports, saved failures and replay.

Backends under test are written to temporary files here (unseen code, named as ``file.py:attr``), except
for the shared helper backends of ``helper_backends.py``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from attnspec.conformance.frontends.cli import main
from attnspec.conformance.judging.problems import get_problem
from attnspec.conformance.harness.report import REPORT_SCHEMA, STATUSES
from attnspec.conformance.judging.softmax_attention import problem as softmax_problem

generate_cases = softmax_problem.generate_cases

import helper_backends as hb

BROKEN_SOURCE = textwrap.dedent(
    '''
    import numpy as np

    class Broken:
        """Subtracts the row max but forgets the scale: right only when scale == 1."""

        capabilities = {"problems": {"softmax_attention"}, "dtypes": {"float64"}}

        def attention(self, q, k, v, *, scale):
            logits = q @ k.T
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            return (e / e.sum(axis=1, keepdims=True)) @ v
    '''
)

QUICK_F64 = generate_cases("quick", ("float64",))


@pytest.fixture(scope="module")
def broken_spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("backend") / "unseen_broken.py"
    path.write_text(BROKEN_SOURCE)
    return f"{path}:Broken"


@pytest.fixture(scope="module")
def broken_run(broken_spec, tmp_path_factory):
    report_dir = tmp_path_factory.mktemp("report")
    code = main(["conform", "--backend", broken_spec, "--report", str(report_dir), "--dtype", "float64"])
    return code, report_dir, json.loads((report_dir / "report.json").read_text())


# --------------------------------------------------------------------------- exit codes


def test_reference_backend_exits_zero_in_a_real_process(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "attnspec.conformance.frontends.cli", "conform", "--backend", "reference",
         "--dtype", "float64", "--report", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    every_problem = sum(len(get_problem(p).generate_cases("quick", ("float64",))) for p in report["problems"])
    summary = report["summary"]
    assert summary["total"] == every_problem
    # Every case passes, or is declared not applicable with its reason (edge inputs the format cannot hold).
    assert summary["pass"] + summary["not_applicable"] == summary["total"] and summary["pass"] > 0
    assert all(c.get("message") for c in report["cases"] if c["status"] == "not_applicable")
    assert set(report["problems"]) == {"softmax_attention", "tensor_attention", "dynamic_attention", "heavy_entries",
                                       "universal_set"}
    assert "passed" in proc.stdout


def test_broken_backend_exits_one(broken_run):
    code, _, report = broken_run
    assert code == 1
    assert report["summary"]["fail"] > 0


@pytest.mark.parametrize("spec", ["nosuch", "no_such_module_xyz:Backend", "/nonexistent/dir/b.py:B", hb.SPEC_PREFIX + "Missing"])
def test_unloadable_backend_exits_two(tmp_path, spec, capsys):
    assert main(["conform", "--backend", spec, "--report", str(tmp_path / "r")]) == 2
    assert "cannot load backend" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["conform"],
    ["conform", "--backend", "reference", "--profile", "enormous"],
    ["conform", "--backend", "reference", "--dtype", "float128"],
    ["conform", "--backend", "reference", "--timeout", "soon"],
    ["replay", "--backend", "reference"],
    ["frobnicate"],
    [],
])
def test_bad_arguments_exit_two(argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


# --------------------------------------------------------------------------- report contents


def test_report_json_schema(broken_run, broken_spec):
    _, _, report = broken_run
    assert report["schema"] == REPORT_SCHEMA
    assert report["backend"]["spec"] == broken_spec
    assert report["backend"]["capabilities"]["dtypes"] == ["float64"]
    assert {"python", "numpy", "attnspec", "python-flint"} <= set(report["environment"])
    summary = report["summary"]
    assert set(STATUSES) <= set(summary)
    assert sum(summary[s] for s in STATUSES) == summary["total"] == len(report["cases"]) == len(QUICK_F64)
    assert [c["case_id"] for c in report["cases"]] == [c.case_id for c in QUICK_F64]
    for case in report["cases"]:
        assert case["status"] in STATUSES
        if case["status"] in ("pass", "fail"):
            ev = case["evidence"]
            assert {"worst_index", "error_interval", "tolerance", "ratio", "conditioning", "prec"} <= set(ev)
            lo, hi = ev["error_interval"]
            assert 0 <= lo <= hi


def test_report_names_the_worst_entry_of_failures(broken_run):
    _, report_dir, report = broken_run
    fails = [c for c in report["cases"] if c["status"] == "fail"]
    assert fails
    for case in fails:
        ev = case["evidence"]
        assert len(ev["worst_index"]) == 2
        assert ev["error_interval"][0] >= ev["tolerance"]
        assert ev["ratio"] > 1
    md = (report_dir / "report.md").read_text()
    assert "Cases that did not pass" in md
    assert all(f"`{c['case_id']}`" in md for c in fails)


def test_scale_one_cases_pass_for_the_broken_backend(broken_run):
    # The broken backend ignores the scale, so exactly the cases with scale 1 must pass: proof that the
    # failures are about the bug and not about the suite.
    _, _, report = broken_run
    by_id = {c.case_id: c for c in QUICK_F64}
    for case in report["cases"]:
        scale = by_id[case["case_id"]].instance.scale
        if scale == 1 and case["status"] != "not_applicable":
            assert case["status"] == "pass", case
    assert any(c["status"] == "pass" for c in report["cases"])


def test_cases_jsonl_has_one_line_per_case(broken_run):
    _, report_dir, report = broken_run
    records = [json.loads(line) for line in (report_dir / "cases.jsonl").read_text().splitlines()]
    records = [r for r in records if "journal" not in r]  # the journal's header line
    assert len(records) == report["summary"]["total"]
    assert [r["case_id"] for r in records] == [c["case_id"] for c in report["cases"]]


# --------------------------------------------------------------------------- saved failures and replay


def _saved(report_dir: Path) -> list[Path]:
    return sorted((report_dir / "failures").glob("*.json"))


def test_failures_are_saved(broken_run):
    _, report_dir, report = broken_run
    bad = [c for c in report["cases"] if c["status"] in ("fail", "error", "undecided")]
    assert len(_saved(report_dir)) == len(bad)
    for case in bad:
        assert Path(case["replay_file"]).is_file()


def test_replay_returns_one_for_broken_and_zero_for_correct(broken_run, broken_spec, capsys):
    _, report_dir, _ = broken_run
    path = _saved(report_dir)[0]
    assert main(["replay", str(path), "--backend", broken_spec]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert main(["replay", str(path), "--backend", hb.SPEC_PREFIX + "Correct"]) == 0
    capsys.readouterr()
    assert main(["replay", str(path.with_suffix(".npz")), "--backend", "reference", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["status"] == "pass" and record["evidence"]["ratio"] <= 1


def test_replay_of_a_bad_file_exits_two(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["replay", str(bad), "--backend", "reference"]) == 2
    assert "not a readable JSON manifest" in capsys.readouterr().err


def test_second_run_replays_saved_failures_first(broken_run, broken_spec, capsys):
    _, report_dir, first = broken_run
    saved = _saved(report_dir)
    code = main(["conform", "--backend", broken_spec, "--report", str(report_dir), "--dtype", "float64", "--json"])
    assert code == 1
    second = json.loads(capsys.readouterr().out)
    ids = [c["case_id"] for c in second["cases"]]
    assert len(ids) == len(saved) + len(QUICK_F64)
    assert all(i.startswith("replay/") for i in ids[: len(saved)])
    assert not any(i.startswith("replay/") for i in ids[len(saved):])
    # Each replayed case gets the same verdict as the original run.
    original = {c["case_id"]: c["status"] for c in first["cases"]}
    for case in second["cases"][: len(saved)]:
        assert case["status"] == original[case["case_id"].removeprefix("replay/")]
    assert len(_saved(report_dir)) == len(saved)  # replays are not saved twice


# --------------------------------------------------------------------------- backends listing


def test_backends_lists_the_builtins(capsys):
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert {"reference", "numpy", "torch", "cupy"} <= set(lines)
    assert "softmax_attention" in lines["reference"]
    if importlib.util.find_spec("cupy") is None:
        assert "unavailable" in lines["cupy"]


def test_backends_json(capsys):
    assert main(["backends", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["reference"]["available"] and rows["numpy"]["available"]
    if importlib.util.find_spec("cupy") is None:
        assert rows["cupy"]["available"] is False and "CuPy" in rows["cupy"]["reason"]


# --------------------------------------------------------------------------- crash and hang mid-run


def test_crash_and_hang_cost_one_case_each(tmp_path):
    report_dir = tmp_path / "r"
    code = main(["conform", "--backend", hb.SPEC_PREFIX + "ShapeTriggered", "--report", str(report_dir),
                 "--dtype", "float64", "--timeout", "3"])
    assert code == 1
    report = json.loads((report_dir / "report.json").read_text())
    assert report["summary"]["total"] == len(QUICK_F64)
    expected = {c.case_id: ("crash" if c.instance.q.shape == (1, 5) else "timeout")
                for c in QUICK_F64 if c.instance.q.shape in ((1, 5), (7, 1))}
    assert "crash" in expected.values() and "timeout" in expected.values()
    for case in report["cases"]:
        if case["case_id"] in expected:
            assert case["status"] == "error" and case["evidence"]["kind"] == expected[case["case_id"]], case
        else:
            assert case["status"] in ("pass", "not_applicable"), case
    lines = [line for line in (report_dir / "cases.jsonl").read_text().splitlines() if '"journal"' not in line[:20]]
    assert len(lines) == len(QUICK_F64)


# --------------------------------------------------------------------------- usage errors before the backend loads


def test_a_problem_typo_exits_two_naming_the_known_problems(capsys):
    with pytest.raises(SystemExit) as info:
        main(["conform", "--backend", "reference", "--problem", "softmax"])
    assert info.value.code == 2
    assert "softmax_attention" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_a_timeout_that_is_not_finite_and_positive_exits_two(value, capsys):
    with pytest.raises(SystemExit) as info:
        main(["conform", "--backend", "reference", "--timeout", value])
    assert info.value.code == 2
    assert "finite number of seconds > 0" in capsys.readouterr().err


def test_memory_limit_sizes():
    from attnspec.conformance.frontends.cli_conform import memory_size

    assert memory_size("512M") == 512 << 20 and memory_size("2g") == 2 << 30 and memory_size("4096") == 4096
    assert memory_size("none") is None
    for bad in ("0", "-1", "1.5G", "lots"):
        with pytest.raises(Exception):
            memory_size(bad)


MARKER_SOURCE = textwrap.dedent(
    '''
    from pathlib import Path
    Path(__file__).with_name("imported.marker").write_text("the backend was loaded")
    from helper_backends import correct_attention

    class Marked:
        capabilities = {"problems": {"softmax_attention"}, "dtypes": {"float64"}}

        def attention(self, q, k, v, *, scale):
            return correct_attention(q, k, v, scale)
    '''
)


def test_an_unusable_report_directory_exits_two_before_the_backend_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(hb.__file__).parent))
    backend = tmp_path / "marked.py"
    backend.write_text(MARKER_SOURCE)
    not_a_dir = tmp_path / "report-is-a-file"
    not_a_dir.write_text("")
    assert main(["conform", "--backend", f"{backend}:Marked", "--report", str(not_a_dir)]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert not (tmp_path / "imported.marker").exists()


def test_version(capsys):
    from attnspec import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"attnspec {__version__}"


# --------------------------------------------------------------------------- case selection


def _conform(tmp_path, *argv, backend=hb.SPEC_PREFIX + "Correct"):
    report_dir = tmp_path / "r"
    code = main(["conform", "--backend", backend, "--report", str(report_dir), "--isolation", "none", *argv])
    report = json.loads((report_dir / "report.json").read_text()) if (report_dir / "report.json").exists() else None
    return code, report


def _ids(report):
    return [c["case_id"] for c in report["cases"]]


def test_select_by_exact_id_and_by_glob(tmp_path):
    code, report = _conform(tmp_path, "--case", "softmax_attention/float64/degenerate/000",
                            "--case", "softmax_attention/float64/near_ties/*")
    assert code == 0
    near_ties = [c.case_id for c in QUICK_F64 if c.family == "near_ties"]
    assert _ids(report) == ["softmax_attention/float64/degenerate/000", *near_ties]


def test_select_by_family_and_keyword(tmp_path):
    code, report = _conform(tmp_path, "--family", "degenerate", "-k", "00 and not (001 or 002)")
    assert code == 0
    expected = [c.case_id for c in QUICK_F64 if c.family == "degenerate" and "00" in c.case_id
                and "001" not in c.case_id and "002" not in c.case_id]
    assert _ids(report) == expected and len(expected) >= 3


@pytest.mark.parametrize("argv, message", [
    (["--case", "softmax_attention/float64/nosuch/*"], "matches no case"),
    (["--family", "nosuch"], "unknown family 'nosuch'"),
    (["-k", "degenerate and"], "-k"),
    (["-k", "(degenerate"], "missing ')'"),
])
def test_a_selection_of_nothing_or_a_bad_one_exits_two(tmp_path, capsys, argv, message):
    code, _ = _conform(tmp_path, *argv)
    assert code == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- known failures


@pytest.fixture(scope="module")
def failing_and_passing(broken_run):
    """A case the scale-ignoring backend fails and one it passes (from its full run)."""
    _, _, report = broken_run
    failing = next(c["case_id"] for c in report["cases"] if c["status"] == "fail" and c["family"] == "degenerate")
    passing = next(c["case_id"] for c in report["cases"] if c["status"] == "pass" and c["family"] == "degenerate")
    return failing, passing


def test_a_known_failure_is_xfail_and_does_not_fail_the_run(tmp_path, broken_spec, monkeypatch, failing_and_passing):
    failing, _ = failing_and_passing
    monkeypatch.chdir(tmp_path)  # the default file: ./attnspec-known-failures.json
    (tmp_path / "attnspec-known-failures.json").write_text(json.dumps([{"case": failing, "reason": "scale ignored, issue 1"}]))
    code, report = _conform(tmp_path, "--case", failing, backend=broken_spec)
    assert code == 0
    (record,) = report["cases"]
    assert record["status"] == "xfail" and record["original_status"] == "fail"
    assert record["known_failure"]["reason"] == "scale ignored, issue 1"
    assert record["evidence"]["ratio"] > 1  # the evidence is kept
    assert report["summary"]["xfail"] == 1 and report["summary"]["fail"] == 0


def test_a_known_failure_that_passes_is_xpass_and_fails_the_run(tmp_path, broken_spec, capsys, failing_and_passing):
    failing, passing = failing_and_passing
    known = tmp_path / "known.json"
    known.write_text(json.dumps([{"case": "softmax_attention/float64/degenerate/*", "reason": "scale ignored"}]))
    code, report = _conform(tmp_path, "--case", failing, "--case", passing, "--known-failures", str(known), backend=broken_spec)
    assert code == 1
    statuses = {c["case_id"]: c["status"] for c in report["cases"]}
    assert statuses == {failing: "xfail", passing: "xpass"}
    assert f"known failure now passes: remove it from {known}" in capsys.readouterr().out


@pytest.mark.parametrize("content", ["{not json", '{"case": "x"}', '[{"case": "x"}]', '[{"case": "x", "reason": "r", "extra": 1}]'])
def test_a_malformed_known_failures_file_exits_two(tmp_path, capsys, content):
    known = tmp_path / "known.json"
    known.write_text(content)
    code, _ = _conform(tmp_path, "--known-failures", str(known))
    assert code == 2
    assert "known-failures file" in capsys.readouterr().err


# --------------------------------------------------------------------------- junit, json, hints, identity


def test_junit_file_is_written_and_parseable(tmp_path, broken_spec, failing_and_passing):
    import xml.etree.ElementTree as ET

    failing, passing = failing_and_passing
    junit = tmp_path / "junit.xml"
    code, report = _conform(tmp_path, "--case", failing, "--case", passing, "--junit", str(junit), backend=broken_spec)
    assert code == 1
    cases = ET.parse(junit).getroot().iter("testcase")
    outcome = {c.get("name"): [child.tag for child in c] for c in cases}
    assert set(outcome) == {failing, passing}
    assert "failure" in outcome[failing] and "failure" not in outcome[passing]


BARE_FUNCTION = textwrap.dedent(
    '''
    import numpy as np

    def attention(q, k, v, *, scale):
        logits = scale * (q @ k.T)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)) @ v
    '''
)


def test_a_bare_function_with_float32_explains_and_exits_nonzero(tmp_path, capsys):
    path = tmp_path / "my_kernel.py"
    path.write_text(BARE_FUNCTION)
    report_dir = tmp_path / "out"
    code = main(["conform", "--backend", f"{path}:attention", "--dtype", "float32", "--problem", "softmax_attention",
                 "--family", "degenerate", "--report", str(report_dir)])
    assert code == 1
    out = capsys.readouterr().out
    assert "a bare function declares float64 only" in out and 'capabilities = {"dtypes": {' in out
    assert "dtype float32 not declared" in out  # the reasons summary
    report = json.loads((report_dir / "report.json").read_text())
    assert report["summary"]["not_applicable"] == report["summary"]["total"] > 0
    assert report["backend"]["class"].endswith("FunctionBackend")  # identity from the worker


PRINTING_SOURCE = textwrap.dedent(
    '''
    import os, sys
    from helper_backends import correct_attention
    print("hello from the backend's import")

    class Chatty:
        capabilities = {"problems": {"softmax_attention"}, "dtypes": {"float64"}}
        version = "3.1.4"

        def attention(self, q, k, v, *, scale):
            print("computing", q.shape)
            os.write(1, b"raw bytes on fd 1\\n")
            return correct_attention(q, k, v, scale)
    '''
)


@pytest.mark.parametrize("isolation", ["process", "none"])
def test_json_stdout_is_only_the_report_with_a_printing_backend(tmp_path, isolation):
    path = tmp_path / "chatty.py"
    path.write_text(PRINTING_SOURCE)
    env = {**__import__("os").environ, "PYTHONPATH": str(Path(hb.__file__).parent)}
    proc = subprocess.run(
        [sys.executable, "-m", "attnspec.conformance.frontends.cli", "conform", "--backend", f"{path}:Chatty", "--json",
         "--isolation", isolation, "--case", "softmax_attention/float64/degenerate/00[01]", "--report", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["summary"]["pass"] == 2
    assert report["backend"]["class"].endswith("Chatty") and report["backend"]["version"] == "3.1.4"
    assert all("computing" in c.get("captured", "") for c in report["cases"])


def test_identity_and_environment_come_from_the_worker(tmp_path):
    pytest.importorskip("torch")
    # In a real process: the harness never imports torch itself, only the worker that loads the backend.
    proc = subprocess.run(
        [sys.executable, "-m", "attnspec.conformance.frontends.cli", "conform", "--backend", "torch", "--json",
         "--case", "softmax_attention/float64/degenerate/000", "--report", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    import torch

    assert report["backend"]["class"].endswith("TorchBackend")
    assert report["environment"]["torch"] == report["backend"]["version"] == torch.__version__
