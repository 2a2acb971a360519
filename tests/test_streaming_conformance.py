"""The streaming_attention problem end to end (in-process runner): correct backends pass, broken ones fail."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import streaming_catalogue as cat
from attnspec.conformance.harness.capabilities import read_capabilities
from attnspec.conformance.harness.isolation import InProcessRunner
from attnspec.conformance.harness.runner import judge_one
from attnspec.conformance.judging.problems import get_problem

PROBLEM = get_problem("streaming_attention")
CASES = PROBLEM.generate_cases("quick")
PLANTED = [c for c in CASES if c.family == "planted"]


def records(backend, cases=CASES, max_runs=None):
    runner, caps = InProcessRunner(backend), read_capabilities(backend)
    cases = [dataclasses.replace(c, max_runs=max_runs) if max_runs else c for c in cases]
    return [judge_one(c, runner, caps) for c in cases]


def test_registered_as_a_driven_problem_with_a_small_quick_profile():
    assert PROBLEM.request_kind == "drive" and PROBLEM.method == "streaming_attention"
    assert {c.family for c in CASES} == {"planted", "dense", "interleaved"}
    assert len(CASES) == 3 and all(c.instance.n <= 128 for c in CASES)
    assert [c.instance.attention.q.tobytes() for c in CASES] == [c.instance.attention.q.tobytes() for c in PROBLEM.generate_cases("quick")]


@pytest.mark.parametrize("name", list(cat.CORRECT))
def test_correct_backends_pass_every_applicable_case(name):
    recs = records(cat.CORRECT[name])
    assert all(r["status"] in ("pass", "not_applicable") for r in recs), [(r["case_id"], r["status"], r["message"]) for r in recs]
    assert any(r["status"] == "pass" for r in recs)


def test_the_sketch_is_judged_on_the_planted_family_and_the_dense_one_is_vacuous():
    recs = {r["family"]: r for r in records(cat.CORRECT["sketched_delta_0.05"])}
    assert recs["planted"]["status"] == "pass" and recs["planted"]["evidence"]["runs"] == 135
    assert recs["dense"]["status"] == "not_applicable" and "vacuous" in recs["dense"]["message"]


@pytest.mark.parametrize("name", list(cat.BROKEN))
def test_broken_backends_are_caught(name):
    backend, kind = cat.BROKEN[name]
    recs = records(backend, PLANTED, max_runs=60)
    assert recs[0]["status"] == "fail", (recs[0]["status"], recs[0]["message"])
    if kind:
        assert recs[0]["evidence"]["kind"] == kind


def test_the_unreliable_backend_fails_by_the_binomial_test():
    rec = records(cat.BROKEN["unreliable_0.8"][0], PLANTED, max_runs=60)[0]
    ev = rec["evidence"]
    assert rec["status"] == "fail" and ev["violated"] >= 5 and ev["p_fail"] <= 1e-3 and ev["delta"] == 0.01


def test_case_files_round_trip(tmp_path):
    from attnspec.conformance.harness.case_files import load_case, save_case

    loaded, _ = load_case(save_case(tmp_path, CASES[0]))
    a, b = loaded.instance, CASES[0].instance
    assert (a.k, a.order, a.chunk, a.attention.scale) == (b.k, b.order, b.chunk, b.attention.scale)
    assert np.array_equal(np.asarray(a.attention.q, float), np.asarray(b.attention.q, float))
