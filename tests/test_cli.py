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
from attnspec.conformance.judging.problems import get_problem, problem_names
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
    every_problem = sum(len(get_problem(p).generate_cases("quick", ("float64",))) for p in problem_names())
    assert report["summary"]["pass"] == report["summary"]["total"] == every_problem
    assert set(report["problems"]) == {"softmax_attention", "tensor_attention", "dynamic_attention"}
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
        if scale == 1:
            assert case["status"] == "pass", case
    assert any(c["status"] == "pass" for c in report["cases"])


def test_cases_jsonl_has_one_line_per_case(broken_run):
    _, report_dir, report = broken_run
    lines = (report_dir / "cases.jsonl").read_text().splitlines()
    assert len(lines) == report["summary"]["total"]
    assert [json.loads(line)["case_id"] for line in lines] == [c["case_id"] for c in report["cases"]]


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
            assert case["status"] == "pass", case
    lines = (report_dir / "cases.jsonl").read_text().splitlines()
    assert len(lines) == len(QUICK_F64)
