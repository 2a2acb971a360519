"""conformance/isolation.py: one misbehaving call costs one call, never the runner; no pickle anywhere."""

from __future__ import annotations

import os
import pickle
import signal
import time

import numpy as np
import pytest

from attnspec.conformance.harness.isolation import InProcessRunner, ProcessRunner, decode_payload, encode_payload
from attnspec.conformance.harness.runner import judge_one
from attnspec.conformance.judging.softmax_attention import Case
from attnspec.spec.softmax_attention import make_instance

import helper_backends as hb

TIMEOUT = 2.0  # seconds per call in these tests; a correct call on 4×3 inputs takes microseconds


def _qkv(seed=0, n=4, d=3):
    rng = np.random.default_rng(seed)
    return tuple(rng.uniform(-1, 1, (n, d)) for _ in range(3))


def _check_correct(result, q, k, v, scale):
    assert result.ok, result.error
    np.testing.assert_array_equal(result.output, hb.correct_attention(q, k, v, scale))


@pytest.fixture(scope="module")
def selective():
    with ProcessRunner(hb.SPEC_PREFIX + "Selective", timeout=TIMEOUT) as runner:
        assert runner.load_error is None
        yield runner


# --------------------------------------------------------------------------- ProcessRunner


def test_process_runner_answers_and_reports_capabilities(selective):
    q, k, v = _qkv()
    _check_correct(selective.call("attention", q, k, v, scale=0.5), q, k, v, 0.5)
    assert "softmax_attention" in selective.capabilities.problems


def test_exception_is_an_error_result_and_the_worker_survives(selective):
    q, k, v = _qkv()
    pid = selective._proc.pid
    r = selective.call("attention", q, k, v, scale=hb.RAISE_SCALE)
    assert not r.ok and r.error_kind == "exception"
    assert "ValueError: magic scale 103" in r.error
    _check_correct(selective.call("attention", q, k, v, scale=0.25), q, k, v, 0.25)
    assert selective._proc.pid == pid  # no restart was needed


def test_crash_is_reported_and_the_next_call_works(selective):
    q, k, v = _qkv(1)
    r = selective.call("attention", q, k, v, scale=hb.CRASH_SCALE)
    assert not r.ok and r.error_kind == "crash"
    assert "exit code 7" in r.error
    _check_correct(selective.call("attention", q, k, v, scale=2.0), q, k, v, 2.0)


def test_hang_times_out_and_the_next_call_works(selective):
    q, k, v = _qkv(2)
    t0 = time.monotonic()
    r = selective.call("attention", q, k, v, scale=hb.HANG_SCALE)
    elapsed = time.monotonic() - t0
    assert not r.ok and r.error_kind == "timeout"
    # Roughly the timeout: not before it, and not much after (killing the worker is quick).
    assert TIMEOUT <= elapsed < TIMEOUT + 10
    assert TIMEOUT <= r.seconds < TIMEOUT + 10
    _check_correct(selective.call("attention", q, k, v, scale=1.0), q, k, v, 1.0)


def test_garbage_outputs_through_the_worker():
    q, k, v = _qkv(3)
    for name, needle in [("strings", "dtype <U"), ("object", "object array"), ("complex", "dtype complex128")]:
        with ProcessRunner(hb.SPEC_PREFIX + f"Garbage_{name}", timeout=TIMEOUT) as runner:
            pid = runner._proc.pid
            r = runner.call("attention", q, k, v, scale=1.0)
            assert not r.ok and r.error_kind == "bad_output" and needle in r.error, r
            # The worker is still alive (same pid) and answers the next call (with the same garbage).
            assert runner.call("attention", q, k, v, scale=1.0).error_kind == "bad_output"
            assert runner._proc.pid == pid and runner._proc.is_alive()


@pytest.mark.parametrize("source,needle", [
    ("raise ImportError('no such accelerator library')\n", "no such accelerator library"),
    ("x = 1 / 0\n", "ZeroDivisionError"),
    ("class B:\n    pass\n", "has none of the methods"),
    ("def make():\n    raise RuntimeError('factory exploded')\n", "factory exploded"),
])
def test_backend_that_fails_to_load(tmp_path, source, needle):
    path = tmp_path / "bad_backend.py"
    path.write_text(source)
    attr = "make" if "def make" in source else "B"
    spec = f"{path}:{attr}"
    with ProcessRunner(spec, timeout=TIMEOUT) as runner:
        assert runner.load_error is not None and needle in runner.load_error
        assert runner.capabilities is None
        r = runner.call("attention", *_qkv(), scale=1.0)
        assert not r.ok and r.error_kind == "load"
    inproc = InProcessRunner(spec)
    assert inproc.load_error is not None and needle in inproc.load_error
    assert inproc.call("attention", *_qkv(), scale=1.0).error_kind == "load"


def test_missing_file_and_missing_attribute(tmp_path):
    assert "does not exist" in InProcessRunner(f"{tmp_path}/nope.py:X").load_error
    assert "has no attribute" in InProcessRunner(hb.SPEC_PREFIX + "NoSuchBackend").load_error
    assert "module:attr" in InProcessRunner("no_colon_here").load_error


# --------------------------------------------------------------------------- InProcessRunner


def test_in_process_exception():
    r = InProcessRunner(hb.Raising()).call("attention", *_qkv(), scale=1.0)
    assert not r.ok and r.error_kind == "exception" and "refuses to compute" in r.error


def test_in_process_timeout_is_reported_after_the_call():
    runner = InProcessRunner(hb.Sleepy(), timeout=0.05)
    r = runner.call("attention", *_qkv(), scale=1.0)
    assert not r.ok and r.error_kind == "timeout" and r.seconds >= hb.Sleepy.delay
    assert InProcessRunner(hb.Sleepy(), timeout=5).call("attention", *_qkv(), scale=1.0).ok


def test_in_process_loads_by_spec():
    runner = InProcessRunner(hb.SPEC_PREFIX + "Correct")
    q, k, v = _qkv(4)
    _check_correct(runner.call("attention", q, k, v, scale=0.5), q, k, v, 0.5)
    assert runner.capabilities.dtypes == {"float64"}


# --------------------------------------------------------------------------- garbage → error verdicts


def _case():
    q, k, v = _qkv(5, n=5, d=3)
    return Case("softmax_attention/float64/test/000", "test", "float64", 0, make_instance(q, k, v, scale=0.5))


@pytest.mark.parametrize("name", sorted(hb.GARBAGE))
def test_garbage_output_is_an_error_case(name):
    backend = hb.GARBAGE[name]()
    runner = InProcessRunner(backend)
    record = judge_one(_case(), runner, runner.capabilities)
    assert record["status"] == "error", record


@pytest.mark.parametrize("name", ["Raising", "Crashing", "Hanging"])
def test_misbehaving_backends_cost_one_case_in_a_worker(name):
    with ProcessRunner(hb.SPEC_PREFIX + name, timeout=1.0) as runner:
        record = judge_one(_case(), runner, runner.capabilities)
    assert record["status"] == "error"
    assert record["evidence"]["kind"] == {"Raising": "exception", "Crashing": "crash", "Hanging": "timeout"}[name]


# --------------------------------------------------------------------------- payload encoding


PAYLOADS = [
    np.arange(6, dtype=np.float64).reshape(2, 3) / 3,
    np.array([[1.5, -0.0], [np.inf, np.nan]], dtype=np.float32),
    np.array([1, 2], dtype=np.float16),
    np.array([-128, 127], dtype=np.int8),
    np.array([2**64 - 1], dtype=np.uint64),
    np.array([True, False]),
    np.array([1 + 2j]),
    np.array(["ab", "c"]),
    np.array(3.25),
    np.zeros((0, 4)),
    np.asfortranarray(np.arange(6.0).reshape(2, 3)),
]


def _same(a, b):
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b)
        for key in a:
            _same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    else:
        assert a == b and type(a) is type(b)


@pytest.fixture
def no_pickle(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used")

    for name in ("dumps", "loads", "dump", "load"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(pickle, "Pickler", refuse)


def test_payload_round_trip_without_pickle(no_pickle):
    obj = {
        "method": "attention",
        "args": [PAYLOADS[0], [PAYLOADS[1], {"deep": PAYLOADS[2:6]}]],
        "kwargs": {"scale": 0.125, "flag": True, "none": None, "text": "ü", "arrays": PAYLOADS[6:]},
    }
    _same(obj, decode_payload(encode_payload(obj)))


def test_tuples_become_lists_and_numpy_scalars_become_numbers(no_pickle):
    out = decode_payload(encode_payload({"t": (1, 2.5), "f": np.float64(0.1), "i": np.int64(3)}))
    assert out["t"] == [1, 2.5]
    assert float(out["f"]) == 0.1 and int(out["i"]) == 3


def test_decode_never_unpickles(tmp_path):
    import io
    import json

    marker = tmp_path / "unpickled.marker"

    class Bomb:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    # The old .npz framing with a pickled object array, and the new framing declaring an object dtype.
    header = json.dumps({"x": {"__array__": "a0"}}).encode()
    buf = io.BytesIO()
    np.savez(buf, a0=np.array([Bomb()], dtype=object))
    with pytest.raises(ValueError):
        decode_payload(len(header).to_bytes(8, "little") + header + buf.getvalue())
    body = pickle.dumps(np.array([Bomb()], dtype=object))
    header = json.dumps({"tree": {"__array__": 0}, "arrays": [{"dtype": "|O", "shape": [1], "order": "C"}]}).encode()
    with pytest.raises(ValueError, match="object array"):
        decode_payload(len(header).to_bytes(8, "little") + header + body)
    assert not marker.exists()


@pytest.mark.parametrize("mangle", [
    lambda d: d[:5],  # shorter than its length prefix
    lambda d: d[:-1],  # array bytes missing
    lambda d: d + b"x",  # trailing bytes
    lambda d: (10**9).to_bytes(8, "little") + d[8:],  # header length past the end
    lambda d: d.replace(b'"shape": [2]', b'"shape": [-2]'),
    lambda d: d.replace(b'"__array__": 0', b'"__array__": 5'),
    lambda d: d.replace(b"<f8", b"V16"),
])
def test_malformed_payloads_are_value_errors(mangle):
    data = encode_payload({"x": np.array([1.0, 2.0])})
    with pytest.raises(ValueError):
        decode_payload(mangle(data))


def test_received_arrays_are_capped_before_they_are_read():
    import multiprocessing as mp

    from attnspec.conformance.harness.worker_protocol import PayloadError, recv_payload, send_payload

    a, b = mp.Pipe()
    with a, b:
        send_payload(a, {"out": np.zeros(100)})
        with pytest.raises(PayloadError, match="more than the 799 allowed"):
            recv_payload(b, header_limit=1 << 20, max_array_bytes=799)
        send_payload(a, {"out": np.zeros(2)})
        with pytest.raises(PayloadError, match="header larger"):
            recv_payload(b, header_limit=10, max_array_bytes=None)


def test_arrays_travel_as_raw_bytes_not_npz():
    arr = np.arange(1000, dtype=np.float64)
    data = encode_payload([arr])
    assert b"PK" not in data[:64] and len(data) < arr.nbytes + 200  # no zip, one copy of the bytes


def test_encode_refuses_object_arrays(no_pickle):
    # An object array can only travel pickled; encoding must refuse it rather than pickle.
    with pytest.raises(TypeError, match="object array"):
        encode_payload({"x": np.array([1, "a"], dtype=object)})
    with pytest.raises(TypeError, match="object array"):
        encode_payload([np.zeros(2, dtype=[("a", "f8"), ("b", "O")])])


def test_exact_rational_inputs_are_a_bad_input_not_a_crash(selective):
    from fractions import Fraction

    q = np.array([[Fraction(1, 3)]], dtype=object)
    r = selective.call("attention", q, q, q, scale=1.0)
    assert not r.ok and r.error_kind == "bad_input"
    q, k, v = _qkv(6)
    _check_correct(selective.call("attention", q, k, v, scale=1.0), q, k, v, 1.0)


# --------------------------------------------------------------------------- the request protocol


def test_requests_that_name_nothing_runnable_are_refused(selective):
    q, k, v = _qkv(7)
    for runner in (selective, InProcessRunner(hb.Selective())):
        refused = [
            runner.request("eval", "attention", (q, k, v), {"scale": 1.0}),
            runner.request("call", "__class__", (), {}),
            runner.request("call", "_private", (), {}),
            runner.request("call", "os.system", ("true",), {}),
            runner.request("call", "no_such_method", (), {}),
            runner.request("call", 42, (), {}),
            runner.request("drive", "softmax_attention", (), {}),  # a called problem, not a driven one
            runner.request("drive", "no_such_problem", (), {}),
            runner.request("call", "attention", "not a sequence", {}),
        ]
        for r in refused:
            assert not r.ok and r.error_kind == "bad_request" and r.error, r
        _check_correct(runner.request("call", "attention", (q, k, v), {"scale": 0.5}), q, k, v, 0.5)


def test_drive_request_runs_a_problems_driver_in_the_worker():
    from attnspec.conformance.judging.problems import get_problem

    problem = get_problem("dynamic_attention")
    case = problem.generate_cases("quick", ("float64",), 0)[0]
    kind, target, args, kwargs = problem.request(case)
    assert (kind, target) == ("drive", "dynamic_attention")
    with ProcessRunner("numpy", timeout=30) as runner:
        in_worker = runner.request(kind, target, args, kwargs, max_output_elements=problem.expected_output_elements(case))
    inproc = InProcessRunner("numpy")
    in_process = inproc.request(kind, target, args, kwargs)
    assert in_worker.ok and in_process.ok, (in_worker, in_process)
    np.testing.assert_array_equal(in_worker.output, in_process.output)
    assert problem.judge(case, in_worker.output, inproc.capabilities).status == "pass"


def test_output_larger_than_allowed_is_refused_before_it_is_sent(selective):
    q, k, v = _qkv(8)
    for runner in (selective, InProcessRunner(hb.Selective())):
        r = runner.request("call", "attention", (q, k, v), {"scale": 1.0}, max_output_elements=11)
        assert not r.ok and r.error_kind == "bad_output"
        assert "output has 12 elements, expected at most 11" in r.error
        _check_correct(runner.request("call", "attention", (q, k, v), {"scale": 1.0}, max_output_elements=12), q, k, v, 1.0)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "5", True, None])
def test_timeouts_must_be_finite_and_positive(bad):
    with pytest.raises(ValueError, match="timeout must be"):
        ProcessRunner(hb.SPEC_PREFIX + "Correct", timeout=bad)
    if bad is not None:  # None is the in-process runner's "no limit"
        with pytest.raises(ValueError, match="timeout must be"):
            InProcessRunner(hb.Correct(), timeout=bad)


@pytest.mark.parametrize("bad", [0, -5, 1.5, "8G", True])
def test_memory_limit_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="memory_limit_bytes"):
        ProcessRunner(hb.SPEC_PREFIX + "Correct", memory_limit_bytes=bad)


def test_default_memory_limit_is_sane():
    from attnspec.conformance.harness.isolation import DEFAULT_MEMORY_LIMIT

    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert DEFAULT_MEMORY_LIMIT == min(8 << 30, physical // 2)


def test_memory_limit_applies_in_the_worker_and_none_disables_it():
    import resource

    for limit in (3 << 30, None):
        with ProcessRunner(hb.SPEC_PREFIX + "Correct", timeout=TIMEOUT, memory_limit_bytes=limit) as runner:
            soft, hard = resource.prlimit(runner._proc.pid, resource.RLIMIT_AS)
        expected = resource.RLIM_INFINITY if limit is None else limit
        assert soft == hard == expected


# --------------------------------------------------------------------------- reaping and orphans


def test_exit_codes_are_read_after_reaping(selective):
    # Before the fix, the code was read before the worker was reaped: "exit code None" now and then.
    q, k, v = _qkv(9)
    for _ in range(3):
        r = selective.call("attention", q, k, v, scale=hb.CRASH_SCALE)
        assert r.error_kind == "crash" and "exit code 7" in r.error and "None" not in r.error


def test_signals_are_named():
    from attnspec.conformance.harness.isolation import describe_exit

    assert describe_exit(-9).startswith("killed by SIGKILL") and "out-of-memory" in describe_exit(-9)
    assert describe_exit(-11) == "killed by SIGSEGV"
    assert describe_exit(3) == "exit code 3"


def test_close_kills_what_the_backend_spawned():
    with ProcessRunner(hb.SPEC_PREFIX + "SpawnsSleeper", timeout=TIMEOUT) as runner:
        pgid = runner._proc.pid
        assert runner.call("attention", *_qkv(), scale=1.0).ok
        assert len(hb.live_group_members(pgid)) >= 2  # the worker and its sleep (and the group reaper)
    assert hb.group_is_gone(pgid)


PARENT_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import numpy as np
import helper_backends as hb
from attnspec.conformance.harness.isolation import ProcessRunner

runner = ProcessRunner(hb.SPEC_PREFIX + "SpawnsSleeper", timeout=10)
q = np.ones((2, 2))
assert runner.call("attention", q, q, q, scale=1.0).ok
print(runner._proc.pid, flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_worker_and_its_children_die_with_the_harness(sig):
    import subprocess
    import sys
    from pathlib import Path

    script = PARENT_SCRIPT.format(tests=str(Path(__file__).parent))
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        pgid = int(parent.stdout.readline())
        assert len(hb.live_group_members(pgid)) >= 2
        parent.send_signal(sig)
        assert parent.wait(30) == -sig
        assert hb.group_is_gone(pgid), hb.live_group_members(pgid)
    finally:
        parent.kill()
        parent.wait()


# --------------------------------------------------------------------------- captured output


def test_backend_output_is_captured_per_call_not_printed(capfd):
    q, k, v = _qkv(10)
    with ProcessRunner(hb.SPEC_PREFIX + "Noisy", timeout=TIMEOUT) as runner:
        assert "noisy backend loading" in runner.load_captured
        r = runner.call("attention", q, k, v, scale=1.0)
        _check_correct(r, q, k, v, 1.0)
        assert "noisy stdout line" in r.captured and "noisy fd-2 line" in r.captured
        again = runner.call("attention", q, k, v, scale=1.0)
        assert again.captured.count("noisy stdout line") == 1  # each call gets its own output only
    inproc = InProcessRunner(hb.SPEC_PREFIX + "Noisy")
    assert "noisy backend loading" in inproc.load_captured
    r = inproc.call("attention", q, k, v, scale=1.0)
    assert "noisy stdout line" in r.captured and "noisy fd-2 line" in r.captured
    out, err = capfd.readouterr()
    assert "noisy" not in out and "noisy" not in err


# --------------------------------------------------------------------------- determinism


def test_check_deterministic(selective):
    from attnspec.conformance.harness.isolation import check_deterministic

    q, k, v = _qkv(11)
    args, kwargs = (q, k, v), {"scale": 0.5}
    with ProcessRunner(hb.SPEC_PREFIX + "Nondeterministic", timeout=TIMEOUT) as flaky:
        runners = [(selective, True), (flaky, False), (InProcessRunner(hb.Nondeterministic()), False),
                   (InProcessRunner(hb.AlwaysNaN()), True)]
        for runner, same in runners:
            r = check_deterministic(runner, "call", "attention", args, kwargs, max_output_elements=12)
            assert r.ok is same, r
            if not same:
                assert r.error_kind == "nondeterministic" and "1 of 12 entries" in r.error
    failing = check_deterministic(selective, "call", "attention", args, {"scale": hb.RAISE_SCALE})
    assert failing.error_kind == "exception"  # a failing first call is reported as itself


def test_same_bits_is_bitwise_and_nan_aware():
    from attnspec.conformance.harness.worker_protocol import same_bits

    a = np.array([0.0, np.nan, 1.0])
    assert same_bits(a, a.copy()) is None
    assert same_bits(a, np.array([-0.0, np.nan, 1.0])) is not None  # -0 and +0 differ in their bits
    assert same_bits(a, a.astype(np.float32)) is not None
    assert same_bits(a, a[:2]) is not None
    assert same_bits(0.5, 0.5) is None and same_bits(0.5, np.array(0.5)) is not None


# --------------------------------------------------------------------------- in-process soundness


def test_in_process_backend_gets_writeable_copies():
    seen = []

    class Mutator:
        def attention(self, q, k, v, *, scale):
            seen.append(q.flags.writeable)
            q *= 0
            v[...] = 1
            return np.zeros((q.shape[0], v.shape[1]))

    q, k, v = _qkv(12)
    before = [x.copy() for x in (q, k, v)]
    assert InProcessRunner(Mutator()).call("attention", q, k, v, scale=1.0).ok
    assert seen == [True]
    for x, y in zip((q, k, v), before):
        np.testing.assert_array_equal(x, y)


def test_in_process_output_is_a_copy():
    class Keeper:
        def __init__(self):
            self.buf = np.zeros((4, 3))

        def attention(self, q, k, v, *, scale):
            self.buf += 1
            return self.buf

    runner = InProcessRunner(Keeper())
    first = runner.call("attention", *_qkv(), scale=1.0).output
    runner.call("attention", *_qkv(), scale=1.0)
    assert (first == 1).all()


def test_in_process_system_exit_is_an_error_and_keyboard_interrupt_stops():
    class Exits:
        def attention(self, q, k, v, *, scale):
            raise SystemExit(0)

    class Interrupts:
        def attention(self, q, k, v, *, scale):
            raise KeyboardInterrupt

    r = InProcessRunner(Exits()).call("attention", *_qkv(), scale=1.0)
    assert not r.ok and r.error_kind == "exception" and "SystemExit" in r.error
    with pytest.raises(KeyboardInterrupt):
        InProcessRunner(Interrupts()).call("attention", *_qkv(), scale=1.0)


def test_a_worker_that_died_between_calls_is_restarted_before_the_next():
    q, k, v = _qkv(13)
    with ProcessRunner(hb.SPEC_PREFIX + "Correct", timeout=TIMEOUT) as runner:
        old = runner._proc.pid
        os.kill(old, signal.SIGKILL)
        os.waitid(os.P_PID, old, os.WEXITED | os.WNOWAIT)  # dead, not yet reaped (the runner reaps)
        _check_correct(runner.call("attention", q, k, v, scale=1.0), q, k, v, 1.0)
        assert runner._proc.pid != old
