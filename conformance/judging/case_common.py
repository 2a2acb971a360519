"""What the instance-based problem modules (softmax and tensor attention) share: the case record, the
seeded family loop, derandomized hypothesis draws, the per-instance enclosure cache and the judging step.

A problem module keeps what is its own: the families, the tolerance (precision model) and the files.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from fractions import Fraction

import numpy as np

from attnspec.conformance.judging.verdict import Verdict, judge


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


def cast_to(x: Any, dtype: str) -> np.ndarray:
    """``x`` rounded to ``dtype``; entries that overflow it become 0 (the case stays valid and exact)."""
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
    HypothesisProvider._maybe_draw_constant = lambda self, *args, **kwargs: None
    try:
        yield
    finally:
        HypothesisProvider._maybe_draw_constant = original


class EnclosureCache:
    """Reference enclosures per instance object and precision, computed once (a backend's output and
    its replay are judged against the same balls)."""

    def __init__(self, enclose: Callable[[Any, int], Any]):
        self._enclose = enclose
        self._by_instance: "weakref.WeakKeyDictionary[Any, dict[int, Any]]" = weakref.WeakKeyDictionary()

    def __call__(self, inst: Any, prec: int) -> Any:
        per_prec = self._by_instance.setdefault(inst, {})
        if prec not in per_prec:
            per_prec[prec] = self._enclose(inst, prec)
        return per_prec[prec]


def judge_against(case: Any, output: Any, tolerance: Any, source: dict[str, Any], cache: EnclosureCache,
                  conditioning: dict[str, Any], *, max_prec: int = 1024) -> Verdict:
    """Certified verdict on ``output`` for ``case`` (refining the reference up to ``max_prec`` bits), with
    where the tolerance came from and the instance's conditioning numbers added to the evidence."""
    verdict = judge(output, lambda prec: cache(case.instance, prec), tolerance, max_prec=max_prec)
    verdict.evidence["tolerance_source"] = source
    verdict.evidence["conditioning"] = conditioning
    return verdict


def outside_declared_limits(caps: Any, *, d: int, max_entry: Fraction, scale: Fraction, order: int) -> str | None:
    """Why a case lies outside what the backend declares about d and, for a contract (ε_a) backend,
    about the entry bound B and the logit radius R = |s|·d·B^k (k = ``order``; the default limit B^k is
    the papers' |s| ≤ 1/d); None when it lies inside."""
    if caps.max_d is not None and d > caps.max_d:
        return f"d = {d} exceeds declared max_d = {caps.max_d}"
    if caps.contract_eps is None:
        return None
    if caps.bound is None:
        return "contract backend declares no entry bound B"
    if max_entry > Fraction(caps.bound):
        return f"entries reach {float(max_entry):g} > declared bound B = {caps.bound:g}"
    r_max = float(caps.bound) ** order if caps.max_logit_radius is None else float(caps.max_logit_radius)
    radius = abs(float(scale)) * d * float(caps.bound) ** order
    if radius > r_max * (1 + 2.0**-40):
        return f"logit radius |s|·d·B^{order} = {radius:g} exceeds the contract's {r_max:g}"
    return None
