"""Conformance for softmax attention: case families, how a case is called and how it is judged.

Cases come from named *families*, each a deterministic recipe over a seeded numpy generator, so the
quick profile is the same list on every machine and every hypothesis version:

``bounded``         the Alman–Song regime: d ≤ 6, entries in [−B, B] with B ≤ 1, s = 1/d;
``uniform``         entries uniform in [−B, B] for several B, random shapes;
``degenerate``      n = 1, d = 1, scale = 0, identical key rows, constant value rows, zero queries;
``large_logits``    rows whose logits reach ±1000 (the answer is still an ordinary convex combination);
``near_ties``       the top two logits of a row equal, or a hair apart;
``repeated_shape``  several instances of one shape with different data (catches stale caches);
``odd_sizes``       n, d next to powers of two (catches dropped or doubled last blocks);
``scale_kinds``     s = 1/d (Alman–Song) and s = 1/√d (practice);
``hypothesis``      extra instances drawn by the public hypothesis strategies, derandomized.

Tolerance: the contract ε_a when the backend claims one (approximation algorithms, within their declared
bound B, head dimension ``max_d`` and logit radius ``max_logit_radius``), otherwise the precision model of the backend's declared arithmetic for the case's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable

import numpy as np

from attnspec.reference.softmax_attention import enclose
from attnspec.spec.softmax_attention import PROBLEM, SoftmaxAttentionInstance, conditioning, make_instance, standard_scale
from attnspec.spec.validation import max_abs_exact
from attnspec.conformance.judging.case_common import (ConformanceCase, InstanceProblem, accepts_rows, cast_to,
                                                      derandomized_draws, exact_params, fraction_or_none,
                                                      normalize_rows, optional_engine)
from attnspec.conformance.judging.precision_model import overflow_reason, softmax_tolerance
from attnspec.conformance.judging.stage_precision import (StagePrecisionModel, low_precision_draws, stage_overflow_reason,
                                                          stage_softmax_tolerance)
from attnspec.spec.validation import is_low_precision
from attnspec.conformance.judging.problems import register
from attnspec.conformance.judging.long_context_families import SOFTMAX_COUNTS, SOFTMAX_FAMILIES
from attnspec.conformance.judging.edge_instances import SOFTMAX_EDGE_COUNT, exact_scale_softmax_cases, family_softmax_edge

METHOD = "attention"
PROFILES = ("quick", "thorough")


@dataclass
class Case(ConformanceCase):
    """One softmax-attention conformance case (``instance``: a SoftmaxAttentionInstance)."""

    problem: str = PROBLEM


# ---------------------------------------------------------------------------------------------
# Case families: each yields (family, seed, q, k, v, scale, bound) in float64; dtype casting is
# applied afterwards so that every input is exactly representable in the case's dtype.


def _uniform(rng: np.random.Generator, n: int, d: int, bound: float) -> tuple[np.ndarray, ...]:
    return tuple(rng.uniform(-bound, bound, (n, d)) for _ in range(3))


def family_uniform(rng, count, big):
    bounds = (0.5, 1.0, 2.0, 4.0)
    for i in range(count):
        n = int(rng.integers(1, 300 if big else 70))
        d = int(rng.integers(1, 64 if big else 20))
        b = bounds[i % len(bounds)]
        q, k, v = _uniform(rng, n, d, b)
        yield q, k, v, Fraction(1, d) if i % 2 else standard_scale(d, "1/sqrt(d)"), b


def family_degenerate(rng, count, big):
    n, d = 7, 5
    q, k, v = _uniform(rng, n, d, 1.0)
    yield q[:1], k[:1], v[:1], Fraction(1, 2), None  # n = 1
    yield q[:, :1], k[:, :1], v[:, :1], Fraction(1), None  # d = 1
    yield q, k, v, Fraction(0), None  # scale = 0: uniform average of V's rows
    yield q, np.repeat(k[:1], n, axis=0), v, Fraction(1, 2), None  # identical key rows
    yield q, k, np.repeat(v[:1], n, axis=0), Fraction(1, 2), None  # constant value rows
    yield np.zeros_like(q), k, v, Fraction(1, 2), None  # zero queries
    yield q[:1, :1], k[:1, :1], v[:1, :1], Fraction(1), None  # 1 x 1
    for _ in range(max(0, count - 7)):
        m = int(rng.integers(1, 40))
        q2, k2, v2 = _uniform(rng, m, 3, 1.0)
        yield q2, np.repeat(k2[:1], m, axis=0), v2, Fraction(0), None


def family_large_logits(rng, count, big):
    for i in range(count):
        n = int(rng.integers(2, 200 if big else 48))
        d = int(rng.integers(1, 12))
        q, k, v = _uniform(rng, n, d, 1.0)
        k /= np.maximum(np.abs(k).sum(axis=1, keepdims=True), 1e-300)  # ‖k_j‖₁ ≤ 1
        target = 1000.0 if i % 2 == 0 else float(rng.uniform(50, 1000))
        q = np.sign(q) * target  # logits up to ±target
        rows = rng.random(n) < 0.5
        q[~rows] = rng.uniform(-1, 1, (int((~rows).sum()), d))  # mix with ordinary rows
        yield q, k, v, Fraction(1), None


def family_near_ties(rng, count, big):
    for i in range(count):
        n = int(rng.integers(2, 64))
        d = int(rng.integers(1, 8))
        q, k, v = _uniform(rng, n, d, 1.0)
        q *= 200.0  # sharp softmax, so the tie decides the answer
        j1, j2 = rng.choice(n, size=2, replace=False)
        k[j2] = k[j1]
        if i % 2:
            k[j2, 0] = np.nextafter(k[j1, 0], np.inf)  # a hair apart
        yield q, k, v, Fraction(1, 8), None


def family_repeated_shape(rng, count, big):
    n, d = int(rng.integers(5, 40)), int(rng.integers(2, 10))
    for _ in range(count):
        q, k, v = _uniform(rng, n, d, 2.0)
        yield q, k, v, Fraction(1, 2), 2.0


def family_odd_sizes(rng, count, big):
    sizes = [(63, 3), (65, 17), (127, 5), (129, 33), (1025, 4), (40, 128), (31, 1), (33, 8), (257, 9), (255, 64)]
    if big:
        sizes += [(511, 16), (513, 64), (1000, 7), (1025, 32)]
    for i in range(count):
        n, d = sizes[i % len(sizes)]
        q, k, v = _uniform(rng, n, d, 1.5)
        yield q, k, v, standard_scale(d, "1/sqrt(d)"), 1.5


def family_scale_kinds(rng, count, big):
    for i in range(count):
        n = int(rng.integers(2, 50))
        d = int(rng.integers(1, 30))
        q, k, v = _uniform(rng, n, d, 3.0)
        yield q, k, v, standard_scale(d, "1/d" if i % 2 else "1/sqrt(d)"), 3.0


def family_bounded(rng, count, big):
    """The Alman–Song regime: small d, entries in [−B, B] with B ≤ 1, s = 1/d (so |logit| ≤ B²): the
    cases an approximation backend's contract (ε_a, B) covers; some rows pushed to the corners ±B."""
    bounds = (1.0, 0.5, 0.25)
    for i in range(count):
        n = int(rng.integers(1, 400 if big else 160))
        d = int(rng.integers(1, 7))
        b = bounds[i % len(bounds)]
        q, k, v = _uniform(rng, n, d, b)
        corners = rng.random(n) < 0.25
        q[corners] = np.sign(q[corners]) * b
        yield q, k, v, Fraction(1, d), b


FAMILIES: dict[str, Callable] = {
    "bounded": family_bounded,
    "uniform": family_uniform,
    "degenerate": family_degenerate,
    "large_logits": family_large_logits,
    "near_ties": family_near_ties,
    "repeated_shape": family_repeated_shape,
    "odd_sizes": family_odd_sizes,
    "scale_kinds": family_scale_kinds,
    "edge": family_softmax_edge,
    **SOFTMAX_FAMILIES,  # tile edges, late maxima, long rows (long_context_families.py)
}
COUNTS = {
    "quick": {"bounded": 6, "uniform": 8, "degenerate": 7, "large_logits": 4, "near_ties": 4, "repeated_shape": 3, "odd_sizes": 6, "scale_kinds": 2, "edge": SOFTMAX_EDGE_COUNT, "hypothesis": 6, **SOFTMAX_COUNTS["quick"]},
    "thorough": {"bounded": 30, "uniform": 60, "degenerate": 12, "large_logits": 24, "near_ties": 24, "repeated_shape": 8, "odd_sizes": 12, "scale_kinds": 12, "edge": 2 * SOFTMAX_EDGE_COUNT, "hypothesis": 80, **SOFTMAX_COUNTS["thorough"]},
}


class SoftmaxAttention(InstanceProblem):
    """Softmax attention ``D⁻¹AV``, ``A = exp(s·QKᵀ)``: backend method ``attention(q, k, v, *, scale)``."""

    name = PROBLEM
    method = METHOD
    case_type = Case
    family_recipes = FAMILIES
    counts = COUNTS

    extra_families = ("edge_exact_scale",)

    def extra_cases(self, profile: str, dtypes: tuple[str, ...], seed: int) -> list:
        """Exact non-float rational scales (1/3, 1/10, …): the backend receives float(s)."""
        return exact_scale_softmax_cases(tuple(d for d in dtypes if d in ("float64", "float32")))

    def make_case(self, family: str, index: int, seed: int, dtype: str, *drawn: Any) -> Case:
        q, k, v, scale, bound, *rest = drawn
        rows = rest[0] if rest else None  # a recipe may name the output rows to certify (a row subset)
        q, k, v = (cast_to(x, dtype) for x in (q, k, v))
        scale = Fraction(float(np.asarray(float(scale), dtype=dtype)))  # the scale the backend receives
        b = None
        if bound is not None:
            b = max(Fraction(bound), *(max_abs_exact(x) for x in (q, k, v)))  # rounding may nudge past B
        inst = make_instance(q, k, v, scale=scale, bound=b)
        return Case(f"{PROBLEM}/{dtype}/{family}/{index:03d}", family, dtype, seed, inst,
                    rows=normalize_rows(rows, inst.output_shape[0]))

    def hypothesis_cases(self, count: int, dtype: str, big: bool, seed: int) -> list[Case]:
        """``count`` instances drawn (derandomized) from :func:`attnspec.conformance.frontends.strategies.softmax_instances`."""
        from attnspec.conformance.frontends.strategies import softmax_instances

        if is_low_precision(dtype):  # drawn in float32, then rounded to the format (stage_precision.py)
            return [Case(f"{PROBLEM}/{dtype}/hypothesis/{i:03d}", "hypothesis", dtype, seed, inst) for i, inst in
                    enumerate(low_precision_draws(softmax_instances(max_n=96 if big else 24, max_d=24 if big else 8,
                                                                    dtype="float32"), count, dtype))]
        drawn = derandomized_draws(softmax_instances(max_n=96 if big else 24, max_d=24 if big else 8, dtype=dtype), count)
        return [Case(f"{PROBLEM}/{dtype}/hypothesis/{i:03d}", "hypothesis", dtype, seed, inst) for i, inst in enumerate(drawn)]

    def call_args(self, case: Case) -> tuple[tuple, dict]:
        inst = case.instance
        if is_low_precision(case.dtype):  # held as float32; the backend receives the case's format (exact)
            return tuple(cast_to(x, case.dtype) for x in (inst.q, inst.k, inst.v)), {"scale": float(inst.scale)}
        return (inst.q, inst.k, inst.v), {"scale": float(inst.scale)}

    def inputs(self, inst: SoftmaxAttentionInstance) -> list[np.ndarray]:
        return [inst.q, inst.k, inst.v]

    def order(self, inst: SoftmaxAttentionInstance) -> int:
        return 2

    def precision_tolerance(self, inst: SoftmaxAttentionInstance, model: Any) -> np.ndarray:
        if isinstance(model, StagePrecisionModel):
            return stage_softmax_tolerance(inst, model)
        return softmax_tolerance(inst, model)

    def overflow_reason(self, inst: SoftmaxAttentionInstance, model: Any) -> str | None:
        if isinstance(model, StagePrecisionModel):
            return stage_overflow_reason(inst, model)
        return overflow_reason(inst, model)

    def vacuity_detail(self, inst: SoftmaxAttentionInstance) -> str:
        return f"max |logit| {conditioning(inst)['max_abs_logit']:.3g}, n = {inst.n}"

    def conditioning(self, inst: SoftmaxAttentionInstance) -> dict[str, Any]:
        return conditioning(inst)

    def enclose(self, inst: SoftmaxAttentionInstance, prec: int) -> Any:
        return enclose(inst, prec)

    def arb_rows_engine(self) -> Callable[[Any, int, np.ndarray], Any] | None:
        """The Arb engine restricted to output rows, once ``reference.softmax_attention.enclose`` takes ``rows=``."""
        if not accepts_rows(enclose):
            return None
        return lambda inst, prec, rows: enclose(inst, prec, rows=rows)

    def fast_engine(self) -> Callable[[Any, np.ndarray | None], Any] | None:
        """``reference.fast_softmax.enclose_fast`` (certified float64 bounds), when it is installed."""
        fast = optional_engine("attnspec.reference.fast_softmax", "enclose_fast")
        if fast is None:
            return None
        return lambda inst, rows: fast(inst, rows=rows)

    def row_tolerance(self, inst: Any, model: Any, rows: tuple[int, ...] | None) -> tuple[np.ndarray, str | None]:
        """:func:`softmax_tolerance` of output ``rows``: computed for those rows alone when it takes ``rows=``
        (O(|rows|·n·d)), else sliced from the tolerance of every row (noted in the evidence)."""
        if isinstance(model, StagePrecisionModel):
            return stage_softmax_tolerance(inst, model, None if rows is None else np.asarray(rows, dtype=np.int64)), None
        if rows is not None and accepts_rows(softmax_tolerance):
            return softmax_tolerance(inst, model, rows=np.asarray(rows, dtype=np.int64)), None
        return super().row_tolerance(inst, model, rows)

    def instance_arrays(self, inst: SoftmaxAttentionInstance) -> dict[str, np.ndarray]:
        return {"q": inst.q, "k": inst.k, "v": inst.v}

    def instance_params(self, inst: SoftmaxAttentionInstance) -> dict[str, Any]:
        return exact_params(inst)

    def instance_from_files(self, arrays: dict[str, np.ndarray], params: dict[str, Any]) -> SoftmaxAttentionInstance:
        """Rebuild (and re-validate) an instance from replay-file arrays and JSON parameters."""
        return make_instance(arrays["q"], arrays["k"], arrays["v"], scale=fraction_or_none(params["scale"]),
                             bound=fraction_or_none(params.get("bound")), eps=fraction_or_none(params.get("eps")))


problem = register(SoftmaxAttention())
