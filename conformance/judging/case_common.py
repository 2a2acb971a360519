"""What the problem plug-ins share: the case record, the seeded family loop, derandomized hypothesis
draws, the per-instance enclosure cache, the judging step, and :class:`InstanceProblem`, the base of the
problems whose case is one instance judged entrywise (softmax and tensor attention).

A problem module keeps what is its own: the families, the precision model it uses and its files.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, ClassVar, Iterator

import numpy as np

from attnspec.spec.validation import max_abs_exact
from attnspec.conformance.judging.precision_model import contract_tolerance
from attnspec.conformance.judging.problems import Problem
from attnspec.conformance.judging.verdict import Verdict, judge, judge_two_tier
from attnspec.reference.enclosure import Enclosure


@dataclass
class ConformanceCase:
    """One conformance case: an instance with its provenance (each problem module subclasses it to set
    ``problem``'s default)."""

    case_id: str
    family: str
    dtype: str
    seed: int
    instance: Any
    problem: str = ""
    tags: dict[str, Any] = field(default_factory=dict)
    rows: tuple[int, ...] | None = None  # output rows certified (sorted, unique); None: every row


def normalize_rows(rows: Any, n_rows: int | None = None) -> tuple[int, ...] | None:
    """``rows`` as a sorted tuple of unique non-negative ints (None stays None: every row), checked
    against ``n_rows`` output rows when given. Raises ``ValueError`` naming what is wrong: a row subset
    must be non-empty, integral, sorted, without repeats and inside the output."""
    if rows is None:
        return None
    arr = np.asarray(rows)
    if arr.ndim != 1:
        raise ValueError(f"rows must be a 1-D list of row indices, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("rows must name at least one output row (None means every row)")
    if arr.dtype.kind not in "iu" and not (arr.dtype == object and all(isinstance(r, (int, np.integer)) and
                                                                      not isinstance(r, bool) for r in arr.tolist())):
        raise ValueError(f"rows must be integers, got dtype {arr.dtype}")
    out = tuple(int(r) for r in arr.tolist())
    if out[0] < 0:
        raise ValueError(f"rows must be non-negative, got {out[0]}")
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError("rows must be sorted and unique")
    if n_rows is not None and out[-1] >= n_rows:
        raise ValueError(f"row {out[-1]} is outside the output's {n_rows} rows")
    return out


def choose_rows(n: int, *, seed: int = 0, random_rows: int = 32,
                tiles: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096)) -> tuple[int, ...]:
    """Output rows worth certifying in a row-subset case of ``n`` rows: the first and last rows, every
    tile boundary t·b − 1, t·b, t·b + 1 for the tile sizes ``tiles`` (where blocked kernels start and
    end a block of queries: an off-by-one in the block loop shows there), and ``random_rows`` rows drawn
    with ``numpy.random.default_rng(seed)`` (deterministic: the same rows on every machine).

    For n ≤ 4096 the boundaries of the smaller tiles alone number up to ~3n/64; the result is sorted,
    unique and inside [0, n)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    chosen = {0, 1, n - 2, n - 1}
    for b in tiles:
        if b < 1:
            raise ValueError(f"tile sizes must be positive, got {b}")
        for t in range(b, n + 1, b):
            chosen.update((t - 1, t, t + 1))
    if random_rows > 0:
        rng = np.random.default_rng(seed)
        chosen.update(int(r) for r in rng.integers(0, n, size=random_rows))
    return tuple(sorted(r for r in chosen if 0 <= r < n))


def with_rows(case: Any, rows: Any, *, suffix: str | None = None) -> Any:
    """A copy of ``case`` that certifies only output ``rows`` (checked against the instance's output
    rows); its id gains ``suffix`` (default ``"rows<count>"``) so the subset case is named apart."""
    out_rows = normalize_rows(rows, int(case.instance.output_shape[0]))
    new = copy.copy(case)
    new.rows = out_rows
    new.tags = dict(case.tags)
    if out_rows is not None:
        new.case_id = f"{case.case_id}/{suffix or f'rows{len(out_rows)}'}"
    return new


def cast_to(x: Any, dtype: str) -> np.ndarray:
    """``x`` rounded to ``dtype``; entries that overflow it become 0 (the case stays valid and exact)."""
    with np.errstate(over="ignore"):  # the overflow is expected: those entries are replaced below
        out = np.asarray(x, dtype=np.float64).astype(dtype)
    return np.where(np.isfinite(out), out, 0).astype(dtype)


def family_seed(seed: int, family: str, salt: int = 0) -> int:
    """A family's seed: stable across machines and Python versions (no ``hash()``)."""
    return (seed * 1_000_003 + sum(ord(c) * 31**i for i, c in enumerate(family)) + salt) % 2**32


def generate_family_cases(profile: str, profiles: tuple[str, ...], dtypes: tuple[str, ...], seed: int, *,
                          families: dict[str, Callable], counts: dict[str, dict[str, int]],
                          make_case: Callable[..., Any], hypothesis_cases: Callable[..., list], salt: int = 0) -> list:
    """For each dtype: every family's recipe run over its own seeded generator (``counts[profile][family]``
    instances, the thorough profile asking for bigger ones), then the derandomized hypothesis draws.
    ``make_case(family, index, family_seed, dtype, *recipe_output)`` builds one case."""
    if profile not in profiles:
        raise ValueError(f"unknown profile {profile!r}; choose from {profiles}")
    count = counts[profile]
    big = profile == "thorough"
    cases: list = []
    for dtype in dtypes:
        for family, recipe in families.items():
            fam_seed = family_seed(seed, family, salt)
            rng = np.random.default_rng(fam_seed)
            for i, drawn in enumerate(recipe(rng, count[family], big)):
                cases.append(make_case(family, i, fam_seed, dtype, *drawn))
        cases.extend(hypothesis_cases(count["hypothesis"], dtype, big, seed))
    return cases


def derandomized_draws(strategy: Any, count: int) -> list:
    """``count`` examples of a hypothesis strategy, derandomized, so that a case id names one instance.

    Hypothesis (≥ 6.131) sometimes substitutes constants harvested from every module loaded so far,
    which would make the draws depend on what the caller happened to import. That substitution is
    switched off while drawing (a private hook; if a later hypothesis renames it, the draws are still
    derandomized, only no longer independent of the imports)."""
    if count <= 0:
        return []
    from hypothesis import HealthCheck, Phase, given, settings

    drawn: list = []

    @settings(max_examples=count, derandomize=True, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(inst: Any) -> None:
        drawn.append(inst)

    with _no_harvested_constants():
        collect()
    return drawn[:count]


@contextmanager
def _no_harvested_constants() -> Iterator[None]:
    try:
        from hypothesis.internal.conjecture.providers import HypothesisProvider

        original = HypothesisProvider.__dict__["_maybe_draw_constant"]
    except (ImportError, KeyError):
        yield
        return
    setattr(HypothesisProvider, "_maybe_draw_constant", lambda self, *args, **kwargs: None)
    try:
        yield
    finally:
        setattr(HypothesisProvider, "_maybe_draw_constant", original)


class EnclosureCache:
    """Reference enclosures per instance object, computed once (a backend's output and its replay are
    judged against the same bounds):

    - ``cache(inst, prec)``: the full Arb enclosure at ``prec`` bits;
    - ``cache.rows(inst, prec, rows)``: the Arb enclosure of output ``rows`` at ``prec``, memoised *per
      row* (a row computed for one output is reused for any other output that needs it);
      ``enclose_rows(inst, prec, rows)`` computes missing rows, or, without it, rows are sliced from
      the full enclosure;
    - ``cache.fast(inst, rows)``: the fast engine's bounds (``enclose_fast(inst, rows)``; None when
      there is none), per row subset.
    """

    def __init__(self, enclose: Callable[[Any, int], Any], *,
                 enclose_rows: Callable[[Any, int, np.ndarray], Any] | None = None,
                 enclose_fast: Callable[[Any, np.ndarray | None], Any] | None = None):
        self._enclose = enclose
        self._enclose_rows = enclose_rows
        self._enclose_fast = enclose_fast
        self._by_instance: "weakref.WeakKeyDictionary[Any, dict[int, Any]]" = weakref.WeakKeyDictionary()
        self._rows: "weakref.WeakKeyDictionary[Any, dict[int, dict[int, list]]]" = weakref.WeakKeyDictionary()
        self._fast: "weakref.WeakKeyDictionary[Any, dict[tuple[int, ...] | None, Any]]" = weakref.WeakKeyDictionary()
        self.arb_rows_computed = 0  # rows Arb computed through rows() (for tests and measurements)

    def __call__(self, inst: Any, prec: int) -> Any:
        per_prec = self._by_instance.setdefault(inst, {})
        if prec not in per_prec:
            per_prec[prec] = self._enclose(inst, prec)
        return per_prec[prec]

    @property
    def has_fast(self) -> bool:
        return self._enclose_fast is not None

    def fast(self, inst: Any, rows: tuple[int, ...] | None) -> Any:
        """The fast engine's bounds of output ``rows`` (None: no fast engine, or it declined)."""
        if self._enclose_fast is None:
            return None
        per_rows = self._fast.setdefault(inst, {})
        if rows not in per_rows:
            try:
                per_rows[rows] = self._enclose_fast(inst, None if rows is None else np.asarray(rows, dtype=np.int64))
            except NotImplementedError:  # an instance the fast engine does not cover: Arb alone
                per_rows[rows] = None
        return per_rows[rows]

    def rows(self, inst: Any, prec: int, rows: np.ndarray) -> Enclosure:
        """Arb enclosure (shape (len(rows), dv)) of the output ``rows`` at ``prec`` bits."""
        rows = np.asarray(rows, dtype=np.int64)
        per_row = self._rows.setdefault(inst, {}).setdefault(prec, {})
        missing = [int(r) for r in rows.tolist() if int(r) not in per_row]
        if missing:
            full = self._by_instance.get(inst, {}).get(prec)
            if full is None and self._enclose_rows is not None:
                enc = self._enclose_rows(inst, prec, np.asarray(missing, dtype=np.int64))
                got = missing
            else:
                enc = full if full is not None else self(inst, prec)
                got = list(range(enc.shape[0]))
            width = int(np.prod(enc.shape[1:], dtype=np.int64))
            for i, r in enumerate(got):
                per_row[r] = enc.balls[i * width:(i + 1) * width]
            self.arb_rows_computed += len(missing)
            shape_tail = tuple(enc.shape[1:])
        else:
            shape_tail = (len(per_row[int(rows[0])]),) if rows.size else ()
        balls = [b for r in rows.tolist() for b in per_row[int(r)]]
        return Enclosure(balls=balls, shape=(len(rows), *shape_tail), prec=prec)


def judge_against(case: Any, output: Any, tolerance: Any, source: dict[str, Any], cache: EnclosureCache,
                  conditioning: dict[str, Any], *, max_prec: int = 1024, two_tier: bool | None = None) -> Verdict:
    """Certified verdict on ``output`` for ``case`` (refining the reference up to ``max_prec`` bits), with
    where the tolerance came from and the instance's conditioning numbers added to the evidence.

    Two-tier (:func:`~attnspec.conformance.judging.verdict.judge_two_tier`: the cache's fast engine
    first, Arb on the undecided rows only) when the cache has a fast engine or the case certifies a row
    subset (``case.rows``), or when ``two_tier`` says so; otherwise the Arb-only :func:`judge` on the
    whole output (``two_tier=False`` forces it; the Arb-only path ignores ``rows``, so it is refused
    for a row-subset case)."""
    rows = getattr(case, "rows", None)
    if two_tier is None:
        two_tier = cache.has_fast or rows is not None
    if not two_tier and rows is not None:
        raise ValueError("a row-subset case is judged by the two-tier engine only")
    if two_tier:
        inst = case.instance
        row_ids = None if rows is None else np.asarray(rows, dtype=np.int64)

        def enclose_rows(prec: int, local: np.ndarray) -> Enclosure:
            return cache.rows(inst, prec, local if row_ids is None else row_ids[local])

        verdict = judge_two_tier(output, (lambda: cache.fast(inst, rows)) if cache.has_fast else None, enclose_rows,
                                 tolerance, shape=tuple(inst.output_shape), rows=row_ids, max_prec=max_prec)
    else:
        verdict = judge(output, lambda prec: cache(case.instance, prec), tolerance, max_prec=max_prec)
        verdict.evidence["engines"] = ["arb"]
    verdict.evidence["tolerance_source"] = source
    verdict.evidence["conditioning"] = conditioning
    return verdict


def outside_declared_limits(caps: Any, *, d: int, max_entry: Fraction, scale: Fraction, order: int) -> list[str]:
    """Every way a case lies outside what the backend declares about d and, for a contract (ε_a)
    backend, about the entry bound B and the logit radius R = |s|·d·B^k (k = ``order``; the default limit
    B^k is the papers' |s| ≤ 1/d); empty when it lies inside."""
    reasons = []
    if caps.max_d is not None and d > caps.max_d:
        reasons.append(f"d = {d} exceeds declared max_d = {caps.max_d}")
    if caps.contract_eps is None:
        return reasons
    if caps.bound is None:
        return reasons + ["contract backend declares no entry bound B"]
    if max_entry > Fraction(caps.bound):
        reasons.append(f"entries reach {float(max_entry):g} > declared bound B = {caps.bound:g}")
    r_max = float(caps.bound) ** order if caps.max_logit_radius is None else float(caps.max_logit_radius)
    radius = abs(float(scale)) * d * float(caps.bound) ** order
    if radius > r_max * (1 + 2.0**-40):
        reasons.append(f"logit radius |s|·d·B^{order} = {radius:g} exceeds the contract's {r_max:g}")
    return reasons


class InstanceProblem(Problem):
    """A problem whose case is one validated instance: the backend is called once with its arrays, and
    its output (``inst.output_shape``) is judged entrywise against the certified enclosure.

    Subclasses set ``name``, ``method``, ``Case``, ``family_recipes``, ``counts`` and ``salt``, and
    implement :meth:`make_case`, :meth:`hypothesis_cases`, :meth:`call_args`, :meth:`inputs`,
    :meth:`order`, :meth:`precision_tolerance`, :meth:`vacuity_detail`, :meth:`conditioning`,
    :meth:`enclose` and the instance-file methods.

    Tolerance: the contract ε_a when the backend claims one (inside its declared bound B, ``max_d`` and
    logit radius), otherwise the precision model of the backend's declared arithmetic for the case's dtype.
    """

    family_recipes: ClassVar[dict[str, Callable]]
    counts: ClassVar[dict[str, dict[str, int]]]
    salt: ClassVar[int] = 0

    def __init__(self) -> None:
        self.cached_enclosure = EnclosureCache(self.enclose, enclose_rows=self.arb_rows_engine(),
                                               enclose_fast=self.fast_engine())
        # tolerance per instance, declared arithmetic and row subset: the applicability check and the
        # pre-call tolerance of judge_one ask for the same array
        self._tolerances: "weakref.WeakKeyDictionary[Any, dict[Any, tuple[np.ndarray, dict[str, Any]]]]" = weakref.WeakKeyDictionary()

    # --- what each instance problem defines -------------------------------------------------------
    def make_case(self, family: str, index: int, seed: int, dtype: str, *drawn: Any) -> Any:
        raise NotImplementedError

    def hypothesis_cases(self, count: int, dtype: str, big: bool, seed: int) -> list:
        raise NotImplementedError

    def call_args(self, case: Any) -> tuple[tuple, dict]:
        raise NotImplementedError

    def inputs(self, inst: Any) -> list[np.ndarray]:
        """Every input matrix of the instance (for entry bounds)."""
        raise NotImplementedError

    def order(self, inst: Any) -> int:
        """k of the logits' k-fold products (2 for softmax attention)."""
        raise NotImplementedError

    def precision_tolerance(self, inst: Any, model: Any) -> np.ndarray:
        raise NotImplementedError

    def overflow_reason(self, inst: Any, model: Any) -> str | None:
        """Why the declared format cannot hold an intermediate of this instance (None: it can)."""
        return None

    def vacuity_detail(self, inst: Any) -> str:
        raise NotImplementedError

    def conditioning(self, inst: Any) -> dict[str, Any]:
        raise NotImplementedError

    def enclose(self, inst: Any, prec: int) -> Any:
        raise NotImplementedError

    def arb_rows_engine(self) -> Callable[[Any, int, np.ndarray], Any] | None:
        """``f(inst, prec, rows)``: the Arb enclosure of output ``rows`` only, at O(|rows|·n·d) cost
        (None: rows are sliced from the full enclosure)."""
        return None

    def fast_engine(self) -> Callable[[Any, np.ndarray | None], Any] | None:
        """``f(inst, rows)``: the fast engine's certified float64 bounds of output ``rows`` (a
        ``BoundsEnclosure``), or None when the problem has none (the Arb-only path)."""
        return None

    def row_tolerance(self, inst: Any, model: Any, rows: tuple[int, ...] | None) -> tuple[np.ndarray, str | None]:
        """The precision-model tolerance of output ``rows``, and a note when it was sliced from the
        tolerance of every row (a problem whose tolerance cannot be computed per row)."""
        tol = self.precision_tolerance(inst, model)
        if rows is None:
            return tol, None
        return np.array(tol[np.asarray(rows, dtype=np.int64)]), "sliced from the tolerance of every row"

    # --- the Problem interface, shared ------------------------------------------------------------
    extra_families: ClassVar[tuple[str, ...]] = ()

    def extra_cases(self, profile: str, dtypes: tuple[str, ...], seed: int) -> list:
        """Hand-built cases that the seeded family loop cannot express (families ``extra_families``)."""
        return []

    def families(self) -> list[str]:
        return [*self.family_recipes, "hypothesis", *self.extra_families]

    def generate_cases(self, profile: str = "quick", dtypes: tuple[str, ...] = ("float64",), seed: int = 0) -> list:
        cases = generate_family_cases(profile, self.profiles, tuple(dtypes), seed, families=self.family_recipes,
                                      counts=self.counts, make_case=self.make_case,
                                      hypothesis_cases=self.hypothesis_cases, salt=self.salt)
        return cases + self.extra_cases(profile, tuple(dtypes), seed)

    def not_applicable_reasons(self, case: Any, caps: Any) -> list[str]:
        inst = case.instance
        reasons = self.declaration_reasons(caps, dtype=case.dtype, n=inst.n)
        reasons += outside_declared_limits(caps, d=inst.d, max_entry=max(max_abs_exact(x) for x in self.inputs(inst)),
                                           scale=inst.scale, order=self.order(inst))
        if caps.contract_eps is None and case.dtype in caps.dtypes:
            model = caps.precision_for(case.dtype)
            overflow = self.overflow_reason(inst, model)
            if overflow is not None:
                reasons.append(overflow)
            elif not np.isfinite(self.tolerance_for(case, caps)[0]).all():
                reasons.append(f"the {model.fmt} precision model is vacuous here ({self.vacuity_detail(inst)}): "
                               "nothing can be promised")
        return reasons

    def tolerance_for(self, case: Any, caps: Any) -> tuple[np.ndarray, dict[str, Any]]:
        """The tolerance ``case`` is judged by (a read-only array), and a description of where it came
        from. Computed once per instance and declared arithmetic (the instance is immutable)."""
        inst = case.instance
        rows = getattr(case, "rows", None)
        model_key = ("contract", float(caps.contract_eps)) if caps.contract_eps is not None else caps.precision_for(case.dtype)
        key = (model_key, rows)
        per_instance = self._tolerances.setdefault(inst, {})
        if key not in per_instance:
            if caps.contract_eps is not None:
                shape = tuple(inst.output_shape) if rows is None else (len(rows), *tuple(inst.output_shape)[1:])
                tol = contract_tolerance(caps.contract_eps, shape)
                source: dict[str, Any] = {"kind": "contract", "eps": caps.contract_eps}
            else:
                tol, note = self.row_tolerance(inst, model_key, rows)
                source = {"kind": "precision_model", "model": model_key.__dict__.copy()}
                if note is not None:
                    source["rows_note"] = note
            if rows is not None:
                source["rows"] = len(rows)
            tol.flags.writeable = False
            per_instance[key] = (tol, source)
        tol, source = per_instance[key]
        return tol, copy.deepcopy(source)

    def request(self, case: Any) -> tuple[str, str, tuple, dict]:
        args, kwargs = self.call_args(case)
        return "call", self.method, args, kwargs

    def expected_output_elements(self, case: Any) -> int:
        return int(np.prod(case.instance.output_shape))

    def judge(self, case: Any, output: Any, caps: Any, *, max_prec: int = 1024,
              tolerance: tuple[np.ndarray, dict[str, Any]] | None = None) -> Verdict:
        """Certified verdict on ``output`` (``tolerance``: fixed before the backend call, when given)."""
        tol, source = tolerance if tolerance is not None else self.tolerance_for(case, caps)
        return judge_against(case, output, tol, source, self.cached_enclosure, self.conditioning(case.instance),
                             max_prec=max_prec)

    def shape(self, case: Any) -> list[int]:
        inst = case.instance
        return [int(inst.n), int(inst.d)]


def accepts_rows(fn: Callable) -> bool:
    """True when ``fn`` takes a ``rows`` keyword (the row-restricted engines and tolerances)."""
    try:
        return "rows" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def optional_engine(module: str, name: str) -> Callable | None:
    """``module.name`` when that module exists (a fast engine not yet installed is no engine)."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    fn = getattr(mod, name, None)
    return fn if callable(fn) else None


def fraction_or_none(x: Any) -> Fraction | None:
    """An exact parameter read back from a case file ("p/q" strings)."""
    return None if x is None else Fraction(str(x))


def exact_params(inst: Any) -> dict[str, Any]:
    """The exact parameters every instance problem stores: scale, bound and ε as "p/q" strings."""
    return {
        "scale": str(inst.scale),
        "bound": None if inst.bound is None else str(inst.bound),
        "eps": None if inst.eps is None else str(inst.eps),
    }
