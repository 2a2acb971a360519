"""conformance/isolation.py: one misbehaving call costs one call, never the runner; no pickle anywhere."""

from __future__ import annotations

import pickle
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


def test_garbage_outputs_through_the_worker(tmp_path):
    q, k, v = _qkv(3)
    with ProcessRunner(hb.SPEC_PREFIX + "Garbage_strings", timeout=TIMEOUT) as runner:
        r = runner.call("attention", q, k, v, scale=1.0)
    # A string array travels as data (no pickle); the verdict then calls it garbage (tested below).
    assert r.ok and r.output.dtype.kind == "U"
    with ProcessRunner(hb.SPEC_PREFIX + "Garbage_object", timeout=TIMEOUT) as runner:
        r = runner.call("attention", q, k, v, scale=1.0)
        assert not r.ok and "object array" in r.error
        # The worker is still alive and answers the next call (with the same garbage).
        assert runner._proc is not None and runner._proc.is_alive()


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

    header = json.dumps({"x": {"__array__": "a0"}}).encode()
    buf = io.BytesIO()
    np.savez(buf, a0=np.array([Bomb()], dtype=object))
    with pytest.raises(ValueError):
        decode_payload(len(header).to_bytes(8, "little") + header + buf.getvalue())
    assert not marker.exists()


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
