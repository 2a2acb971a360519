"""Conformance for tensor (k-th order) attention: cases, tolerances, judging, built-in backends.

Backend protocol: ``tensor_attention(q, keys, values, *, scale)`` with ``keys`` and ``values`` lists of
k − 1 numpy arrays (n×d and n×d_v), returning an n×d_v array; capability problem name
``"tensor_attention"``. Key tuples are ordered lexicographically (j₁ slowest) *in the definition*, but
the output does not depend on that convention, so backends may order them any way.

Case families (deterministic recipes over a seeded numpy generator; the quick list is the same on every
machine): ``uniform`` (k = 3, entries in [−B, B] for B ∈ {0.5, 1, 1.5}, s = 1/d: the paper's setting),
``order4`` (k = 4), ``odd_sizes`` (prime n, so n^{k−1} is no multiple of any power-of-two block),
``large_logits`` (logits up to ±1000), ``near_ties`` (two key tuples with equal or adjacent logits under
a sharp softmax), ``degenerate`` (n = 1, d = 1, s = 0, identical keys, k = 2), ``unequal_keys`` (K₁ and
K₂ on different scales and V₁ ≠ V₂, so swapping factors shows), ``hypothesis`` (public strategy
:func:`tensor_instances`, derandomized).

Tolerance: the contract ε_a for approximation backends (applicable only within their declared bound B
and logit radius), otherwise :func:`tensor_tolerance`, the precision model derived in
``docs/tensor-attention.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable

import numpy as np

from attnspec.reference.tensor_attention import enclose
from attnspec.spec.tensor_attention import (
    PROBLEM,
    TensorAttentionInstance,
    conditioning,
    make_instance,
    standard_scale,
)
from attnspec.spec.validation import max_abs_exact
from attnspec.conformance.judging.case_common import (ConformanceCase, InstanceProblem, accepts_rows, cast_to,
                                                      derandomized_draws, exact_params, fraction_or_none,
                                                      normalize_rows, optional_engine)
from attnspec.conformance.judging.precision_model import tensor_overflow_reason, tensor_tolerance
from attnspec.conformance.judging.problems import register
from attnspec.conformance.judging.long_context_families import TENSOR_COUNTS, TENSOR_FAMILIES
from attnspec.conformance.judging.edge_instances import TENSOR_EDGE_COUNT, exact_scale_tensor_cases, family_tensor_edge

METHOD = "tensor_attention"
PROFILES = ("quick", "thorough")


@dataclass
class Case(ConformanceCase):
    """One tensor-attention conformance case (``instance``: a TensorAttentionInstance)."""

    problem: str = PROBLEM


# ---------------------------------------------------------------------------------------------
# Families: each yields (q, keys, values, scale, bound) in float64.


def _mats(rng, n, d, bound, count, dv=None):
    return [rng.uniform(-bound, bound, (n, dv or d)) for _ in range(count)]


def family_uniform(rng, count, big):
    bounds = (0.5, 1.0, 1.5)
    for i in range(count):
        n = int(rng.integers(2, 30 if big else 14))
        d = int(rng.integers(1, 6))
        b = bounds[i % len(bounds)]
        q, = _mats(rng, n, d, b, 1)
        yield q, _mats(rng, n, d, b, 2), _mats(rng, n, d, b, 2), Fraction(1, d), b


def family_order4(rng, count, big):
    for i in range(count):
        n = int(rng.integers(2, 10 if big else 7))
        d = int(rng.integers(1, 5))
        b = (0.5, 1.0)[i % 2]
        q, = _mats(rng, n, d, b, 1)
        yield q, _mats(rng, n, d, b, 3), _mats(rng, n, d, b, 3), Fraction(1, d), b


def family_odd_sizes(rng, count, big):
    sizes = [(13, 3, 3), (17, 2, 3), (23, 4, 3), (5, 3, 4), (7, 2, 4), (31, 3, 3)]
    if big:
        sizes += [(37, 5, 3), (11, 3, 4), (61, 3, 3)]
    for i in range(count):
        n, d, k = sizes[i % len(sizes)]
        q, = _mats(rng, n, d, 1.0, 1)
        yield q, _mats(rng, n, d, 1.0, k - 1), _mats(rng, n, d, 1.0, k - 1), Fraction(1, d), 1.0


def family_large_logits(rng, count, big):
    for i in range(count):
        n = int(rng.integers(2, 12))
        d = int(rng.integers(1, 5))
        k = 3 if i % 3 else 4
        keys = [np.sign(rng.uniform(-1.0, 1.0, (n, d))) for _ in range(k - 1)]  # ±1 entries
        target = 1000.0 if i % 2 == 0 else float(rng.uniform(50, 1000))
        # Row i aims at a random tuple J_i: q_i = ±(target/d)·(k₁∘…)[J_i], so |logit(i, J_i)| = target
        # exactly and every other |logit| ≤ target. Half the rows stay ordinary.
        q = rng.uniform(-1.0, 1.0, (n, d))
        for row in range(n):
            if rng.random() < 0.5:
                hit = np.ones(d)
                for key in keys:
                    hit = hit * key[int(rng.integers(0, n))]
                q[row] = (1 if rng.random() < 0.5 else -1) * (target / d) * hit
        yield q, keys, _mats(rng, n, d, 1.0, k - 1), Fraction(1), None


def family_near_ties(rng, count, big):
    for i in range(count):
        n = int(rng.integers(3, 12))
        d = int(rng.integers(1, 5))
        q, = _mats(rng, n, d, 1.0, 1)
        q *= 300.0  # sharp softmax: the tie decides the answer
        k1, k2 = _mats(rng, n, d, 1.0, 2)
        a, b = rng.choice(n, size=2, replace=False)
        k1[b] = k1[a]  # tuples (a, j) and (b, j) have equal logits ...
        if i % 2:
            k1[b, 0] = np.nextafter(k1[a, 0], np.inf)  # ... or a hair apart
        yield q, [k1, k2], _mats(rng, n, d, 1.0, 2), Fraction(1, 4), None


def family_degenerate(rng, count, big):
    n, d = 6, 3
    q, k1, k2, v1, v2 = _mats(rng, n, d, 1.0, 5)
    yield q[:1], [k1[:1], k2[:1]], [v1[:1], v2[:1]], Fraction(1, 2), None  # n = 1
    yield q[:, :1], [k1[:, :1], k2[:, :1]], [v1[:, :1], v2[:, :1]], Fraction(1), None  # d = 1
    yield q, [k1, k2], [v1, v2], Fraction(0), None  # s = 0: plain average of V₁⊘V₂
    yield q, [np.repeat(k1[:1], n, 0), k2], [v1, v2], Fraction(1, 2), None  # identical K₁ rows
    yield q, [k1], [v1], Fraction(1, 2), None  # k = 2: ordinary softmax attention
    yield np.zeros_like(q), [k1, k2], [v1, v2], Fraction(1), None  # zero queries
    yield q, [k1, k2], _mats(rng, n, d, 1.0, 2, dv=5), Fraction(1, 3), None  # d_v = 5 ≠ d = 3
    for _ in range(max(0, count - 7)):
        m = int(rng.integers(1, 8))
        a = _mats(rng, m, 2, 1.0, 5)
        yield a[0], a[1:3], a[3:5], Fraction(0), None


def family_unequal_keys(rng, count, big):
    for i in range(count):
        n = int(rng.integers(3, 12))
        d = int(rng.integers(2, 5))
        q, = _mats(rng, n, d, 1.0, 1)
        k1 = rng.uniform(-1.0, 1.0, (n, d))
        k2 = rng.uniform(0.0, 1.0, (n, d)) * np.linspace(0.1, 1.0, d)  # different scale and sign pattern
        v1 = rng.uniform(-1.0, 1.0, (n, d))
        v2 = rng.uniform(0.2, 1.0, (n, d))
        yield q, [k1, k2], [v1, v2], Fraction(1, d), 1.0


FAMILIES: dict[str, Callable] = {
    "uniform": family_uniform,
    "order4": family_order4,
    "odd_sizes": family_odd_sizes,
    "large_logits": family_large_logits,
    "near_ties": family_near_ties,
    "degenerate": family_degenerate,
    "unequal_keys": family_unequal_keys,
    "edge": family_tensor_edge,
    **TENSOR_FAMILIES,  # maximal tuple in a late block (long_context_families.py)
}
COUNTS = {
    "quick": {"uniform": 6, "order4": 3, "odd_sizes": 6, "large_logits": 3, "near_ties": 4, "degenerate": 7, "unequal_keys": 3, "edge": TENSOR_EDGE_COUNT, "hypothesis": 5, **TENSOR_COUNTS["quick"]},
    "thorough": {"uniform": 40, "order4": 12, "odd_sizes": 9, "large_logits": 16, "near_ties": 16, "degenerate": 12, "unequal_keys": 12, "edge": TENSOR_EDGE_COUNT, "hypothesis": 60, **TENSOR_COUNTS["thorough"]},
}


# ---------------------------------------------------------------------------------------------
# Public hypothesis strategy


def tensor_instances(max_n: int = 8, max_d: int = 4, orders: tuple[int, ...] = (3, 4), bound: float | None = None,
                     dtype: str = "float64"):
    """Hypothesis strategy for :class:`TensorAttentionInstance` (sizes kept small: work is n^k·d).

    ``bound`` fixes B; otherwise B ∈ {0.5, 1, 2, 4}. Scales: 1/d, 1/√d, 0, or any in [−2, 2].
    """
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    width = {"float64": 64, "float32": 32, "float16": 16}[dtype]

    @st.composite
    def draw_instance(draw):
        k = draw(st.sampled_from(orders), label="order")
        n_cap = max_n if k <= 3 else max(1, min(max_n, 6))
        n = draw(st.integers(1, n_cap), label="n")
        d = draw(st.integers(1, max_d), label="d")
        b = bound if bound is not None else draw(st.sampled_from([0.5, 1.0, 2.0, 4.0]), label="bound")
        mat = hnp.arrays(np.dtype(dtype), (n, d), elements=st.floats(-b, b, width=width, allow_nan=False, allow_infinity=False))
        q = draw(mat, label="q")
        keys = [draw(mat, label=f"k{m + 1}") for m in range(k - 1)]
        values = [draw(mat, label=f"v{m + 1}") for m in range(k - 1)]
        scale = draw(st.one_of(
            st.sampled_from(["1/d", "1/sqrt(d)"]).map(lambda kind: standard_scale(d, kind)),
            st.just(Fraction(0)),
            st.floats(-2, 2, width=width, allow_nan=False).map(Fraction),
        ), label="scale")
        scale = Fraction(float(np.asarray(float(scale), dtype=dtype)))
        return make_instance(q, keys, values, scale=scale, bound=b)

    return draw_instance()


# ---------------------------------------------------------------------------------------------
# The problem plug-in


class TensorAttention(InstanceProblem):
    """Tensor attention ``D⁻¹A(V₁⊘…⊘V_{k−1})``: backend method ``tensor_attention(q, keys, values, *, scale)``.

    Contract backends (``contract_eps``) run only on cases inside their declared entry bound B and, when
    they declare ``max_logit_radius`` R_max, with |s|·d·B^k ≤ R_max; without that declaration the
    paper's normalisation |s| ≤ 1/d (so R ≤ B^k) is assumed [S].
    """

    name = PROBLEM
    method = METHOD
    case_type = Case
    family_recipes = FAMILIES
    counts = COUNTS
    salt = 7

    extra_families = ("edge_exact_scale",)

    def extra_cases(self, profile: str, dtypes: tuple[str, ...], seed: int) -> list:
        """Exact non-float rational scales (1/3, 1/10): the backend receives float(s)."""
        return exact_scale_tensor_cases(tuple(d for d in dtypes if d in ("float64", "float32")))

    def make_case(self, family: str, index: int, seed: int, dtype: str, *drawn: Any) -> Case:
        q, keys, values, scale, bound, *rest = drawn
        rows = rest[0] if rest else None  # a recipe may name the output rows to certify (a row subset)
        q = cast_to(q, dtype)
        keys = [cast_to(x, dtype) for x in keys]
        values = [cast_to(x, dtype) for x in values]
        scale = Fraction(float(np.asarray(float(scale), dtype=dtype)))  # the scale the backend receives
        b = None
        if bound is not None:  # rounding to the dtype may nudge an entry past B
            b = max(Fraction(bound), *(max_abs_exact(x) for x in (q, *keys, *values)))
        inst = make_instance(q, keys, values, scale=scale, bound=b)
        return Case(f"{PROBLEM}/{dtype}/{family}/{index:03d}", family, dtype, seed, inst,
                    rows=normalize_rows(rows, inst.output_shape[0]))

    def hypothesis_cases(self, count: int, dtype: str, big: bool, seed: int) -> list[Case]:
        """``count`` instances drawn (derandomized) from :func:`tensor_instances`."""
        drawn = derandomized_draws(tensor_instances(max_n=14 if big else 8, max_d=5 if big else 3, dtype=dtype), count)
        return [Case(f"{PROBLEM}/{dtype}/hypothesis/{i:03d}", "hypothesis", dtype, seed, inst) for i, inst in enumerate(drawn)]

    def call_args(self, case: Case) -> tuple[tuple, dict]:
        inst = case.instance
        return (inst.q, list(inst.keys), list(inst.values)), {"scale": float(inst.scale)}

    def inputs(self, inst: TensorAttentionInstance) -> list[np.ndarray]:
        return [inst.q, *inst.keys, *inst.values]

    def order(self, inst: TensorAttentionInstance) -> int:
        return inst.order

    def precision_tolerance(self, inst: TensorAttentionInstance, model: Any) -> np.ndarray:
        return tensor_tolerance(inst, model)

    def overflow_reason(self, inst: TensorAttentionInstance, model: Any) -> str | None:
        return tensor_overflow_reason(inst, model)

    def vacuity_detail(self, inst: TensorAttentionInstance) -> str:
        return f"n^(k-1) = {inst.num_tuples}"

    def conditioning(self, inst: TensorAttentionInstance) -> dict[str, Any]:
        return conditioning(inst)

    def enclose(self, inst: TensorAttentionInstance, prec: int) -> Any:
        return enclose(inst, prec)

    def arb_rows_engine(self) -> Callable[[Any, int, np.ndarray], Any] | None:
        """The Arb engine restricted to output rows, once ``reference.tensor_attention.enclose`` takes ``rows=``."""
        if not accepts_rows(enclose):
            return None
        return lambda inst, prec, rows: enclose(inst, prec, rows=rows)

    def fast_engine(self) -> Callable[[Any, np.ndarray | None], Any] | None:
        """``reference.fast_tensor.enclose_fast`` (certified float64 bounds), when it is installed."""
        fast = optional_engine("attnspec.reference.fast_tensor", "enclose_fast")
        if fast is None:
            return None
        return lambda inst, rows: fast(inst, rows=rows)

    def row_tolerance(self, inst: Any, model: Any, rows: tuple[int, ...] | None) -> tuple[np.ndarray, str | None]:
        """:func:`tensor_tolerance` of output ``rows``: computed for those rows alone when it takes ``rows=``
        (O(|rows|·n·d)), else sliced from the tolerance of every row (noted in the evidence)."""
        if rows is not None and accepts_rows(tensor_tolerance):
            return tensor_tolerance(inst, model, rows=np.asarray(rows, dtype=np.int64)), None
        return super().row_tolerance(inst, model, rows)

    def instance_arrays(self, inst: TensorAttentionInstance) -> dict[str, np.ndarray]:
        out = {"q": inst.q}
        for m, (k, v) in enumerate(zip(inst.keys, inst.values)):
            out[f"k{m + 1}"] = k
            out[f"v{m + 1}"] = v
        return out

    def instance_params(self, inst: TensorAttentionInstance) -> dict[str, Any]:
        return {"order": inst.order, **exact_params(inst)}

    def instance_from_files(self, arrays: dict[str, np.ndarray], params: dict[str, Any]) -> TensorAttentionInstance:
        """Rebuild (and re-validate) an instance from replay-file arrays and JSON parameters."""
        order = int(params["order"])
        keys = [arrays[f"k{m + 1}"] for m in range(order - 1)]
        values = [arrays[f"v{m + 1}"] for m in range(order - 1)]
        return make_instance(arrays["q"], keys, values, scale=fraction_or_none(params["scale"]),
                             bound=fraction_or_none(params.get("bound")), eps=fraction_or_none(params.get("eps")))


problem = register(TensorAttention())
