"""Exact heavy keys: leverage scores, the p = 4 lifted bound and the heavy entries, in integer and
rational arithmetic (python-flint), so every "≥ ε" is decided with certainty.

Integer form. An exact matrix M (floats are dyadic rationals) is M = M_int / D with one common
denominator D (:func:`integer_form`). Leverage scores are invariant under K → c·K and A under
q_i → c·q_i, so everything below runs on integer matrices.

Leverage scores (p = 2), rank-deficient K included. With G = KᵀK (exact fmpz_mat), the pivot columns S
of rref(G) are a maximal linearly independent set of K's columns (G x = 0 ⇔ K x = 0, so G and K have the
same column dependencies). B = K[:, S] spans col-span(K), G_S = BᵀB = G[S, S] is invertible, and the
projection onto col-span(K) is K(KᵀK)⁺Kᵀ = B G_S⁻¹ Bᵀ, whose diagonal is

    τ_j = b_jᵀ G_S⁻¹ b_j = (b_jᵀ adj(G_S) b_j) / det(G_S)          (exact rationals; Σ τ_j = |S| = rank K).

No QR and no pivot threshold: the elimination is exact, so rank(K) is exact.

p = 4 bound. ⟨k, y⟩⁴ = ⟨φ(k), φ(y)⟩² with φ the symmetric lift whose off-diagonal coordinates carry √2
(irrational). Leverage depends only on the column space, and the columns k_a·k_b (a ≤ b, *unweighted*)
span the same space as the √2-weighted ones (each column is scaled by a nonzero constant) and as the full
d² lift k ⊗ k (which only repeats columns). So τ_j(φ(K)) is computed exactly on the rational,
unweighted n × binom(d+1, 2) matrix [k_a k_b]_{a≤b}; its rank is Ψ.

Heavy entries. S = Q_int K_intᵀ exactly (fmpz_mat), W_ij = S_ij^p (Python ints, p even),
Z_i = Σ_l W_il, and A_ij = W_ij / Z_i ≥ t = a/b ⇔ b·W_ij ≥ a·Z_i (Z_i > 0; a row with Z_i = 0 has
A_i· = 0). No rounding anywhere, so there is never an undecided entry.

Softmax (negative control only): A = exp(QKᵀ) row-normalised is enclosed in Arb balls
(:func:`softmax_weights`, through the softmax reference with V = I); :func:`decide_at_least` answers
True/False, or None when the ball straddles the threshold (a tie).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from flint import arb, fmpq_mat, fmpz_mat

from attnspec.spec.heavy_keys import HeavyEntriesInstance, UniversalSetInstance
from attnspec.reference.enclosure import Enclosure, arb_bounds_fraction

__all__ = [
    "integer_form", "lift_columns", "LeverageScores", "leverage_scores", "universal_reference",
    "HeavyEntriesReference", "heavy_reference", "maximising_queries", "softmax_weights", "decide_at_least",
]


def integer_form(m: np.ndarray) -> list[list[int]]:
    """Rows of integers M_int with M = M_int / D for one common D > 0 (D itself is not needed: every
    quantity used here is invariant under scaling)."""
    fr = [[v if isinstance(v, Fraction) else Fraction(float(v)) for v in row] for row in m.tolist()]
    den = 1
    for row in fr:
        for v in row:
            den = den * v.denominator // math.gcd(den, v.denominator)
    return [[int(v * den) for v in row] for row in fr]


def lift_columns(rows: list[list[int]], p: int) -> list[list[int]]:
    """Rows of the exact lift whose column space is that of φ(K): K itself for p = 2, the products
    k_a·k_b (a ≤ b, unweighted) for p = 4."""
    if p == 2:
        return rows
    d = len(rows[0])
    pairs = [(a, b) for a in range(d) for b in range(a, d)]
    return [[row[a] * row[b] for a, b in pairs] for row in rows]


def _pivot_columns(gram: fmpz_mat) -> list[int]:
    reduced, _den, rank = gram.rref()
    pivots = []
    for r in range(rank):
        pivots.append(next(c for c in range(gram.ncols()) if reduced[r, c] != 0))
    return pivots


@dataclass(frozen=True)
class LeverageScores:
    """Exact leverage scores τ_j (Fractions) of a matrix, its exact rank Ψ = Σ τ_j, and the basis
    columns S used (pivots of rref(KᵀK))."""

    tau: tuple[Fraction, ...]
    rank: int
    basis: tuple[int, ...]

    def at_least(self, t: Fraction) -> list[int]:
        """The indices j with τ_j ≥ t (exact)."""
        return [j for j, x in enumerate(self.tau) if x >= t]


def _leverage_of_integer_rows(rows: list[list[int]]) -> tuple[LeverageScores, list[list[int]], Any]:
    mat = fmpz_mat(rows)
    gram = mat.transpose() * mat
    basis = _pivot_columns(gram)
    n = len(rows)
    if not basis:
        return LeverageScores(tuple(Fraction(0) for _ in range(n)), 0, ()), [], None
    g_s = fmpz_mat([[gram[a, b] for b in basis] for a in basis])
    det = g_s.det()
    adj_q = fmpq_mat(g_s).inv() * det  # adj(G_S) = det·G_S⁻¹: integral
    adj = fmpz_mat([[int(x.p) for x in row] for row in adj_q.tolist()])
    b_rows = [[row[c] for c in basis] for row in rows]
    numer = fmpz_mat(b_rows) * adj
    det_i = int(det)
    tau = []
    for j, b in enumerate(b_rows):
        tau.append(Fraction(sum(int(numer[j, c]) * b[c] for c in range(len(basis))), det_i))
    return LeverageScores(tuple(tau), len(basis), tuple(basis)), b_rows, (numer, det_i)


def leverage_scores(k: np.ndarray, p: int = 2) -> LeverageScores:
    """Exact τ_j of K (p = 2) or of its symmetric lift φ(K) (p = 4): τ_j = b_jᵀ G_S⁻¹ b_j (module
    docstring), with Ψ = rank the exact rank of K or φ(K)."""
    return _leverage_of_integer_rows(lift_columns(integer_form(k), p))[0]


_UNIVERSAL_CACHE: "weakref.WeakKeyDictionary[Any, LeverageScores]" = weakref.WeakKeyDictionary()


def universal_reference(inst: UniversalSetInstance) -> LeverageScores:
    """The exact scores of ``inst`` (computed once per instance object): U_ε = at_least(ε)."""
    if inst not in _UNIVERSAL_CACHE:
        _UNIVERSAL_CACHE[inst] = leverage_scores(inst.k, inst.p)
    return _UNIVERSAL_CACHE[inst]


def maximising_queries(k: np.ndarray) -> list[list[Fraction]]:
    """For each key j an exact y_j with ⟨k_j, y_j⟩² / ‖K y_j‖² = τ_j (the p = 2 sensitivity attained):
    y_j = G_S⁻¹ b_j on the basis coordinates S and 0 elsewhere, so K y_j = B G_S⁻¹ b_j = K (KᵀK)⁺ k_j.
    Rows for keys with τ_j = 0 are zero. Scaled by the common det (any scale gives the same A)."""
    rows = integer_form(k)
    scores, b_rows, extra = _leverage_of_integer_rows(rows)
    d = len(rows[0])
    out = []
    for j in range(len(rows)):
        y = [Fraction(0)] * d
        if extra is not None:
            numer, _det = extra
            for c, col in enumerate(scores.basis):
                y[col] = Fraction(int(numer[j, c]))  # (b_jᵀ adj(G_S))_c: adj is symmetric
        out.append(y)
    return out


class HeavyEntriesReference:
    """Exact A = |QKᵀ|^p row-normalised, held as integers: W_ij = S_ij^p and Z_i = Σ_l W_il."""

    def __init__(self, inst: HeavyEntriesInstance):
        s = fmpz_mat(integer_form(inst.q)) * fmpz_mat(integer_form(inst.k)).transpose()
        m, n = inst.m, inst.n
        flat = [int(x) ** inst.p for x in s.entries()]
        self.weights = np.empty((m, n), dtype=object)
        self.weights[:, :] = np.array(flat, dtype=object).reshape(m, n)
        self.row_sums = [sum(flat[i * n:(i + 1) * n]) for i in range(m)]
        self.eps = inst.eps
        self._masks: dict[Fraction, np.ndarray] = {}

    def weight(self, i: int, j: int) -> Fraction:
        """A_ij exactly (0 in a row whose denominator is 0)."""
        z = self.row_sums[i]
        return Fraction(0) if z == 0 else Fraction(int(self.weights[i, j]), z)

    def at_least(self, t: Fraction) -> np.ndarray:
        """Boolean m×n mask of A_ij ≥ t, decided exactly (b·W_ij ≥ a·Z_i with t = a/b, Z_i > 0)."""
        t = Fraction(t)
        if t not in self._masks:
            z = np.array(self.row_sums, dtype=object).reshape(-1, 1)
            mask = (self.weights * t.denominator >= z * t.numerator).astype(bool)
            mask &= (z != 0).astype(bool)
            self._masks[t] = mask
        return self._masks[t]

    def heavy(self) -> np.ndarray:
        """The (i, j) pairs with A_ij ≥ ε, row-major, as an int64 array of shape (h, 2)."""
        return np.argwhere(self.at_least(self.eps)).astype(np.int64).reshape(-1, 2)


_HEAVY_CACHE: "weakref.WeakKeyDictionary[Any, HeavyEntriesReference]" = weakref.WeakKeyDictionary()


def heavy_reference(inst: HeavyEntriesInstance) -> HeavyEntriesReference:
    """The exact reference of ``inst``, computed once per instance object."""
    if inst not in _HEAVY_CACHE:
        _HEAVY_CACHE[inst] = HeavyEntriesReference(inst)
    return _HEAVY_CACHE[inst]


# ---------------------------------------------------------------------------------------------
# Softmax: the negative control (no exact decision; enclosures)


def softmax_weights(q: np.ndarray, k: np.ndarray, prec: int = 128) -> Enclosure:
    """Arb enclosure of A = exp(QKᵀ) row-normalised (Q and K of one shape): softmax attention with
    V = I_n, whose output is A itself."""
    from attnspec.reference.softmax_attention import enclose
    from attnspec.spec.softmax_attention import make_instance

    eye = np.eye(k.shape[0], dtype=np.float64)
    return enclose(make_instance(np.asarray(q, dtype=np.float64), np.asarray(k, dtype=np.float64), eye, scale=1), prec)


def decide_at_least(ball: arb, t: Fraction) -> bool | None:
    """Whether the value enclosed by ``ball`` is ≥ t: True or False when certain, None when the ball
    contains t in its interior or is not finite (undecided: a tie, or too little precision)."""
    if not ball.is_finite():
        return None
    lo, hi = arb_bounds_fraction(ball)
    if lo >= t:
        return True
    if hi < t:
        return False
    return None
