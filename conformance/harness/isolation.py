"""Running untrusted backends so that one bad case costs one case, never the run.

Both runners answer :meth:`request(kind, target, args, kwargs, *, max_output_elements=None)
<ProcessRunner.request>` with a :class:`CallResult`:

- ``kind == "call"``: ``backend.<target>(*args, **kwargs)`` (``target`` a public method name);
- ``kind == "drive"``: a registered problem's worker-side driver,
  ``get_problem(target).drive(backend, *args, **kwargs)`` (a stateful problem runs whole in the worker).

Anything else is refused (error kind ``bad_request``) without running anything. ``call(method, *args,
**kwargs)`` is shorthand for a ``"call"`` request.

:class:`ProcessRunner` loads the backend once in a spawned worker (see
:mod:`~attnspec.conformance.harness.worker_process`): its own session, killed as a whole group after a
timeout, a crash and at :meth:`~ProcessRunner.close`; dead with the harness; an address-space limit; its
stdout and stderr captured per request. :class:`InProcessRunner` calls the backend directly (for trusted
code and the pytest plugin): it hands the backend copies of the arrays, captures fd-level output, restores
numpy's error state, and turns every ``BaseException`` except ``KeyboardInterrupt`` into an error result.
It cannot stop a hang or a crash; its timeout is reported only after the call returns.

Error kinds (``CallResult.error_kind``), see :data:`ERROR_KINDS`.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import math
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Iterator, Sequence, TypeVar

import numpy as np

from attnspec.conformance.harness.backends import Capabilities, load_backend, read_capabilities
from attnspec.conformance.harness.worker_process import (
    CAPTURE_LIMIT,
    REQUEST_KINDS,
    answer,
    read_capture,
    worker_main,
)
from attnspec.conformance.harness.worker_protocol import (
    ARRAY_BYTES_SLACK,
    HEADER_LIMIT_REPLY,
    BadOutput,
    PayloadError,
    coerce_output,
    copy_arrays,
    decode_payload,
    encode_payload,
    recv_payload,
    same_bits,
    send_split,
    split_payload,
)

ERROR_KINDS = {
    "load": "the backend could not be loaded (or its worker died while loading)",
    "bad_request": "the request names no method of the backend or no driven problem (nothing ran)",
    "bad_input": "the arguments cannot be sent to the worker without pickle (e.g. object arrays)",
    "exception": "the backend raised (any BaseException: SystemExit and KeyboardInterrupt included)",
    "memory": "the backend ran out of memory under the worker's limit (MemoryError)",
    "crash": "the worker process died during the call (exit code or signal in the message)",
    "timeout": "no answer within the per-call timeout (the worker's process group was killed)",
    "bad_output": "the output is not a real numeric array, or is larger than the request allows",
    "protocol": "the worker's reply was malformed (the worker was killed)",
    "nondeterministic": "two identical calls of a backend declaring deterministic differ bitwise",
}


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


# The worker's address-space limit unless told otherwise: min(8 GiB, half the physical memory). GPU
# backends usually need it raised or disabled (``memory_limit_bytes=None``): CUDA maps virtual ranges far
# larger than the memory it uses.
DEFAULT_MEMORY_LIMIT: int = min(8 << 30, (_physical_memory() or (16 << 30)) // 2)


@dataclass
class CallResult:
    """What a backend call produced: ``output`` on success, else ``error_kind`` (one of
    :data:`ERROR_KINDS`) and ``error``. ``captured``: what the backend wrote to stdout/stderr during
    the call (at most about 4 KiB; a longer capture keeps its head and tail and notes the total)."""

    ok: bool
    output: Any = None
    error_kind: str = ""
    error: str = ""
    seconds: float = 0.0
    captured: str = ""


def check_timeout(timeout: Any) -> float:
    """``timeout`` as a float if it is a finite number of seconds > 0; ``ValueError`` otherwise."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
    return float(timeout)


def check_memory_limit(limit: Any) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ValueError(f"memory_limit_bytes must be a positive integer or None, got {limit!r}")
    return limit


def _check_request(kind: Any, target: Any, args: Any, kwargs: Any, max_output_elements: Any) -> str | None:
    if isinstance(kind, str) is False or kind not in REQUEST_KINDS:
        return f"unknown request kind {kind!r}; known: {', '.join(REQUEST_KINDS)}"
    if not isinstance(target, str):
        return f"request target must be a string, got {type(target).__name__}"
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        return "request args must be a sequence and kwargs a dict"
    if max_output_elements is not None and (isinstance(max_output_elements, bool) or not isinstance(max_output_elements, int) or max_output_elements < 0):
        return f"max_output_elements must be an integer ≥ 0 or None, got {max_output_elements!r}"
    return None


def check_deterministic(runner: Any, kind: str, target: str, args: Sequence[Any], kwargs: dict[str, Any], *,
                        max_output_elements: int | None = None) -> CallResult:
    """The same request twice; the first result if both succeed with the same bits (dtype, shape and every
    entry; a NaN equals any NaN), else the first failure, else an error of kind ``nondeterministic``
    (whose ``output`` is the first output)."""
    first = runner.request(kind, target, args, kwargs, max_output_elements=max_output_elements)
    if not first.ok:
        return first
    second = runner.request(kind, target, args, kwargs, max_output_elements=max_output_elements)
    if not second.ok:
        return second
    difference = same_bits(first.output, second.output)
    if difference is None:
        return first
    return CallResult(False, output=first.output, error_kind="nondeterministic", error=difference,
                      seconds=first.seconds + second.seconds, captured=first.captured)


# --------------------------------------------------------------------------- live workers


_LIVE: "weakref.WeakSet[ProcessRunner]" = weakref.WeakSet()
_handlers_installed = False


def kill_live_workers() -> None:
    """Kill every live worker's process group (at exit and on SIGTERM)."""
    for runner in list(_LIVE):
        runner._kill_group()


def _on_sigterm(previous: Any) -> Any:
    def handler(signum: int, frame: Any) -> None:
        kill_live_workers()
        if callable(previous):
            previous(signum, frame)
        else:  # the default action: die of SIGTERM, as without this handler
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    return handler


def _install_handlers() -> None:
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(kill_live_workers)
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGTERM)
        if previous is not signal.SIG_IGN and previous is not None:
            signal.signal(signal.SIGTERM, _on_sigterm(previous))


# --------------------------------------------------------------------------- the runners


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` set to exactly ``values`` inside the block (a spawned child inherits it), restored
    after."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


_R = TypeVar("_R", bound="Runner")


class Runner:
    """What both runners share: ``call`` and ``check_deterministic`` in terms of ``request``, and use as a
    context manager (``close`` on exit)."""

    def request(self, kind: str, target: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, *,
                max_output_elements: int | None = None) -> CallResult:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def call(self, method: str, *args: Any, **kwargs: Any) -> CallResult:
        """``backend.<method>(*args, **kwargs)`` (a ``"call"`` request)."""
        return self.request("call", method, args, kwargs)

    def check_deterministic(self, kind: str, target: str, args: Sequence[Any], kwargs: dict[str, Any], *,
                            max_output_elements: int | None = None) -> CallResult:
        """:func:`check_deterministic` on this runner."""
        return check_deterministic(self, kind, target, args, kwargs, max_output_elements=max_output_elements)

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- ProcessRunner


class ProcessRunner(Runner):
    """A backend in a worker process, with a per-call timeout, a memory limit, and a restart after a
    crash or hang.

    ``memory_limit_bytes``: the worker's ``RLIMIT_AS`` (default :data:`DEFAULT_MEMORY_LIMIT`; ``None``
    for no limit, which GPU backends may need).

    The worker is killed when the *thread* that started it exits (Linux's parent-death signal follows
    the thread): create runners from a thread that outlives them, normally the main thread."""

    def __init__(self, spec: str, timeout: float = 60.0, memory_limit_bytes: int | None = DEFAULT_MEMORY_LIMIT):
        self.spec = spec
        self.timeout = check_timeout(timeout)
        self.memory_limit_bytes = check_memory_limit(memory_limit_bytes)
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._conn: Any = None
        self._capture_fd: int | None = None
        self.capabilities: Capabilities | None = None
        self.identity: dict[str, Any] = {}  # the backend's class and version, from the worker's hello
        self.environment: dict[str, Any] = {}  # the versions the worker saw (torch, cupy, ...)
        self.load_error: str | None = None
        self.load_captured = ""
        # Every incarnation of the worker (a restart after a crash too) starts from the environment the
        # runner was made in: libraries that change os.environ later (Dask sets OPENBLAS_NUM_THREADS=1
        # when it starts a local cluster) must not change the backend's arithmetic in mid-run.
        self._environ = dict(os.environ)
        _install_handlers()
        self._start()

    # -- worker lifecycle

    def _start(self) -> None:
        fd, path = tempfile.mkstemp(prefix="attnspec-worker-", suffix=".out")
        self._capture_fd = fd
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=worker_main, args=(child, self.spec, os.getpid(), self.memory_limit_bytes, path), daemon=True)
        try:
            with environment(self._environ):
                self._proc.start()
        finally:
            child.close()
        _LIVE.add(self)
        self._conn = parent
        try:
            if not parent.poll(max(self.timeout, 120.0)):
                self._fail_load("backend did not load within the time limit")
                return
            hello = recv_payload(parent, header_limit=HEADER_LIMIT_REPLY, max_array_bytes=0)
        except (EOFError, OSError, PayloadError):
            self._fail_load(None)
            return
        finally:
            os.unlink(path)  # the worker and this process hold it open; nothing is left behind
        self.load_captured = str(hello.get("captured", "")) if isinstance(hello, dict) else ""
        if isinstance(hello, dict) and hello.get("ok") is True:
            self.capabilities = Capabilities.from_json(hello["capabilities"])
            self.identity = {str(k): str(v) for k, v in dict(hello.get("identity") or {}).items()}
            self.environment = {str(k): str(v) for k, v in dict(hello.get("environment") or {}).items()}
            self.load_error = None
        else:
            self._fail_load(str(hello.get("error")) if isinstance(hello, dict) else "malformed hello from the worker")

    def _fail_load(self, message: str | None) -> None:
        captured = self._read_capture()
        code = self._kill()
        self.load_error = message or f"backend process died while loading ({describe_exit(code)})"
        if captured and not self.load_captured:
            self.load_captured = captured

    def _kill_group(self) -> None:
        """SIGKILL the worker's process group, and the worker itself (before its ``setsid``, the group
        is not yet its own). Never after the worker was reaped: its pid could be reused."""
        proc = self._proc
        if proc is None or proc.pid is None or getattr(getattr(proc, "_popen", None), "returncode", None) is not None:
            return  # not started, or already reaped
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            proc.kill()

    def _kill(self) -> int | None:
        """Kill the worker's group, reap the worker, and return its exit code (read only after join)."""
        code = None
        if self._proc is not None:
            self._kill_group()
            self._proc.join()
            code = self._proc.exitcode
            _LIVE.discard(self)
        if self._conn is not None:
            self._conn.close()
        if self._capture_fd is not None:
            os.close(self._capture_fd)
        self._proc = self._conn = self._capture_fd = None
        return code

    def _read_capture(self) -> str:
        if self._capture_fd is None:
            return ""
        try:
            return read_capture(self._capture_fd, os.fstat(self._capture_fd).st_size)
        except OSError:
            return ""

    def _worker_exited(self) -> bool:
        """Whether the worker has exited, without reaping it (so its pid stays reserved)."""
        try:
            return os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    # -- requests

    def request(self, kind: str, target: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, *,
                max_output_elements: int | None = None) -> CallResult:
        """One request to the worker (see the module docstring). An output with more than
        ``max_output_elements`` entries is refused in the worker before it is sent, and a reply larger
        than ``16 · max_output_elements`` bytes plus slack is refused here before it is read."""
        kwargs = {} if kwargs is None else kwargs
        problem = _check_request(kind, target, args, kwargs, max_output_elements)
        if problem is not None:
            return CallResult(False, error_kind="bad_request", error=problem)
        if self._proc is not None and self._worker_exited():  # died between calls: not this call's fault
            self._kill()
        if self._proc is None:
            self._start()
            if self.load_error:
                return CallResult(False, error_kind="load", error=self.load_error, captured=self.load_captured)
        message = {"kind": kind, "target": target, "args": list(args), "kwargs": kwargs, "max_output_elements": max_output_elements}
        try:
            header, arrays = split_payload(message)
        except TypeError as exc:  # e.g. exact-rational (object) inputs: they cannot cross without pickle
            return CallResult(False, error_kind="bad_input", error=str(exc))
        cap = max_output_elements * 16 + ARRAY_BYTES_SLACK if max_output_elements is not None else self.memory_limit_bytes
        t0 = time.perf_counter()
        deadline = time.monotonic() + self.timeout
        wait = lambda: self._conn.poll(max(0.0, deadline - time.monotonic()))  # noqa: E731
        try:
            send_split(self._conn, header, arrays)
            if not wait():
                return self._timeout(t0)
            reply = recv_payload(self._conn, header_limit=HEADER_LIMIT_REPLY, max_array_bytes=cap, wait=wait)
        except TimeoutError:
            return self._timeout(t0)
        except (EOFError, OSError):
            captured = self._read_capture()
            code = self._kill()
            return CallResult(False, error_kind="crash", error=f"backend process died ({describe_exit(code)})",
                              seconds=time.perf_counter() - t0, captured=captured)
        except PayloadError as exc:  # the stream is out of step: this worker cannot be trusted further
            captured = self._read_capture()
            self._kill()
            kind_ = "bad_output" if "more than" in str(exc) else "protocol"
            return CallResult(False, error_kind=kind_, error=f"{exc} (worker killed)", seconds=time.perf_counter() - t0, captured=captured)
        return self._result(reply, t0, max_output_elements)

    def _timeout(self, t0: float) -> CallResult:
        exited = self._worker_exited()
        captured = self._read_capture()
        code = self._kill()
        if exited:  # it died, but a process it had forked held the pipe open until now
            return CallResult(False, error_kind="crash", error=f"backend process died ({describe_exit(code)}); "
                              "a process it spawned kept its pipe open until the timeout", seconds=time.perf_counter() - t0, captured=captured)
        return CallResult(False, error_kind="timeout", error=f"no answer within {self.timeout:g} s (worker and its processes killed)",
                          seconds=time.perf_counter() - t0, captured=captured)

    def _result(self, reply: Any, t0: float, max_output_elements: int | None) -> CallResult:
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            self._kill()
            return CallResult(False, error_kind="protocol", error="malformed reply from the worker (worker killed)", seconds=time.perf_counter() - t0)
        captured = str(reply.get("captured", ""))[: 2 * CAPTURE_LIMIT]
        seconds = reply.get("seconds", 0.0)
        seconds = float(seconds) if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else 0.0
        if not reply["ok"]:
            kind = str(reply["error_kind"]) if reply.get("error_kind") in ERROR_KINDS else "exception"
            return CallResult(False, error_kind=kind, error=str(reply.get("error", "")), seconds=seconds, captured=captured)
        try:  # the worker checked already; the check is repeated because the pipe is not proof
            output = coerce_output(reply.get("output"), max_output_elements)
        except BadOutput as exc:
            return CallResult(False, error_kind="bad_output", error=str(exc), seconds=seconds, captured=captured)
        return CallResult(True, output=output, seconds=seconds, captured=captured)

    def close(self) -> None:
        """Kill the worker and every process of its group."""
        self._kill()


    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._kill_group()


def describe_exit(code: int | None) -> str:
    """A worker's exit code in words: ``exit code 7``, ``killed by SIGSEGV``; SIGKILL notes the kernel's
    out-of-memory killer, which kills that way."""
    if code is None:
        return "exit status unknown"
    if code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    note = " (by the backend, or by the kernel's out-of-memory killer)" if -code == signal.SIGKILL else ""
    return f"killed by {name}{note}"


# --------------------------------------------------------------------------- InProcessRunner


@contextlib.contextmanager
def captured_output() -> Iterator[list[str]]:
    """Redirect fds 1 and 2 and ``sys.stdout``/``sys.stderr`` to a temporary file for the duration; the
    yielded list receives the (truncated) text at exit. Restored in ``finally``, whatever happened."""
    result: list[str] = []
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    saved_streams = (sys.stdout, sys.stderr)
    with tempfile.TemporaryFile() as tmp:
        text_stream = io.TextIOWrapper(os.fdopen(os.dup(tmp.fileno()), "wb"), errors="replace", line_buffering=True)
        try:
            os.dup2(tmp.fileno(), 1)
            os.dup2(tmp.fileno(), 2)
            sys.stdout = sys.stderr = text_stream
            yield result
        finally:
            with contextlib.suppress(Exception):
                text_stream.flush()
            sys.stdout, sys.stderr = saved_streams
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            with contextlib.suppress(Exception):
                text_stream.close()
            result.append(read_capture(tmp.fileno(), os.fstat(tmp.fileno()).st_size))


@contextlib.contextmanager
def numpy_state_restored() -> Iterator[None]:
    """numpy's floating-point error handling and print options as they were, after the block."""
    err, call, printopts = np.geterr(), np.geterrcall(), np.get_printoptions()
    try:
        yield
    finally:
        np.seterr(**err)
        np.seterrcall(call)
        with contextlib.suppress(Exception):
            np.set_printoptions(**printopts)


class InProcessRunner(Runner):
    """A backend called directly; every ``BaseException`` but ``KeyboardInterrupt`` becomes an error
    result (a Ctrl-C must still stop the run; in a worker, a backend's KeyboardInterrupt costs its case).

    The backend receives writeable copies of the arrays (a correct kernel may scale ``q`` in place; the
    caller's arrays never change) and its output is copied and coerced as in a worker."""

    def __init__(self, spec_or_backend: Any, timeout: float | None = None):
        self.spec = spec_or_backend if isinstance(spec_or_backend, str) else repr(spec_or_backend)
        self.timeout = None if timeout is None else check_timeout(timeout)  # None: no limit
        self.load_error: str | None = None
        self.load_captured = ""
        self.capabilities: Capabilities | None = None
        self.backend: Any = None
        holder: list[str] = []
        try:
            with captured_output() as holder, numpy_state_restored():
                self.backend = load_backend(spec_or_backend) if isinstance(spec_or_backend, str) else spec_or_backend
                self.capabilities = read_capabilities(self.backend)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            self.backend = None
            self.load_error = f"{type(exc).__name__}: {exc}"
        self.load_captured = holder[0] if holder else ""

    def request(self, kind: str, target: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, *,
                max_output_elements: int | None = None) -> CallResult:
        """One request, answered exactly as a worker would (see the module docstring)."""
        kwargs = {} if kwargs is None else kwargs
        problem = _check_request(kind, target, args, kwargs, max_output_elements)
        if problem is not None:
            return CallResult(False, error_kind="bad_request", error=problem)
        if self.backend is None:
            return CallResult(False, error_kind="load", error=self.load_error or "no backend")
        message = {"kind": kind, "target": target, "args": copy_arrays(list(args)), "kwargs": copy_arrays(kwargs),
                   "max_output_elements": max_output_elements}
        holder: list[str] = []
        with captured_output() as holder, numpy_state_restored():
            reply = answer(self.backend, message, None, reraise=(KeyboardInterrupt,))
        captured = holder[0] if holder else ""
        seconds = reply.get("seconds", 0.0)
        if not reply["ok"]:
            return CallResult(False, error_kind=reply["error_kind"], error=reply["error"], seconds=seconds, captured=captured)
        if self.timeout is not None and seconds > self.timeout:
            return CallResult(False, error_kind="timeout", error=f"call took {seconds:.1f} s > {self.timeout:g} s", seconds=seconds, captured=captured)
        output = reply["output"]
        if isinstance(output, np.ndarray):  # the backend may keep and later overwrite what it returned
            output = output.copy()
        return CallResult(True, output=output, seconds=seconds, captured=captured)

    def close(self) -> None:
        pass


__all__ = [
    "CallResult", "ProcessRunner", "InProcessRunner", "check_deterministic", "encode_payload", "decode_payload",
    "DEFAULT_MEMORY_LIMIT", "ERROR_KINDS", "describe_exit", "kill_live_workers",
]
