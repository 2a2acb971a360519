"""Tensor (third- and k-th order) attention with bounded entries: ATAttC of Alman–Song (ICLR 2024).

Definition
----------
Order k ≥ 2 (k = 2 is ordinary softmax attention, k = 3 the paper's third-order attention). Inputs
Q ∈ ℝ^{n×d}, key matrices K₁, …, K_{k−1} ∈ ℝ^{n×d}, value matrices V₁, …, V_{k−1} ∈ ℝ^{n×d_v} (exact
values), a real ``scale`` s, optionally an entry bound B and an additive tolerance ε_a.

Column-wise Kronecker product (row-ordering convention of this package, "lexicographic"): for
X₁, …, X_{k−1} ∈ ℝ^{n×c}, X₁⊘…⊘X_{k−1} ∈ ℝ^{n^{k−1}×c} has, for the key tuple J = (j₁, …, j_{k−1}),
the row

    (X₁⊘…⊘X_{k−1})[flat(J), :] = X₁[j₁, :] ∘ X₂[j₂, :] ∘ … ∘ X_{k−1}[j_{k−1}, :]   (Hadamard product)

with flat(J) = Σ_m j_m · n^{k−2−m} (0-based; j₁ varies slowest). The paper [R] writes
i₁ + (i₂−1)n (j₁ fastest); any fixed bijection between tuples and rows gives the same output as long
as the keys and the values use the same one (A's columns and V's rows are permuted together, and
D⁻¹AV is invariant under that); tests check it.

    A = exp(s · Q (K₁⊘…⊘K_{k−1})ᵀ)         n × n^{k−1}, entrywise exp
    D = diag(A · 1)
    Att(Q, K, V) = D⁻¹ A (V₁⊘…⊘V_{k−1})      n × d_v

Entrywise: out[i, l] = Σ_J w_iJ Π_m V_m[j_m, l] / Σ_J w_iJ, w_iJ = exp(s Σ_t Q[i,t] Π_m K_m[j_m,t]).
Every row is a convex combination, well defined for all finite inputs.

Alman–Song use s = 1/d; then logits lie in [−B^k, B^k]. In general |logit| ≤ |s|·d·B^k.

Validity
--------
Q and every K_m are n×d, every V_m is n×d_v (n, d, d_v ≥ 1), all finite, one common supported dtype;
k − 1 ≥ 1 key matrices and exactly as many value matrices; if B is declared every entry of every matrix
is in [−B, B]; ε_a, if declared, is positive.

Acceptance
----------
T is acceptable under the contract when ‖T − Att‖∞ ≤ ε_a (max-abs entry).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterator, Sequence

import numpy as np

from attnspec.spec.softmax_attention import standard_scale
from attnspec.spec.validation import (
    SpecError,
    as_exact_matrix,
    as_positive_bound,
    as_tolerance,
    check_bound,
    exact_scalar,
    max_abs_exact,
    to_float64,
)

PROBLEM = "tensor_attention"

__all__ = [
    "PROBLEM",
    "TensorAttentionInstance",
    "make_instance",
    "standard_scale",
    "tuple_indices",
    "key_tuple_blocks",
    "column_kronecker",
    "conditioning",
    "logit_radius",
]


@dataclass(frozen=True, eq=False)
class TensorAttentionInstance:
    """A validated k-th order tensor attention instance (k = len(keys) + 1)."""

    q: np.ndarray
    keys: tuple[np.ndarray, ...]
    values: tuple[np.ndarray, ...]
    scale: Fraction
    bound: Fraction | None = None
    eps: Fraction | None = None

    @property
    def n(self) -> int:
        return self.q.shape[0]

    @property
    def d(self) -> int:
        return self.q.shape[1]

    @property
    def order(self) -> int:
        """k: the number of interacting tokens (query plus k − 1 keys)."""
        return len(self.keys) + 1

    @property
    def num_tuples(self) -> int:
        """n^{k−1}, the number of key tuples (columns of A)."""
        return self.n ** len(self.keys)

    @property
    def dtype(self) -> np.dtype:
        return self.q.dtype

    @property
    def output_shape(self) -> tuple[int, int]:
        return (self.n, self.values[0].shape[1])


def _as_matrix_list(x: Any, name: str) -> list[Any]:
    if isinstance(x, np.ndarray):
        if x.ndim == 3:
            return list(x)
        raise SpecError(f"{name} must be a sequence of 2-D matrices (or a 3-D array), got a {x.ndim}-D array")
    if isinstance(x, (list, tuple)):
        return list(x)
    raise SpecError(f"{name} must be a list or tuple of matrices, got {type(x).__name__}")


def make_instance(q: Any, keys: Sequence[Any], values: Sequence[Any], *, scale: Any, bound: Any = None,
                  eps: Any = None) -> TensorAttentionInstance:
    """Validate inputs and build a :class:`TensorAttentionInstance`.

    Raises :class:`SpecError` naming the problem: no keys, unequal numbers of key and value matrices,
    non-2-D or empty matrices, shape mismatches, unsupported or mixed dtypes, NaN/Inf, non-finite scale,
    a declared bound violated.
    """
    key_list = _as_matrix_list(keys, "keys")
    value_list = _as_matrix_list(values, "values")
    if not key_list:
        raise SpecError("tensor attention needs at least one key matrix (order k = len(keys) + 1 ≥ 2)")
    if len(key_list) != len(value_list):
        raise SpecError(f"keys and values must have the same count k − 1: {len(key_list)} keys vs {len(value_list)} values")
    qm = as_exact_matrix(q, "Q")
    km = tuple(as_exact_matrix(x, f"K{m + 1}") for m, x in enumerate(key_list))
    vm = tuple(as_exact_matrix(x, f"V{m + 1}") for m, x in enumerate(value_list))
    n, d = qm.shape
    for m, x in enumerate(km):
        if x.shape != (n, d):
            raise SpecError(f"K{m + 1} must have the shape of Q {qm.shape}, got {x.shape}")
    dv = vm[0].shape[1]
    for m, x in enumerate(vm):
        if x.shape != (n, dv):
            raise SpecError(f"V{m + 1} must be {n} x {dv} (n rows like Q, columns like V1), got {x.shape}")
    dtypes = {qm.dtype, *(x.dtype for x in km), *(x.dtype for x in vm)}
    if len(dtypes) != 1:
        raise SpecError(f"Q, keys and values must share one dtype, got {sorted(str(t) for t in dtypes)}")
    s = exact_scalar(scale, "scale")
    b = as_positive_bound(bound)
    e = as_tolerance(eps)
    check_bound(qm, "Q", b)
    for m, x in enumerate(km):
        check_bound(x, f"K{m + 1}", b)
    for m, x in enumerate(vm):
        check_bound(x, f"V{m + 1}", b)
    return TensorAttentionInstance(q=qm, keys=km, values=vm, scale=s, bound=b, eps=e)


def tuple_indices(flat: np.ndarray, n: int, factors: int) -> list[np.ndarray]:
    """(j₁, …, j_{factors}) for flat tuple indices under the lexicographic convention (j₁ slowest)."""
    flat = np.asarray(flat, dtype=np.int64)
    out = []
    for m in range(factors):
        out.append((flat // n ** (factors - 1 - m)) % n)
    return out


def key_tuple_blocks(n: int, factors: int, block: int) -> Iterator[tuple[int, int]]:
    """Contiguous ranges [t0, t1) of flat key-tuple indices, at most ``block`` tuples each."""
    if block < 1:
        raise SpecError(f"block size must be positive, got {block}")
    total = n ** factors
    for t0 in range(0, total, block):
        yield t0, min(t0 + block, total)


def column_kronecker(mats: Sequence[np.ndarray], rows: tuple[int, int] | None = None,
                     order: str = "lexicographic") -> np.ndarray:
    """Rows ``rows`` = [t0, t1) (all by default) of X₁⊘…⊘X_m in float64.

    ``order="lexicographic"``: this package's convention (j₁ slowest). ``order="paper"``: j₁ fastest,
    the paper's i₁ + (i₂−1)n convention [R]; used by tests to show the output does not depend on it.
    Products of float64 values are rounded here: exact algorithms must not rely on this function.
    """
    n = mats[0].shape[0]
    factors = len(mats)
    t0, t1 = rows if rows is not None else (0, n ** factors)
    idx = tuple_indices(np.arange(t0, t1), n, factors)
    if order == "paper":
        idx = idx[::-1]
    elif order != "lexicographic":
        raise SpecError(f"unknown row order {order!r}; use 'lexicographic' or 'paper'")
    out = to_float64(mats[0])[idx[0]].copy()
    for x, j in zip(mats[1:], idx[1:]):
        out *= to_float64(x)[j]
    return out


def _abs_logit_row_max(inst: TensorAttentionInstance, block: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: max_J s·⟨q_i, k_J⟩, min_J of the same, and max_J |s|·Σ_t |q_it Π_m k_m[j_m,t]| (float64)."""
    q = to_float64(inst.q)
    qa = np.abs(q)
    s = float(inst.scale)
    hi = np.full(inst.n, -np.inf)
    lo = np.full(inst.n, np.inf)
    mag = np.zeros(inst.n)
    for t0, t1 in key_tuple_blocks(inst.n, len(inst.keys), block):
        kr = column_kronecker(inst.keys, (t0, t1))
        logits = s * (q @ kr.T)
        hi = np.maximum(hi, logits.max(axis=1))
        lo = np.minimum(lo, logits.min(axis=1))
        mag = np.maximum(mag, abs(s) * (qa @ np.abs(kr).T).max(axis=1))
    return hi, lo, mag


def logit_radius(d: int, bound: float, order: int, scale: float) -> float:
    """R = |s|·d·B^k: every logit of an instance with entries in [−B, B] lies in [−R, R]."""
    return abs(float(scale)) * d * float(bound) ** order


def conditioning(inst: TensorAttentionInstance) -> dict[str, float | int]:
    """Numbers that govern how hard an instance is numerically (reported with every verdict).

    ``v_inf_norm`` is ‖V₁⊘…⊘V_{k−1}‖∞ = max_l Π_m ‖V_m[:, l]‖∞ (float64, rounded).
    """
    hi, lo, _ = _abs_logit_row_max(inst)
    col_norms = np.ones(inst.output_shape[1])
    for v in inst.values:
        col_norms = col_norms * np.abs(to_float64(v)).max(axis=0)
    return {
        "n": inst.n,
        "d": inst.d,
        "order": inst.order,
        "key_tuples": inst.num_tuples,
        "max_abs_logit": float(max(np.abs(hi).max(), np.abs(lo).max())),
        "max_row_logit_range": float((hi - lo).max()),
        "v_inf_norm": float(col_norms.max()),
        "max_abs_entry": float(max(max_abs_exact(x) for x in (inst.q, *inst.keys, *inst.values))),
    }
