"""Dynamic attention inside the conformance suite: generated traces run whole in the backend's worker
(``driver:`` calls), judged query by query, saved as replayable case files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from attnspec.conformance.harness import builtin_backends as builtin
from attnspec.conformance.judging import dynamic_attention as dc
from attnspec.conformance.harness.backends import read_capabilities
from attnspec.conformance.harness.case_files import load_case, save_case
from attnspec.conformance.frontends.cli import main
from attnspec.conformance.harness.isolation import InProcessRunner
from attnspec.conformance.harness.runner import judge_one, run_conformance
from attnspec.spec.dynamic_attention import Query, UpdateK, UpdateV
from attnspec.spec.validation import SpecError

import dynamic_broken_backends as cat

CASES = dc.problem.generate_cases("quick")
CATALOGUE = str(Path(__file__).with_name("dynamic_broken_backends.py"))


def _records(backend, cases=CASES):
    runner = InProcessRunner(backend)
    caps = read_capabilities(backend)
    return [judge_one(c, runner, caps) for c in cases]


def test_quick_traces_are_deterministic_and_cover_both_variants():
    again = dc.problem.generate_cases("quick")
    assert [c.case_id for c in again] == [c.case_id for c in CASES]
    for a, b in zip(CASES, again):
        assert a.instance.dumps() == b.instance.dumps()
    variants = Counter(c.instance.normalised for c in CASES)
    assert variants[True] == variants[False] > 0
    assert set(dc.problem.families()) == {c.family for c in CASES}
    for c in CASES:
        kinds = {type(op) for op in c.instance.ops}
        assert Query in kinds and isinstance(c.instance.ops[-1], Query)
        c.instance.validate()  # every generated op is valid for the exact state machine
    assert any(UpdateK in {type(op) for op in c.instance.ops} and UpdateV in {type(op) for op in c.instance.ops} for c in CASES)
    assert dc.problem.generate_cases("quick", ("float32",)) == []


def test_ops_round_trip_and_bad_rows_are_refused():
    trace = CASES[0].instance
    arrays = dc.problem.instance_arrays(trace)
    back = dc.problem.instance_from_files(arrays, dc.problem.instance_params(trace))
    assert back.dumps() == trace.dumps().replace(json.dumps(trace.meta), json.dumps(back.meta))
    bad = dict(arrays, ops=np.array([[7.0, 0, 0, 0]]))
    with pytest.raises(SpecError, match="ops row 0"):
        dc.problem.instance_from_files(bad, dc.problem.instance_params(trace))
    out_of_range = dict(arrays, ops=np.array([[2.0, 10_000, 0, 0]]))
    with pytest.raises(SpecError, match="out of range"):
        dc.problem.instance_from_files(out_of_range, dc.problem.instance_params(trace))


@pytest.mark.parametrize("factory", [builtin.numpy_backend, builtin.reference_backend], ids=["numpy", "reference"])
def test_builtin_dynamic_backends_pass_every_trace(factory):
    records = _records(factory())
    assert len(records) == len(CASES)
    bad = [(r["case_id"], r["status"], r.get("message")) for r in records if r["status"] != "pass"]
    assert not bad, bad
    assert max(r["evidence"]["ratio"] for r in records) <= 1.0
    assert sum(r["evidence"]["queries"]["pass"] for r in records) >= 5 * len(records)


@pytest.mark.parametrize("name", list(cat.CORRECT))
def test_correct_structures_pass_the_suite(name):
    records = _records(cat.suite_backend(cat.CORRECT[name])())
    assert all(r["status"] == "pass" for r in records), [(r["case_id"], r["message"]) for r in records if r["status"] != "pass"]


@pytest.mark.parametrize("name", list(cat.BROKEN))
def test_broken_structures_are_caught_by_the_suite(name):
    records = _records(cat.suite_backend(cat.BROKEN[name])())
    failed = [r for r in records if r["status"] == "fail"]
    assert failed, f"{name} passed every generated trace"
    for r in failed:
        ev = r["evidence"]
        assert ev["error_interval"][0] > ev["tolerance"]  # certainly above tolerance
        assert ev["queries"]["fail"] >= 1 and "worst_op" in ev


def test_wrong_number_of_answers_is_an_error_not_a_pass():
    case = CASES[0]
    verdict = dc.problem.judge(case, np.zeros(1), read_capabilities(builtin.numpy_backend()))
    assert verdict.status == "error" and "query answers" in verdict.message


@pytest.mark.parametrize("kind, target", [("drive", "os:system"), ("drive", "softmax_attention"), ("exec", "dynamic_attention")])
def test_only_registered_drivers_run_in_the_worker(kind, target):
    """A drive request names a registered, driven problem; nothing else (a module path, a called problem,
    an unknown kind) is ever executed."""
    runner = InProcessRunner(builtin.numpy_backend())
    result = runner.request(kind, target, (), {}, max_output_elements=1)
    assert not result.ok and result.error_kind in ("bad_request", "exception"), result


def test_cli_catches_broken_structure_in_worker_and_replays_it(tmp_path, capsys):
    report = tmp_path / "rep"
    code = main(["conform", "--backend", f"{CATALOGUE}:ForgetCrossTermBackend", "--report", str(report)])
    assert code == 1
    data = json.loads((report / "report.json").read_text())
    assert data["summary"]["fail"] >= 1 and data["summary"]["pass"] >= 1
    saved = sorted((report / "failures").glob("*.json"))
    assert saved
    case, manifest = load_case(saved[0])
    assert manifest["problem"] == "dynamic_attention"
    capsys.readouterr()
    assert main(["replay", str(saved[0]), "--backend", f"{CATALOGUE}:ForgetCrossTermBackend"]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert main(["replay", str(saved[0]), "--backend", "numpy"]) == 0


def test_hanging_structure_costs_one_case(tmp_path):
    hanging = [c.case_id for c in CASES if np.asarray(c.instance.ops[0].k).shape[0] == 7]
    assert hanging
    outcome = run_conformance(f"{CATALOGUE}:HangingBackend", problems=["dynamic_attention"], report_dir=tmp_path,
                              timeout=3.0)
    by_id = {r["case_id"]: r for r in outcome.report["cases"]}
    assert len(by_id) == len(CASES)  # the run went on after each hang
    for cid in hanging:
        assert by_id[cid]["status"] == "error" and "timeout" in by_id[cid]["message"]
    assert all(r["status"] == "pass" for cid, r in by_id.items() if cid not in hanging)
    assert outcome.exit_code == 1


def test_saved_dynamic_case_file_is_validated(tmp_path):
    path = save_case(tmp_path, CASES[0], {"backend": "x"})
    manifest = json.loads(path.read_text())
    manifest["params"]["normalised"] = "yes"
    path.write_text(json.dumps(manifest))
    with pytest.raises(Exception, match="normalised"):
        load_case(path)
