"""Conformance for dynamic attention (ODAMV / OAMV): traces, tolerances, verdicts per query, stateful tests.

Backend protocol (capability problem name ``"dynamic_attention"``): a factory ``backend(normalised=...)``
returning a fresh structure with ``init(q, k, v, scale)``, ``update_k(i, j, δ)``, ``update_v(i, j, δ)``
and ``query(i, j) -> float``. Arrays handed to ``init`` are float64 numpy arrays; δ are Python floats.
Optional structure attributes the stateful tests use: ``rebuild_period`` (b) and ``pending_updates``.

Every Query is judged by the certified engine :func:`attnspec.conformance.judging.verdict.judge` as a 1×1 output
against the exact reference (:mod:`attnspec.reference.dynamic_attention`), with the float64 precision
model :func:`dynamic_tolerance` (derived in docs/dynamic-attention.md). Traces whose tolerance would be
vacuous (≥ ‖V‖ for ODAMV, i.e. any convex combination would pass) report ``not_applicable``.

Failing traces are saved as exact JSON (:class:`attnspec.spec.dynamic_attention.Trace`) and replayed by
:func:`replay_trace`. :func:`dynamic_state_machine` builds a hypothesis ``RuleBasedStateMachine`` that
drives any backend through random traces.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attnspec.reference.dynamic_attention import DynamicReference
from attnspec.spec.dynamic_attention import PROBLEM, VARIANTS, Init, Op, Query, Trace, UpdateK, UpdateV
from attnspec.spec.validation import SpecError, to_float64
from attnspec.conformance.judging.case_common import ConformanceCase
from attnspec.conformance.judging.problems import Problem, register
from attnspec.conformance.judging.edge_instances import DYNAMIC_EDGE_RECIPES, dynamic_edge_traces
from attnspec.conformance.judging.precision_model import History, dynamic_tolerance, vacuous
from attnspec.conformance.judging.verdict import ERROR, FAIL, PASS, UNDECIDED, OutputError, Verdict, coerce_output, judge

NOT_APPLICABLE = "not_applicable"
FAILURE_DIR_ENV = "ATTNSPEC_DYNAMIC_FAILURES"


def make_structure(backend: Any, normalised: bool) -> Any:
    """A fresh structure from ``backend`` (a factory taking ``normalised=``, or a zero-argument one)."""
    try:
        s = backend(normalised=normalised)
    except TypeError:
        s = backend()
    for name in ("init", "update_k", "update_v", "query"):
        if not callable(getattr(s, name, None)):
            raise SpecError(f"dynamic-attention backend lacks a callable {name!r}")
    declared = getattr(s, "normalised", normalised)
    if bool(declared) != bool(normalised):
        raise SpecError(f"backend built a {VARIANTS[bool(declared)]} structure when {VARIANTS[normalised]} was asked")
    return s


# ---------------------------------------------------------------------------------------------
# Driving a backend through a trace


@dataclass
class QueryVerdict:
    """The verdict on one Query of a trace (``index`` is its position in the trace)."""

    index: int
    op: Op
    output: Any
    verdict: Verdict

    @property
    def status(self) -> str:
        return self.verdict.status


class DynamicChecker:
    """Feeds operations to a backend structure and to the exact reference side by side, and judges every
    query. ``apply`` validates the operation first (bad operations raise :class:`SpecError`, the backend
    never sees them). A backend exception ends the trace with an ``error`` verdict."""

    def __init__(self, backend: Any, normalised: bool = True, *, start_prec: int = 128, max_prec: int = 1024,
                 name: str | None = None):
        self.backend = backend
        self.normalised = bool(normalised)
        self.name = name or getattr(backend, "__name__", type(backend).__name__)
        self.structure = make_structure(backend, self.normalised)
        self.reference = DynamicReference(self.normalised)
        self.history = History()
        self.trace = Trace(normalised=self.normalised, meta={"backend": self.name})
        self.verdicts: list[QueryVerdict] = []
        self.broken: Verdict | None = None
        self.start_prec, self.max_prec = start_prec, max_prec

    def apply(self, op: Op) -> QueryVerdict | None:
        enclose = self.reference.apply(op)  # validates; raises SpecError on a bad op
        self.trace.ops.append(op)
        state = self.reference.state
        if isinstance(op, Init):
            self.history.start(state)
        else:
            self.history.see(op, state)
        if self.broken is not None:
            return None
        try:
            if isinstance(op, Init):
                self.structure.init(to_float64(np.asarray(op.q)), to_float64(np.asarray(op.k)),
                                    to_float64(np.asarray(op.v)), float(op.scale))
                return None
            if isinstance(op, UpdateK):
                self.structure.update_k(op.i, op.j, float(op.delta))
                return None
            if isinstance(op, UpdateV):
                self.structure.update_v(op.i, op.j, float(op.delta))
                return None
            output = self.structure.query(op.i, op.j)
        except Exception as exc:  # untrusted code: any exception fails the trace
            self.broken = Verdict(ERROR, f"backend raised {type(exc).__name__}: {exc}", {"kind": "exception"})
            qv = QueryVerdict(len(self.trace.ops) - 1, op, None, self.broken)
            self.verdicts.append(qv)
            return qv
        tol = dynamic_tolerance(self.history, self.normalised)
        if vacuous(tol, self.history, self.normalised):
            verdict = Verdict(NOT_APPLICABLE, f"precision-model tolerance {tol:.3g} is vacuous for this trace",
                              {"tolerance": tol})
        else:
            assert enclose is not None  # the reference returns an enclosure for every Query
            verdict = judge(np.array([[output]]) if _is_number(output) else output, enclose, tol,
                            start_prec=self.start_prec, max_prec=self.max_prec, shape=(1, 1))
            verdict.evidence.update(query=[op.i, op.j], op_index=len(self.trace.ops) - 1,
                                    logit_range=[self.history.logit_lo, self.history.logit_hi],
                                    v_max=self.history.v_max, updates=self.history.updates_k + self.history.updates_v)
        qv = QueryVerdict(len(self.trace.ops) - 1, op, output, verdict)
        self.verdicts.append(qv)
        return qv

    @property
    def failures(self) -> list[QueryVerdict]:
        return [v for v in self.verdicts if v.status not in (PASS, NOT_APPLICABLE)]

    def save(self, path: str | Path) -> Path:
        return self.trace.save(path)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool)


@dataclass
class TraceResult:
    """All query verdicts of one trace run."""

    verdicts: list[QueryVerdict]

    @property
    def passed(self) -> bool:
        return all(v.status in (PASS, NOT_APPLICABLE) for v in self.verdicts)

    @property
    def failures(self) -> list[QueryVerdict]:
        return [v for v in self.verdicts if v.status not in (PASS, NOT_APPLICABLE)]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for v in self.verdicts:
            out[v.status] = out.get(v.status, 0) + 1
        return out


def run_trace(trace: Trace, backend: Any, **kwargs) -> TraceResult:
    """Drive ``backend`` through ``trace`` and judge every query."""
    checker = DynamicChecker(backend, trace.normalised, **kwargs)
    for op in trace.ops:
        checker.apply(op)
    return TraceResult(checker.verdicts)


def replay_trace(path: str | Path, backend: Any, **kwargs) -> TraceResult:
    """Load a saved trace (exact JSON) and run it against ``backend``."""
    return run_trace(Trace.load(path), backend, **kwargs)


# ---------------------------------------------------------------------------------------------
# Hypothesis stateful testing


def dynamic_state_machine(backend: Any, normalised: bool = True, *, max_n: int = 6, max_d: int = 4,
                          max_dv: int = 3, save_dir: str | Path | None = None, name: str | None = None):
    """A ``RuleBasedStateMachine`` class driving ``backend`` through random traces.

    Rules: single K and V updates, bursts of updates to one entry, δ followed by −δ, a K update and a
    V update on the same key row (the ΔA·ΔV cross term), runs of updates exactly up to and one past the
    rebuild boundary (``rebuild_period``/``pending_updates`` when the structure exposes them), and
    queries between all of them. Every query must pass; a failing trace is saved (exact JSON) to
    ``save_dir`` (default ``$ATTNSPEC_DYNAMIC_FAILURES`` when set) before the assertion is raised.
    """
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
    from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

    save_dir = save_dir if save_dir is not None else os.environ.get(FAILURE_DIR_ENV)
    label = str(name or getattr(backend, "__name__", type(backend).__name__))
    grid = [x / 8 for x in range(-8, 9)]
    entry = st.one_of(st.sampled_from(grid), st.floats(-1, 1, allow_nan=False, allow_subnormal=False, width=64))
    deltas = st.one_of(st.sampled_from([0.5, -0.5, 0.25, -0.125, 0.1, -0.1, 1e-3, 2.0**-30, -0.3]),
                       st.floats(-0.5, 0.5, allow_nan=False, allow_subnormal=False))
    scales = st.sampled_from([1.0, 0.5, 0.25, 0.1, 1 / 3])

    class DynamicMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.checker = DynamicChecker(backend, normalised, name=label)

        def _do(self, op: Op) -> None:
            qv = self.checker.apply(op)
            if qv is not None and qv.status not in (PASS, NOT_APPLICABLE):
                path = None
                if save_dir is not None:
                    path = self.checker.save(Path(save_dir) / f"{_slug(label)}-{VARIANTS[normalised]}.json")
                raise AssertionError(f"{label} ({VARIANTS[normalised]}) {qv.status} at op #{qv.index} "
                                     f"{qv.op}: {qv.verdict.message}; evidence {qv.verdict.evidence}"
                                     + (f"; trace saved to {path}" if path else ""))

        @initialize(data=st.data())
        def init(self, data):
            m = data.draw(st.integers(1, max_n), label="m")
            n = data.draw(st.integers(1, max_n), label="n")
            d = data.draw(st.integers(1, max_d), label="d")
            dv = data.draw(st.integers(1, max_dv), label="dv")
            q = data.draw(hnp.arrays(np.float64, (m, d), elements=entry), label="Q")
            k = data.draw(hnp.arrays(np.float64, (n, d), elements=entry), label="K")
            v = data.draw(hnp.arrays(np.float64, (n, dv), elements=entry), label="V")
            self.shape = (m, n, d, dv)
            self._do(Init(q, k, v, data.draw(scales, label="scale")))

        def _key(self, data):
            return data.draw(st.integers(0, self.shape[1] - 1), label="key row")

        def _query_any(self, data):
            m, _, _, dv = self.shape
            self._do(Query(data.draw(st.integers(0, m - 1)), data.draw(st.integers(0, dv - 1))))

        @rule(data=st.data(), delta=deltas)
        def update_k(self, data, delta):
            self._do(UpdateK(self._key(data), data.draw(st.integers(0, self.shape[2] - 1)), delta))

        @rule(data=st.data(), delta=deltas)
        def update_v(self, data, delta):
            self._do(UpdateV(self._key(data), data.draw(st.integers(0, self.shape[3] - 1)), delta))

        @rule(data=st.data())
        def query(self, data):
            self._query_any(data)

        @rule(data=st.data(), which=st.sampled_from("KV"), ds=st.lists(deltas, min_size=2, max_size=8))
        def burst_same_entry(self, data, which, ds):
            i = self._key(data)
            j = data.draw(st.integers(0, self.shape[2 if which == "K" else 3] - 1))
            for delta in ds:
                self._do((UpdateK if which == "K" else UpdateV)(i, j, delta))
            self._query_any(data)

        @rule(data=st.data(), delta=deltas)
        def delta_then_minus(self, data, delta):
            i, j = self._key(data), data.draw(st.integers(0, self.shape[2] - 1))
            self._do(UpdateK(i, j, delta))
            self._query_any(data)
            self._do(UpdateK(i, j, -delta))
            self._query_any(data)

        @rule(data=st.data(), dk=deltas, dv_=deltas)
        def k_and_v_same_row(self, data, dk, dv_):
            i = self._key(data)
            self._do(UpdateK(i, data.draw(st.integers(0, self.shape[2] - 1)), dk))
            self._do(UpdateV(i, data.draw(st.integers(0, self.shape[3] - 1)), dv_))
            for _ in range(2):
                self._query_any(data)

        @rule(data=st.data(), delta=deltas)
        def to_rebuild_boundary(self, data, delta):
            s = self.checker.structure
            b = getattr(s, "rebuild_period", None)
            pending = getattr(s, "pending_updates", None)
            steps = (b - pending) if (isinstance(b, int) and isinstance(pending, int)) else data.draw(st.integers(1, 6))
            for t in range(max(steps, 1) + 1):  # up to the boundary, then one past it
                i = self._key(data)
                if data.draw(st.booleans()):
                    self._do(UpdateK(i, data.draw(st.integers(0, self.shape[2] - 1)), delta))
                else:
                    self._do(UpdateV(i, data.draw(st.integers(0, self.shape[3] - 1)), delta))
                if t >= max(steps, 1) - 1:
                    self._query_any(data)

    DynamicMachine.__name__ = f"DynamicMachine_{_slug(label)}_{VARIANTS[normalised]}"
    return DynamicMachine


# ---------------------------------------------------------------------------------------------
# The conformance suite's problem-module protocol (``attnspec conform`` on a backend declaring
# ``dynamic_attention``): a case is a whole trace, run in the backend's worker process by
# :func:`drive_trace` and judged here query by query.

METHOD = "dynamic_attention"
PROFILES = ("quick", "thorough")
OP_CODES = {"update_k": 0, "update_v": 1, "query": 2}
_OP_CLASSES = {0: UpdateK, 1: UpdateV, 2: Query}


@dataclass
class Case(ConformanceCase):
    """One dynamic-attention conformance case (``instance``: a Trace, Init first)."""

    problem: str = PROBLEM


def encode_ops(ops: list) -> np.ndarray:
    """Operations after Init as a float64 array of rows (code, i, j, δ); δ must be a float64 value."""
    rows = []
    for op in ops:
        delta = getattr(op, "delta", 0.0)
        if float(delta) != delta:
            raise SpecError(f"operation {op} has a δ that float64 cannot hold exactly")
        rows.append((OP_CODES[op.kind], op.i, op.j, float(delta)))
    return np.array(rows, dtype=np.float64).reshape(len(rows), 4)


def decode_ops(arr: np.ndarray) -> list:
    """Inverse of :func:`encode_ops` (validates codes and integral indices)."""
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.shape[1] != 4 or arr.dtype != np.float64:
        raise SpecError(f"ops must be a float64 array of shape (m, 4), got {arr.dtype} {arr.shape}")
    ops = []
    for r, (code, i, j, delta) in enumerate(arr.tolist()):
        if code not in _OP_CLASSES or i != int(i) or j != int(j):
            raise SpecError(f"ops row {r} is not (code in 0..2, integer i, integer j, δ): {(code, i, j, delta)}")
        cls = _OP_CLASSES[int(code)]
        ops.append(cls(int(i), int(j)) if cls is Query else cls(int(i), int(j), delta))
    return ops


def drive_trace(backend: Any, q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, ops: np.ndarray,
                normalised: bool) -> np.ndarray:
    """Worker side: build ``backend.dynamic_attention(normalised=...)``, Init it, apply every operation
    and return the answers of the queries in order (float64). Runs inside the isolated worker, so a
    backend that raises, crashes or hangs costs this case only."""
    factory = getattr(backend, "dynamic_attention", None)
    if not callable(factory):
        raise TypeError("backend declares dynamic_attention but has no callable dynamic_attention(normalised=...)")
    s = make_structure(factory, bool(normalised))
    s.init(np.asarray(q, dtype=np.float64), np.asarray(k, dtype=np.float64), np.asarray(v, dtype=np.float64), float(scale))
    answers: list[float] = []
    for op in decode_ops(ops):
        if isinstance(op, UpdateK):
            s.update_k(op.i, op.j, float(op.delta))
        elif isinstance(op, UpdateV):
            s.update_v(op.i, op.j, float(op.delta))
        else:
            answers.append(strict_answer(s.query(op.i, op.j), len(answers)))
    return np.asarray(answers, dtype=np.float64).reshape(len(answers))


def strict_answer(x: Any, index: int) -> float:
    """A query answer as a float64, accepting only real numbers (Python or numpy ints and floats, or a
    0-d real array): a string, a complex, a bool or an object is the backend's error, never parsed."""
    if isinstance(x, np.ndarray) and x.ndim == 0:
        x = x[()]
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise TypeError(f"query #{index} returned {type(x).__name__} {x!r:.60}, not a real number")
    value = float(x)
    if isinstance(x, (int, np.integer)) and value != x:
        raise TypeError(f"query #{index} returned the integer {x} that float64 cannot hold exactly")
    return value


def _random_trace(rng: np.random.Generator, normalised: bool, *, n: int, d: int, dv: int, m: int, scale: float,
                  steps: int, style: str) -> Trace:
    """A seeded trace. Entries and δ are multiples of 2⁻⁸ (exact in float64); ``style`` biases the ops:
    ``mixed`` (anything), ``same_entry`` (bursts on one entry, δ then −δ), ``cross_term`` (K and V updates
    on the same key row before a query), ``boundary`` (long runs of updates with a query after each, so
    every rebuild boundary of a b = ⌈n^τ⌉ structure is crossed and queried at). ``decimal`` (mixed ops)
    draws entries and δ from float64 values of decimals and thirds (0.1, 0.3, 1/3, 0.7, …): their sums are
    not float64 numbers, so a structure's rounded state drifts from the exact one, as with real data."""
    if style == "decimal":
        pool = np.array([0.1, -0.1, 0.3, -0.3, 1 / 3, -1 / 3, 0.7, -0.7, 0.2, 2 / 3, 0.0, 1.1])
        grid = lambda shape, lim: rng.choice(pool, size=shape)  # noqa: E731
        delta = lambda: float(rng.choice([0.1, -0.1, 1 / 3, -1 / 3, 0.3, -0.7, 1e-3]))  # noqa: E731
    else:
        grid = lambda shape, lim: rng.integers(-lim, lim + 1, size=shape) / 256.0  # noqa: E731
        delta = lambda: float(rng.integers(-128, 129)) / 256.0 or 0.25  # noqa: E731
    q, k, v = grid((m, d), 256), grid((n, d), 256), grid((n, dv), 256)
    ops: list = [Init(q, k, v, scale)]
    query = lambda: ops.append(Query(int(rng.integers(m)), int(rng.integers(dv))))  # noqa: E731
    for _ in range(steps):
        if style == "same_entry":
            which, i = (UpdateK, int(rng.integers(n))) if rng.random() < 0.5 else (UpdateV, int(rng.integers(n)))
            j = int(rng.integers(d if which is UpdateK else dv))
            dl = delta()
            for _ in range(int(rng.integers(2, 6))):
                ops.append(which(i, j, dl))
            ops.append(which(i, j, -dl))
            query()
        elif style == "cross_term":
            i = int(rng.integers(n))
            ops.append(UpdateK(i, int(rng.integers(d)), delta()))
            ops.append(UpdateV(i, int(rng.integers(dv)), delta()))
            query()
        elif style == "boundary":
            i = int(rng.integers(n))
            ops.append(UpdateK(i, int(rng.integers(d)), delta()) if rng.random() < 0.5 else UpdateV(i, int(rng.integers(dv)), delta()))
            query()
        else:
            r = rng.random()
            if r < 0.35:
                ops.append(UpdateK(int(rng.integers(n)), int(rng.integers(d)), delta()))
            elif r < 0.7:
                ops.append(UpdateV(int(rng.integers(n)), int(rng.integers(dv)), delta()))
            else:
                query()
    query()  # every trace ends in a query, so every update is checked at least once
    return Trace(normalised=normalised, ops=ops)


# family → (n, d, dv, m, scale, steps) per trace; sizes are prime or odd so no block size divides them
FAMILIES = {
    "mixed": [(7, 3, 2, 5, 1.0, 40), (16, 4, 3, 9, 0.5, 60), (33, 8, 5, 17, 0.25, 80)],
    "same_entry": [(5, 2, 2, 4, 1.0, 12), (12, 4, 3, 6, 0.5, 16)],
    "cross_term": [(9, 3, 3, 5, 1.0, 20), (25, 5, 4, 11, 0.5, 30)],
    "boundary": [(16, 4, 2, 8, 1.0, 40), (49, 6, 3, 13, 0.5, 60)],
    "sharp": [(11, 4, 3, 7, 2.0, 30)],  # logits up to ±8: a peaked softmax whose tolerance e^{span}·u stays useful
    "tiny": [(1, 1, 1, 1, 1.0, 6), (2, 1, 1, 1, 0.5, 8)],
    "decimal": [(10, 3, 2, 6, 0.1, 40), (23, 5, 3, 9, 1 / 3, 60)],  # non-dyadic entries, δ and scales
    "edge": DYNAMIC_EDGE_RECIPES,  # float scales 1/3 and 0.1, and a sharp scale 4
}


def instance_arrays(trace: Trace) -> dict[str, np.ndarray]:
    init = trace.ops[0]
    if not isinstance(init, Init):
        raise SpecError("a trace starts with Init")
    arrays = {name: to_float64(np.asarray(getattr(init, name))) for name in ("q", "k", "v")}
    arrays["ops"] = encode_ops(trace.ops[1:])
    return arrays


def instance_params(trace: Trace) -> dict[str, Any]:
    from attnspec.spec.dynamic_attention import encode_exact

    return {"normalised": bool(trace.normalised), "scale": encode_exact(trace.ops[0].scale)}


def instance_from_files(arrays: dict[str, np.ndarray], params: dict[str, Any]) -> Trace:
    from attnspec.spec.dynamic_attention import decode_exact

    missing = {"q", "k", "v", "ops"} - set(arrays)
    if missing:
        raise SpecError(f"dynamic-attention case lacks arrays {sorted(missing)}")
    normalised = params.get("normalised")
    if not isinstance(normalised, bool):
        raise SpecError("dynamic-attention case params need a boolean 'normalised'")
    trace = Trace(normalised=normalised, ops=[Init(arrays["q"], arrays["k"], arrays["v"], decode_exact(str(params.get("scale", "1"))))]
                  + decode_ops(arrays["ops"]))
    trace.validate()  # the exact state machine re-checks every index, shape and value
    return trace


class _Replayed:
    """A stand-in structure that answers queries with a backend's recorded outputs, in order."""

    def __init__(self, answers: np.ndarray, normalised: bool):
        self._answers = iter(answers.tolist())
        self.normalised = normalised

    def init(self, *args: Any) -> None:
        pass

    def update_k(self, *args: Any) -> None:
        pass

    def update_v(self, *args: Any) -> None:
        pass

    def query(self, i: int, j: int) -> float:
        return next(self._answers)


class DynamicAttention(Problem):
    """Dynamic attention (ODAMV / OAMV): a case is a whole operation trace, driven in the backend's worker
    by :func:`drive_trace` (request kind ``"drive"``) and judged here query by query."""

    name = PROBLEM
    method = METHOD
    request_kind = "drive"
    case_type = Case

    def families(self) -> list[str]:
        return [*FAMILIES, "edge_traces"]

    def generate_cases(self, profile: str = "quick", dtypes: tuple[str, ...] = ("float64",), seed: int = 0) -> list[Case]:
        """Seeded traces for both variants (ODAMV and OAMV); ``thorough`` runs each recipe with 4 seeds.
        Traces are float64 (the structure's Init receives float64 arrays); other dtypes yield nothing."""
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; known: {PROFILES}")
        if "float64" not in dtypes:
            return []
        repeats = 1 if profile == "quick" else 4
        cases = []
        for family, recipes in FAMILIES.items():
            style = family if family in ("same_entry", "cross_term", "boundary", "decimal") else "mixed"
            for index, (n, d, dv, m, scale, steps) in enumerate(recipes):
                for rep in range(repeats):
                    for normalised in (True, False):
                        case_seed = (seed * 1_000_003 + sum(map(ord, family)) * 101 + index * 17 + rep) % 2**32
                        rng = np.random.default_rng(case_seed)
                        trace = _random_trace(rng, normalised, n=n, d=d, dv=dv, m=m, scale=scale, steps=steps, style=style)
                        cid = f"dynamic_attention/{VARIANTS[normalised]}/{family}/{index}.{rep}"
                        cases.append(Case(cid, family, "float64", case_seed, trace, tags={"n": n, "d": d, "steps": steps}))
        for label, trace in dynamic_edge_traces():  # subnormal V, logits near −740, magnified subnormals, s = 1/3
            name = label.rsplit("/", 1)[0]
            cases.append(Case(f"dynamic_attention/{VARIANTS[trace.normalised]}/edge_traces/{name}", "edge_traces", "float64",
                              0, trace))
        return cases

    def not_applicable_reasons(self, case: Case, caps: Any) -> list[str]:
        n = int(np.asarray(case.instance.ops[0].k).shape[0])
        return self.declaration_reasons(caps, dtype=case.dtype, n=n, only_dtype="float64")

    def request(self, case: Case) -> tuple[str, str, tuple, dict]:
        arrays = self.instance_arrays(case.instance)
        init = case.instance.ops[0]
        args = (arrays["q"], arrays["k"], arrays["v"], float(init.scale), arrays["ops"], bool(case.instance.normalised))
        return "drive", PROBLEM, args, {}

    def drive(self, backend: Any, *args: Any, **kwargs: Any) -> np.ndarray:
        return drive_trace(backend, *args, **kwargs)

    def expected_output_elements(self, case: Case) -> int:
        return sum(isinstance(op, Query) for op in case.instance.ops)

    def shape(self, case: Case) -> list[int]:
        return [int(x) for x in np.asarray(case.instance.ops[0].k).shape]

    def instance_arrays(self, trace: Trace) -> dict[str, np.ndarray]:
        return instance_arrays(trace)

    def instance_params(self, trace: Trace) -> dict[str, Any]:
        return instance_params(trace)

    def instance_from_files(self, arrays: dict[str, np.ndarray], params: dict[str, Any]) -> Trace:
        return instance_from_files(arrays, params)

    def judge(self, case: Case, output: Any, caps: Any, *, max_prec: int = 1024, tolerance: Any = None) -> Verdict:
        """Judge every query answer of the trace (certified, precision-model tolerance); the case's verdict is
        the worst one: fail before error before undecided before pass. Evidence: the worst query's."""
        trace = case.instance
        queries = sum(isinstance(op, Query) for op in trace.ops)
        try:
            answers = coerce_output(output, (queries,))  # strict: real numbers of the right count only
        except OutputError as exc:
            return Verdict(ERROR, f"output is not a vector of {queries} query answers: {exc}", {"kind": "bad_output"})
        checker = DynamicChecker(lambda normalised: _Replayed(answers, normalised), trace.normalised, max_prec=max_prec,
                                 name="replayed")
        for op in trace.ops:
            checker.apply(op)
        rank = {FAIL: 0, ERROR: 1, UNDECIDED: 2, PASS: 3, NOT_APPLICABLE: 4}
        judged = [v for v in checker.verdicts if v.status != NOT_APPLICABLE]
        if not judged:
            return Verdict(NOT_APPLICABLE, "every query's precision-model tolerance is vacuous for this trace")
        worst = min(judged, key=lambda v: (rank.get(v.status, 1), -float(v.verdict.evidence.get("ratio", 0) or 0)))
        counts = {s: sum(v.status == s for v in checker.verdicts) for s in (PASS, FAIL, UNDECIDED, ERROR, NOT_APPLICABLE)}
        evidence = dict(worst.verdict.evidence)
        evidence.update(queries=counts, worst_op=str(worst.op), worst_op_index=worst.index)
        if worst.status == PASS:
            return Verdict(PASS, f"all {counts[PASS]} judged queries within tolerance", evidence)
        return Verdict(worst.status, f"query #{worst.index} {worst.op}: {worst.verdict.message}", evidence)


problem = register(DynamicAttention())


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in s)[:80]


__all__ = ["PROBLEM", "make_structure", "DynamicChecker", "QueryVerdict",
           "TraceResult", "run_trace", "replay_trace", "dynamic_state_machine", "NOT_APPLICABLE"]
