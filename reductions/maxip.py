"""Gap-MaxIP, 2-way and k-way, on equal-weight 0/1 vectors: the source problem of the Alman–Song lower
bounds (docs/reductions.md, "Gap-MaxIP → softmax attention" and "→ tensor attention").

Definition (order k ≥ 2) [R: the papers' form, re-parametrised by two integer thresholds]:

- sets A, B₁, …, B_{k−1} ⊂ {0,1}^d of n vectors each, every vector of the same weight w;
- the k-way inner product ⟨a, b₁, …, b_{k−1}⟩ = Σ_l a_l·b_{1,l}·…·b_{k−1,l} (k = 2: the ordinary one);
- integer thresholds 0 ≤ τ_lo < τ_hi ≤ w (the papers' t = τ_hi and (1 − ε)·t = τ_lo; gap Δ = τ_hi − τ_lo);
- YES: some tuple has ⟨a_i, b_{1,j₁}, …⟩ ≥ τ_hi. NO: every tuple has it ≤ τ_lo (the promise: nothing
  else is an instance).

Search version: a witness (i, j₁, …, j_{k−1}) whose inner product exceeds τ_lo (it proves the instance
is not NO). In the planted and adversarial families exactly one tuple exceeds τ_lo, and the witness must
be that tuple.

Families (each with its answer known by construction, and checked by brute force):

``planted_yes`` / ``planted_no``        random equal-weight vectors, repaired until every tuple is ≤ τ_lo;
                                        YES plants one tuple whose common support is exactly τ_hi;
``random_yes`` / ``random_no``          random vectors, maximum M found by brute force; thresholds set
                                        from M (YES: τ_hi = M, τ_lo = M − Δ; NO: τ_lo = M, τ_hi = M + Δ):
                                        other tuples may sit anywhere in the gap;
``adversarial_yes`` / ``adversarial_no``  near the threshold: *every* tuple has inner product exactly τ_lo
                                        (a common core of τ_lo coordinates, the rest in per-set regions),
                                        so every NO row carries the largest mass the promise allows; YES
                                        adds one tuple at exactly τ_hi.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from attnspec.reductions.base import SourceAnswer

KIND = "gap-maxip"
FAMILIES = ("planted_yes", "planted_no", "random_yes", "random_no", "adversarial_yes", "adversarial_no")
GENERATOR_VERSION = "maxip-gen/1"
# Sizes that keep every family satisfiable and the attention instances small (per order k).
DEFAULTS = {2: {"d": 20, "w": 4, "tau_hi": 4, "tau_lo": 2},
            3: {"d": 16, "w": 4, "tau_hi": 4, "tau_lo": 1},
            4: {"d": 16, "w": 4, "tau_hi": 4, "tau_lo": 1}}


class PromiseError(ValueError):
    """The instance breaks the gap promise: its maximum lies strictly between τ_lo and τ_hi."""


@dataclass(frozen=True, eq=False)
class MaxIPInstance:
    """A validated Gap-MaxIP instance: ``a`` (the query set A) and ``sets`` (B₁, …, B_{k−1}), each n×d
    read-only uint8 0/1 arrays of one common row weight, and the thresholds."""

    a: np.ndarray
    sets: tuple[np.ndarray, ...]
    tau_hi: int
    tau_lo: int

    @property
    def order(self) -> int:
        return len(self.sets) + 1

    @property
    def n(self) -> int:
        return int(self.a.shape[0])

    @property
    def d(self) -> int:
        return int(self.a.shape[1])

    @property
    def weight(self) -> int:
        return int(self.a[0].sum())

    @property
    def gap(self) -> int:
        return self.tau_hi - self.tau_lo


def _binary(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(f"Gap-MaxIP set {name} must be a non-empty 2-D array, got shape {arr.shape}")
    if arr.dtype == object or arr.dtype.kind not in "biuf" or not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"Gap-MaxIP set {name} must hold only 0 and 1")
    out = arr.astype(np.uint8)
    out.setflags(write=False)
    return out


def _integer(x: Any, name: str) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) and not (isinstance(x, float) and x.is_integer()):
        raise ValueError(f"Gap-MaxIP {name} must be an integer, got {x!r}")
    return int(x)


def make_instance(a: Any, sets: Sequence[Any], tau_hi: Any, tau_lo: Any) -> MaxIPInstance:
    """A validated :class:`MaxIPInstance` (``ValueError`` naming the problem): 0/1 sets of equal shape,
    one weight w for every vector, integers 0 ≤ τ_lo < τ_hi ≤ w, at least one set B."""
    if isinstance(sets, np.ndarray) and sets.ndim == 2:
        raise ValueError("Gap-MaxIP sets must be a list of matrices B₁, …, B_{k−1}")
    mats = [_binary(a, "A")] + [_binary(b, f"B{m + 1}") for m, b in enumerate(sets)]
    if len(mats) < 2:
        raise ValueError("Gap-MaxIP needs at least one set B (order k = len(sets) + 1 ≥ 2)")
    shape = mats[0].shape
    for m, x in enumerate(mats[1:]):
        if x.shape != shape:
            raise ValueError(f"Gap-MaxIP set B{m + 1} has shape {x.shape}, A has {shape}")
    weights = np.unique(np.concatenate([x.sum(axis=1) for x in mats]))
    if weights.size != 1:
        raise ValueError(f"Gap-MaxIP vectors must all have one weight, got weights {weights.tolist()}")
    w = int(weights[0])
    hi, lo = _integer(tau_hi, "tau_hi"), _integer(tau_lo, "tau_lo")
    if not 0 <= lo < hi <= w:
        raise ValueError(f"Gap-MaxIP thresholds need 0 ≤ τ_lo < τ_hi ≤ w: τ_lo = {lo}, τ_hi = {hi}, w = {w}")
    return MaxIPInstance(mats[0], tuple(mats[1:]), hi, lo)


def inner_products(a: np.ndarray, sets: Sequence[np.ndarray]) -> np.ndarray:
    """The k-way inner products of every tuple: an array of shape (n, n, …) indexed (i, j₁, …, j_{k−1})."""
    letters = string.ascii_lowercase[: len(sets) + 1]
    spec = ",".join(f"{c}z" for c in letters) + "->" + letters
    return np.einsum(spec, *(np.asarray(x, dtype=np.int64) for x in (a, *sets)))


def tuple_inner_product(inst: MaxIPInstance, witness: Sequence[int]) -> int:
    """⟨a_i, b_{1,j₁}, …⟩ of one tuple (i, j₁, …) in O(k·d)."""
    prod = inst.a[witness[0]].astype(np.int64)
    for m, j in enumerate(witness[1:]):
        prod = prod * inst.sets[m][j]
    return int(prod.sum())


def solve(inst: MaxIPInstance) -> SourceAnswer:
    """Brute force over all n^k tuples. The witness is the first tuple (lexicographically) attaining the
    maximum; the certificate holds the maximum and how many tuples exceed τ_lo. :class:`PromiseError`
    when the maximum lies strictly inside the gap."""
    ips = inner_products(inst.a, inst.sets)
    best = int(ips.max())
    argmax = tuple(int(x) for x in np.unravel_index(int(ips.argmax()), ips.shape))
    above = int((ips > inst.tau_lo).sum())
    if inst.tau_lo < best < inst.tau_hi:
        raise PromiseError(f"Gap-MaxIP promise broken: maximum {best} lies strictly between τ_lo = {inst.tau_lo} "
                           f"and τ_hi = {inst.tau_hi}")
    yes = best >= inst.tau_hi
    return SourceAnswer(yes, argmax if yes else None,
                        {"method": "brute_force", "max_ip": best, "argmax": list(argmax), "above_lo": above,
                         "unique_above_lo": above == 1, "tau_hi": inst.tau_hi, "tau_lo": inst.tau_lo})


# ---------------------------------------------------------------------------------------------
# Generators with known answers


def _random_vectors(rng: np.random.Generator, count: int, d: int, w: int, allowed: np.ndarray | None = None) -> np.ndarray:
    """``count`` random weight-w vectors of {0,1}^d (support drawn uniformly from ``allowed`` coordinates)."""
    pool = np.arange(d) if allowed is None else np.asarray(allowed)
    out = np.zeros((count, d), dtype=np.uint8)
    for r in range(count):
        out[r, rng.choice(pool, size=w, replace=False)] = 1
    return out


def _repair(rng: np.random.Generator, mats: list[np.ndarray], w: int, tau_lo: int, planted: tuple[int, ...] | None,
            max_rounds: int = 2000) -> None:
    """Resample non-planted vectors until every tuple other than ``planted`` has inner product ≤ τ_lo."""
    d = mats[0].shape[1]
    for _ in range(max_rounds):
        ips = inner_products(mats[0], mats[1:])
        if planted is not None:
            ips[planted] = 0
        bad = np.argwhere(ips > tau_lo)
        if bad.size == 0:
            return
        tup = bad[int(rng.integers(len(bad)))]
        members = [m for m in range(len(mats)) if planted is None or tup[m] != planted[m]]
        m = members[int(rng.integers(len(members)))]
        mats[m][tup[m]] = _random_vectors(rng, 1, d, w)[0]
    raise ValueError(f"could not keep every tuple ≤ τ_lo = {tau_lo} (d = {d}, w = {w}): use a larger d or τ_lo")


def _plant(rng: np.random.Generator, mats: list[np.ndarray], w: int, tau_hi: int) -> tuple[int, ...]:
    """One tuple whose common support is exactly τ_hi coordinates (the other vectors' extras avoid a_i)."""
    n, d = mats[0].shape
    tup = tuple(int(rng.integers(n)) for _ in mats)
    a_support = rng.choice(d, size=w, replace=False)
    core = a_support[:tau_hi]
    outside = np.setdiff1d(np.arange(d), a_support)
    if outside.size < w - tau_hi:
        raise ValueError(f"d = {d} too small to plant a tuple at exactly τ_hi = {tau_hi} with w = {w}")
    mats[0][tup[0]] = 0
    mats[0][tup[0], a_support] = 1
    for m in range(1, len(mats)):
        mats[m][tup[m]] = 0
        mats[m][tup[m], core] = 1
        mats[m][tup[m], rng.choice(outside, size=w - tau_hi, replace=False)] = 1
    return tup


def _adversarial(rng: np.random.Generator, n: int, d: int, w: int, k: int, tau_hi: int, tau_lo: int,
                 yes: bool) -> tuple[list[np.ndarray], tuple[int, ...] | None]:
    """Every tuple at exactly τ_lo: a core C (|C| = τ_lo) in every vector, the other w − τ_lo coordinates
    in a region private to each set (so supports of different sets meet only in C); YES: one vector per
    set also takes a shared region P (|P| = Δ), so exactly one tuple reaches τ_hi."""
    region = (d - tau_hi) // k
    if region < w - tau_lo:
        raise ValueError(f"adversarial Gap-MaxIP needs d ≥ τ_hi + k(w − τ_lo) = {tau_hi + k * (w - tau_lo)}, got d = {d}")
    perm = rng.permutation(d)  # hide the block layout
    core, shared = perm[:tau_lo], perm[tau_lo:tau_hi]
    mats = []
    for m in range(k):
        private = perm[tau_hi + m * region: tau_hi + (m + 1) * region]
        x = _random_vectors(rng, n, d, w - tau_lo, private)
        x[:, core] = 1
        mats.append(x)
    planted = None
    if yes:
        planted = tuple(int(rng.integers(n)) for _ in range(k))
        for m in range(k):
            row = mats[m][planted[m]]
            extras = np.flatnonzero(row & ~np.isin(np.arange(d), core))
            row[rng.choice(extras, size=tau_hi - tau_lo, replace=False)] = 0
            row[shared] = 1
    return mats, planted


def generate(family: str, n: int, rng: np.random.Generator, *, order: int = 2, d: int | None = None,
             w: int | None = None, tau_hi: int | None = None, tau_lo: int | None = None,
             gap: int | None = None) -> tuple[MaxIPInstance, dict[str, Any]]:
    """A seeded Gap-MaxIP instance of ``family`` (see the module docstring) and its generator record.

    Defaults per order come from :data:`DEFAULTS`; ``gap`` (random families) defaults to τ_hi − τ_lo."""
    if family not in FAMILIES:
        raise ValueError(f"unknown Gap-MaxIP family {family!r}; known: {', '.join(FAMILIES)}")
    if isinstance(order, bool) or not isinstance(order, int) or order < 2:
        raise ValueError(f"Gap-MaxIP order k must be an integer ≥ 2, got {order!r}")
    if n < 2:
        raise ValueError("Gap-MaxIP instances need n ≥ 2 (the theorem parameters divide by log n)")
    base = DEFAULTS.get(order, DEFAULTS[4])
    d = base["d"] if d is None else int(d)
    w = base["w"] if w is None else int(w)
    hi = base["tau_hi"] if tau_hi is None else int(tau_hi)
    lo = base["tau_lo"] if tau_lo is None else int(tau_lo)
    delta = hi - lo if gap is None else int(gap)
    if not 0 < w <= d or not 0 <= lo < hi <= w or not 0 < delta <= w:
        raise ValueError(f"need 0 < w ≤ d, 0 ≤ τ_lo < τ_hi ≤ w and 0 < gap ≤ w: d={d}, w={w}, τ=({lo},{hi}), gap={delta}")
    record: dict[str, Any] = {"family": family, "order": order, "d": d, "w": w}
    yes = family.endswith("_yes")
    planted = None
    if family.startswith("adversarial"):
        mats, planted = _adversarial(rng, n, d, w, order, hi, lo, yes)
    elif family.startswith("planted"):
        mats = [_random_vectors(rng, n, d, w) for _ in range(order)]
        if yes:
            planted = _plant(rng, mats, w, hi)
        _repair(rng, mats, w, lo, planted)
    else:
        for _ in range(200):
            mats = [_random_vectors(rng, n, d, w) for _ in range(order)]
            best = int(inner_products(mats[0], mats[1:]).max())
            if (yes and best >= 1) or (not yes and best < w):
                break
        else:
            raise ValueError(f"no random {'YES' if yes else 'NO'} instance in 200 draws (d = {d}, w = {w})")
        delta = min(delta, best) if yes else min(delta, w - best)  # a gap the drawn maximum allows
        hi, lo = (best, best - delta) if yes else (best + delta, best)
        record["max_ip"] = best
    if planted is not None:
        record["planted"] = list(planted)
    record.update(tau_hi=hi, tau_lo=lo)
    inst = make_instance(mats[0], mats[1:], hi, lo)
    answer = solve(inst)
    if family in ("planted_yes", "planted_no", "adversarial_yes", "adversarial_no"):
        assert answer.decision == yes and answer.certificate["above_lo"] == (1 if yes else 0), "generator broke its promise"
    return inst, record


def expected_decision(family: str) -> bool:
    """The decision every family guarantees by construction."""
    return family.endswith("_yes")


def instance_arrays(inst: MaxIPInstance) -> dict[str, np.ndarray]:
    """A and B₁, … as float64 0/1 arrays (the on-disk form)."""
    out = {"a": inst.a.astype(np.float64)}
    out.update({f"b{m + 1}": b.astype(np.float64) for m, b in enumerate(inst.sets)})
    return out


def instance_params(inst: MaxIPInstance) -> dict[str, Any]:
    return {"order": inst.order, "n": inst.n, "d": inst.d, "w": inst.weight, "tau_hi": inst.tau_hi, "tau_lo": inst.tau_lo}


def instance_from_files(arrays: dict[str, np.ndarray], params: dict[str, Any]) -> MaxIPInstance:
    """Rebuild and validate an instance from :func:`instance_arrays` and :func:`instance_params`."""
    order = params.get("order")
    if isinstance(order, bool) or not isinstance(order, int) or order < 2:
        raise ValueError(f"Gap-MaxIP 'order' must be an integer ≥ 2, got {order!r}")
    names = ["a"] + [f"b{m + 1}" for m in range(order - 1)]
    missing = [x for x in names if x not in arrays]
    if missing or set(arrays) != set(names):
        raise ValueError(f"Gap-MaxIP arrays must be exactly {names}, got {sorted(arrays)}")
    inst = make_instance(arrays["a"], [arrays[x] for x in names[1:]], params.get("tau_hi"), params.get("tau_lo"))
    for key in ("n", "d", "w"):
        if key in params and params[key] != {"n": inst.n, "d": inst.d, "w": inst.weight}[key]:
            raise ValueError(f"Gap-MaxIP parameter {key!r} = {params[key]!r} does not match the arrays")
    return inst

