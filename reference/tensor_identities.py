"""sympy proofs of the algebraic identities the fast tensor-attention algorithm relies on.

For matrices U₂, …, U_k ∈ ℝ^{n×r} and V₁, …, V_{k−1} ∈ ℝ^{n×c} (⊘ = column-wise Kronecker product,
∘ = Hadamard product, 1 = all-ones vector):

(I1)  (U₂⊘…⊘U_k)ᵀ (V₁⊘…⊘V_{k−1}) = (U₂ᵀV₁) ∘ (U₃ᵀV₂) ∘ … ∘ (U_kᵀV_{k−1})        (r×c)
(I2)  (U₂⊘…⊘U_k)ᵀ 1_{n^{k−1}}    = (U₂ᵀ1_n) ∘ … ∘ (U_kᵀ1_n)                     (r)
(I3)  φ(x₁ ∘ … ∘ x_m) = φ(x₁) ∘ … ∘ φ(x_m) for the monomial feature map φ(x)_α = x^α
      (monomials are multiplicative), so row J of U₂⊘…⊘U_k with U_m[j, α] = K_m[j]^α is φ(k_J).

What a symbolic check proves [D]. Each function below builds the two sides with *independent symbols*
for every matrix entry, at one fixed size (n, r, c, k), expands both into polynomials and checks that
their difference is the zero polynomial. A polynomial identity in free symbols holds for every real
(indeed every commutative-ring) substitution, so the check is a proof **for that size**: it holds for
all matrices of that size, not just sampled ones. It proves nothing about other sizes on its own.

What the index argument proves in general [D]. Entry (a, l) of the left side of (I1) is
Σ_{j₁…j_{k−1}} Π_m U_{m+1}[j_m, a] V_m[j_m, l] = Π_m (Σ_{j} U_{m+1}[j, a] V_m[j, l]), by distributivity
(a product of k−1 independent finite sums), which is the right side; (I2) is (I1) with V_m = 1. (I3) is
(Π_m x_m)^α = Π_t (Π_m x_{m,t})^{α_t} = Π_m x_m^α. The argument is independent of n, r, c, k; the
symbolic checks guard the *implementation* of ⊘ (row-order convention, which factor pairs with which)
against the algebra, which is exactly where code goes wrong.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import sympy as sp


def symbolic_matrix(name: str, rows: int, cols: int) -> sp.Matrix:
    """A rows×cols matrix of independent real symbols name_i_j."""
    return sp.Matrix(rows, cols, lambda i, j: sp.Symbol(f"{name}_{i}_{j}", real=True))


def column_kronecker(mats: Sequence[sp.Matrix], order: str = "lexicographic") -> sp.Matrix:
    """X₁⊘…⊘X_m: row for the tuple (j₁, …, j_m) is the Hadamard product of the rows X_t[j_t].

    ``lexicographic``: j₁ varies slowest (attnspec's convention); ``paper``: j₁ fastest.
    """
    n = mats[0].rows
    cols = mats[0].cols
    tuples = list(itertools.product(range(n), repeat=len(mats)))
    if order == "paper":
        tuples = [t[::-1] for t in itertools.product(range(n), repeat=len(mats))]
    elif order != "lexicographic":
        raise ValueError(f"unknown order {order!r}")
    rows = []
    for tup in tuples:
        rows.append([sp.Mul(*[m[j, c] for m, j in zip(mats, tup)]) for c in range(cols)])
    return sp.Matrix(rows)


def hadamard(mats: Sequence[sp.Matrix]) -> sp.Matrix:
    out = mats[0]
    for m in mats[1:]:
        out = out.multiply_elementwise(m)
    return out


def _is_zero(m: sp.Matrix) -> bool:
    return all(sp.expand(x) == 0 for x in m)


def prove_value_identity(n: int, r: int, c: int, k: int, order: str = "lexicographic") -> bool:
    """(I1) at size n×r (U's), n×c (V's), order k (k − 1 factors): True iff the difference expands to 0."""
    us = [symbolic_matrix(f"U{m + 2}", n, r) for m in range(k - 1)]
    vs = [symbolic_matrix(f"V{m + 1}", n, c) for m in range(k - 1)]
    lhs = column_kronecker(us, order).T * column_kronecker(vs, order)
    rhs = hadamard([u.T * v for u, v in zip(us, vs)])
    return _is_zero(lhs - rhs)


def prove_ones_identity(n: int, r: int, k: int, order: str = "lexicographic") -> bool:
    """(I2) at size n×r, order k: True iff (U₂⊘…⊘U_k)ᵀ1 − ∘_m (U_mᵀ1) expands to 0."""
    us = [symbolic_matrix(f"U{m + 2}", n, r) for m in range(k - 1)]
    ones_big = sp.ones(n ** (k - 1), 1)
    lhs = column_kronecker(us, order).T * ones_big
    rhs = hadamard([u.T * sp.ones(n, 1) for u in us])
    return _is_zero(lhs - rhs)


def monomials(d: int, degree: int) -> list[tuple[int, ...]]:
    """All multi-indices α ∈ ℕ^d with |α| ≤ degree."""
    return [a for a in itertools.product(range(degree + 1), repeat=d) if sum(a) <= degree]


def prove_feature_identity(d: int, degree: int, factors: int) -> bool:
    """(I3): φ(x₁∘…∘x_m) = φ(x₁)∘…∘φ(x_m) for all monomials of degree ≤ ``degree`` in d variables."""
    xs = [[sp.Symbol(f"x{m}_{t}", real=True) for t in range(d)] for m in range(factors)]
    prod = [sp.Mul(*[x[t] for x in xs]) for t in range(d)]

    def phi(x):
        return [sp.Mul(*[x[t] ** a[t] for t in range(d)]) for a in monomials(d, degree)]

    lhs = phi(prod)
    rhs = [sp.Mul(*parts) for parts in zip(*[phi(x) for x in xs])]
    return all(sp.expand(a - b) == 0 for a, b in zip(lhs, rhs))


def prove_order_independence(n: int, d: int, c: int, k: int) -> bool:
    """The two row orders give the same K-side/V-side products: (K⊘)ᵀ-weighted sums agree.

    Checks Σ_J f(k_J)·v_J is invariant: the two ⊘ conventions are row permutations P of each other,
    so (PK)ᵀ(PV) = KᵀV; verified here symbolically for the Gram form (K₁⊘…)ᵀ(V₁⊘…).
    """
    ks = [symbolic_matrix(f"K{m + 1}", n, d) for m in range(k - 1)]
    vs = [symbolic_matrix(f"V{m + 1}", n, c) for m in range(k - 1)]
    a = column_kronecker(ks, "lexicographic").T * column_kronecker(vs, "lexicographic")
    b = column_kronecker(ks, "paper").T * column_kronecker(vs, "paper")
    return _is_zero(a - b)


__all__ = [
    "column_kronecker",
    "hadamard",
    "monomials",
    "prove_feature_identity",
    "prove_ones_identity",
    "prove_order_independence",
    "prove_value_identity",
    "symbolic_matrix",
]
