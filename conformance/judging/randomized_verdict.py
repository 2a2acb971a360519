"""A verdict for randomized guarantees: R seeded runs, each judged with certainty, then an exact binomial test.

A backend declares that each run violates its guarantee with probability ≤ δ. Of R independent runs,
``violated`` are certainly violations, ``undecided`` could not be decided, the rest certainly meet it.
With confidence 1 − α (α exact, e.g. 10⁻³):

- **fail** when P[Bin(R, δ) ≥ violated] ≤ α: if the true rate were ≤ δ, so many certain violations would
  happen with probability ≤ α (undecided runs are not counted as violations: in the backend's favour);
- **pass** when P[Bin(R, δ) ≤ violated + undecided] ≤ α: if the true rate were ≥ δ, so few would happen
  with probability ≤ α (undecided runs counted as violations: against the backend);
- **undecided** otherwise.

δ = 0 is a deterministic claim: fail on any certain violation, pass when every run certainly meets it.

Both tails are exact rational sums Σ C(R,i) δⁱ(1−δ)^{R−i} (δ taken as the exact value of its float).
The binomial tails are monotone in the rate, so the tests hold for any true rate on the tested side.
A correct backend (rate ≤ δ) is failed with probability ≤ α; an incorrect one passes with probability ≤ α.

:func:`runs_for_pass` is the least R at which an all-clean run set can pass: ⌈ln α / ln(1 − δ)⌉
(688 for δ = 0.01, α = 10⁻³).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from math import comb

PASS, FAIL, UNDECIDED = "pass", "fail", "undecided"
DEFAULT_ALPHA = Fraction(1, 1000)


def _exact(x: float | Fraction) -> Fraction:
    return x if isinstance(x, Fraction) else Fraction(x)


def lower_tail(r: int, x: int, p: float | Fraction) -> Fraction:
    """P[Bin(r, p) ≤ x], exactly."""
    p = _exact(p)
    if x < 0:
        return Fraction(0)
    if x >= r:
        return Fraction(1)
    q = 1 - p
    return sum((comb(r, i) * p**i * q ** (r - i) for i in range(x + 1)), Fraction(0))


def upper_tail(r: int, x: int, p: float | Fraction) -> Fraction:
    """P[Bin(r, p) ≥ x], exactly."""
    return 1 - lower_tail(r, x - 1, p)


def runs_for_pass(delta: float | Fraction, alpha: float | Fraction = DEFAULT_ALPHA) -> int:
    """Least R with (1 − δ)^R ≤ α (R clean runs then pass); checked exactly around the float estimate."""
    d, a = _exact(delta), _exact(alpha)
    if d <= 0:
        return 1  # δ = 0 is a deterministic claim, judged on the runs themselves
    r = max(1, math.ceil(math.log(float(a)) / math.log1p(-float(d))) - 2)
    while (1 - d) ** r > a:
        r += 1
    return r


@dataclass(frozen=True)
class RandomizedVerdict:
    status: str
    runs: int
    violated: int
    undecided: int
    delta: Fraction
    alpha: Fraction
    p_fail: Fraction  # P[Bin(R, δ) ≥ violated]
    p_pass: Fraction  # P[Bin(R, δ) ≤ violated + undecided]

    @property
    def message(self) -> str:
        head = f"{self.violated} certain violations, {self.undecided} undecided runs of {self.runs} (declared δ = {float(self.delta):g}"
        if self.status == FAIL:
            return f"{head}): P[Bin ≥ {self.violated}] = {float(self.p_fail):.3g} ≤ α = {float(self.alpha):g}, the rate is above δ"
        if self.status == PASS:
            return f"{head}): P[Bin ≤ {self.violated + self.undecided}] = {float(self.p_pass):.3g} ≤ α = {float(self.alpha):g}, the rate is below δ"
        return (f"{head}): neither tail reaches α = {float(self.alpha):g} (fail tail {float(self.p_fail):.3g}, pass tail "
                f"{float(self.p_pass):.3g}); {runs_for_pass(self.delta, self.alpha)} clean runs would be needed to pass")

    def evidence(self) -> dict:
        return {"runs": self.runs, "violated": self.violated, "undecided": self.undecided, "delta": float(self.delta),
                "alpha": float(self.alpha), "p_fail": float(self.p_fail), "p_pass": float(self.p_pass)}


def binomial_verdict(runs: int, violated: int, undecided: int, delta: float | Fraction,
                     alpha: float | Fraction = DEFAULT_ALPHA) -> RandomizedVerdict:
    """The exact binomial verdict (module docstring) for R = ``runs`` runs."""
    if not (0 <= violated and 0 <= undecided and violated + undecided <= runs and runs >= 1):
        raise ValueError(f"bad counts: runs={runs}, violated={violated}, undecided={undecided}")
    d, a = _exact(delta), _exact(alpha)
    if not (0 <= d < 1 and 0 < a < 1):
        raise ValueError(f"need 0 ≤ δ < 1 and 0 < α < 1, got δ={delta}, α={alpha}")
    if d == 0:  # a certainty claim about these runs: judged as a deterministic guarantee, run by run
        p_fail = Fraction(0) if violated else Fraction(1)
        p_pass = Fraction(0) if violated + undecided == 0 else Fraction(1)
        status = FAIL if violated else PASS if not undecided else UNDECIDED
        return RandomizedVerdict(status, runs, violated, undecided, d, a, p_fail, p_pass)
    p_fail = upper_tail(runs, violated, d)
    p_pass = lower_tail(runs, violated + undecided, d)
    status = FAIL if p_fail <= a else PASS if p_pass <= a else UNDECIDED
    return RandomizedVerdict(status, runs, violated, undecided, d, a, p_fail, p_pass)


__all__ = ["binomial_verdict", "lower_tail", "upper_tail", "runs_for_pass", "RandomizedVerdict", "DEFAULT_ALPHA"]
