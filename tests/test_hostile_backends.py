"""Every backend of tests/hostile_backends.py costs exactly its own call: the right error kind (or a correct
result), the next call on the same runner works, the caller's arrays never change, and no process the
backend started outlives the runner."""

from __future__ import annotations

import numpy as np
import pytest

from attnspec.conformance.harness.isolation import InProcessRunner, ProcessRunner
from attnspec.conformance.harness.runner import judge_one
from attnspec.conformance.judging.softmax_attention import Case
from attnspec.spec.softmax_attention import make_instance

import helper_backends as hb
import hostile_backends as hostile

TIMEOUT = 1.5  # a correct 4×3 call takes microseconds; the hanging backends cost this much each
MEMORY_LIMIT = 640 << 20  # the worker starts at about 300 MB of address space; the rest is quick to exhaust
N, D = 4, 3


def _qkv(seed=0):
    rng = np.random.default_rng(seed)
    return tuple(rng.uniform(-1, 1, (N, D)) for _ in range(3))


@pytest.fixture(scope="module")
def catalogue():
    """One worker for the whole catalogue; every process group it ever had must be gone at the end."""
    groups: list[int] = []
    with ProcessRunner(hostile.SPEC_PREFIX + "Catalogue", timeout=TIMEOUT, memory_limit_bytes=MEMORY_LIMIT) as runner:
        assert runner.load_error is None
        yield runner, groups
        if runner._proc is not None:
            groups.append(runner._proc.pid)
    for pgid in groups:
        assert hb.group_is_gone(pgid), (pgid, hb.live_group_members(pgid))


@pytest.mark.parametrize("name", sorted(hostile.EXPECTED))
def test_hostile_call_costs_only_itself(catalogue, name):
    runner, groups = catalogue
    q, k, v = _qkv()
    before = [x.copy() for x in (q, k, v)]
    pgid = runner._proc.pid
    r = runner.request("call", "attention", (q, k, v), {"scale": 0.5, "hostile": name}, max_output_elements=N * D)
    expected = hostile.EXPECTED[name]
    assert (r.error_kind or "ok") == expected, r
    assert len(r.error) < 20_000 and len(r.captured) < 5_000  # errors and captures come back truncated
    if runner._proc is None or runner._proc.pid != pgid:  # the worker was killed: its group went with it
        assert expected in ("crash", "timeout")
        groups.append(pgid)
        assert hb.group_is_gone(pgid), hb.live_group_members(pgid)
    for x, y in zip((q, k, v), before):
        np.testing.assert_array_equal(x, y)
    after = runner.request("call", "attention", (q, k, v), {"scale": 0.5}, max_output_elements=N * D)
    assert after.ok, after
    np.testing.assert_array_equal(after.output, hostile.correct_attention(q, k, v, 0.5))


def test_specific_messages(catalogue):
    runner, _ = catalogue
    call = lambda name: runner.request("call", "attention", _qkv(), {"scale": 0.5, "hostile": name}, max_output_elements=N * D)  # noqa: E731
    assert "output has 100000000 elements, expected at most 12" in call("HugeOutput").error
    assert "exit code 0" in call("OsExit").error
    assert "killed by SIGKILL" in call("SelfSigkill").error
    segfault = call("Segfaults")
    assert "killed by SIGSEGV" in segfault.error and "Fatal Python error" in segfault.captured  # faulthandler's
    assert "SystemExit" in call("SysExit").error
    assert "KeyboardInterrupt" in call("RaisesKeyboardInterrupt").error
    assert "memory limit" in call("Allocates100GB").error
    printed = call("Prints")
    assert printed.ok and "noise" in printed.captured and f"{hostile.PRINT_BYTES // 24 * 6 * 4} bytes were written in all" in printed.captured
    closed = call("ClosesStdout")
    assert closed.ok and runner.request("call", "attention", _qkv(), {"scale": 0.5, "hostile": "Prints"}).captured.startswith("noise")


def test_no_output_reaches_the_harness(capfd):
    with ProcessRunner(hostile.SPEC_PREFIX + "Prints", timeout=TIMEOUT) as runner:
        assert runner.call("attention", *_qkv(), scale=0.5).ok
    assert InProcessRunner(hostile.Prints()).call("attention", *_qkv(), scale=0.5).ok
    out, err = capfd.readouterr()
    assert "noise" not in out and "noise" not in err


@pytest.mark.parametrize("name", ["SpawnsChild", "DoubleForks", "Hangs", "HangsIgnoringSigterm", "OsExit"])
def test_no_process_outlives_the_runner(name):
    with ProcessRunner(hostile.SPEC_PREFIX + name, timeout=TIMEOUT) as runner:
        pgids = [runner._proc.pid]
        r = runner.call("attention", *_qkv(), scale=0.5)
        assert (r.error_kind or "ok") == hostile.EXPECTED[name]
        if runner._proc is not None:
            pgids.append(runner._proc.pid)
    for pgid in pgids:
        assert hb.group_is_gone(pgid), hb.live_group_members(pgid)


# --------------------------------------------------------------------------- in-place mutators, judged


def _case():
    q, k, v = _qkv(1)
    return Case("softmax_attention/float64/test/000", "test", "float64", 0, make_instance(q, k, v, scale=0.5))


def _runners(name):
    yield InProcessRunner(hostile.HOSTILE[name]())
    with ProcessRunner(hostile.SPEC_PREFIX + name, timeout=TIMEOUT) as runner:
        yield runner


@pytest.mark.parametrize("name,status", [("ZeroesV", "fail"), ("ScalesQInPlace", "pass")])
def test_in_place_mutation_cannot_change_what_is_certified(name, status):
    for runner in _runners(name):
        case = _case()
        inst = case.instance
        before = [np.array(x, copy=True) for x in (inst.q, inst.k, inst.v)]
        record = judge_one(case, runner, runner.capabilities)
        assert record["status"] == status, record
        for x, y in zip((inst.q, inst.k, inst.v), before):
            np.testing.assert_array_equal(x, y)


def test_in_process_base_exceptions():
    q, k, v = _qkv()
    for name in ("SysExit", "RaisesGeneratorExit"):
        r = InProcessRunner(hostile.HOSTILE[name]()).call("attention", q, k, v, scale=0.5)
        assert not r.ok and r.error_kind == "exception"
    with pytest.raises(KeyboardInterrupt):  # indistinguishable from the user's Ctrl-C: it stops the run
        InProcessRunner(hostile.RaisesKeyboardInterrupt()).call("attention", q, k, v, scale=0.5)


def test_in_process_numpy_state_does_not_leak():
    err, printopts = np.geterr(), np.get_printoptions()
    r = InProcessRunner(hostile.SetsNumpyErrors()).call("attention", *_qkv(), scale=0.5)
    assert r.ok
    assert np.geterr() == err and np.get_printoptions() == printopts


def test_in_process_closed_stdout_is_restored(capfd):
    r = InProcessRunner(hostile.ClosesStdout()).call("attention", *_qkv(), scale=0.5)
    assert r.ok
    print("still here")
    assert "still here" in capfd.readouterr().out


@pytest.mark.parametrize("name", [n for n, kind in hostile.EXPECTED.items() if kind == "bad_output"])
def test_in_process_outputs_are_coerced_strictly(name):
    r = InProcessRunner(hostile.HOSTILE[name]()).request("call", "attention", _qkv(), {"scale": 0.5}, max_output_elements=N * D)
    assert not r.ok and r.error_kind == "bad_output", r
