"""CNF-SAT → k-OV: Williams' split (docs/reductions.md, "SAT → k-OV → k-MaxIP → attention", §8.2).

The n variables are padded with free variables (in no clause) to n' = k·⌈n/k⌉ and split into k
contiguous groups of s = n'/k variables; group g holds variables g·s + 1, …, (g + 1)·s. Group g gets one
vector u ∈ {0,1}^m per partial assignment α ∈ {0,1}^s of its variables (index = α read as an integer,
bit b = variable g·s + b + 1), one coordinate per clause:

    u_l = 1  iff  α makes no literal of clause l true (α does NOT satisfy clause l on its own).

A full assignment (α₁, …, α_k) satisfies clause l iff some α_g does, i.e. iff not every u_{g,l} = 1, so it
satisfies the formula iff ⟨u₁, …, u_k⟩ = Σ_l Π_g u_{g,l} = 0: **the formula is satisfiable iff some
k-tuple (one vector per group) is orthogonal** [I]. Sizes: k sets of 2^s vectors of dimension m.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from attnspec.reductions.cnf import CNF

MAX_GROUP_VARIABLES = 20  # 2^20 vectors per group
DEFAULT_MEMORY_LIMIT = 256 * 2**20  # bytes, over every array of the chain (sat_to_attention.chain_sizes)


class ChainTooLarge(ValueError):
    """The chain's arrays would exceed the stated memory limit (the message names the numbers)."""


@dataclass(frozen=True, eq=False)
class OVInstance:
    """k-OV: ``sets[g]`` is the 2^s × m uint8 matrix of group g; ``group_size`` s; ``num_vars`` the formula's
    own variables (the last n' − n of the k·s are free)."""

    sets: tuple[np.ndarray, ...]
    group_size: int
    num_vars: int

    @property
    def order(self) -> int:
        return len(self.sets)

    @property
    def vectors(self) -> int:
        return int(self.sets[0].shape[0])

    @property
    def dim(self) -> int:
        return int(self.sets[0].shape[1])


def group_size(num_vars: int, k: int) -> int:
    """s = ⌈n/k⌉ (at least 1, so every group has two partial assignments)."""
    return max(1, math.ceil(num_vars / k))


def sat_to_ov(cnf: CNF, k: int) -> OVInstance:
    """The k-OV instance of ``cnf`` (module docstring). Refuses groups of more than
    :data:`MAX_GROUP_VARIABLES` variables before allocating (callers check the memory limit first)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"the split needs k ≥ 2 groups, got {k!r}")
    if cnf.num_clauses == 0:
        raise ValueError("a formula without clauses is trivially satisfiable: the chain needs m ≥ 1 clauses")
    s = group_size(cnf.num_vars, k)
    if s > MAX_GROUP_VARIABLES:
        raise ChainTooLarge(f"{cnf.num_vars} variables in k = {k} groups give 2^{s} vectors per group; the limit is "
                            f"2^{MAX_GROUP_VARIABLES} (use a larger k or a smaller formula)")
    codes = np.arange(1 << s, dtype=np.int64)
    sets = []
    for g in range(k):
        first = g * s + 1  # variables first .. first + s − 1 (those > n are free)
        unsatisfied = np.ones((1 << s, cnf.num_clauses), dtype=np.uint8)
        for l, clause in enumerate(cnf.clauses):
            for lit in clause:
                b = abs(lit) - first
                if 0 <= b < s:
                    bit = (codes >> b) & 1
                    unsatisfied[(bit == 1) if lit > 0 else (bit == 0), l] = 0
        unsatisfied.setflags(write=False)
        sets.append(unsatisfied)
    return OVInstance(tuple(sets), s, cnf.num_vars)


def assignment(ov: OVInstance, indices: Sequence[int]) -> tuple[int, ...]:
    """The full assignment of the tuple (one vector index per group): the groups' partial assignments
    concatenated, as DIMACS literals for variables 1..n (the free padding variables dropped)."""
    if len(indices) != ov.order or not all(0 <= int(i) < ov.vectors for i in indices):
        raise ValueError(f"a tuple holds one index in [0, {ov.vectors}) per group ({ov.order} groups), got {list(indices)}")
    out = []
    for g, index in enumerate(indices):
        for b in range(ov.group_size):
            v = g * ov.group_size + b + 1
            if v <= ov.num_vars:
                out.append(v if (int(index) >> b) & 1 else -v)
    return tuple(out)


def k_inner_products(sets: Sequence[np.ndarray]) -> np.ndarray:
    """⟨u₁, …, u_k⟩ for every tuple: an array indexed (i₁, …, i_k) (brute force, for tests and small sets)."""
    letters = string.ascii_lowercase[: len(sets)]
    spec = ",".join(f"{c}z" for c in letters) + "->" + letters
    return np.einsum(spec, *(np.asarray(x, dtype=np.int64) for x in sets))


def solve_ov(ov: OVInstance) -> tuple[int, ...] | None:
    """The first orthogonal tuple (lexicographic), or None (brute force over 2^{s·k} tuples)."""
    ips = k_inner_products(ov.sets)
    zeros = np.argwhere(ips == 0)
    return None if zeros.size == 0 else tuple(int(x) for x in zeros[0])


def ov_parameters(ov: OVInstance) -> dict[str, Any]:
    return {"k": ov.order, "group_variables": ov.group_size, "free_variables": ov.order * ov.group_size - ov.num_vars,
            "vectors_per_group": ov.vectors, "dimension": ov.dim}


__all__ = ["OVInstance", "sat_to_ov", "assignment", "solve_ov", "k_inner_products", "ov_parameters", "group_size",
           "ChainTooLarge", "MAX_GROUP_VARIABLES", "DEFAULT_MEMORY_LIMIT"]
