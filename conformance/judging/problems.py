"""The problem registry: the one place where the runner, the capability checks, the CLI's choices, the
case files and the pytest plugin find a problem by name.

A problem is one object implementing :class:`Problem`. Each problem module in this folder ends with
``problem = register(MyProblem())``; :data:`BUILTIN_PROBLEM_MODULES` names those modules (the one line a
new built-in problem adds here). Third-party problems register themselves through the entry-point group
``attnspec.problems`` (a module whose import calls :func:`register`).

Interface (all methods are pure functions of their arguments; none of them calls a backend):

``name``                        the problem's name, the same in every layer (``softmax_attention``);
``method``                      the backend method that implements it (``attention``);
``request_kind``                ``"call"`` (the worker calls ``backend.<method>(*args, **kwargs)``) or
                                ``"drive"`` (the worker runs :meth:`drive` with the backend: a stateful
                                problem, such as a dynamic-attention trace, runs whole in the worker);
``profiles``, ``families()``    the case profiles and the names of the case families;
``generate_cases(profile, dtypes, seed)``  the deterministic case list;
``not_applicable_reasons(case, caps)``     every reason the case is outside what the backend declares
                                (an empty list: applicable);
``request(case)``               ``(kind, target, args, kwargs)`` of the worker request for ``case``;
``expected_output_elements(case)``  an upper bound on the size of a correct output (larger outputs
                                are refused in the worker before they are sent);
``judge(case, output, caps, max_prec=...)``  the certified :class:`Verdict`;
``shape(case)``                 the shape numbers reported for the case;
``instance_arrays``, ``instance_params``, ``instance_from_files``  the case-file format;
``case_type``                   the case record type (a :class:`ConformanceCase` subclass).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

BUILTIN_PROBLEM_MODULES = (
    "attnspec.conformance.judging.softmax_attention",
    "attnspec.conformance.judging.tensor_attention",
    "attnspec.conformance.judging.dynamic_attention",
    "attnspec.conformance.judging.heavy_keys",
    "attnspec.conformance.judging.streaming_attention",
    "attnspec.conformance.judging.sdpa",
)
PROBLEM_ENTRY_POINT_GROUP = "attnspec.problems"


class Problem(ABC):
    """One conformance problem (see the module docstring for the interface)."""

    name: ClassVar[str]
    method: ClassVar[str]
    request_kind: ClassVar[str] = "call"
    profiles: ClassVar[tuple[str, ...]] = ("quick", "thorough")
    case_type: ClassVar[type]

    @abstractmethod
    def families(self) -> list[str]:
        """Names of the case families, in generation order."""

    @abstractmethod
    def generate_cases(self, profile: str = "quick", dtypes: tuple[str, ...] = ("float64",), seed: int = 0) -> list:
        """The deterministic case list of ``profile`` for each dtype."""

    @abstractmethod
    def not_applicable_reasons(self, case: Any, caps: Any) -> list[str]:
        """Every reason ``case`` lies outside the backend's declaration (empty: applicable)."""

    @abstractmethod
    def request(self, case: Any) -> tuple[str, str, tuple, dict]:
        """``(kind, target, args, kwargs)`` of the worker request that runs ``case``."""

    @abstractmethod
    def expected_output_elements(self, case: Any) -> int:
        """The number of elements a correct output has."""

    @abstractmethod
    def judge(self, case: Any, output: Any, caps: Any, *, max_prec: int = 1024, tolerance: Any = None) -> Any:
        """The certified verdict on ``output`` for ``case`` (``tolerance``: as returned by the problem's
        ``tolerance_for`` before the backend ran, when the problem has one)."""

    @abstractmethod
    def shape(self, case: Any) -> list[int] | None:
        """Shape numbers of the case, for reports."""

    @abstractmethod
    def instance_arrays(self, inst: Any) -> dict[str, np.ndarray]:
        """The instance's arrays, as stored in a case file's ``.npz``."""

    @abstractmethod
    def instance_params(self, inst: Any) -> dict[str, Any]:
        """The instance's exact parameters, as stored (JSON) in a case file's manifest."""

    @abstractmethod
    def instance_from_files(self, arrays: dict[str, np.ndarray], params: dict[str, Any]) -> Any:
        """The instance rebuilt (and re-validated by the spec) from a case file."""

    def drive(self, backend: Any, *args: Any, **kwargs: Any) -> Any:
        """Worker side of a ``"drive"`` request (only stateful problems implement it)."""
        raise TypeError(f"problem {self.name!r} is run by calling backend.{self.method}, not driven")

    def declaration_reasons(self, caps: Any, *, dtype: str, n: int | None = None, d: int | None = None,
                            only_dtype: str | None = None) -> list[str]:
        """The reasons every problem shares: the problem, the dtype (``only_dtype``: the problem's cases
        all have that dtype), ``max_n`` and ``max_d`` (``n``/``d`` of the case, when it has them)."""
        reasons = []
        if self.name not in caps.problems:
            reasons.append(f"backend does not declare {self.name}")
        if only_dtype is not None and only_dtype not in caps.dtypes:
            reasons.append(f"{self.name} cases are {only_dtype}; the backend does not declare {only_dtype}")
        elif only_dtype is None and dtype not in caps.dtypes:
            reasons.append(f"dtype {dtype} not declared (declared: {', '.join(sorted(caps.dtypes))})")
        if n is not None and caps.max_n is not None and n > caps.max_n:
            reasons.append(f"n = {n} exceeds declared max_n = {caps.max_n}")
        if d is not None and caps.max_d is not None and d > caps.max_d:
            reasons.append(f"d = {d} exceeds declared max_d = {caps.max_d}")
        return reasons

    def applicable(self, case: Any, caps: Any) -> str | None:
        """All reasons joined (``None`` when applicable)."""
        reasons = self.not_applicable_reasons(case, caps)
        return "; ".join(reasons) if reasons else None

    def __repr__(self) -> str:
        return f"<problem {self.name}>"


_REGISTRY: dict[str, Problem] = {}
_loaded = False


def register(problem: Problem) -> Problem:
    """Add ``problem`` to the registry (a second, different problem of the same name is an error)."""
    existing = _REGISTRY.get(problem.name)
    if existing is not None and _class_name(existing) != _class_name(problem):
        raise ValueError(f"problem {problem.name!r} is already registered by {_class_name(existing)}")
    _REGISTRY[problem.name] = problem
    return problem


def _class_name(problem: Problem) -> str:
    # By name, not identity: a module imported again (pytester, importlib.reload) registers an equal class.
    return f"{type(problem).__module__}.{type(problem).__qualname__}"


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_PROBLEM_MODULES:
        importlib.import_module(module)
    try:
        entry_points = list(importlib.metadata.entry_points(group=PROBLEM_ENTRY_POINT_GROUP))
    except Exception:  # broken metadata must not hide the built-in problems
        entry_points = []
    for ep in entry_points:
        ep.load()


def problems() -> dict[str, Problem]:
    """Every registered problem by name, built-ins first."""
    _load()
    return dict(_REGISTRY)


def problem_names() -> tuple[str, ...]:
    """Names of every registered problem."""
    return tuple(problems())


def get_problem(name: str) -> Problem:
    """The problem called ``name``; ``ValueError`` naming the known ones otherwise."""
    known = problems()
    try:
        return known[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown problem {name!r}; known: {', '.join(sorted(known))}") from None


def backend_methods() -> dict[str, str]:
    """Problem name → the backend method that implements it."""
    return {name: p.method for name, p in problems().items()}
