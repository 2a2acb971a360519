"""Certified audits of approximate attention (the polynomial method, and any backend claiming ε_a).

Three audits, each a theorem or a certified measurement (docs/polynomial-method.md):

1. :func:`certify_configuration` — the *a priori* end-to-end bound of the polynomial method for
   (n, d, B, s, ε_a): the relative error ε of the exact float64 polynomial the method uses is certified
   by Arb (:mod:`attnspec.reference.polynomial_exp`), κ = e^R·Σ|c_t|Rᵗ is computed exactly/upward, and
   the bound of :func:`attnspec.spec.polynomial_attention.end_to_end_bound` is evaluated in exact
   rationals. ``holds`` says whether it is ≤ ε_a.
2. :func:`certified_error` — for one instance and one output, the certified interval of the actual
   max error ‖T − D⁻¹AV‖∞ from the Arb enclosure (:func:`attnspec.reference.softmax_attention.enclose`).
3. :func:`audit_backend` — any backend that claims ε_a under entry bound B is run on generated
   bounded-entry instances (random, extreme-logit, and an adversarial hypothesis search with
   ``target()``) and judged with the certified verdict engine at tolerance ε_a: one fail = claim violated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable

import numpy as np

from attnspec.accelerated.polynomial_attention import PolynomialPlan, plan_polynomial_attention, weight_magnitude
from attnspec.reference.polynomial_exp import certified_cancellation_factor, certified_relative_error
from attnspec.reference.softmax_attention import enclose
from attnspec.spec import polynomial_attention as contract
from attnspec.spec.softmax_attention import SoftmaxAttentionInstance, make_instance
from attnspec.conformance.judging.verdict import FAIL, PASS, judge


@dataclass(frozen=True)
class CertifiedBound:
    """Certified a priori bound of the polynomial method for one configuration."""

    plan: PolynomialPlan
    poly_rel_eps: Fraction  # certified upper bound of sup|P/exp − 1| on [−R, R]
    poly_rel_eps_lower: Fraction  # certified lower bound of the same sup
    kappa: Fraction
    eval_rel: Fraction  # η
    end_to_end: Fraction

    @property
    def holds(self) -> bool:
        return self.end_to_end <= Fraction(self.plan.eps)

    def as_dict(self) -> dict[str, Any]:
        p = self.plan
        return {
            "n": p.n, "d": p.d, "bound": p.bound, "scale": p.scale, "eps_a": p.eps,
            "logit_radius": p.radius, "degree": p.degree, "rank": p.rank,
            "poly_rel_eps_certified": [float(self.poly_rel_eps_lower), float(self.poly_rel_eps)],
            "poly_rel_eps_claimed": p.poly.claimed_rel_eps,
            "cancellation_factor": float(self.kappa), "eval_rel_error": float(self.eval_rel),
            "end_to_end_bound": float(self.end_to_end), "holds": self.holds,
        }


def certify_configuration(n: int, d: int, *, bound: Any, scale: Any, eps: Any, rtol: float = 1e-3) -> CertifiedBound:
    """Plan the polynomial method for (n, d, B, s, ε_a) and certify its end-to-end bound (module doc).

    Raises :class:`SpecError` when the method refuses the parameters.
    """
    plan = plan_polynomial_attention(n, d, bound=bound, scale=scale, eps=eps)
    radius = contract.logit_radius(bound, scale, d)
    coeffs = list(plan.poly.coeffs)
    rel = certified_relative_error(coeffs, radius, rtol=rtol)
    kappa = certified_cancellation_factor(coeffs, radius)
    magnitude = Fraction(weight_magnitude(plan.poly, d, float(scale), float(bound))) * 2
    eta = contract.evaluation_error_bound(kappa=kappa, n=n, g=plan.degree, r=plan.rank, radius=radius, magnitude=magnitude)
    total = contract.end_to_end_bound(rel_eps=rel.upper, eval_rel=eta, v_bound=bound)
    return CertifiedBound(plan, rel.upper, rel.lower, kappa, eta, total)


@dataclass(frozen=True)
class ErrorInterval:
    """Certified interval [lower, upper] ∋ ‖T − Att‖∞ and the worst entry (by the upper end)."""

    lower: float
    upper: float
    worst_index: tuple[int, int]


def certified_error(output: Any, inst: SoftmaxAttentionInstance, prec: int = 128) -> ErrorInterval:
    """Certified interval of max_ij |T_ij − Att_ij| (floats rounded outward)."""
    y = np.asarray(output, dtype=np.float64)
    enc = enclose(inst, prec)
    lo, hi = enc.float_bounds()
    if y.shape != enc.shape or not np.all(np.isfinite(y)):
        return ErrorInterval(math.inf, math.inf, (0, 0))
    with np.errstate(over="ignore"):
        up = np.maximum(np.abs(y - lo), np.abs(hi - y))
        down = np.maximum(np.maximum(lo - y, y - hi), 0.0)
    up = np.nextafter(up, np.inf)
    down = np.nextafter(down, -np.inf).clip(min=0)
    i, j = np.unravel_index(int(np.argmax(up)), up.shape)
    return ErrorInterval(float(down.max()), float(up.max()), (int(i), int(j)))


# ---------------------------------------------------------------- instance generation

def generate_instances(n: int, d: int, bound: float, *, seed: int = 0, count: int = 4) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Bounded-entry float64 instances (name, Q, K, V), all entries in [−B, B]:

    - ``uniform``: i.i.d. uniform entries;
    - ``extreme``: entries ±B, with key i equal to ±(query sign pattern), so logits reach ±R exactly
      (the edges of the interval where the relative error and the cancellation are worst);
    - ``one-hot``: V = ±B on one column per row, half the keys aligned with every query (peaked rows);
    - further ``uniform`` draws up to ``count``.
    """
    rng = np.random.default_rng(seed)
    B = float(bound)
    out: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
    uniform = lambda: rng.uniform(-B, B, (n, d))  # noqa: E731
    out.append(("uniform", uniform(), uniform(), uniform()))
    signs = rng.choice([-1.0, 1.0], size=(n, d))
    flip = rng.choice([-1.0, 1.0], size=(n, 1))
    q = B * signs
    k = B * signs[rng.permutation(n)] * flip
    k[: n // 2] = B * signs[0] * flip[: n // 2]
    out.append(("extreme", q, k, B * rng.choice([-1.0, 1.0], size=(n, d))))
    v = np.zeros((n, d))
    v[np.arange(n), rng.integers(0, d, n)] = B * rng.choice([-1.0, 1.0], size=n)
    k2 = np.tile(B * np.sign(rng.standard_normal(d)), (n, 1))
    k2[n // 2:] = rng.uniform(-B, B, (n - n // 2, d))
    out.append(("one-hot", rng.uniform(-B, B, (n, d)), k2, v))
    i = 0
    while len(out) < count:
        i += 1
        out.append((f"uniform-{i}", uniform(), uniform(), uniform()))
    return out[:count]


# ---------------------------------------------------------------- backend audits

@dataclass
class CaseResult:
    name: str
    status: str  # pass / fail / undecided / error
    error_interval: tuple[float, float] | None
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass
class AuditReport:
    eps: float
    bound: float
    scale: float
    cases: list[CaseResult]

    @property
    def status(self) -> str:
        """violated if any case fails or errors; holds if every case passes; else undecided."""
        if any(c.status in (FAIL, "error") for c in self.cases):
            return "violated"
        if all(c.status == PASS for c in self.cases):
            return "holds"
        return "undecided"

    def as_dict(self) -> dict[str, Any]:
        return {
            "eps_a": self.eps, "bound": self.bound, "scale": self.scale, "status": self.status,
            "cases": [{"name": c.name, "status": c.status, "certified_error": c.error_interval,
                       "message": c.message} for c in self.cases],
        }


def judge_case(name: str, attention: Callable[..., Any], q, k, v, *, scale: float, eps: float) -> CaseResult:
    """Run one instance through ``attention`` and judge it at tolerance ε_a (certified verdict)."""
    inst = make_instance(q, k, v, scale=scale)
    try:
        out = attention(q.copy(), k.copy(), v.copy(), scale=scale)
    except Exception as exc:  # untrusted backend
        return CaseResult(name, "error", None, f"backend raised {type(exc).__name__}: {exc}")
    verdict = judge(out, lambda prec: enclose(inst, prec), eps)
    interval = None
    ev = verdict.evidence or {}
    if verdict.status in (PASS, FAIL, "undecided"):
        try:
            e = certified_error(out, inst)
            interval = (e.lower, e.upper)
        except Exception:
            interval = None
    return CaseResult(name, verdict.status, interval, verdict.message, dict(ev))


def adversarial_instance(attention: Callable[..., Any], *, n: int, d: int, bound: float, scale: float,
                         max_examples: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Hypothesis search (``target()``) for bounded-entry inputs maximising the float64-estimated error of
    ``attention`` against exact float64 softmax; returns the worst (Q, K, V) found and its estimate.
    The estimate only steers the search; the worst instance is then judged with certified bounds."""
    from hypothesis import HealthCheck, given, settings, target
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    from attnspec.accelerated.softmax_attention import softmax_attention

    B = float(bound)
    elems = st.floats(-B, B, allow_nan=False, allow_infinity=False, width=64)
    # snap to a grid of 1/64 of B so that extremes ±B are common (where polynomial errors peak)
    mats = arrays(np.float64, (n, d), elements=st.one_of(st.sampled_from([-B, B, 0.0]), elems))
    best: dict[str, Any] = {"err": -1.0, "case": None}

    @settings(max_examples=max_examples, database=None, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(mats, mats, mats)
    def search(q, k, v):
        try:
            out = np.asarray(attention(q.copy(), k.copy(), v.copy(), scale=scale), dtype=np.float64)
            err = float(np.max(np.abs(out - softmax_attention(q, k, v, scale=scale))))
        except Exception:
            err = math.inf
        if not math.isfinite(err):
            err = 1e300
        target(err, label="max abs error")
        if err > best["err"]:
            best["err"], best["case"] = err, (q.copy(), k.copy(), v.copy())

    search()
    q, k, v = best["case"]
    return q, k, v, best["err"]


def audit_backend(backend: Any, *, eps: float, bound: float, scale: float | None = None, n: int = 64,
                  d: int = 4, seed: int = 0, count: int = 4, adversarial_examples: int = 30) -> AuditReport:
    """Check a backend's claim "‖T − Att‖∞ ≤ eps for entries in [−bound, bound]" on generated
    instances (see :func:`generate_instances`) plus one adversarial instance, with certified verdicts."""
    contract.make_contract(bound=bound, eps=eps, scale=1 if scale is None else scale)
    s = 1.0 / d if scale is None else float(scale)
    attention = backend.attention
    cases = [judge_case(name, attention, q, k, v, scale=s, eps=eps)
             for name, q, k, v in generate_instances(n, d, bound, seed=seed, count=count)]
    if adversarial_examples > 0:
        q, k, v, _ = adversarial_instance(attention, n=min(n, 32), d=d, bound=bound, scale=s,
                                          max_examples=adversarial_examples, seed=seed)
        cases.append(judge_case("adversarial", attention, q, k, v, scale=s, eps=eps))
    return AuditReport(float(eps), float(bound), s, cases)


def certified_errors_of_method(n: int, d: int, *, bound: float, scale: float, eps: float, seed: int = 0,
                               count: int = 4) -> list[tuple[str, ErrorInterval]]:
    """Certified actual error of the polynomial method on generated instances."""
    from attnspec.accelerated.polynomial_attention import polynomial_attention

    out = []
    for name, q, k, v in generate_instances(n, d, bound, seed=seed, count=count):
        inst = make_instance(q, k, v, scale=scale, bound=bound)
        t = polynomial_attention(q, k, v, scale=scale, bound=bound, eps=eps)
        out.append((name, certified_error(t, inst)))
    return out


__all__ = [
    "CertifiedBound", "certify_configuration", "ErrorInterval", "certified_error", "generate_instances",
    "CaseResult", "AuditReport", "judge_case", "adversarial_instance", "audit_backend",
    "certified_errors_of_method",
]
