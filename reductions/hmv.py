"""The Hinted Matrix–vector problem (HMV; van den Brand–Nanongkai–Saranurak, vdBSZ's variant) as a source.

Definition (Boolean semiring, 0 < τ ≤ 1; docs/reductions.md §1) [T]:

- Phase 1: two Boolean n×n matrices M and V (any polynomial preprocessing);
- Phase 2: a Boolean n×n hint P with at most ⌊n^τ⌋ non-zero entries;
- Phase 3: an index i ∈ [n]; output the Boolean column (M·Pᵀ·V)_{:,i}, i.e. bit r is 1 iff some
  non-zero P_{k,j} has M_{r,j} = 1 and V_{k,i} = 1.

The conjecture: no algorithm with polynomial Phase 1 runs Phase 2 in O(n^{ω(1,1,τ)−ε}) and Phase 3 in
O(n^{1+τ−ε}). **Caveat** (docs/reductions.md §1.3): Alman–Vassilevska Williams 2026 (Corollary 40,
seen only through a formalization [T]) claim to refute it for 0 < τ < 1/18, and with smaller savings up
to ε* ≈ 0.12; a lower bound resting on HMV says nothing in that range.

The decision version used by the instance sets: YES iff the output column has a 1; the witness is the
column itself (a tuple of n bits), so a decoded answer is right only when every bit is.

:class:`TrivialHMV` is the textbook algorithm with its three phases (Phase 2 builds the n×t and t×n
factors, Phase 3 multiplies in O(n·t)): the brute force, and the baseline of the phase benchmarks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from attnspec.reductions.base import SourceAnswer

KIND = "hmv"
FAMILIES = ("planted_yes", "planted_no", "random", "adversarial_yes", "adversarial_no")
GENERATOR_VERSION = "hmv-gen/1"


def hint_budget(n: int, tau: float) -> int:
    """⌊n^τ⌋ (at least 1), computed so that exact powers (n = 16, τ = 1/2) are not lost to rounding."""
    t = int(math.floor(n**tau + 1e-9))
    return max(1, t)


@dataclass(frozen=True, eq=False)
class HMVInstance:
    """One HMV instance: Boolean ``m``, ``v``, ``p`` (n×n uint8 arrays, read-only), the Phase-3 ``index``
    and the sparsity exponent ``tau`` (nnz(P) ≤ ⌊n^τ⌋)."""

    m: np.ndarray
    v: np.ndarray
    p: np.ndarray
    index: int
    tau: float

    @property
    def n(self) -> int:
        return int(self.m.shape[0])

    @property
    def hint_entries(self) -> list[tuple[int, int]]:
        """The non-zeros (k, j) of P in row-major order (the order of the Phase-2 updates)."""
        return [(int(k), int(j)) for k, j in np.argwhere(self.p)]


def _boolean(x: Any, name: str, n: int | None) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"HMV matrix {name} must be square and non-empty, got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"HMV matrix {name} is {a.shape[0]}×{a.shape[0]}, but M is {n}×{n}")
    if a.dtype == object or a.dtype.kind not in "biuf" or not np.all((a == 0) | (a == 1)):
        raise ValueError(f"HMV matrix {name} must hold only 0 and 1")
    out = a.astype(np.uint8)
    out.setflags(write=False)
    return out


def make_instance(m: Any, v: Any, p: Any, index: Any, tau: Any) -> HMVInstance:
    """A validated :class:`HMVInstance` (``ValueError`` naming the problem)."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 < float(tau) <= 1:
        raise ValueError(f"HMV τ must be a number in (0, 1], got {tau!r}")
    m = _boolean(m, "M", None)
    n = m.shape[0]
    v, p = _boolean(v, "V", n), _boolean(p, "P", n)
    budget = hint_budget(n, float(tau))
    if int(p.sum()) > budget:
        raise ValueError(f"HMV hint P has {int(p.sum())} non-zeros, more than ⌊n^τ⌋ = {budget} (n = {n}, τ = {tau})")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= int(index) < n:
        raise ValueError(f"HMV Phase-3 index must be an integer in [0, {n}), got {index!r}")
    return HMVInstance(m, v, p, int(index), float(tau))


class TrivialHMV:
    """The trivial algorithm, phase by phase: Phase 1 stores M and V; Phase 2 keeps the columns of M and
    the rows of V that the hint's non-zeros (k, j) pair up (an n×t and a t×n factor); Phase 3 answers
    (M Pᵀ V)_{:,i} = OR_t M_{:,j_t} ∧ V_{k_t,i} in O(n·t)."""

    def phase1(self, m: np.ndarray, v: np.ndarray) -> None:
        self.m, self.v = np.asarray(m, dtype=bool), np.asarray(v, dtype=bool)

    def phase2(self, p: np.ndarray) -> None:
        pairs = np.argwhere(np.asarray(p, dtype=bool))
        self.left = self.m[:, pairs[:, 1]]  # n×t: column j_t of M
        self.right = self.v[pairs[:, 0], :]  # t×n: row k_t of V

    def phase3(self, i: int) -> np.ndarray:
        counts = self.left.astype(np.int64) @ self.right[:, i].astype(np.int64)
        return counts


def solve(inst: HMVInstance) -> SourceAnswer:
    """Brute force: the integer counts (M Pᵀ V)_{:,i} and their Boolean column."""
    algo = TrivialHMV()
    algo.phase1(inst.m, inst.v)
    algo.phase2(inst.p)
    counts = algo.phase3(inst.index)
    bits = tuple(int(c > 0) for c in counts)
    return SourceAnswer(any(bits), bits, {"method": "brute_force", "counts": [int(c) for c in counts],
                                          "nnz_p": int(inst.p.sum()), "index": inst.index})


# ---------------------------------------------------------------------------------------------
# Generators with known answers


def _random_hint(rng: np.random.Generator, n: int, t: int) -> np.ndarray:
    p = np.zeros((n, n), dtype=np.uint8)
    flat = rng.choice(n * n, size=min(t, n * n), replace=False)
    p.flat[flat] = 1
    return p


def generate(family: str, n: int, rng: np.random.Generator, *, tau: float = 0.5) -> tuple[HMVInstance, dict[str, Any]]:
    """A seeded HMV instance of ``family`` and its generator record (what was planted).

    - ``random``: M, V with density √(ln 2 / t) (each bit is 1 with probability about 1/2 [I]), P with
      t = ⌊n^τ⌋ random non-zeros; the answer is found by brute force;
    - ``planted_no``: as random, then V_{k,i} = 0 on every row k the hint touches: every bit is 0;
    - ``planted_yes``: planted_no, then one hint entry (k, j) gets V_{k,i} = 1 and one row r gets
      M_{r,j} = 1: bit r is 1 (others may be too);
    - ``adversarial_no`` / ``adversarial_yes`` (near the threshold): t − 1 hint entries in one row k₀ with
      V_{k₀,i} = 0 and M all ones, so every row has the largest logit s·(t − 1) on key k₀ and a weight
      sum far from the decoded quantity; the YES version adds one entry (k₁, j₁) with V_{k₁,i} = 1, whose
      contribution e^s − 1 is the smallest a 1-bit can make: every decoded value sits at distance
      exactly half the gap from the threshold. The NO version puts the last entry on row k₀ too.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown HMV family {family!r}; known: {', '.join(FAMILIES)}")
    if n < 2:
        raise ValueError("HMV instances need n ≥ 2")
    t = hint_budget(n, tau)
    i = int(rng.integers(n))
    record: dict[str, Any] = {"family": family, "t": t}
    if family.startswith("adversarial"):
        t = min(t, n)  # one row of P holds at most n entries
        k0 = int(rng.integers(n))
        m = np.ones((n, n), dtype=np.uint8)
        v = (rng.random((n, n)) < 0.5).astype(np.uint8)
        p = np.zeros((n, n), dtype=np.uint8)
        cols = rng.choice(n, size=t, replace=False)
        p[k0, cols[: t - 1]] = 1
        v[:, i] = 0
        if family == "adversarial_yes":
            k1 = int((k0 + 1 + rng.integers(n - 1)) % n)
            p[k1, cols[t - 1]] = 1
            v[k1, i] = 1
            record.update(k0=k0, k1=k1)
        else:
            p[k0, cols[t - 1]] = 1
            record.update(k0=k0)
    else:
        density = math.sqrt(math.log(2) / t) if t > 0 else 0.5
        density = min(density, 1.0)
        m = (rng.random((n, n)) < density).astype(np.uint8)
        v = (rng.random((n, n)) < density).astype(np.uint8)
        p = _random_hint(rng, n, t)
        record["density"] = density
        if family in ("planted_no", "planted_yes"):
            rows = np.unique(np.argwhere(p)[:, 0])
            v[rows, i] = 0
        if family == "planted_yes":
            k, j = (int(x) for x in np.argwhere(p)[int(rng.integers(int(p.sum())))])
            r = int(rng.integers(n))
            v[k, i] = 1
            m[r, j] = 1
            record.update(planted_row=r, planted_entry=[k, j])
    inst = make_instance(m, v, p, i, tau)
    return inst, record


def expected_decision(family: str) -> bool | None:
    """The decision a family guarantees by construction (None: found by brute force)."""
    return {"planted_yes": True, "planted_no": False, "adversarial_yes": True, "adversarial_no": False}.get(family)


def instance_arrays(inst: HMVInstance) -> dict[str, np.ndarray]:
    """M, V, P as float64 0/1 arrays (the case-file loaders accept float arrays only)."""
    return {"m": inst.m.astype(np.float64), "v": inst.v.astype(np.float64), "p": inst.p.astype(np.float64)}


def instance_params(inst: HMVInstance) -> dict[str, Any]:
    return {"index": inst.index, "tau": inst.tau, "n": inst.n}


def instance_from_files(arrays: dict[str, np.ndarray], params: dict[str, Any]) -> HMVInstance:
    missing = {"m", "v", "p"} - set(arrays)
    if missing:
        raise ValueError(f"HMV instance lacks arrays {sorted(missing)}")
    inst = make_instance(arrays["m"], arrays["v"], arrays["p"], params.get("index"), params.get("tau"))
    if params.get("n") != inst.n:
        raise ValueError(f"HMV parameter n = {params.get('n')!r} does not match the arrays' n = {inst.n}")
    return inst


__all__ = ["KIND", "FAMILIES", "HMVInstance", "TrivialHMV", "make_instance", "solve", "generate",
           "hint_budget", "expected_decision", "instance_arrays", "instance_params", "instance_from_files"]
