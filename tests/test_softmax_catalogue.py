"""Every deliberately broken backend is caught; every correct variant passes (quick profile)."""

import pytest

from attnspec.conformance.harness.backends import read_capabilities
from attnspec.conformance.harness.isolation import InProcessRunner
from attnspec.conformance.harness.runner import judge_one
from attnspec.conformance.judging.softmax_attention import problem as softmax_problem

generate_cases = softmax_problem.generate_cases

import softmax_catalogue as cat

CASES = generate_cases("quick", ("float64", "float32"))


def _statuses(backend_cls):
    backend = backend_cls()
    runner = InProcessRunner(backend)
    caps = read_capabilities(backend)
    return [judge_one(c, runner, caps) for c in CASES]


@pytest.mark.parametrize("backend_cls", cat.BROKEN, ids=lambda c: c.__name__)
def test_broken_backend_is_caught(backend_cls):
    records = _statuses(backend_cls)
    caught = [r for r in records if r["status"] in ("fail", "error")]
    assert caught, f"{backend_cls.__name__} ({backend_cls.__doc__.strip()}) passed every case"
    # A failure's evidence names the worst entry and a certified error above tolerance.
    for r in caught:
        if r["status"] == "fail":
            ev = r["evidence"]
            assert ev["error_interval"][0] > ev["tolerance"]
            assert len(ev["worst_index"]) == 2


@pytest.mark.parametrize("backend_cls", cat.CORRECT, ids=lambda c: c.__name__)
def test_correct_variant_passes(backend_cls):
    records = _statuses(backend_cls)
    applicable = [r for r in records if r["status"] != "not_applicable"]
    assert len(applicable) >= 30
    bad = [(r["case_id"], r["status"], r["message"]) for r in applicable if r["status"] != "pass"]
    assert not bad, bad
    assert max(r["evidence"]["ratio"] for r in applicable) <= 1.0
