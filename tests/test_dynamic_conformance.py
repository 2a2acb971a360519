"""Conformance for dynamic attention: stateful random traces judged per query by the certified engine.

Every correct structure passes, every broken one (tests/dynamic_broken_backends.py) is caught, failing
traces are saved as exact JSON and replay to the same verdict.
"""

import math

import numpy as np
import pytest
from hypothesis import Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from attnspec.conformance.judging.dynamic_attention import (
    NOT_APPLICABLE,
    DynamicChecker,
    dynamic_state_machine,
    replay_trace,
    run_trace,
)
from attnspec.conformance.judging.precision_model import History, dynamic_tolerance
from attnspec.spec.dynamic_attention import Init, Query, Trace, UpdateK, UpdateV
from dynamic_broken_backends import BROKEN, CORRECT, ODAMV_ONLY

VARIANTS = [True, False]
NO_SHRINK = settings(phases=[Phase.explicit, Phase.reuse, Phase.generate])


@pytest.mark.parametrize("normalised", VARIANTS, ids=["odamv", "oamv"])
@pytest.mark.parametrize("name", list(CORRECT))
def test_correct_structures_pass_stateful_traces(name, normalised):
    run_state_machine_as_test(dynamic_state_machine(CORRECT[name], normalised, name=name))


@pytest.mark.parametrize("normalised", VARIANTS, ids=["odamv", "oamv"])
@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_structures_are_caught_by_stateful_traces(name, normalised, tmp_path):
    if name in ODAMV_ONLY and not normalised:
        pytest.skip("this bug has no effect on OAMV (no normaliser)")
    machine = dynamic_state_machine(BROKEN[name], normalised, name=name, save_dir=tmp_path)
    with pytest.raises(AssertionError, match="certainly above tolerance"):
        run_state_machine_as_test(machine, settings=NO_SHRINK)
    saved, = tmp_path.glob("*.json")
    assert not replay_trace(saved, BROKEN[name]).passed  # the saved trace reproduces the failure


def test_shrunk_failing_trace_is_saved_and_replays(tmp_path):
    machine = dynamic_state_machine(BROKEN["forget_cross_term"], True, name="cross", save_dir=tmp_path)
    with pytest.raises(AssertionError):
        run_state_machine_as_test(machine)
    path = tmp_path / "cross-odamv.json"
    trace = Trace.load(path)
    kinds = [type(op).__name__ for op in trace.ops]
    assert "UpdateK" in kinds and "UpdateV" in kinds  # the cross term needs both on one key row
    assert len(trace.ops) <= 8  # shrunk
    assert not replay_trace(path, BROKEN["forget_cross_term"]).passed
    for name in ("eager", "lazy_tau_0.5", "worst_case_period_2"):
        assert replay_trace(path, CORRECT[name]).passed


def _k_then_v_trace(normalised):
    """K update then V update on the same key row, queries at every step (hand-written regression)."""
    q = np.array([[1.0, 0.5], [-0.5, 0.25]])
    k = np.array([[0.5, -1.0], [0.25, 0.75], [-1.0, 0.0]])
    v = np.array([[1.0, -0.5], [0.25, 2.0], [-1.5, 0.5]])
    ops = [Init(q, k, v, 1.0), Query(0, 0)]
    for t in range(4):
        ops += [UpdateK(t % 3, t % 2, 0.75), Query(1, 0), UpdateV(t % 3, 0, -0.5), Query(0, 0), Query(1, 1)]
    return Trace(normalised, ops)


@pytest.mark.parametrize("normalised", VARIANTS, ids=["odamv", "oamv"])
@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_structures_fail_a_fixed_trace(name, normalised):
    if name in ODAMV_ONLY and not normalised:
        pytest.skip("this bug has no effect on OAMV (no normaliser)")
    result = run_trace(_k_then_v_trace(normalised), BROKEN[name])
    assert result.counts().get("fail", 0) >= 1


@pytest.mark.parametrize("normalised", VARIANTS, ids=["odamv", "oamv"])
@pytest.mark.parametrize("name", list(CORRECT))
def test_correct_structures_pass_random_traces(name, normalised):
    rng = np.random.default_rng(11)
    n, d, dv = 12, 4, 3
    ops = [Init(rng.uniform(-1, 1, (n, d)), rng.uniform(-1, 1, (n, d)), rng.uniform(-1, 1, (n, dv)), 0.5)]
    for _ in range(150):
        r = rng.random()
        if r < 0.4:
            ops.append(UpdateK(int(rng.integers(n)), int(rng.integers(d)), float(rng.uniform(-0.5, 0.5))))
        elif r < 0.7:
            ops.append(UpdateV(int(rng.integers(n)), int(rng.integers(dv)), float(rng.uniform(-0.5, 0.5))))
        else:
            ops.append(Query(int(rng.integers(n)), int(rng.integers(dv))))
    result = run_trace(Trace(normalised, ops), CORRECT[name])
    counts = result.counts()
    assert counts == {"pass": sum(isinstance(o, Query) for o in ops)}, counts  # all pass, none vacuous
    assert _k_then_v_trace(normalised) and run_trace(_k_then_v_trace(normalised), CORRECT[name]).passed


def test_tolerance_is_meaningful_and_grows_with_the_history():
    h = History(n=64, d=16, scale=0.25, q_l1=8.0, k_max=1.0, v_max=1.0, logit_lo=-2.0, logit_hi=2.0)
    base = dynamic_tolerance(h, True)
    assert 0 < base < 1e-10  # far below any real bug, far above float64 rounding
    h.updates_k = 1000
    assert dynamic_tolerance(h, True) > base
    h.logit_lo, h.logit_hi = -400.0, 400.0
    assert math.isinf(dynamic_tolerance(h, True))  # e^{span}: honest, hence vacuous
    assert dynamic_tolerance(History(n=4, d=2, q_l1=1, k_max=1, v_max=1, logit_lo=0, logit_hi=1), False) > 0


def test_vacuous_tolerance_is_not_applicable_not_pass():
    q = np.array([[1.0]])
    k = np.array([[400.0], [-400.0]])
    v = np.array([[1.0], [0.0]])
    checker = DynamicChecker(CORRECT["eager"], True)
    checker.apply(Init(q, k, v))
    qv = checker.apply(Query(0, 0))
    assert qv.status == NOT_APPLICABLE


def test_backend_exception_is_an_error_verdict():
    class Exploding(CORRECT["eager"]):
        def update_v(self, i, j, delta):
            raise RuntimeError("boom")

    result = run_trace(_k_then_v_trace(True), Exploding)
    assert not result.passed and result.failures[0].status == "error" and "boom" in result.failures[0].verdict.message
