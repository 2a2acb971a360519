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
    """Exact bounds of |y − x| over the entry's enclosure: its exact interval when the enclosure keeps
    one (float bounds), else the ball's endpoints."""
    exact = enc.exact_interval(index) if hasattr(enc, "exact_interval") else None
    lo, hi = exact if exact is not None else arb_bounds_fraction(enc.ball(index))
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


def _bad_output(output: Any, exc: OutputError) -> Verdict:
    """The error verdict for an output that cannot be judged (wrong shape, NaN/Inf, not numeric), with the
    offending entry when there is one."""
    evidence: dict[str, Any] = {"kind": "bad_output"}
    if exc.index is not None:
        evidence["worst_index"] = list(exc.index)
        evidence["output"] = float(np.asarray(output, dtype=np.float64)[exc.index])
    return Verdict(ERROR, str(exc), evidence)


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
        return _bad_output(output, exc)
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


def _exact_candidates(y: np.ndarray, lo: np.ndarray, hi: np.ndarray, tol: np.ndarray, lower: np.ndarray,
                      upper: np.ndarray, undecided: np.ndarray, exact_mask: np.ndarray | None = None) -> np.ndarray:
    """The undecided entries whose exact check could settle them (a vectorised filter, so that the
    per-entry exact arithmetic runs on the few entries near their threshold, not on a whole output).

    The float error bounds exceed the exact ones by at most the outward slack of the float bounds
    (``Enclosure.float_bounds``: ≤ 2⁻⁵⁰·(|m| + r) + 2⁻¹⁰⁷²·4, and |m| + r ≤ 2(|lo| + |hi|)) plus two
    roundings of the error (≤ 2⁻⁵¹·(|y| + |lo| + |hi|)). With the margin
    μ = 2⁻⁴⁴·(|y| + |lo| + |hi| + τ) + 2⁻¹⁰⁰⁰ (derived here, generous by 2⁴), an entry with
    float upper − μ > τ and float lower + μ ≤ τ is undecided exactly too, so it is skipped. Entries
    whose float bounds are not finite are kept (their ball may still be finite and decisive, e.g. near
    the float64 overflow threshold) unless ``exact_mask`` (from ``enc.exact_mask()``, when the
    enclosure has it) says they have no ball to compare: an entry a fast engine left unbounded. The
    filter only chooses where exact arithmetic is spent: a skipped entry stays undecided (and is
    refined), it is never decided by the filter.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        finite = np.isfinite(lo) & np.isfinite(hi)
        # scaled before the sum: near the float64 maximum the sum itself would overflow
        mu = 2.0**-44 * np.abs(y) + 2.0**-44 * np.abs(lo) + 2.0**-44 * np.abs(hi) + 2.0**-44 * tol + 2.0**-1000
        near = ~np.isfinite(mu) | (upper - mu <= tol) | (lower + mu > tol)
    keep = near | ~finite
    if exact_mask is not None:
        keep &= exact_mask
    return undecided & keep


def _judge_once(y: np.ndarray, enc: Any, tol: np.ndarray) -> Verdict:
    verdict, _ = _judge_once_mask(y, enc, tol)
    return verdict


def _judge_once_mask(y: np.ndarray, enc: Any, tol: np.ndarray) -> tuple[Verdict, np.ndarray]:
    """One certified judgement of ``y`` against the bounds of ``enc``, and the boolean mask of the
    entries it left undecided (all False on a fail: a certain fail needs nothing more)."""
    lo, hi = enc.float_bounds()
    exact_mask = enc.exact_mask() if hasattr(enc, "exact_mask") else None
    lower, upper = _float_error_bounds(y, lo, hi)
    certain_fail = lower > tol
    certain_pass = upper <= tol
    # Entries the float bounds cannot settle are decided exactly from the balls.
    exact: dict[tuple[int, ...], tuple[Fraction, Fraction]] = {}
    if not certain_fail.any():
        for idx in map(tuple, np.argwhere(_exact_candidates(y, lo, hi, tol, lower, upper, ~certain_pass,
                                                                  exact_mask))):
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
                             f"|y - x| >= {lower[idx]:.3e} > {tol[idx]:.3e}", ev), np.zeros(y.shape, dtype=bool)
    if certain_pass.all():
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(upper_ratio)), y.shape))
        ev = evidence_at(idx, float(lower[idx]), float(upper[idx]))
        return Verdict(PASS, f"every entry within tolerance; worst ratio {ev['ratio']:.3g} at {list(idx)}", ev), ~certain_pass
    undecided = ~certain_pass
    masked = np.where(undecided, upper_ratio, -np.inf)
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(masked)), y.shape))
    ev = evidence_at(idx, float(lower[idx]), float(upper[idx]))
    ev["undecided_entries"] = int(undecided.sum())
    return Verdict(UNDECIDED, f"{int(undecided.sum())} entries could not be decided; worst at {list(idx)}", ev), undecided


# --------------------------------------------------------------------------------------------------
# The two-tier engine: a fast float64 enclosure first, Arb only on the rows it leaves undecided.


class PatchedEnclosure:
    """Certified bounds of an output whose rows come from two engines: a fast float64 enclosure
    (a :class:`~attnspec.reference.enclosure.BoundsEnclosure`, or nothing: every entry unbounded) and,
    for the rows :meth:`patch` was given, Arb balls at some precision. Rows are local (0 … m−1).

    It has the interface the verdict engine reads (``shape``, ``float_bounds``, ``ball``,
    ``max_relative_radius``) plus ``exact_mask``: entries with a ball worth an exact comparison (an
    entry the fast engine left unbounded, in a row not yet refined, has none).
    """

    def __init__(self, fast: Any, shape: tuple[int, ...]):
        self.shape = tuple(shape)
        self.fast = fast
        if fast is not None:
            if tuple(fast.shape) != self.shape:
                raise ValueError(f"fast enclosure has shape {tuple(fast.shape)}, expected {self.shape}")
            flo, fhi = fast.float_bounds()
            self.lo, self.hi = np.array(flo, dtype=np.float64), np.array(fhi, dtype=np.float64)
        else:
            self.lo, self.hi = np.full(self.shape, -np.inf), np.full(self.shape, np.inf)
        self.row_prec = np.zeros(self.shape[0], dtype=np.int64)  # 0: the fast bounds only
        self._balls: dict[int, list] = {}

    def patch(self, rows: np.ndarray, enc: Any) -> None:
        """Replace ``rows`` (local indices) by the rows of ``enc`` (an Arb enclosure of shape
        (len(rows), dv)), at its precision ``enc.prec``."""
        rows = np.asarray(rows, dtype=np.int64)
        if tuple(enc.shape) != (len(rows), *self.shape[1:]):
            raise ValueError(f"Arb enclosure has shape {tuple(enc.shape)}, expected {(len(rows), *self.shape[1:])}")
        lo, hi = enc.float_bounds()
        self.lo[rows], self.hi[rows] = lo, hi
        self.row_prec[rows] = int(enc.prec)
        width = int(np.prod(self.shape[1:], dtype=np.int64))
        for i, r in enumerate(rows.tolist()):
            self._balls[r] = enc.balls[i * width:(i + 1) * width]

    def float_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.lo, self.hi

    def exact_mask(self) -> np.ndarray:
        mask = np.isfinite(self.lo) & np.isfinite(self.hi)
        mask[self.row_prec > 0] = True  # an Arb ball may decide where its float bounds overflow
        return mask

    def exact_interval(self, index: Any) -> tuple[Fraction, Fraction] | None:
        """The fast engine's exact interval for an entry of a row not refined by Arb (else None: the
        Arb ball decides)."""
        idx = tuple(int(i) for i in index)
        if self.row_prec[idx[0]] > 0 or self.fast is None or not hasattr(self.fast, "exact_interval"):
            return None
        return self.fast.exact_interval(idx)

    def ball(self, index: Any) -> Any:
        from flint import arb

        idx = tuple(int(i) for i in index)
        r = idx[0]
        if self.row_prec[r] > 0:
            width = self.shape[1:]
            return self._balls[r][int(np.ravel_multi_index(idx[1:], width)) if width else 0]
        if self.fast is not None:
            return self.fast.ball(idx)
        return arb(0, float("inf"))

    def max_relative_radius(self) -> float:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            m = np.abs(self.lo / 2 + self.hi / 2)
            r = self.hi / 2 - self.lo / 2
            rel = np.where(r == 0, 0.0, r / m)
        if not rel.size:
            return 0.0
        return float("inf") if np.isnan(rel).any() else float(rel.max())


def judge_two_tier(
    output: Any,
    fast: Callable[[], Any] | None,
    enclose_rows: Callable[[int, np.ndarray], Any],
    tolerance: float | np.ndarray,
    *,
    shape: tuple[int, ...],
    rows: np.ndarray | None = None,
    start_prec: int = DEFAULT_START_PREC,
    max_prec: int = DEFAULT_MAX_PREC,
) -> Verdict:
    """Certified verdict on ``output`` (the *full* output, shape ``shape``), restricted to the output
    rows ``rows`` (sorted unique; None = every row), in two tiers.

    1. ``fast()`` gives certified float64 bounds of ``output[rows]`` (a ``BoundsEnclosure`` of shape
       (len(rows), …); ``fast`` None, or ``fast()`` returning None, means no fast engine: every entry
       starts unbounded). The same pass/fail/undecided rule as :func:`judge` is applied to them, with
       the same exactness (vectorised outward float bounds, then exact rational comparisons on the few
       entries near their threshold).
    2. Only the rows with an undecided entry are recomputed by ``enclose_rows(prec, local_rows)`` (an
       Arb enclosure of shape (len(local_rows), …) of those rows of ``output[rows]``) at
       ``start_prec``, then at twice the precision for the rows still undecided, …, up to ``max_prec``;
       each recomputation replaces those rows' bounds. Rows undecided at ``max_prec`` leave the verdict
       undecided, never pass.

    A fail is certain from either tier (both are certified enclosures). A pass covers the rows checked
    (all rows when ``rows`` is None). ``tolerance`` is τ of ``output[rows]`` (scalar or an array of
    that shape). Evidence adds ``engines`` (what produced the deciding bounds), ``rows_checked``,
    ``rows_refined`` (how many rows Arb recomputed) and their fraction, ``fast_assumptions`` and
    ``prec`` (the highest precision any row reached; 53 when the fast bounds decided alone).
    ``worst_index`` names the entry in the full output (global row).
    """
    full_shape = tuple(shape)
    try:
        y_full = coerce_output(output, full_shape)
    except OutputError as exc:
        return _bad_output(output, exc)
    row_ids = None if rows is None else np.asarray(rows, dtype=np.int64)
    y = y_full if row_ids is None else y_full[row_ids]
    sub_shape = y.shape
    tol = np.broadcast_to(np.asarray(tolerance, dtype=np.float64), sub_shape)
    if np.any(np.isnan(tol)) or np.any(tol < 0):
        raise ValueError("tolerance must be non-negative")

    fast_enc = fast() if fast is not None else None
    enc = PatchedEnclosure(fast_enc, sub_shape)
    m = sub_shape[0]
    engines: list[str] = []
    if fast_enc is not None:
        engines.append(str(getattr(fast_enc, "engine", "fast")))
        verdict, undecided = _judge_once_mask(y, enc, tol)
    else:
        verdict, undecided = Verdict(UNDECIDED, "no fast engine", {}), np.ones(sub_shape, dtype=bool)
    refined = np.zeros(m, dtype=bool)
    while verdict.status == UNDECIDED:
        und_rows = np.flatnonzero(undecided.reshape(m, -1).any(axis=1)) if m else np.zeros(0, dtype=np.int64)
        und_rows = und_rows[enc.row_prec[und_rows] < max_prec]
        if not und_rows.size:
            break  # every undecided row is at the cap: undecided stays undecided
        target = np.where(enc.row_prec[und_rows] == 0, start_prec, np.minimum(2 * enc.row_prec[und_rows], max_prec))
        target = np.maximum(target, enc.row_prec[und_rows] + 1)  # always rises (start_prec ≤ a fast prec)
        for p in np.unique(target).tolist():
            group = und_rows[target == p]
            enc.patch(group, enclose_rows(int(p), group))
        refined[und_rows] = True
        if "arb" not in engines:
            engines.append("arb")
        verdict, undecided = _judge_once_mask(y, enc, tol)

    ev = verdict.evidence
    if row_ids is not None and "worst_index" in ev:
        ev["worst_index"] = [int(row_ids[ev["worst_index"][0]]), *ev["worst_index"][1:]]
    if row_ids is not None and "undecided_entries" in ev:
        ev["undecided_rows"] = [int(row_ids[r]) for r in np.flatnonzero(undecided.reshape(m, -1).any(axis=1))[:20]]
    elif "undecided_entries" in ev:
        ev["undecided_rows"] = [int(r) for r in np.flatnonzero(undecided.reshape(m, -1).any(axis=1))[:20]]
    ev["engines"] = engines
    ev["rows_checked"] = int(m)
    ev["rows_total"] = int(full_shape[0])
    ev["rows_refined"] = int(refined.sum())
    ev["rows_refined_fraction"] = float(refined.sum() / m) if m else 0.0
    ev["fast_assumptions"] = list(getattr(fast_enc, "assumptions", ())) if fast_enc is not None else None
    ev["prec"] = int(enc.row_prec.max()) if refined.any() else int(getattr(fast_enc, "prec", 53))
    ev["max_relative_radius"] = enc.max_relative_radius()
    if row_ids is not None:
        verdict.message = f"{verdict.message} (rows checked: {m} of {full_shape[0]})"
    return verdict
