"""The worker side of :class:`~attnspec.conformance.harness.isolation.ProcessRunner` (runs in the spawned
process; nothing here runs in the harness's own process).

At start the worker (1) becomes the leader of a new session, so the harness can kill it and everything a
backend spawns with one ``killpg``; (2) asks the kernel to SIGKILL it when the harness dies
(``PR_SET_PDEATHSIG``), and starts a thread that kills the group if its parent changes anyway; (3) forks a
tiny *group reaper* that kills the whole group as soon as the worker itself dies, so a backend's children
never outlive it, even when the harness was SIGKILLed; (4) limits its address space (``RLIMIT_AS``);
(5) points fds 1 and 2 at a capture file, so a backend's prints never reach the harness's stdout.

Then it loads the backend, says hello, and answers one request at a time:
``{"kind": "call"|"drive", "target", "args", "kwargs", "max_output_elements"}``.
"""

from __future__ import annotations

import ctypes
import faulthandler
import importlib
import os
import re
import resource
import signal
import sys
import threading
import time
import traceback
from typing import Any

from attnspec.conformance.harness.worker_protocol import (
    HEADER_LIMIT_REQUEST,
    MESSAGE_TEXT_LIMIT,
    BadOutput,
    coerce_output,
    recv_payload,
    send_payload,
    truncate_text,
)

PR_SET_PDEATHSIG = 1
CAPTURE_LIMIT = 4096  # bytes of a request's captured output returned with its result
REQUEST_KINDS = ("call", "drive")
_METHOD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")


# --------------------------------------------------------------------------- process hygiene


def set_parent_death_signal(sig: int) -> bool:
    """Linux: have the kernel send ``sig`` to this process when its parent dies. False elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _kill_own_group() -> None:
    os.killpg(os.getpgid(0), signal.SIGKILL)


def _start_group_reaper(worker_pid: int) -> None:
    """Fork a process that kills this worker's whole group when the worker dies (its parent-death
    signal), whatever the cause: a crash, a SIGKILL, or the harness's own death."""
    if os.fork() != 0:
        return
    try:  # the reaper: hold no fd of the worker's (the harness must see EOF when the worker dies)
        os.closerange(3, 1 << 16)
        signal.signal(signal.SIGTERM, lambda *_: _kill_own_group())
        set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != worker_pid:
            _kill_own_group()
        while True:
            signal.pause()
    finally:
        os._exit(0)


def _watch_parent(parent_pid: int) -> None:
    """Where the parent-death signal is unavailable: kill the group once the parent is gone."""
    while os.getppid() == parent_pid:
        time.sleep(0.2)
    _kill_own_group()


def _limit_memory(limit: int | None) -> None:
    if limit is None:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    value = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (value, value))  # the hard limit too: a backend cannot lift it


class Capture:
    """fds 1 and 2 of this process point at one file; :meth:`take` returns what was written since the
    last take (truncated to :data:`CAPTURE_LIMIT` bytes, with the total noted) and empties the file."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_RDWR)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        self.reset()

    def reset(self) -> None:
        """Point fds 1 and 2 (and ``sys.stdout``/``sys.stderr``) at the capture file again, in case the
        backend closed or replaced them."""
        for fd in (1, 2):
            os.dup2(self.fd, fd)
        for name, fd in (("stdout", 1), ("stderr", 2)):
            stream = getattr(sys, name, None)
            if stream is None or getattr(stream, "closed", True) or _fileno(stream) != fd:
                setattr(sys, name, open(fd, "w", buffering=1, errors="replace", closefd=False))

    def take(self) -> str:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        total = os.fstat(self.fd).st_size
        text = read_capture(self.fd, total)
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        return text


def read_capture(fd: int, total: int) -> str:
    """The first and last bytes of a capture file of ``total`` bytes (at most :data:`CAPTURE_LIMIT`)."""
    if total <= CAPTURE_LIMIT:
        return os.pread(fd, total, 0).decode(errors="replace")
    half = CAPTURE_LIMIT // 2
    head = os.pread(fd, half, 0).decode(errors="replace")
    tail = os.pread(fd, half, total - half).decode(errors="replace")
    return f"{head}\n[… {total - 2 * half} bytes omitted; {total} bytes were written in all …]\n{tail}"


def _fileno(stream: Any) -> int:
    try:
        return stream.fileno()
    except Exception:
        return -1


# --------------------------------------------------------------------------- requests


def resolve(backend: Any, kind: Any, target: Any) -> Any:
    """The callable a request names; ``LookupError`` for anything else (nothing is executed).

    ``call``: a public method of the backend. ``drive``: a registered problem's worker-side driver,
    called as ``drive(backend, *args, **kwargs)``."""
    if kind == "call":
        if not isinstance(target, str) or not _METHOD_NAME.match(target):
            raise LookupError(f"{target!r} is not a public method name")
        method = getattr(backend, target, None)
        if not callable(method):
            raise LookupError(f"the backend has no method {target!r}")
        return method
    if kind == "drive":
        if not isinstance(target, str):
            raise LookupError(f"{target!r} is not a problem name")
        return _driver(target, backend)
    raise LookupError(f"unknown request kind {kind!r}; known: {', '.join(REQUEST_KINDS)}")


def _driver(problem_name: str, backend: Any) -> Any:
    problems = importlib.import_module("attnspec.conformance.judging.problems")
    get_problem = getattr(problems, "get_problem", None)
    if get_problem is not None:
        try:
            problem = get_problem(problem_name)
        except ValueError as exc:
            raise LookupError(str(exc)) from None
        if getattr(problem, "request_kind", "drive") != "drive":
            raise LookupError(f"problem {problem_name!r} is not driven (it is a backend call)")
        return lambda *args, **kwargs: problem.drive(backend, *args, **kwargs)
    modules = getattr(problems, "PROBLEM_MODULES", {})
    if problem_name not in modules:
        raise LookupError(f"unknown problem {problem_name!r}")
    drive = getattr(importlib.import_module(modules[problem_name]), "drive_trace", None)
    if drive is None:
        raise LookupError(f"problem {problem_name!r} has no driver")
    return lambda *args, **kwargs: drive(backend, *args, **kwargs)


def _error(kind: str, exc: BaseException, memory_limit: int | None) -> dict[str, Any]:
    text = f"{type(exc).__name__}: {exc}"
    if kind == "memory":
        text += f" (the worker's memory limit is {memory_limit} bytes)" if memory_limit else ""
    else:
        text += "\n" + traceback.format_exc(limit=6)
    return {"ok": False, "error_kind": kind, "error": truncate_text(text, MESSAGE_TEXT_LIMIT)}


def answer(backend: Any, request: Any, memory_limit: int | None, reraise: tuple[type[BaseException], ...] = ()) -> dict[str, Any]:
    """The reply to one request: every ``BaseException`` (but those in ``reraise``) becomes an error reply."""
    try:
        if not isinstance(request, dict) or not isinstance(request.get("args"), list) or not isinstance(request.get("kwargs"), dict):
            raise LookupError("malformed request")
        function = resolve(backend, request.get("kind"), request.get("target"))
    except LookupError as exc:
        return {"ok": False, "error_kind": "bad_request", "error": str(exc)}
    limit = request.get("max_output_elements")
    t0 = time.perf_counter()
    try:
        output = function(*request["args"], **request["kwargs"])
        seconds = time.perf_counter() - t0
        return {"ok": True, "output": coerce_output(output, limit), "seconds": seconds}
    except BadOutput as exc:
        return {"ok": False, "error_kind": "bad_output", "error": str(exc), "seconds": time.perf_counter() - t0}
    except MemoryError as exc:
        return {**_error("memory", exc, memory_limit), "seconds": time.perf_counter() - t0}
    except BaseException as exc:  # SystemExit, KeyboardInterrupt, GeneratorExit too: this case's error
        if isinstance(exc, reraise):
            raise
        return {**_error("exception", exc, memory_limit), "seconds": time.perf_counter() - t0}


def worker_main(conn: Any, spec: str, parent_pid: int, memory_limit: int | None, capture_path: str) -> None:
    """Entry point of the spawned worker (see the module docstring)."""
    os.setsid()
    if set_parent_death_signal(signal.SIGKILL) and os.getppid() != parent_pid:
        os._exit(1)
    capture = Capture(capture_path)
    faulthandler.enable(file=sys.stderr)  # a segfault's traceback lands in the captured output
    _start_group_reaper(os.getpid())
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    _limit_memory(memory_limit)
    from attnspec.conformance.harness.backends import backend_identity, load_backend, read_capabilities
    from attnspec.conformance.harness.report import environment

    try:
        backend = load_backend(spec)
        hello = {"ok": True, "capabilities": read_capabilities(backend).to_json(),
                 "identity": backend_identity(spec, backend), "environment": environment()}  # as the worker sees them
    except BaseException as exc:  # report and stop: nothing can run without a backend
        hello = {"ok": False, "error": truncate_text(f"{type(exc).__name__}: {exc}")}
    hello["captured"] = capture.take()
    send_payload(conn, hello)
    if not hello["ok"]:
        return
    while True:
        try:
            request = recv_payload(conn, header_limit=HEADER_LIMIT_REQUEST, max_array_bytes=None, writeable=True)
        except (EOFError, OSError):
            return
        capture.reset()
        reply = answer(backend, request, memory_limit)
        reply["captured"] = capture.take()
        try:
            send_payload(conn, reply)
        except (BrokenPipeError, EOFError):
            return
        except Exception as exc:  # cannot happen for coerced outputs; never leave the harness waiting
            send_payload(conn, {"ok": False, "error_kind": "bad_output", "error": f"output cannot be sent: {exc}",
                                "captured": reply["captured"]})
