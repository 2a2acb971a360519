"""The certified verdict engine.

For a backend output y and an enclosure [m ± r] of the true value x, the true error |y − x| of an entry
lies in the certified interval [max(0, |y − m| − r), |y − m| + r]. With a tolerance τ per entry:

- **pass**      when the upper end is ≤ τ for every entry;
- **fail**      when the lower end is > τ for some entry;
- **undecided** otherwise: the reference is recomputed at twice the precision (radii shrink) up to a
  cap; still undecided at the cap is reported as undecided and never counted as a pass. A ball that
  is not finite (NaN or infinite radius: too little working precision for huge logits) decides
  nothing, so its entry is undecided and refined like any other.

Every comparison is exact. A first vectorised pass uses outward-rounded float64 bounds of the balls
(``Enclosure.float_bounds``) with error bounds rounded outward; entries it cannot settle are decided from
the balls themselves in exact rational arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable

import numpy as np

from attnspec.reference.enclosure import Enclosure, arb_bounds_fraction

PASS, FAIL, UNDECIDED, ERROR = "pass", "fail", "undecided", "error"

DEFAULT_START_PREC = 128
DEFAULT_MAX_PREC = 1024


@dataclass
class Verdict:
    """Outcome of judging one output, with the evidence that supports it."""

    status: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == PASS


class OutputError(ValueError):
    """A backend output is unusable: wrong shape, non-numeric, complex, NaN or Inf."""

    def __init__(self, message: str, index: tuple[int, ...] | None = None):
        super().__init__(message)
        self.index = index


def coerce_output(output: Any, shape: tuple[int, ...]) -> np.ndarray:
    """The backend output as an exact float64 array of ``shape``, or :class:`OutputError`.

    float16/float32 values convert to float64 exactly; integer outputs are accepted only when exactly
    representable; anything else (complex, object, strings) is garbage.
    """
    try:
        arr = np.asarray(output)
    except Exception as exc:
        raise OutputError(f"output is not array-like: {type(output).__name__}: {exc}") from None
    if arr.dtype.kind == "c":
        raise OutputError(f"output has complex dtype {arr.dtype}")
    if arr.dtype.kind not in "fiu":
        raise OutputError(f"output has non-numeric dtype {arr.dtype}")
    if arr.shape != tuple(shape):
        raise OutputError(f"output has shape {arr.shape}, expected {tuple(shape)}")
    if arr.dtype.kind in "iu":
        wide = arr.astype(np.float64)
        if not np.array_equal(wide.astype(arr.dtype), arr):
            raise OutputError("integer output is not exactly representable in float64")
        arr = wide
    elif arr.dtype.itemsize > 8:
        raise OutputError(f"output dtype {arr.dtype} wider than float64 is not supported")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise OutputError(f"output has a non-finite entry {float(arr[idx])!r} at {list(idx)}", idx)
    return arr


def _float_error_bounds(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outward-rounded float bounds on the certified error interval of each entry."""
    with np.errstate(over="ignore", invalid="ignore"):
        upper = np.nextafter(np.maximum(y - lo, hi - y), np.inf)
        lower = np.nextafter(np.maximum(lo - y, y - hi), -np.inf)
        lower = np.maximum(lower, 0.0)
        upper = np.where(np.isnan(upper), np.inf, upper)
        lower = np.where(np.isnan(lower), 0.0, lower)
    return lower, upper


def _exact_error_bounds(y: float, enc: Enclosure, index: tuple[int, ...]) -> tuple[Fraction, Fraction]:
    lo, hi = arb_bounds_fraction(enc.ball(index))
    yf = Fraction(y)
    return max(Fraction(0), lo - yf, yf - hi), max(yf - lo, hi - yf)


def _float_down(x: Fraction) -> float:
    """The largest float64 ≤ x (float() rounds to nearest, which may land above x)."""
    f = float(x)
    return float(np.nextafter(f, -np.inf)) if Fraction(f) > x else f


def _float_up(x: Fraction) -> float:
    """The smallest float64 ≥ x."""
    f = float(x)
    return float(np.nextafter(f, np.inf)) if Fraction(f) < x else f


def _ratio(err: float, tol: float) -> float:
    if tol > 0:
        return err / tol
    return 0.0 if err == 0 else float("inf")


def judge(
    output: Any,
    enclose: Callable[[int], Enclosure],
    tolerance: float | np.ndarray,
    *,
    start_prec: int = DEFAULT_START_PREC,
    max_prec: int = DEFAULT_MAX_PREC,
    shape: tuple[int, ...] | None = None,
) -> Verdict:
    """Certified verdict on ``output`` against the true values enclosed by ``enclose(prec)``.

    ``tolerance`` (scalar or per-entry array, non-negative floats) is the allowed absolute error τ.
    Returns pass / fail / undecided (see module docstring) or error for unusable output.
    """
    enc = enclose(start_prec)
    target_shape = tuple(shape) if shape is not None else enc.shape
    try:
        y = coerce_output(output, target_shape)
    except OutputError as exc:
        evidence: dict[str, Any] = {"kind": "bad_output"}
        if exc.index is not None:
            evidence["worst_index"] = list(exc.index)
            evidence["output"] = float(np.asarray(output, dtype=np.float64)[exc.index])
        return Verdict(ERROR, str(exc), evidence)
    tol = np.broadcast_to(np.asarray(tolerance, dtype=np.float64), target_shape)
    if np.any(np.isnan(tol)) or np.any(tol < 0):
        raise ValueError("tolerance must be non-negative")
    prec = start_prec
    while True:
        verdict = _judge_once(y, enc, tol)
        if verdict.status != UNDECIDED or prec >= max_prec:
            verdict.evidence["prec"] = prec
            with np.errstate(invalid="ignore"):
                verdict.evidence["max_relative_radius"] = enc.max_relative_radius()
            return verdict
        prec = min(2 * prec, max_prec)
        enc = enclose(prec)


def _judge_once(y: np.ndarray, enc: Enclosure, tol: np.ndarray) -> Verdict:
    lo, hi = enc.float_bounds()
    lower, upper = _float_error_bounds(y, lo, hi)
    certain_fail = lower > tol
    certain_pass = upper <= tol
    # Entries the float bounds cannot settle are decided exactly from the balls.
    exact: dict[tuple[int, ...], tuple[Fraction, Fraction]] = {}
    if not certain_fail.any():
        for idx in map(tuple, np.argwhere(~certain_pass)):
            if not enc.ball(idx).is_finite():
                continue  # a ball that is not finite (too little precision) decides nothing: refine
            lo_e, up_e = _exact_error_bounds(float(y[idx]), enc, idx)
            exact[idx] = (lo_e, up_e)
            t = Fraction(float(tol[idx]))
            if lo_e > t:
                certain_fail[idx] = True
                break
            if up_e <= t:
                certain_pass[idx] = True

    def evidence_at(idx: tuple[int, ...], err_lo: float, err_hi: float) -> dict[str, Any]:
        ball = enc.ball(idx)
        return {
            "worst_index": [int(i) for i in idx],
            "output": float(y[idx]),
            "reference_mid": float(ball.mid()),
            "reference_rad": float(ball.rad()),
            "error_interval": [err_lo, err_hi],
            "tolerance": float(tol[idx]),
            "ratio": _ratio(err_hi, float(tol[idx])),
            "ratio_lower": _ratio(err_lo, float(tol[idx])),
        }

    with np.errstate(divide="ignore", invalid="ignore"):
        safe_tol = np.where(tol > 0, tol, np.nan)
        upper_ratio = np.where(tol > 0, upper / safe_tol, np.where(upper > 0, np.inf, 0.0))
        lower_ratio = np.where(tol > 0, lower / safe_tol, np.where(lower > 0, np.inf, 0.0))
    for idx, (lo_e, up_e) in exact.items():  # exact bounds supersede the float ones
        lower[idx], upper[idx] = _float_down(lo_e), _float_up(up_e)  # outward: still certified
        upper_ratio[idx] = _ratio(float(upper[idx]), float(tol[idx]))
        lower_ratio[idx] = _ratio(float(lower[idx]), float(tol[idx]))

    if certain_fail.any():
        masked = np.where(certain_fail, lower_ratio, -np.inf)
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(masked)), y.shape))
        ev = evidence_at(idx, float(lower[idx]), float(upper[idx]))
        return Verdict(FAIL, f"error at {list(idx)} is certainly above tolerance: "
                             f"|y - x| >= {lower[idx]:.3e} > {tol[idx]:.3e}", ev)
    if certain_pass.all():
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(upper_ratio)), y.shape))
        ev = evidence_at(idx, float(lower[idx]), float(upper[idx]))
        return Verdict(PASS, f"every entry within tolerance; worst ratio {ev['ratio']:.3g} at {list(idx)}", ev)
    undecided = ~certain_pass
    masked = np.where(undecided, upper_ratio, -np.inf)
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(masked)), y.shape))
    ev = evidence_at(idx, float(lower[idx]), float(upper[idx]))
    ev["undecided_entries"] = int(undecided.sum())
    return Verdict(UNDECIDED, f"{int(undecided.sum())} entries could not be decided; worst at {list(idx)}", ev)
