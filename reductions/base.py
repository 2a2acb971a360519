"""The shape every executable reduction shares, and the loop that runs one against a backend.

A reduction turns an instance of a *source* problem (HMV, Gap-MaxIP, …) into attention instances of a
*target* problem of the registry (:mod:`attnspec.conformance.judging.problems`: ``softmax_attention``,
``tensor_attention``, ``dynamic_attention``), sends them to any backend through the usual runner and
isolation, and decodes the backend's outputs back into a :class:`SourceAnswer`, which is compared with
a brute-force solution of the source.

Interface of :class:`Reduction` (a subclass sets the class attributes and implements the methods):

``name``, ``source_kind``, ``target_problem``   registry names (``target_problem``: a problem name);
``build(source, params) -> Built``              the target cases (problem case records holding spec
                                                instances or a dynamic ``Trace``) and the decoder data;
``decode(built, answers) -> SourceAnswer``      answers: one output array per case of ``built.cases``;
``solve(built, oracle) -> SourceAnswer``        default: every case once, then ``decode``; an adaptive
                                                reduction (a search step) overrides it and calls
                                                ``oracle(case)`` as often as it needs;
``required_accuracy(built) -> float``           the margin: the absolute error on every target output
                                                entry under which ``decode`` is certainly right;
``refusal(built, caps) -> str | None``          why the backend's declared precision model or contract
                                                ε_a cannot meet the margin (names both numbers);
``brute_force(source) -> SourceAnswer``         the source problem solved directly;
``agrees(source, decoded, truth) -> bool``      default: same decision and same witness (override when
                                                several witnesses are valid);
``families``, ``generate(family, n, rng, **kw)``  source generators with known answers;
``source_arrays``, ``source_params``, ``source_from_files``  the on-disk form of a source instance
                                                (used by :mod:`reductions.instance_sets`).

:func:`run_reduction` runs the whole pipeline once and returns a :class:`ReductionOutcome`.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np

from attnspec.conformance.judging.problems import get_problem


class ReductionError(RuntimeError):
    """The backend faulted (exception, crash, timeout, bad output) on a request of this reduction: the
    instance's answer is unknown. ``kind`` is the runner's error kind."""

    def __init__(self, message: str, kind: str = "exception"):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class SourceAnswer:
    """The answer to a source instance: the ``decision``, the ``witness`` of the search version (a tuple
    of ints, or None) and a JSON-able ``certificate`` (how the answer was obtained, e.g. the inner
    products, or the decoded values and their distance to the threshold)."""

    decision: bool
    witness: tuple | None = None
    certificate: dict = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"decision": bool(self.decision),
                "witness": None if self.witness is None else [int(x) for x in self.witness],
                "certificate": self.certificate}

    @classmethod
    def from_json(cls, obj: Any) -> "SourceAnswer":
        if not isinstance(obj, dict) or not isinstance(obj.get("decision"), bool):
            raise ValueError("a source answer is an object with a boolean 'decision'")
        w = obj.get("witness")
        if w is not None and (not isinstance(w, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in w)):
            raise ValueError("a source answer's 'witness' is null or a list of integers")
        cert = obj.get("certificate", {})
        if not isinstance(cert, dict):
            raise ValueError("a source answer's 'certificate' is an object")
        return cls(obj["decision"], None if w is None else tuple(w), cert)

    def same_answer(self, other: "SourceAnswer") -> bool:
        """Same decision and witness (certificates may differ: they say how, not what)."""
        return self.decision == other.decision and self.witness == other.witness


@dataclass
class Built:
    """What :meth:`Reduction.build` returns: the target ``cases`` (case records of the target problem, in
    the order ``decode`` expects their answers), the ``decoder`` data (JSON-able), and ``meta`` (the
    report metadata: theorem parameters, caveats)."""

    reduction: str
    source: Any
    params: dict[str, Any]
    cases: list
    decoder: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class CallRecord:
    """One oracle request: the case, its output (None on a fault) and, when judged, the verdict's status
    and the certified error bound against the margin."""

    case_id: str
    seconds: float
    output: Any = None
    status: str | None = None
    certified_error: float | None = None
    margin: float | None = None
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"case_id": self.case_id, "seconds": self.seconds, "status": self.status,
                "certified_error": self.certified_error, "margin": self.margin, "message": self.message}


class Oracle:
    """``oracle(case) -> output array``: one request to the backend through ``runner`` (the problem's own
    request, the usual isolation and output-size limit). A backend fault raises :class:`ReductionError`.
    With ``judge=True`` each output is also judged by the target problem against the backend's declared
    capabilities and recorded with its certified error (upper end of the error interval of the worst
    entry) beside ``margin``."""

    def __init__(self, runner: Any, problem: str, caps: Any = None, *, judge: bool = False, margin: float | None = None,
                 max_prec: int = 1024):
        self.runner, self.problem, self.caps = runner, get_problem(problem), caps
        self.judge, self.margin, self.max_prec = judge, margin, max_prec
        self.calls: list[CallRecord] = []

    def __call__(self, case: Any) -> np.ndarray:
        kind, target, args, kwargs = self.problem.request(case)
        limit = self.problem.expected_output_elements(case)
        t0 = time.perf_counter()
        result = send_request(self.runner, kind, target, args, kwargs, limit)
        record = CallRecord(case.case_id, time.perf_counter() - t0, margin=self.margin)
        self.calls.append(record)
        if not result.ok:
            record.status, record.message = "error", f"{result.error_kind}: {result.error}"
            raise ReductionError(f"backend fault on {case.case_id}: {result.error_kind}: {result.error}", result.error_kind)
        output = np.asarray(result.output)
        record.output = output
        if self.judge:
            tolerance = self.problem.tolerance_for(case, self.caps) if hasattr(self.problem, "tolerance_for") else None
            verdict = self.problem.judge(case, output, self.caps, max_prec=self.max_prec, tolerance=tolerance)
            record.status, record.message = verdict.status, verdict.message
            interval = verdict.evidence.get("error_interval")
            if interval:
                record.certified_error = float(interval[1])
        return output


def send_request(runner: Any, kind: str, target: str, args: tuple, kwargs: dict, limit: int) -> Any:
    """``runner.request(...)`` (the worker protocol of :mod:`attnspec.conformance.harness.isolation`)."""
    return runner.request(kind, target, args, kwargs, max_output_elements=limit)


class Reduction(ABC):
    """One executable reduction (see the module docstring for the interface)."""

    name: ClassVar[str]
    source_kind: ClassVar[str]
    target_problem: ClassVar[str]
    families: ClassVar[tuple[str, ...]] = ()
    generator_version: ClassVar[str] = "1"

    @abstractmethod
    def build(self, source: Any, params: dict[str, Any]) -> Built:
        """The target cases and the decoder for ``source``."""

    @abstractmethod
    def decode(self, built: Built, answers: list[np.ndarray]) -> SourceAnswer:
        """The source answer from one output per case of ``built.cases``."""

    @abstractmethod
    def required_accuracy(self, built: Built) -> float:
        """The margin: any outputs within this absolute error of the exact ones decode correctly."""

    @abstractmethod
    def refusal(self, built: Built, caps: Any) -> str | None:
        """Why a backend with capabilities ``caps`` cannot be trusted to meet the margin (None: it can)."""

    @abstractmethod
    def brute_force(self, source: Any) -> SourceAnswer:
        """The source problem solved directly."""

    @abstractmethod
    def generate(self, family: str, n: int, rng: np.random.Generator, **params: Any) -> tuple[Any, dict[str, Any]]:
        """A source instance of ``family`` and size ``n``, with the reduction parameters to build it with."""

    @abstractmethod
    def source_arrays(self, source: Any) -> dict[str, np.ndarray]:
        """The source instance's arrays (float64 or integer-valued float64; stored in ``.npz``)."""

    @abstractmethod
    def source_params(self, source: Any) -> dict[str, Any]:
        """The source instance's scalar parameters (JSON)."""

    @abstractmethod
    def source_from_files(self, arrays: dict[str, np.ndarray], params: dict[str, Any]) -> Any:
        """The source instance rebuilt and validated from its arrays and parameters (ValueError if bad)."""

    def solve(self, built: Built, oracle: Callable[[Any], np.ndarray]) -> SourceAnswer:
        """Ask every case once, then decode (adaptive reductions override this)."""
        return self.decode(built, [oracle(case) for case in built.cases])

    def agrees(self, source: Any, decoded: SourceAnswer, truth: SourceAnswer) -> bool:
        return decoded.same_answer(truth)

    def applicability(self, built: Built, caps: Any) -> str | None:
        """The target problem's not-applicable reasons for the first case that has any."""
        problem = get_problem(self.target_problem)
        for case in built.cases:
            reasons = problem.not_applicable_reasons(case, caps)
            if reasons:
                return f"{case.case_id}: " + "; ".join(reasons)
        return None

    def __repr__(self) -> str:
        return f"<reduction {self.name}: {self.source_kind} -> {self.target_problem}>"


@dataclass
class ReductionOutcome:
    """One run of a reduction on one source instance."""

    reduction: str
    built: Built
    truth: SourceAnswer
    refused: str | None = None
    not_applicable: str | None = None
    decoded: SourceAnswer | None = None
    error: str | None = None
    error_kind: str | None = None
    margin: float = math.nan
    agree: bool | None = None  # None when refused, not applicable or faulted
    calls: list[CallRecord] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def detected(self) -> bool:
        """The backend was caught: a wrong decoded answer, a fault, or a judged call that is not a pass."""
        if self.error is not None or self.agree is False:
            return True
        return any(c.status not in (None, "pass", "not_applicable") for c in self.calls)

    @property
    def status(self) -> str:
        if self.refused:
            return "refused"
        if self.not_applicable:
            return "not_applicable"
        if self.error:
            return "error"
        if not self.agree:
            return "wrong"
        if any(c.status not in (None, "pass", "not_applicable") for c in self.calls):
            return "judged_" + next(c.status for c in self.calls if c.status not in (None, "pass", "not_applicable"))
        return "agree"

    def to_json(self) -> dict[str, Any]:
        return {"reduction": self.reduction, "status": self.status, "refused": self.refused,
                "not_applicable": self.not_applicable, "error": self.error, "error_kind": self.error_kind,
                "margin": self.margin, "truth": self.truth.to_json(),
                "decoded": None if self.decoded is None else self.decoded.to_json(), "agree": self.agree,
                "calls": [c.to_json() for c in self.calls], "seconds": self.seconds, "meta": self.built.meta}


def run_reduction(reduction: Reduction, source: Any, params: dict[str, Any], runner: Any, caps: Any = None, *,
                  judge: bool = False, max_prec: int = 1024, truth: SourceAnswer | None = None) -> ReductionOutcome:
    """Build, check the margin against the backend's declaration, run, decode, compare with brute force.

    ``caps`` defaults to ``runner.capabilities``. A refused or not-applicable instance never reaches the
    backend. A backend fault becomes ``outcome.error`` (never an exception). ``judge=True`` also judges
    every target output with the target problem's certified judge (slower: exact references)."""
    t0 = time.perf_counter()
    caps = caps if caps is not None else runner.capabilities
    built = reduction.build(source, params)
    truth = truth if truth is not None else reduction.brute_force(source)
    margin = float(reduction.required_accuracy(built))
    outcome = ReductionOutcome(reduction.name, built, truth, margin=margin)
    outcome.not_applicable = reduction.applicability(built, caps)
    if outcome.not_applicable is None:
        outcome.refused = reduction.refusal(built, caps)
    if outcome.not_applicable or outcome.refused:
        outcome.seconds = time.perf_counter() - t0
        return outcome
    oracle = Oracle(runner, reduction.target_problem, caps, judge=judge, margin=margin, max_prec=max_prec)
    try:
        outcome.decoded = reduction.solve(built, oracle)
        outcome.agree = bool(reduction.agrees(source, outcome.decoded, truth))
    except ReductionError as exc:
        outcome.error, outcome.error_kind = str(exc), exc.kind
    outcome.calls = oracle.calls
    outcome.seconds = time.perf_counter() - t0
    return outcome


__all__ = ["SourceAnswer", "Built", "Reduction", "ReductionError", "ReductionOutcome", "Oracle", "CallRecord",
           "run_reduction", "send_request"]
