"""Certified reference for dynamic attention (ODAMV / OAMV): exact replay, Arb enclosures per query.

The state is the exact rational state of :class:`attnspec.spec.dynamic_attention.DynamicState`
(K_ij ← K_ij + δ computed in Fractions). A query needs only row i:

    l_k = s·⟨q_i, k_k⟩            exactly (FLINT fmpq; O(n·d) rational operations)
    w_k = exp(l_k − c)            in Arb balls, c = float64 approximation of max_k l_k (any exact c is
                                  valid: it cancels in the quotient, it only keeps exp in range)
    ODAMV: (Σ_k w_k V_kj) / (Σ_k w_k)
    OAMV:  exp(c) · Σ_k w_k V_kj

The returned callable ``enclose(prec)`` captures the exact row data at query time, so it stays valid
after later updates; it gives a 1×1 :class:`Enclosure` whose ball contains the true value.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Callable, Iterator

from flint import arb, fmpq

from attnspec.spec.dynamic_attention import DynamicState, Op, Query, Trace
from attnspec.reference.enclosure import Enclosure, exact_arb, working_precision

DEFAULT_PREC = 128


def _fmpq(x: Fraction) -> fmpq:
    return fmpq(x.numerator, x.denominator)


def row_data(state: DynamicState, i: int, j: int) -> tuple[list[fmpq], list[Fraction]]:
    """Exact logits of row i (as fmpq) and the exact value column j, captured now."""
    q, k, v, scale = state.require_init("Query")
    q_i = [_fmpq(x) for x in q[i]]
    s = _fmpq(scale)
    logits = []
    for key in k:
        acc = fmpq(0)
        for a, b in zip(q_i, key):
            acc += a * _fmpq(b)
        logits.append(s * acc)
    return logits, [v[r, j] for r in range(v.shape[0])]


def _approx_float(x: fmpq) -> float:
    """A float near x (clamped to ±2^1000 when out of range: any finite shift is valid)."""
    try:
        return float(Fraction(int(x.p), int(x.q)))
    except OverflowError:
        return 2.0**1000 if x > 0 else -(2.0**1000)


def query_enclosure(logits: list[fmpq], values: list[Fraction], normalised: bool) -> Callable[[int], Enclosure]:
    """``enclose(prec)`` for one query from its exact row data (see module docstring)."""
    shift = max(_approx_float(x) for x in logits)

    def enclose(prec: int) -> Enclosure:
        with working_precision(prec):
            c = arb(shift)
            weights = [arb.exp(arb(x) - c) for x in logits]
            numer = arb(0)
            for w, v in zip(weights, values):
                numer += w * exact_arb(v)
            if normalised:
                denom = arb(0)
                for w in weights:
                    denom += w
                value = numer / denom
            else:
                value = numer * arb.exp(c)
        return Enclosure(balls=[value], shape=(1, 1), prec=prec)

    return enclose


class DynamicReference:
    """Exact ODAMV/OAMV structure: ``apply(op)`` returns None for Init/updates and the certified
    ``enclose(prec)`` callable for a Query. Update cost O(1); query cost O(n·d) rationals + n balls."""

    def __init__(self, normalised: bool = True):
        self.state = DynamicState(normalised)

    @property
    def normalised(self) -> bool:
        return self.state.normalised

    def apply(self, op: Op) -> Callable[[int], Enclosure] | None:
        op = self.state.apply(op)
        if isinstance(op, Query):
            logits, values = row_data(self.state, op.i, op.j)
            return query_enclosure(logits, values, self.state.normalised)
        return None


def replay(trace: Trace) -> Iterator[tuple[int, Op, Callable[[int], Enclosure]]]:
    """Replay ``trace`` exactly, yielding (op index, query, enclose) for every Query."""
    ref = DynamicReference(trace.normalised)
    for t, op in enumerate(trace.ops):
        enc = ref.apply(op)
        if enc is not None:
            yield t, op, enc


__all__ = ["DynamicReference", "replay", "query_enclosure", "row_data", "DEFAULT_PREC"]
