"""Conformance for heavy keys (LevAttention): ``heavy_entries`` and ``universal_set``.

Backend methods (docs/heavy-keys.md): ``heavy_entries(q, k, *, eps, p)`` returns an int array of shape
(h, 2) of (query i, key j) pairs; ``universal_set(k, *, eps, p)`` a sorted 1-D int array of key indices.
ε is passed as a float (every case's ε is a float, so the backend receives the exact ε judged); p is the
int 2 or 4.

Judging (exact: the reference decides every comparison in rational arithmetic, so for p ∈ {2, 4} there is
no undecided verdict). With the declared slack s = ``heavy_slack`` (default 0) and ε' = ε/(1+s):

- **error**: the output is not an integer array of the required shape, or has an index out of range or a
  duplicate (``universal_set``: also not sorted);
- **fail**: a certainly-heavy entry (A_ij ≥ ε) or key (τ_j ≥ ε) is missing, or a reported one has
  A_ij < ε' (τ_j < ε'), or |U| > (1+s)·Ψ/ε (implied by the previous rule, checked anyway);
- **pass**: otherwise.

Case families (shared by both problems; ``heavy_entries`` adds queries):
``gaussian`` dyadic Gaussian-ish inputs; ``planted`` a few keys alone in their directions (high leverage,
one of them with a tiny norm) among many noise keys; ``rank_deficient`` K = A·B exactly (inner dimension
r < d, and a zero column); ``duplicate_keys`` repeated rows; ``many_keys`` n ≫ d/ε; ``adversarial``
queries y_j* = (KᵀK)⁺k_j (exact maximisers rounded to the dtype; the exact A is that of the rounded
query); ``near_dependent`` a key off a (d−1)-dimensional span by 2⁻⁸ (its τ is exactly 1);
``eps_extremes`` ε = 1 and ε = 2⁻²⁴; ``zero_rows`` zero keys, zero queries, all-zero K; ``ties``
exact ties A_ij = ε and τ_j = ε (a tie is heavy).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, ClassVar

import numpy as np

from attnspec.reference.heavy_keys import heavy_reference, maximising_queries, universal_reference
from attnspec.spec.heavy_keys import (HEAVY_ENTRIES, UNIVERSAL_SET, HeavyEntriesInstance, UniversalSetInstance,
                                      make_heavy_instance, make_universal_instance, size_bound)
from attnspec.conformance.judging.case_common import ConformanceCase, cast_to, generate_family_cases
from attnspec.conformance.judging.problems import Problem, register
from attnspec.conformance.judging.verdict import ERROR, FAIL, PASS, Verdict

EVIDENCE_ITEMS = 5  # examples of each kind of wrong answer kept in a verdict's evidence


@dataclass
class HeavyEntriesCase(ConformanceCase):
    """One heavy-entries case (``instance``: a HeavyEntriesInstance)."""

    problem: str = HEAVY_ENTRIES


@dataclass
class UniversalSetCase(ConformanceCase):
    """One universal-set case (``instance``: a UniversalSetInstance)."""

    problem: str = UNIVERSAL_SET


# ---------------------------------------------------------------------------------------------
# Families: each recipe yields (k, q, eps, p) in float64 (q may be None: random queries are drawn by
# the heavy-entries problem). Entries are on dyadic grids so the exact reference stays fast.


def _grid(rng: np.random.Generator, shape: tuple[int, ...], scale: float = 1.0, bits: int = 10) -> np.ndarray:
    return np.round(rng.standard_normal(shape) * scale * 2**bits) / 2**bits


EPS_CHOICES = (0.5, 0.25, 0.125, 0.0625)


def family_gaussian(rng, count, big):
    for i in range(count):
        n, d = int(rng.integers(2, 120 if big else 40)), int(rng.integers(1, 8 if big else 5))
        yield _grid(rng, (n, d)), None, EPS_CHOICES[i % 4], (2, 4)[i % 2]


def family_planted(rng, count, big):
    """r keys s·e_c alone in their directions c < r (τ = 1 whatever s, including a tiny s) among noise
    keys spanning the remaining d − r directions; the planted keys sit at the start, the middle and the end."""
    for i in range(count):
        d = int(rng.integers(3, 7))
        r = int(rng.integers(1, d))
        n = int(rng.integers(3 * d, 160 if big else 48))
        k = np.zeros((n, d))
        k[:, r:] = _grid(rng, (n, d - r), 4.0)
        rows = [n - 1, *rng.permutation(n - 1)[: r - 1].tolist()]
        for c, row in enumerate(rows):
            k[row] = 0
            k[row, c] = 2.0**-6 if c == 0 else float(2 ** int(rng.integers(-2, 4)))  # the last key: tiny norm
        q = np.vstack([np.eye(d)[:r], _grid(rng, (6, d))])  # queries along the planted directions: A = 1
        yield k, q, EPS_CHOICES[i % 4], (2, 4)[i % 2]


def family_rank_deficient(rng, count, big):
    for i in range(count):
        d = int(rng.integers(2, 7))
        r = int(rng.integers(1, d))
        n = int(rng.integers(d + 1, 100 if big else 30))
        k = rng.integers(-3, 4, (n, r)).astype(float) @ rng.integers(-2, 3, (r, d)).astype(float)
        if i % 2:
            k[:, int(rng.integers(d))] = 0.0  # a zero column as well
        yield k, None, EPS_CHOICES[(i + 1) % 4], (2, 4)[i % 2]


def family_duplicate_keys(rng, count, big):
    for i in range(count):
        d = int(rng.integers(2, 5))
        base = _grid(rng, (int(rng.integers(2, 6)), d))
        k = base[rng.integers(0, base.shape[0], int(rng.integers(8, 40)))]
        yield k, None, EPS_CHOICES[i % 4], (2, 4)[i % 2]


def family_many_keys(rng, count, big):
    """n ≫ d/ε: |U_ε| ≤ Ψ/ε stays small however large n is."""
    for i in range(count):
        d = int(rng.integers(2, 4))
        n = int(rng.integers(200, 600 if big else 300))
        k = _grid(rng, (n, d))
        k[int(rng.integers(n))] *= 64.0  # one dominant key
        yield k, None, 0.25, (2, 4)[i % 2]


def family_adversarial(rng, count, big):
    """Queries y_j* = (KᵀK)⁺k_j, exact maximisers rounded (after a power-of-two rescale) to float64."""
    for i in range(count):
        d = int(rng.integers(2, 6))
        n = int(rng.integers(d + 2, 60 if big else 24))
        k = _grid(rng, (n, d))
        if i % 2:
            k[-1] = 0
            k[-1, 0] = 8.0  # a dominant last key
        ys = np.array([[float(v) for v in y] for y in maximising_queries(k)])
        ys /= np.maximum(np.abs(ys).max(axis=1, keepdims=True), 1e-300)
        yield k, ys, EPS_CHOICES[i % 4], 2 if i % 3 else 4


def family_near_dependent(rng, count, big):
    """Keys in a (d−1)-dimensional span with large norms, and one key k_0 + 2⁻⁸·e_{d−1}: its leverage is
    exactly 1. All keys are then mixed by a unimodular integer matrix M (exact in float32 too), so the
    tiny direction is spread over every coordinate: a float32 Gram matrix (entries ~ 10⁴, rounding
    ~ 10⁻³) cannot see its δ² ≈ 1.5·10⁻⁵ eigenvalue; float64 (κ(K) ~ 10⁴) can."""
    for i in range(count):
        d = int(rng.integers(3, 6))
        n = int(rng.integers(20, 60))
        k = np.zeros((n, d))
        k[:, : d - 1] = _grid(rng, (n, d - 1), 16.0, bits=4)
        j = int(rng.integers(1, n))
        k[j] = k[0]
        k[j, d - 1] = 2.0**-8
        upper = np.triu(rng.integers(-1, 2, (d, d)), 1) + np.eye(d)
        lower = np.tril(rng.integers(-1, 2, (d, d)), -1) + np.eye(d)
        mix = upper @ lower  # unimodular: det 1
        yield k @ mix, None, 0.5, 2


def family_eps_extremes(rng, count, big):
    for i in range(count):
        d = int(rng.integers(2, 5))
        n = int(rng.integers(d + 1, 24))
        k = _grid(rng, (n, d))
        if i % 2 == 0:
            k[:, 0] = 0
            k[n - 1] = 0
            k[n - 1, 0] = 1.0  # τ = 1: the only key with a component along e_0
            q = np.zeros((3, d))
            q[:, 0] = (1.0, -2.0, 0.5)  # A = 1 on the last key
            yield k, np.vstack([q, _grid(rng, (4, d))]), 1.0, (2, 4)[(i // 2) % 2]
        else:
            yield k, None, 2.0**-24, (2, 4)[(i // 2) % 2]


def family_zero_rows(rng, count, big):
    for i in range(count):
        d = int(rng.integers(1, 5))
        n = int(rng.integers(2, 20))
        k = _grid(rng, (n, d))
        k[rng.random(n) < 0.4] = 0.0
        q = _grid(rng, (6, d))
        q[::2] = 0.0  # zero queries: Σ_l f = 0, no heavy entries
        if i == count - 1:
            k[:] = 0.0  # all-zero K: Ψ = 0, U_ε = ∅
        yield k, q, EPS_CHOICES[i % 4], (2, 4)[i % 2]


def family_ties(rng, count, big):
    """Exact ties: c copies of each of e_0..e_{g−1} (τ_j = 1/c) with ε = 1/c, and the query Σ e_c
    (A_ij = 1/(c·g)) with ε = 1/(c·g) as well; every quantity is exact in float arithmetic."""
    for i in range(count):
        c, g = (2, 2) if i % 2 == 0 else (4, 2)
        d = g + (i % 3)
        k = np.zeros((c * g, d))
        for t in range(g):
            k[t * c:(t + 1) * c, t] = 1.0
        q = np.zeros((2, d))
        q[0, :g] = 1.0
        q[1, 0] = 1.0
        eps = 1.0 / c if (i // 2) % 2 == 0 else 1.0 / (c * g)
        yield k, q, eps, (2, 4)[(i // 2) % 2]


FAMILIES: dict[str, Callable] = {
    "gaussian": family_gaussian,
    "planted": family_planted,
    "rank_deficient": family_rank_deficient,
    "duplicate_keys": family_duplicate_keys,
    "many_keys": family_many_keys,
    "adversarial": family_adversarial,
    "near_dependent": family_near_dependent,
    "eps_extremes": family_eps_extremes,
    "zero_rows": family_zero_rows,
    "ties": family_ties,
}
QUICK = {"gaussian": 4, "planted": 3, "rank_deficient": 3, "duplicate_keys": 2, "many_keys": 2, "adversarial": 3,
         "near_dependent": 2, "eps_extremes": 4, "zero_rows": 2, "ties": 4, "hypothesis": 0}
COUNTS = {"quick": QUICK, "thorough": {name: 4 * c for name, c in QUICK.items()}}


# ---------------------------------------------------------------------------------------------
# Reading an output strictly


class _BadOutput(ValueError):
    pass


def _index_array(output: Any, ndim: int, width: int | None) -> np.ndarray:
    """An int64 array of ``ndim`` dims (last axis ``width`` when given) from an integer-typed output; an
    empty output of any real dtype is accepted (``[]`` reads as float64)."""
    try:
        arr = np.asarray(output)
    except Exception as exc:
        raise _BadOutput(f"output is not array-like: {type(output).__name__}: {exc}") from None
    if arr.size == 0 and arr.dtype.kind in "fiu":
        return np.zeros((0, width) if width is not None else (0,), dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise _BadOutput(f"output has dtype {arr.dtype}: indices must be integers")
    if arr.ndim != ndim or (width is not None and arr.shape[-1] != width):
        want = f"(h, {width})" if width is not None else "(h,)"
        raise _BadOutput(f"output has shape {arr.shape}, expected {want}")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise _BadOutput("output has an index beyond int64")
    return arr.astype(np.int64)


def _error(message: str) -> Verdict:
    return Verdict(ERROR, message, {"kind": "bad_output"})


def _slack(caps: Any) -> Fraction:
    return Fraction(getattr(caps, "heavy_slack", 0) or 0)


def _value(x: Fraction) -> dict[str, Any]:
    return {"exact": str(x), "float": float(x)}


def _judge_members(reported: set, heavy: set, low: list, value: Callable[[Any], Fraction], eps: Fraction,
                   slack: Fraction, what: str) -> tuple[list[str], dict[str, Any]]:
    """The failure messages and evidence for missing heavy members and reported ones below ε/(1+s)."""
    missing = sorted(heavy - reported)
    messages: list[str] = []
    evidence: dict[str, Any] = {}
    if missing:
        evidence["missing"] = [{"index": _listed(m), "value": _value(value(m))} for m in missing[:EVIDENCE_ITEMS]]
        evidence["missing_count"] = len(missing)
        messages.append(f"{len(missing)} certainly heavy {what} missing (first {_listed(missing[0])} with "
                        f"value {float(value(missing[0])):.6g} ≥ ε = {float(eps):.6g})")
    if low:
        floor = eps / (1 + slack)
        evidence["below_floor"] = [{"index": _listed(m), "value": _value(value(m))} for m in low[:EVIDENCE_ITEMS]]
        evidence["below_floor_count"] = len(low)
        messages.append(f"{len(low)} reported {what} certainly below ε/(1+s) = {float(floor):.6g} (first "
                        f"{_listed(low[0])} with value {float(value(low[0])):.6g})")
    return messages, evidence


def _listed(index: Any) -> Any:
    return [int(x) for x in index] if isinstance(index, tuple) else int(index)


# ---------------------------------------------------------------------------------------------
# The two problems


class _HeavyKeysProblem(Problem):
    """What both problems share: families, applicability and the dtype casting."""

    counts: ClassVar[dict[str, dict[str, int]]] = COUNTS
    salt: ClassVar[int] = 0

    def families(self) -> list[str]:
        return list(FAMILIES)

    def generate_cases(self, profile: str = "quick", dtypes: tuple[str, ...] = ("float64",), seed: int = 0) -> list:
        return generate_family_cases(profile, self.profiles, tuple(dtypes), seed, families=FAMILIES, counts=self.counts,
                                     make_case=self._make_case, hypothesis_cases=lambda *args: [], salt=self.salt)

    def _make_case(self, family: str, index: int, seed: int, dtype: str, k: np.ndarray, q: Any, eps: float, p: int) -> Any:
        raise NotImplementedError

    def not_applicable_reasons(self, case: Any, caps: Any) -> list[str]:
        inst = case.instance
        return self.declaration_reasons(caps, dtype=case.dtype, n=max(inst.n, getattr(inst, "m", 0)), d=inst.d)

    def instance_params(self, inst: Any) -> dict[str, Any]:
        return {"eps": str(inst.eps), "p": int(inst.p)}


class HeavyEntries(_HeavyKeysProblem):
    """Every (i, j) with A_ij ≥ ε, A = |QKᵀ|^p row-normalised: backend method ``heavy_entries(q, k, *, eps, p)``."""

    name = HEAVY_ENTRIES
    method = HEAVY_ENTRIES
    case_type = HeavyEntriesCase
    salt = 14

    def _make_case(self, family, index, seed, dtype, k, q, eps, p):
        if q is None:
            q = _grid(np.random.default_rng(seed + index), (int(min(24, 2 + k.shape[0])), k.shape[1]))
        inst = make_heavy_instance(cast_to(q, dtype), cast_to(k, dtype), eps=float(eps), p=p)
        return HeavyEntriesCase(f"{HEAVY_ENTRIES}/{dtype}/{family}/{index:03d}", family, dtype, seed, inst,
                                tags={"p": p, "eps": float(eps)})

    def request(self, case: Any) -> tuple[str, str, tuple, dict]:
        inst = case.instance
        return "call", self.method, (inst.q, inst.k), {"eps": float(inst.eps), "p": inst.p}

    def expected_output_elements(self, case: Any) -> int:
        return 2 * case.instance.m * case.instance.n  # every pair at most once

    def shape(self, case: Any) -> list[int]:
        inst = case.instance
        return [inst.m, inst.n, inst.d]

    def judge(self, case: Any, output: Any, caps: Any, *, max_prec: int = 1024, tolerance: Any = None) -> Verdict:
        inst: HeavyEntriesInstance = case.instance
        try:
            pairs = _index_array(output, 2, 2)
        except _BadOutput as exc:
            return _error(str(exc))
        if pairs.size and (pairs.min() < 0 or pairs[:, 0].max() >= inst.m or pairs[:, 1].max() >= inst.n):
            return _error(f"output has an index pair outside [0, {inst.m}) × [0, {inst.n})")
        reported = set(map(tuple, pairs.tolist()))
        if len(reported) != len(pairs):
            return _error(f"output repeats {len(pairs) - len(reported)} pair(s)")
        ref = heavy_reference(inst)
        slack = _slack(caps)
        heavy = set(map(tuple, ref.heavy().tolist()))
        keep = ref.at_least(inst.eps / (1 + slack))
        low = sorted(pr for pr in reported if not keep[pr])
        messages, evidence = _judge_members(reported, heavy, low, lambda pr: ref.weight(*pr), inst.eps, slack, "entries")
        evidence.update(eps=_value(inst.eps), slack=str(slack), p=inst.p, reported=len(reported), heavy=len(heavy))
        if messages:
            return Verdict(FAIL, "; ".join(messages), evidence)
        return Verdict(PASS, f"all {len(heavy)} heavy entries reported, {len(reported) - len(heavy)} extra within the slack",
                       evidence)

    def instance_arrays(self, inst: HeavyEntriesInstance) -> dict[str, np.ndarray]:
        return {"q": inst.q, "k": inst.k}

    def instance_from_files(self, arrays: dict[str, np.ndarray], params: dict[str, Any]) -> HeavyEntriesInstance:
        return make_heavy_instance(arrays["q"], arrays["k"], eps=Fraction(str(params["eps"])), p=params["p"])


class UniversalSet(_HeavyKeysProblem):
    """U ⊇ {j : τ_j ≥ ε} (τ: leverage of K for p = 2, of its symmetric lift for p = 4): backend method
    ``universal_set(k, *, eps, p)``."""

    name = UNIVERSAL_SET
    method = UNIVERSAL_SET
    case_type = UniversalSetCase
    salt = 15

    def _make_case(self, family, index, seed, dtype, k, q, eps, p):
        inst = make_universal_instance(cast_to(k, dtype), eps=float(eps), p=p)
        return UniversalSetCase(f"{UNIVERSAL_SET}/{dtype}/{family}/{index:03d}", family, dtype, seed, inst,
                                tags={"p": p, "eps": float(eps)})

    def request(self, case: Any) -> tuple[str, str, tuple, dict]:
        inst = case.instance
        return "call", self.method, (inst.k,), {"eps": float(inst.eps), "p": inst.p}

    def expected_output_elements(self, case: Any) -> int:
        return case.instance.n

    def shape(self, case: Any) -> list[int]:
        inst = case.instance
        return [inst.n, inst.d]

    def judge(self, case: Any, output: Any, caps: Any, *, max_prec: int = 1024, tolerance: Any = None) -> Verdict:
        inst: UniversalSetInstance = case.instance
        try:
            members = _index_array(output, 1, None)
        except _BadOutput as exc:
            return _error(str(exc))
        if members.size and (members.min() < 0 or members.max() >= inst.n):
            return _error(f"output has a key index outside [0, {inst.n})")
        if members.size > 1 and not (np.diff(members) > 0).all():
            return _error("output is not sorted and unique")
        ref = universal_reference(inst)
        slack = _slack(caps)
        floor = inst.eps / (1 + slack)
        reported = set(members.tolist())
        heavy = set(ref.at_least(inst.eps))
        low = sorted(j for j in reported if ref.tau[j] < floor)
        messages, evidence = _judge_members(reported, heavy, low, lambda j: ref.tau[j], inst.eps, slack, "keys")
        bound = size_bound(ref.rank, inst.eps, slack)
        if len(reported) > bound:
            messages.append(f"|U| = {len(reported)} exceeds (1+s)·Ψ/ε = {float(bound):.6g}")
        evidence.update(eps=_value(inst.eps), slack=str(slack), p=inst.p, size=len(reported), heavy=len(heavy),
                        psi=ref.rank, size_bound=_value(bound))
        if messages:
            return Verdict(FAIL, "; ".join(messages), evidence)
        return Verdict(PASS, f"|U| = {len(reported)} ⊇ the {len(heavy)} keys with τ ≥ ε, within (1+s)·Ψ/ε = {float(bound):.6g}",
                       evidence)

    def instance_arrays(self, inst: UniversalSetInstance) -> dict[str, np.ndarray]:
        return {"k": inst.k}

    def instance_from_files(self, arrays: dict[str, np.ndarray], params: dict[str, Any]) -> UniversalSetInstance:
        return make_universal_instance(arrays["k"], eps=Fraction(str(params["eps"])), p=params["p"])


heavy_entries_problem = register(HeavyEntries())
universal_set_problem = register(UniversalSet())
problem = heavy_entries_problem
