"""``assert_conforms``: the certified verdict on one instance, as an assertion for property tests::

    from hypothesis import given
    from attnspec.conformance import assert_conforms, softmax_instances

    @given(softmax_instances(max_n=16, dtype="float32"))
    def test_my_kernel(inst):
        assert_conforms(MyKernel(), inst)
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Mapping
from typing import Any

from attnspec.conformance.harness.backends import FunctionBackend
from attnspec.conformance.harness.capabilities import Capabilities, validate_capabilities
from attnspec.conformance.harness.isolation import InProcessRunner, ProcessRunner
from attnspec.conformance.harness.runner import NOT_APPLICABLE, judge_one
from attnspec.conformance.judging.case_common import ConformanceCase
from attnspec.conformance.judging.problems import backend_methods, get_problem, problem_names


def problem_of(instance: Any) -> str:
    """The problem an instance belongs to: the ``PROBLEM`` of the spec module that defines its type."""
    name = getattr(sys.modules.get(type(instance).__module__), "PROBLEM", None)
    if name not in problem_names():
        raise TypeError(f"assert_conforms: {type(instance).__qualname__} is no instance of a registered problem "
                        f"({', '.join(problem_names())}); pass a validated instance or a conformance Case")
    return str(name)


def as_case(instance: Any, dtype: str | None = None) -> Any:
    """A conformance case for ``instance`` (a case is returned as it is). ``dtype``: the declared format
    the instance is judged in (default: the dtype of its arrays; float64 for a dynamic trace)."""
    if isinstance(instance, ConformanceCase):
        return instance
    problem = get_problem(problem_of(instance))
    q = getattr(instance, "q", None)
    dtype = dtype or (str(q.dtype) if q is not None and hasattr(q, "dtype") else "float64")
    case_type = getattr(problem, "case_type", None) or getattr(problem, "Case")
    return case_type(f"assert_conforms/{problem.name}/{dtype}", "assert_conforms", dtype, 0, instance)


def as_backend(backend: Any) -> Any:
    """A spec string as it is; a class instantiated; a bare function (no backend method of any problem)
    wrapped as the ``attention`` method of a minimal backend, as ``attnspec conform`` does."""
    if isinstance(backend, str):
        return backend
    if inspect.isclass(backend):
        return backend()
    if callable(backend) and not any(callable(getattr(backend, m, None)) for m in backend_methods().values()):
        return FunctionBackend(backend)
    return backend


def _capabilities(caps: Any, runner: Any, problem: str) -> Capabilities:
    if caps is None:
        return runner.capabilities
    if isinstance(caps, Capabilities):
        return caps
    if isinstance(caps, Mapping):
        return validate_capabilities(caps, default_problems={problem}, known_problems=problem_names())
    raise TypeError(f"caps must be None, a Capabilities or a mapping of declared values, got {type(caps).__name__}")


def assert_conforms(backend: Any, instance: Any, *, dtype: str | None = None, caps: Any = None,
                    isolation: str = "none", allow_not_applicable: bool = False, timeout: float | None = None,
                    max_prec: int = 1024) -> dict[str, Any]:
    """Judge ``backend``'s output on ``instance`` with the certified engine; the case's report record
    when the verdict is ``pass``, else :class:`AssertionError` with the verdict, message and evidence.

    ``backend``: an object, a bare ``attention(q, k, v, *, scale)`` function, or a spec string
    (``module:attr``, ``file.py:attr``, a built-in name); ``isolation="process"`` runs it in a worker
    (spec strings only). ``instance``: a softmax or tensor attention instance, a dynamic trace, or a
    conformance ``Case``. ``dtype``: the format the instance is judged in (default: its arrays' dtype).
    ``caps``: capabilities to judge by instead of the backend's declared ones (a ``Capabilities`` or a
    dict as a backend would declare it). The tolerance is the precision model of the declared
    arithmetic, or the contract ε_a, as in ``attnspec conform``.

    A not-applicable case raises too, unless ``allow_not_applicable=True``: a property test whose every
    draw falls outside the declaration (a float32 instance for a float64-only function, say) would
    otherwise pass while checking nothing.
    """
    case = as_case(instance, dtype)
    if isolation == "process":
        if not isinstance(backend, str):
            raise ValueError("isolation='process' needs the backend as a spec string (module:attr or file.py:attr)")
        runner: Any = ProcessRunner(backend, timeout=60.0 if timeout is None else timeout)
    elif isolation == "none":
        runner = InProcessRunner(as_backend(backend), timeout=timeout)
    else:
        raise ValueError(f"isolation must be 'none' or 'process', got {isolation!r}")
    with runner:
        if runner.load_error:
            raise AssertionError(f"cannot load backend: {runner.load_error}")
        record = judge_one(case, runner, _capabilities(caps, runner, case.problem), max_prec=max_prec)
    status = record["status"]
    if status == "pass" or (status == NOT_APPLICABLE and allow_not_applicable):
        return record
    evidence = json.dumps(record.get("evidence", {}), default=str, indent=1)
    hint = " (allow_not_applicable=True accepts it)" if status == NOT_APPLICABLE else ""
    raise AssertionError(f"{status}: {record.get('message', '')}{hint}\ncase: {case.case_id}\nevidence: {evidence}")
