"""Heavy keys (LevAttention): ε-heavy entries of f-attention and universal key sets.

Definitions
-----------
Queries Q ∈ ℝ^{m×d}, keys K ∈ ℝ^{n×d} (exact values: a float entry is the dyadic rational it encodes),
a non-negative function f and the row-normalised attention

    A_ij = f(⟨q_i, k_j⟩) / Σ_l f(⟨q_i, k_l⟩)         (a row with Σ_l f(⟨q_i, k_l⟩) = 0 is all zero).

The problems take f(x) = |x|^p for p ∈ {2, 4} (even, so A is rational on rational inputs and
"A_ij ≥ ε" is decidable exactly); f = exp is defined here only for the negative control (no universal
set of size independent of n exists for it; docs/heavy-keys.md).

- **ε-heavy entry**: (i, j) with A_ij ≥ ε (a tie A_ij = ε is heavy).
- **f-sensitivity** of key j: σ_j^f(K) = sup_y f(⟨k_j, y⟩) / Σ_l f(⟨k_l, y⟩) over y with a positive
  denominator (0 when no y has one), and Ψ_f(K) = Σ_j σ_j^f(K).
- **Universal-set property** (checkable: :func:`is_universal_for`): U ⊂ [n] is ε-universal for K if
  for every query y and every j, A_{y,j} ≥ ε ⇒ j ∈ U. U_ε = {j : σ_j ≥ ε} is the smallest such set,
  and |U_ε| ≤ Ψ_f/ε.
- **p = 2**: σ_j = τ_j = k_jᵀ(KᵀK)⁺k_j, the leverage score, attained by y_j* = (KᵀK)⁺k_j, and
  Ψ = rank(K) ≤ d.
- **p = 4**: ⟨k, y⟩⁴ = ⟨φ(k), φ(y)⟩² for the symmetric lift φ (dimension binom(d+1, 2)), so
  σ_j^{(4)}(K) ≤ τ_j(φ(K)), the leverage of φ(k_j) in the n × binom(d+1, 2) matrix φ(K). The exact
  sensitivity is a non-convex supremum; what the problems use is this computable bound:
  U_ε := {j : τ_j(φ(K)) ≥ ε}, Ψ := rank(φ(K)) ≤ binom(d+1, 2). It is universal (it contains every
  {j : σ_j^{(4)} ≥ ε}) and |U_ε| ≤ Ψ/ε.

Problems
--------
``heavy_entries`` (:class:`HeavyEntriesInstance`): output every (i, j) with A_ij ≥ ε (and, at a declared
slack s ≥ 0, possibly more, each with A_ij ≥ ε/(1+s)).
``universal_set`` (:class:`UniversalSetInstance`): output U ⊇ U_ε, every member with τ_j ≥ ε/(1+s) (so
|U| ≤ (1+s)·Ψ/ε).

Validity: Q and K are finite 2-D matrices with at least one row and column and the same d; one float
dtype (float16/32/64) or exact rationals; ε is a rational in (0, 1]; p is the integer 2 or 4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterable, Sequence

import numpy as np

from attnspec.spec.validation import SpecError, as_exact_matrix, exact_scalar

HEAVY_ENTRIES = "heavy_entries"
UNIVERSAL_SET = "universal_set"
SUPPORTED_P = (2, 4)

__all__ = [
    "HEAVY_ENTRIES", "UNIVERSAL_SET", "SUPPORTED_P", "HeavyEntriesInstance", "UniversalSetInstance",
    "check_eps", "check_p", "lift_dimension", "size_bound", "is_universal_for", "attention_row",
    "heavy_in_row",
]


def check_eps(eps: Any) -> Fraction:
    """ε as an exact rational in (0, 1] (floats taken exactly), else :class:`SpecError`."""
    e = exact_scalar(eps, "eps")
    if not 0 < e <= 1:
        raise SpecError(f"eps must lie in (0, 1], got {float(e)!r}")
    return e


def check_p(p: Any) -> int:
    """p as the int 2 or 4 (the even powers whose A is rational), else :class:`SpecError`."""
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, np.integer)) or int(p) not in SUPPORTED_P:
        raise SpecError(f"p must be the integer 2 or 4, got {p!r}")
    return int(p)


def _same_kind(a: np.ndarray, b: np.ndarray, names: str) -> None:
    if a.dtype != b.dtype:
        raise SpecError(f"{names} must have one dtype, got {a.dtype} and {b.dtype}")


def lift_dimension(d: int, p: int) -> int:
    """binom(d + p/2 − 1, p/2): the dimension of the symmetric order-p/2 lift (d for p = 2)."""
    return math.comb(d + p // 2 - 1, p // 2)


def size_bound(psi: Fraction | int, eps: Fraction, slack: Fraction | float = 0) -> Fraction:
    """(1 + s)·Ψ/ε: at most this many keys have a score ≥ ε/(1+s) when the scores sum to Ψ."""
    return (1 + Fraction(slack)) * Fraction(psi) / eps


class _Keys:
    """n and d of an instance holding keys ``k`` (n×d)."""

    k: np.ndarray

    @property
    def n(self) -> int:
        return int(self.k.shape[0])

    @property
    def d(self) -> int:
        return int(self.k.shape[1])


@dataclass(frozen=True, eq=False)
class UniversalSetInstance(_Keys):
    """A validated universal-set instance: keys K (n×d), threshold ε ∈ (0, 1], power p ∈ {2, 4}."""

    k: np.ndarray
    eps: Fraction
    p: int

    @property
    def lift_dim(self) -> int:
        return lift_dimension(self.d, self.p)


@dataclass(frozen=True, eq=False)
class HeavyEntriesInstance(_Keys):
    """A validated heavy-entries instance: queries Q (m×d), keys K (n×d), ε ∈ (0, 1], p ∈ {2, 4}."""

    q: np.ndarray
    k: np.ndarray
    eps: Fraction
    p: int

    @property
    def m(self) -> int:
        return int(self.q.shape[0])

    def keys(self) -> UniversalSetInstance:
        """The universal-set instance of the same K, ε and p."""
        return UniversalSetInstance(self.k, self.eps, self.p)


def make_universal_instance(k: Any, *, eps: Any, p: Any) -> UniversalSetInstance:
    """Validate (K, ε, p); the instance holds a private immutable copy of K."""
    return UniversalSetInstance(as_exact_matrix(k, "k"), check_eps(eps), check_p(p))


def make_heavy_instance(q: Any, k: Any, *, eps: Any, p: Any) -> HeavyEntriesInstance:
    """Validate (Q, K, ε, p): same d, one dtype; private immutable copies of Q and K."""
    qq, kk = as_exact_matrix(q, "q"), as_exact_matrix(k, "k")
    if qq.shape[1] != kk.shape[1]:
        raise SpecError(f"q and k must have the same number of columns d, got {qq.shape} and {kk.shape}")
    _same_kind(qq, kk, "q and k")
    return HeavyEntriesInstance(qq, kk, check_eps(eps), check_p(p))


# ---------------------------------------------------------------------------------------------
# The definitions as exact (small, slow) functions: what the reference must agree with.


def _exact(x: Any) -> Fraction:
    return x if isinstance(x, Fraction) else Fraction(float(x)) if isinstance(x, (float, np.floating)) else Fraction(x)


def attention_row(y: Sequence[Any], k: np.ndarray, p: int) -> list[Fraction]:
    """A_{y,·} = |⟨y, k_j⟩|^p / Σ_l |⟨y, k_l⟩|^p exactly (all zero when the denominator is 0)."""
    scores = [sum((_exact(a) * _exact(b) for a, b in zip(y, row)), Fraction(0)) ** p for row in k]
    scores = [abs(s) for s in scores]
    total = sum(scores, Fraction(0))
    return [Fraction(0)] * len(scores) if total == 0 else [s / total for s in scores]


def heavy_in_row(row: Sequence[Fraction], eps: Fraction) -> list[int]:
    """The key indices j with A_{y,j} ≥ ε (ties are heavy)."""
    return [j for j, a in enumerate(row) if a >= eps]


def is_universal_for(members: Iterable[int], rows: Iterable[Sequence[Fraction]], eps: Fraction) -> list[tuple[int, int]]:
    """The universal-set property on given queries: every (row, j) with A ≥ ε whose j is not in U
    (empty: U is universal for these rows). It is a statement about all queries; tests check it on
    adversarial and random ones."""
    u = set(int(j) for j in members)
    return [(r, j) for r, row in enumerate(rows) for j in heavy_in_row(row, eps) if j not in u]
