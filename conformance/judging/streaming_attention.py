"""Conformance for one-pass streaming attention: a randomized guarantee judged by an exact binomial test.

Backend protocol (capability problem name ``"streaming_attention"``): a factory
``backend.streaming_attention(n=, d=, dv=, k=, scale=, bound=, seed=)`` returning a fresh structure with
``feed(chunk)``, ``finish() -> (indices, values)`` (d_v×k each), ``state_bytes()``, ``guarantee``
(:class:`attnspec.spec.streaming_attention.Guarantee`: ε₁, ε₂, δ), and optionally ``orders`` (default
``("kv_first",)``), ``sublinear_state`` (default False) and ``consume(stream)`` (the backend iterates the
one-pass stream itself; otherwise the driver feeds it chunk by chunk).

A case is one instance. The worker (:func:`drive_stream`) runs R seeds (R = the least number of clean runs
that can pass at the declared δ and the case's α, capped), enforcing one pass (:class:`OnePassStream`) and
measuring persistent state between chunks (the backend's report and :func:`reachable_bytes`, on seed 0).
A backend declaring ``sublinear_state`` also runs, on seed 0, a seeded stream 16× longer; its measured state
must stay within 10% (+256 bytes). The judge decides every run with certainty
(:mod:`attnspec.reference.streaming_attention`) and gives the exact binomial verdict
(:mod:`attnspec.conformance.judging.randomized_verdict`). Where the all-zero output would certainly meet
the declared guarantee (dense columns: Err_k(y) ≈ ‖y‖), the case is not applicable: nothing is tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from attnspec.reference import streaming_attention as ref
from attnspec.spec.streaming_attention import (PROBLEM, Guarantee, OnePassStream, StreamingInstance,
                                               make_streaming_instance, reachable_bytes, validate_columns)
from attnspec.spec.validation import SpecError
from attnspec.conformance.judging.case_common import ConformanceCase, family_seed
from attnspec.conformance.judging.problems import Problem, register
from attnspec.conformance.judging.randomized_verdict import binomial_verdict, runs_for_pass
from attnspec.conformance.judging.verdict import ERROR, FAIL, PASS, UNDECIDED, Verdict

NOT_APPLICABLE = "not_applicable"
METHOD = "streaming_attention"
ALPHA = Fraction(1, 1000)
MAX_RUNS = {"quick": 700, "thorough": 2000}
GROWTH_FACTOR, GROWTH_SLACK, BIG_FACTOR = 1.10, 256, 16
HEADER = ("eps1", "eps2", "delta", "runs", "second_pass", "order_ok", "sublinear", "measured", "measured_big",
          "reported", "reported_big", "n_big")


@dataclass
class Case(ConformanceCase):
    problem: str = PROBLEM
    max_runs: int = 700


def _grid(rng: np.random.Generator, shape: tuple[int, ...], lim: int = 256) -> np.ndarray:
    return rng.integers(-lim, lim + 1, size=shape) / 256.0  # multiples of 2⁻⁸ in [−1, 1]


def dense_instance(rng: np.random.Generator, n: int, d: int, dv: int, k: int, order: str, chunk: int) -> StreamingInstance:
    """Uniform bounded entries, scale 1/d: dense output columns (the reviewers' realistic case)."""
    return make_streaming_instance(_grid(rng, (n, d)), _grid(rng, (n, d)), _grid(rng, (n, dv)), scale=Fraction(1, d),
                                   sparsity=k, order=order, chunk=chunk, bound=1)


def planted_instance(rng: np.random.Generator, n: int, d: int, dv: int, k: int, order: str, chunk: int) -> StreamingInstance:
    """A few queries aligned with a repeated planted key whose values are ±1; other values small (±1/16):
    each column has ≈ k heavy entries, so the k-sparse guarantee is not vacuous. Scale 1 (R = d)."""
    q, kk, v = _grid(rng, (n, d), 64), _grid(rng, (n, d), 64), _grid(rng, (n, dv), 16)
    key = np.where(rng.random(d) < 0.5, -1.0, 1.0)
    planted = rng.choice(n, size=max(2, n // 16), replace=False)
    kk[planted] = key
    v[planted] = np.where(rng.random(dv) < 0.5, -1.0, 1.0)
    q[rng.choice(n, size=k, replace=False)] = key
    return make_streaming_instance(q, kk, v, scale=1, sparsity=k, order=order, chunk=chunk, bound=1)


# family → (generator, order, [(n, d, dv, k, chunk)] quick, thorough)
FAMILIES = {
    "planted": (planted_instance, "kv_first", [(96, 3, 2, 4, 32)], [(96, 3, 2, 4, 32), (200, 3, 3, 6, 48)]),
    "dense": (dense_instance, "kv_first", [(64, 3, 2, 4, 16)], [(64, 3, 2, 4, 16), (160, 4, 2, 8, 40)]),
    "interleaved": (dense_instance, "interleaved", [(48, 2, 2, 3, 16)], [(48, 2, 2, 3, 16), (128, 3, 2, 4, 32)]),
}


def _structure(backend: Any, inst_shape: tuple[int, int, int, int], scale: float, bound: float, seed: int) -> Any:
    factory = getattr(backend, METHOD, None)
    if not callable(factory):
        raise TypeError(f"backend declares {PROBLEM} but has no callable {METHOD}(...)")
    n, d, dv, k = inst_shape
    s = factory(n=n, d=d, dv=dv, k=k, scale=scale, bound=bound, seed=seed)
    for name in ("feed", "finish", "state_bytes"):
        if not callable(getattr(s, name, None)):
            raise SpecError(f"streaming structure lacks a callable {name!r}")
    return s


def _run_once(s: Any, q: np.ndarray, k: np.ndarray, v: np.ndarray, order: str, chunk: int, measure: bool) -> tuple[Any, OnePassStream, list[int]]:
    peaks = [0, 0]

    def observe() -> None:
        peaks[0] = max(peaks[0], reachable_bytes(s))
        peaks[1] = max(peaks[1], int(s.state_bytes()))

    stream = OnePassStream(q, k, v, order, chunk, observer=observe if measure else None)
    consume = getattr(s, "consume", None)
    if callable(consume):
        out = consume(stream)
    else:
        for c in stream:
            s.feed(c)
        out = s.finish()
    return out, stream, peaks


def drive_stream(backend: Any, q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, bound: float, sparsity: int,
                 order: str, chunk: int, max_runs: int) -> np.ndarray:
    """Worker side: run R seeds through the one-pass stream; returns the header (:data:`HEADER`) followed by
    the R×d_v×k indices and the R×d_v×k values, as one float64 vector."""
    n, d = q.shape
    dv = v.shape[1]
    shape = (n, d, dv, int(sparsity))
    s0 = _structure(backend, shape, scale, bound, 0)
    g = s0.guarantee
    if not isinstance(g, Guarantee):
        g = Guarantee(*map(float, g))
    header = dict.fromkeys(HEADER, 0.0)
    header.update(eps1=g.eps1, eps2=g.eps2, delta=g.delta)
    if order not in tuple(getattr(s0, "orders", ("kv_first",))):
        header["order_ok"] = 0.0
        return np.array([header[h] for h in HEADER])
    header["order_ok"] = 1.0
    runs = min(int(max_runs), max(2, runs_for_pass(g.delta, ALPHA)))
    indices, values = [], []
    for seed in range(runs):
        s = s0 if seed == 0 else _structure(backend, shape, scale, bound, seed)
        out, stream, peaks = _run_once(s, q, k, v, order, int(chunk), measure=seed == 0)
        if stream.second_pass_attempted:
            header["second_pass"] = 1.0
        if seed == 0:
            header["measured"], header["reported"] = peaks
        raw_idx, raw_val = out
        idx, val = validate_columns(raw_idx, raw_val, n=n, dv=dv, k=int(sparsity))
        indices.append(idx)
        values.append(val)
    header["runs"] = float(runs)
    if getattr(s0, "sublinear_state", False):
        n_big = BIG_FACTOR * n
        rng = np.random.default_rng(20240611)
        big = [rng.uniform(-bound, bound, size=(n_big, w)) for w in (d, d, dv)]
        sb = _structure(backend, (n_big, d, dv, int(sparsity)), scale, bound, 0)
        _, stream, peaks = _run_once(sb, big[0], big[1], big[2], order, int(chunk), measure=True)
        header["measured_big"], header["reported_big"], header["n_big"] = peaks[0], peaks[1], n_big
        if stream.second_pass_attempted:
            header["second_pass"] = 1.0
        header["sublinear"] = 1.0
    return np.concatenate([np.array([header[h] for h in HEADER]), np.concatenate(indices).ravel().astype(np.float64),
                           np.concatenate(values).ravel()])


class StreamingAttention(Problem):
    """One-pass streaming attention with a declared (ε₁, ε₂, δ) guarantee (module docstring)."""

    name = PROBLEM
    method = METHOD
    request_kind = "drive"
    case_type = Case

    def __init__(self) -> None:
        self._columns: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def families(self) -> list[str]:
        return list(FAMILIES)

    def generate_cases(self, profile: str = "quick", dtypes: tuple[str, ...] = ("float64",), seed: int = 0) -> list[Case]:
        if profile not in self.profiles:
            raise ValueError(f"unknown profile {profile!r}; known: {self.profiles}")
        if "float64" not in dtypes:
            return []
        cases = []
        for family, (make, order, quick, thorough) in FAMILIES.items():
            for index, (n, d, dv, k, chunk) in enumerate(quick if profile == "quick" else thorough):
                fs = family_seed(seed, family, index)
                inst = make(np.random.default_rng(fs), n, d, dv, k, order, chunk)
                cases.append(Case(f"{PROBLEM}/{family}/{index}", family, "float64", fs, inst,
                                  tags={"n": n, "d": d, "k": k, "order": order}, max_runs=MAX_RUNS[profile]))
        return cases

    def not_applicable_reasons(self, case: Case, caps: Any) -> list[str]:
        inst = case.instance
        reasons = self.declaration_reasons(caps, dtype=case.dtype, d=inst.d, only_dtype="float64")
        if caps.max_n is not None and inst.n * BIG_FACTOR > caps.max_n:
            reasons.append(f"the space check needs n = {inst.n * BIG_FACTOR} > declared max_n = {caps.max_n}")
        return reasons

    def request(self, case: Case) -> tuple[str, str, tuple, dict]:
        a = case.instance.attention
        args = (np.asarray(a.q, dtype=np.float64), np.asarray(a.k, dtype=np.float64), np.asarray(a.v, dtype=np.float64),
                float(a.scale), float(a.bound), case.instance.k, case.instance.order, case.instance.chunk, case.max_runs)
        return "drive", PROBLEM, args, {}

    def drive(self, backend: Any, *args: Any, **kwargs: Any) -> np.ndarray:
        return drive_stream(backend, *args, **kwargs)

    def expected_output_elements(self, case: Case) -> int:
        inst = case.instance
        return len(HEADER) + 2 * case.max_runs * inst.dv * inst.k

    def shape(self, case: Case) -> list[int]:
        return [case.instance.n, case.instance.d]

    def columns(self, case: Case) -> tuple[np.ndarray, np.ndarray]:
        if case.case_id not in self._columns:
            self._columns[case.case_id] = ref.certified_columns(case.instance)
        return self._columns[case.case_id]

    def judge(self, case: Case, output: Any, caps: Any, *, max_prec: int = 1024, tolerance: Any = None) -> Verdict:
        inst = case.instance
        out = np.asarray(output, dtype=np.float64).ravel() if isinstance(output, np.ndarray) else None
        if out is None or out.size < len(HEADER):
            return Verdict(ERROR, "output is not the driver's float64 vector", {"kind": "bad_output"})
        h = dict(zip(HEADER, out[: len(HEADER)].tolist()))
        state = {k: h[k] for k in ("measured", "measured_big", "reported", "reported_big", "n_big")}
        if not h["order_ok"]:
            return Verdict(NOT_APPLICABLE, f"the backend does not declare the {inst.order!r} arrival order")
        if h["second_pass"]:
            return Verdict(FAIL, "the backend iterated the one-pass stream a second time", {"kind": "second_pass", **state})
        if h["sublinear"] and h["measured_big"] > GROWTH_FACTOR * h["measured"] + GROWTH_SLACK:
            return Verdict(FAIL, f"declared sublinear state grew from {h['measured']:.0f} B (n = {inst.n}) to "
                                 f"{h['measured_big']:.0f} B (n = {h['n_big']:.0f})", {"kind": "state_growth", **state})
        runs, per = int(h["runs"]), inst.dv * inst.k
        body = out[len(HEADER):]
        if body.size != 2 * runs * per:
            return Verdict(ERROR, f"output holds {body.size} numbers, expected {2 * runs * per}", {"kind": "bad_output"})
        idx = body[: runs * per].astype(np.int64).reshape(runs, inst.dv, inst.k)
        val = body[runs * per:].reshape(runs, inst.dv, inst.k)
        lo, hi = self.columns(case)
        zero = ref.check_run(lo, hi, np.tile(np.arange(inst.k), (inst.dv, 1)), np.zeros((inst.dv, inst.k)), inst.k,
                             h["eps1"], h["eps2"])
        if ref.run_status(zero) == ref.MET:  # the reviewers' point: on dense columns Err_k(y) ≈ ‖y‖
            return Verdict(NOT_APPLICABLE, "the declared guarantee is vacuous on this instance: the all-zero output meets it "
                                           f"(‖y_c‖ ≤ (1 + ε₁)·Err_k(y_c) + ε₂ for every column, ε₁ = {h['eps1']:g})",
                           {"kind": "vacuous", "norm_over_best": [c.err[1] / max(c.best[0], 1e-300) for c in zero], **state})
        statuses = [ref.run_status(ref.check_run(lo, hi, idx[r], val[r], inst.k, h["eps1"], h["eps2"])) for r in range(runs)]
        violated, undecided = statuses.count(ref.VIOLATED), statuses.count(ref.UNDECIDED)
        rv = binomial_verdict(runs, violated, undecided, h["delta"], ALPHA)
        evidence = {**rv.evidence(), "eps1": h["eps1"], "eps2": h["eps2"], **state}
        status = {"pass": PASS, "fail": FAIL, "undecided": UNDECIDED}[rv.status]
        return Verdict(status, rv.message, evidence)

    def instance_arrays(self, inst: StreamingInstance) -> dict[str, np.ndarray]:
        a = inst.attention
        return {"q": np.asarray(a.q, dtype=np.float64), "k": np.asarray(a.k, dtype=np.float64), "v": np.asarray(a.v, dtype=np.float64)}

    def instance_params(self, inst: StreamingInstance) -> dict[str, Any]:
        a = inst.attention
        return {"scale": str(a.scale), "bound": str(a.bound), "sparsity": inst.k, "order": inst.order, "chunk": inst.chunk}

    def instance_from_files(self, arrays: dict[str, np.ndarray], params: dict[str, Any]) -> StreamingInstance:
        return make_streaming_instance(arrays["q"], arrays["k"], arrays["v"], scale=Fraction(params["scale"]),
                                       sparsity=int(params["sparsity"]), order=str(params["order"]),
                                       chunk=int(params["chunk"]), bound=Fraction(params["bound"]))


problem = register(StreamingAttention())

__all__ = ["StreamingAttention", "drive_stream", "Case", "FAMILIES", "HEADER", "ALPHA"]
