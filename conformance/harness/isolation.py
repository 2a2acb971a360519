"""Running untrusted backends so that one bad case costs one case, never the run.

:class:`ProcessRunner` loads the backend once in a spawned worker process and sends it one call at a
time. An exception in the backend comes back as an error result; a crash (segfault, ``os._exit``) or a
call exceeding the per-case timeout kills the worker, which is restarted for the next case. Arrays travel
as ``.npz`` bytes loaded with ``allow_pickle=False``; everything else as JSON.

:class:`InProcessRunner` calls the backend directly (fast; for the pytest plugin and trusted code). It
catches exceptions but cannot stop a hang; its timeout is reported only after the call returns.
"""

from __future__ import annotations

import functools
import importlib
import io
import json
import multiprocessing as mp
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np

from attnspec.conformance.harness.backends import Capabilities, load_backend, read_capabilities


@dataclass
class CallResult:
    """What a backend call produced: ``output`` on success, else ``error`` (kind + message)."""

    ok: bool
    output: Any = None
    error_kind: str = ""
    error: str = ""
    seconds: float = 0.0


def encode_payload(obj: Any) -> bytes:
    """Serialise nested lists/dicts of JSON scalars and numpy arrays without pickle."""
    arrays: dict[str, np.ndarray] = {}

    def walk(x: Any) -> Any:
        if isinstance(x, np.ndarray) or (hasattr(x, "__array__") and not isinstance(x, (int, float, str))):
            arr = np.asarray(x)
            if arr.dtype.hasobject:  # np.savez would pickle it, and the receiver must never unpickle
                raise TypeError(f"cannot send an object array ({arr.dtype}) without pickle")
            key = f"a{len(arrays)}"
            arrays[key] = arr
            return {"__array__": key}
        if isinstance(x, (list, tuple)):
            return [walk(v) for v in x]
        if isinstance(x, dict):
            return {str(k): walk(v) for k, v in x.items()}
        if isinstance(x, (np.floating, np.integer)):
            return x.item()
        return x

    header = json.dumps(walk(obj)).encode()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return len(header).to_bytes(8, "little") + header + buf.getvalue()


def decode_payload(data: bytes) -> Any:
    """Inverse of :func:`encode_payload` (never unpickles)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size].decode())
    with np.load(io.BytesIO(data[8 + size:]), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}

    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            if set(x) == {"__array__"}:
                return arrays[x["__array__"]]
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    return walk(header)


DRIVER_PREFIX = "driver:"


def resolve_method(backend: Any, method: str) -> Any:
    """The callable a request names: a backend method, or ``driver:attnspec.<module>:<function>``, one of
    attnspec's own drivers called as ``function(backend, *args)`` (a stateful problem, such as a
    dynamic-attention trace, runs whole inside the worker). Only attnspec's modules may be named."""
    if not method.startswith(DRIVER_PREFIX):
        return getattr(backend, method)
    module_name, _, attr = method[len(DRIVER_PREFIX):].partition(":")
    if not module_name.startswith("attnspec.") or not attr:
        raise ValueError(f"driver {method!r} is not one of attnspec's")
    function = getattr(importlib.import_module(module_name), attr)
    return functools.partial(function, backend)


def _worker_main(conn, spec: str) -> None:
    try:
        backend = load_backend(spec)
        conn.send_bytes(encode_payload({"ok": True, "capabilities": read_capabilities(backend).to_json()}))
    except BaseException as exc:  # report and stop: nothing can run without a backend
        conn.send_bytes(encode_payload({"ok": False, "error": f"{type(exc).__name__}: {exc}"}))
        return
    while True:
        try:
            request = decode_payload(conn.recv_bytes())
        except EOFError:
            return
        t0 = time.perf_counter()
        try:
            output = resolve_method(backend, request["method"])(*request["args"], **request["kwargs"])
            if not isinstance(output, (int, float)):
                output = _to_numpy(output)
            reply = {"ok": True, "output": output, "seconds": time.perf_counter() - t0}
        except BaseException as exc:
            reply = {
                "ok": False,
                "error_kind": "exception",
                "error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}",
                "seconds": time.perf_counter() - t0,
            }
        try:
            conn.send_bytes(encode_payload(reply))
        except Exception as exc:  # unserialisable output (object arrays, strings…) is garbage
            conn.send_bytes(encode_payload({"ok": False, "error_kind": "bad_output", "error": f"output cannot be read as a numeric array: {exc}"}))


def _to_numpy(output: Any) -> np.ndarray:
    if hasattr(output, "get") and type(output).__module__.startswith("cupy"):
        output = output.get()
    if hasattr(output, "detach") and hasattr(output, "cpu"):
        output = output.detach().cpu().numpy()
    arr = np.asarray(output)
    if arr.dtype == object:
        raise TypeError(f"backend returned an object array ({type(output).__name__})")
    return arr


class ProcessRunner:
    """A backend in a worker process, with per-call timeout and restart after a crash or hang."""

    def __init__(self, spec: str, timeout: float = 60.0):
        self.spec = spec
        self.timeout = timeout
        self._ctx = mp.get_context("spawn")
        self._proc = None
        self._conn = None
        self.capabilities: Capabilities | None = None
        self.load_error: str | None = None
        self._start()

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_worker_main, args=(child, self.spec), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        if not parent.poll(max(self.timeout, 120.0)):
            self.load_error = "backend did not load within the time limit"
            self._kill()
            return
        try:
            hello = decode_payload(parent.recv_bytes())
        except (EOFError, OSError):
            self.load_error = "backend process died while loading"
            self._kill()
            return
        if hello["ok"]:
            self.capabilities = Capabilities.from_json(hello["capabilities"])
            self.load_error = None
        else:
            self.load_error = hello["error"]
            self._kill()

    def _kill(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
        if self._proc is not None:
            self._proc.join(5)
        self._proc = None

    def call(self, method: str, *args: Any, **kwargs: Any) -> CallResult:
        if self._proc is None:
            self._start()
            if self.load_error:
                return CallResult(False, error_kind="load", error=self.load_error)
        t0 = time.perf_counter()
        try:
            request = encode_payload({"method": method, "args": list(args), "kwargs": kwargs})
        except TypeError as exc:  # e.g. exact-rational (object) inputs: they cannot cross without pickle
            return CallResult(False, error_kind="bad_input", error=str(exc))
        try:
            self._conn.send_bytes(request)
            if not self._conn.poll(self.timeout):
                self._kill()
                return CallResult(False, error_kind="timeout", error=f"no answer within {self.timeout:g} s (worker killed)", seconds=time.perf_counter() - t0)
            reply = decode_payload(self._conn.recv_bytes())
        except (EOFError, OSError, BrokenPipeError):
            code = self._proc.exitcode if self._proc is not None else None
            self._kill()
            return CallResult(False, error_kind="crash", error=f"backend process died (exit code {code})", seconds=time.perf_counter() - t0)
        if reply["ok"]:
            return CallResult(True, output=reply["output"], seconds=reply["seconds"])
        return CallResult(False, error_kind=reply.get("error_kind", "exception"), error=reply["error"], seconds=reply.get("seconds", 0.0))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._kill()

    def __enter__(self) -> "ProcessRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class InProcessRunner:
    """A backend called directly; exceptions become error results."""

    def __init__(self, spec_or_backend: Any, timeout: float | None = None):
        self.spec = spec_or_backend if isinstance(spec_or_backend, str) else repr(spec_or_backend)
        self.timeout = timeout
        self.load_error = None
        self.capabilities = None
        try:
            self.backend = load_backend(spec_or_backend) if isinstance(spec_or_backend, str) else spec_or_backend
            self.capabilities = read_capabilities(self.backend)
        except Exception as exc:
            self.backend = None
            self.load_error = f"{type(exc).__name__}: {exc}"

    def call(self, method: str, *args: Any, **kwargs: Any) -> CallResult:
        if self.backend is None:
            return CallResult(False, error_kind="load", error=self.load_error or "no backend")
        t0 = time.perf_counter()
        try:
            out = resolve_method(self.backend, method)(*args, **kwargs)
            if not isinstance(out, (int, float)):
                out = _to_numpy(out)
        except Exception as exc:
            return CallResult(False, error_kind="exception", error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - t0)
        seconds = time.perf_counter() - t0
        if self.timeout is not None and seconds > self.timeout:
            return CallResult(False, error_kind="timeout", error=f"call took {seconds:.1f} s > {self.timeout:g} s", seconds=seconds)
        return CallResult(True, output=out, seconds=seconds)

    def close(self) -> None:
        pass

    def __enter__(self) -> "InProcessRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
