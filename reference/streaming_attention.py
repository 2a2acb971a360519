"""Certified judging of one streaming run: enclosed output columns, enclosed best k-sparse errors, and a
certain decision of the guarantee ‖y_c − x̂_c‖₂ ≤ (1 + ε₁)·Err_k(y_c) + ε₂ for every column.

The columns y_c come from the Arb enclosure of softmax attention
(:func:`attnspec.reference.softmax_attention.enclose`), as outward-rounded float bounds lo ≤ y ≤ hi.

Best k-sparse error. Err_k(y)² = Σ of the n − k smallest y_j². With y_j ∈ [lo_j, hi_j], y_j² lies in
[a_j, b_j] (a_j = 0 when the ball contains 0), and the sum of the n − k smallest of the true y_j² lies
between the sum of the n − k smallest a_j and the sum of the n − k smallest b_j (order statistics are
monotone in every argument). No sparsity pattern is chosen, so ties between enclosures cannot make it
wrong: they only widen the interval, and a run that the interval cannot decide is undecided.

Float arithmetic is made rigorous by directed bounds: each term is rounded outward with ``nextafter``,
and a float sum of m nonnegative terms is within relative γ = m·u/(1 − m·u) of the exact sum, so the
lower sum is multiplied by (1 − 2γ) and the upper by (1 + 2γ) (then rounded outward). The final
comparison with ε₁, ε₂ is exact (Fractions).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from attnspec.reference.softmax_attention import enclose
from attnspec.spec.streaming_attention import StreamingInstance, dense_columns

U = 2.0**-53
VIOLATED, MET, UNDECIDED = "violated", "met", "undecided"


def certified_columns(inst: StreamingInstance, prec: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Float bounds lo ≤ T ≤ hi (n×d_v) of the exact attention output."""
    return enclose(inst.attention, prec).float_bounds()


def _sum_down(x: np.ndarray, axis: int = 0) -> np.ndarray:
    m = max(int(x.shape[axis]), 1)
    g = m * U / (1 - m * U)
    return np.nextafter(np.sum(x, axis=axis) * (1 - 2 * g), -np.inf).clip(min=0.0)


def _sum_up(x: np.ndarray, axis: int = 0) -> np.ndarray:
    m = max(int(x.shape[axis]), 1)
    g = m * U / (1 - m * U)
    return np.nextafter(np.sum(x, axis=axis) * (1 + 2 * g), np.inf)


def _square_bounds(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of x² for x ∈ [lo, hi] (outward)."""
    small = np.where((lo <= 0) & (hi >= 0), 0.0, np.minimum(np.abs(lo), np.abs(hi)))
    big = np.maximum(np.abs(lo), np.abs(hi))
    return np.nextafter(small * small, 0.0).clip(min=0.0), np.nextafter(big * big, np.inf)


def best_k_sparse_error_sq(lo: np.ndarray, hi: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per column, bounds of Err_k(y_c)² for lo ≤ y ≤ hi (n×d_v): sums of the n − k smallest square bounds."""
    a, b = _square_bounds(lo, hi)
    n = lo.shape[0]
    a_s, b_s = np.sort(a, axis=0)[: n - k], np.sort(b, axis=0)[: n - k]
    if n - k == 0:
        z = np.zeros(lo.shape[1])
        return z, z
    return _sum_down(a_s), _sum_up(b_s)


def error_sq(lo: np.ndarray, hi: np.ndarray, estimate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column, bounds of ‖y_c − x̂_c‖² for lo ≤ y ≤ hi (n×d_v) and the dense estimate."""
    elo = np.nextafter(lo - estimate, -np.inf)
    ehi = np.nextafter(hi - estimate, np.inf)
    a, b = _square_bounds(elo, ehi)
    return _sum_down(a), _sum_up(b)


@dataclass(frozen=True)
class ColumnCheck:
    status: str
    err: tuple[float, float]  # bounds of ‖y − x̂‖₂
    best: tuple[float, float]  # bounds of Err_k(y)₂


def _sqrt_down(x: float) -> float:
    return float(np.nextafter(np.sqrt(x), 0.0)) if x > 0 else 0.0


def _sqrt_up(x: float) -> float:
    return float(np.nextafter(np.sqrt(x), np.inf))


def check_run(lo: np.ndarray, hi: np.ndarray, indices: np.ndarray, values: np.ndarray, k: int,
              eps1: float, eps2: float) -> list[ColumnCheck]:
    """The certain decision for every column (violated / met / undecided)."""
    n = lo.shape[0]
    est = dense_columns(indices, values, n)
    e_lo, e_hi = error_sq(lo, hi, est)
    b_lo, b_hi = best_k_sparse_error_sq(lo, hi, k)
    one = 1 + Fraction(eps1)
    out = []
    for c in range(lo.shape[1]):
        err = (_sqrt_down(float(e_lo[c])), _sqrt_up(float(e_hi[c])))
        best = (_sqrt_down(float(b_lo[c])), _sqrt_up(float(b_hi[c])))
        if Fraction(err[0]) > one * Fraction(best[1]) + Fraction(eps2):
            status = VIOLATED
        elif Fraction(err[1]) <= one * Fraction(best[0]) + Fraction(eps2):
            status = MET
        else:
            status = UNDECIDED
        out.append(ColumnCheck(status, err, best))
    return out


def run_status(checks: list[ColumnCheck]) -> str:
    """The joint event over columns: violated if any column is, met if all are, undecided otherwise."""
    states = {c.status for c in checks}
    return VIOLATED if VIOLATED in states else MET if states <= {MET} else UNDECIDED


def column_norms(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Upper bounds of ‖y_c‖₂."""
    return np.sqrt(_sum_up(_square_bounds(lo, hi)[1])) * (1 + 4 * U)


__all__ = ["certified_columns", "best_k_sparse_error_sq", "error_sq", "check_run", "run_status", "column_norms",
           "ColumnCheck", "VIOLATED", "MET", "UNDECIDED"]


# --- Certified rows at large n -----------------------------------------------------------------------
# The full enclosure is n²; a check of chosen output rows needs only O(|rows|·n·d) Arb work.

def certified_rows(q_rows: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, prec: int = 128,
                   block: int = 2):
    """Arb enclosure of the output rows T_{i,:} = Σ_j e^{ℓ_ij} v_j / Σ_j e^{ℓ_ij} for the given query rows.

    The same mathematics as :func:`attnspec.reference.softmax_attention.enclose`, one row at a time:
    ℓ_ij = s·⟨q_i, k_j⟩ − m_i with the float inputs and the (float, hence dyadic) scale taken exactly,
    computed as one ball product [s·q_i | −m_i]·[K | 1]ᵀ at ``prec`` + b bits (every |logit| < 2^b); the
    shift m_i is the float64 row maximum (any exact number: it cancels in the quotient). Then per entry
    exp in balls, and the numerator and the denominator together as the ball product e_i·[V | 1].
    ``block`` rows are done at a time, so memory is O(block·n) balls. Returns an Enclosure of shape
    (|rows|, d_v) whose balls contain the exact rows.
    """
    from flint import arb, arb_mat

    from attnspec.reference.enclosure import Enclosure, working_precision
    from attnspec.reference.softmax_attention import HUGE_LOGIT_BITS, logit_bits

    q_rows, k, v = (np.asarray(x, dtype=np.float64) for x in (q_rows, k, v))
    n, dv = v.shape
    bits = logit_bits(scale, [q_rows, k], k.shape[1])
    if bits > HUGE_LOGIT_BITS:
        raise ValueError("logits beyond 2^40: bounded entries are assumed (use the full enclosure)")
    shifts = (float(scale) * (q_rows @ k.T)).max(axis=1)
    balls: list = []
    with working_precision(prec + bits):
        keys = arb_mat(k.T.tolist() + [[1.0] * n])
        values1 = arb_mat(np.hstack([v, np.ones((n, 1))]).tolist())
        s = arb(float(scale))
        exp = arb.exp
        for a in range(0, q_rows.shape[0], block):
            rows = q_rows[a:a + block]
            left = arb_mat([[s * arb(x) for x in row] + [arb(-float(m))] for row, m in zip(rows.tolist(), shifts[a:a + block])])
            logits = (left * keys).entries()
            for r in range(rows.shape[0]):
                weights = arb_mat([list(map(exp, logits[r * n:(r + 1) * n]))])
                sums = (weights * values1).entries()
                balls.extend(x / sums[dv] for x in sums[:dv])
    return Enclosure(balls=balls, shape=(q_rows.shape[0], dv), prec=prec)


def sub_enclosure(enc, picks: list[tuple[int, int]], shape: tuple[int, ...]):
    """The Enclosure of chosen entries (row, column) of ``enc``, reshaped to ``shape``."""
    from attnspec.reference.enclosure import Enclosure

    return Enclosure(balls=[enc.ball(p) for p in picks], shape=shape, prec=enc.prec, engine=enc.engine)


__all__ += ["certified_rows", "sub_enclosure"]
