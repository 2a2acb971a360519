"""Certified enclosures: arrays of Arb balls that provably contain the true values.

Two kinds of enclosure share one interface (``shape``, ``prec``, ``engine``, ``float_bounds``, ``ball``,
``mid``, ``rad``, ``max_relative_radius``), which is all the verdict engine reads:

- :class:`Enclosure` (Arb): one ball per entry, any precision, slow in Python for large outputs;
- :class:`BoundsEnclosure` (fast engines): certified float64 arrays ``lo ≤ x ≤ hi``, produced by
  vectorised outward-bounded float64 arithmetic on numpy or CuPy (``reference/fast_*``). Entries it
  cannot bound (``−inf``/``+inf``) are left to Arb by the verdict engine.

An :class:`Enclosure` holds one :class:`flint.arb` ball per output entry (row-major) and the working
precision that produced it. For fast vectorised verdicts it also offers outward-rounded float64 bounds
``lo ≤ true value ≤ hi``; entries those bounds cannot decide are judged exactly from the balls
(:func:`arb_bounds_fraction`).

This module also converts exact inputs to Arb/FLINT objects without any rounding.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterator, Sequence

import numpy as np
from flint import arb, arb_mat, ctx, fmpq, fmpq_mat

_TINY = 4 * 5e-324  # covers the absolute rounding error of subnormal conversions


@contextmanager
def working_precision(bits: int, threads: int | None = None) -> Iterator[None]:
    """Run a block at ``bits`` of Arb working precision, optionally with FLINT using ``threads``
    threads for matrix products (restoring the caller's settings afterwards)."""
    if bits < 2:
        raise ValueError(f"precision must be at least 2 bits, got {bits}")
    old_prec, old_threads = ctx.prec, ctx.threads
    ctx.prec = int(bits)
    if threads is not None:
        ctx.threads = max(1, int(threads))
    try:
        yield
    finally:
        ctx.prec = old_prec
        ctx.threads = old_threads


def default_threads() -> int:
    """Threads for FLINT's matrix products: every core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def fraction_of(x: arb | fmpq | float | int) -> Fraction:
    """The exact rational value of an exact arb midpoint/radius, fmpq, float or int."""
    if isinstance(x, arb):
        man_f, exp_f = x.man_exp()
        man, exp = int(man_f), int(exp_f)
        return Fraction(man * (1 << exp)) if exp >= 0 else Fraction(man, 1 << -exp)
    if isinstance(x, fmpq):
        return Fraction(int(x.p), int(x.q))
    return Fraction(x)


def arb_bounds_fraction(ball: arb) -> tuple[Fraction, Fraction]:
    """Exact rational lower and upper ends of a ball: [mid − rad, mid + rad]."""
    if not ball.is_finite():
        raise ValueError("ball is not finite")
    m = fraction_of(ball.mid())
    r = fraction_of(ball.rad())
    return m - r, m + r


def exact_arb(x: Fraction | float | int) -> arb:
    """An arb for an exact value: floats and ints exactly; a Fraction as a tight ball at current prec."""
    if isinstance(x, Fraction):
        if x.denominator & (x.denominator - 1) == 0:  # dyadic: exact
            return arb(x.numerator) / x.denominator
        return arb(fmpq(x.numerator, x.denominator))
    return arb(x)


def is_exact_float_matrix(m: np.ndarray) -> bool:
    return m.dtype.kind == "f"


def arb_matrix(m: np.ndarray) -> arb_mat:
    """An arb_mat with the exact entries of ``m`` (float entries exactly; Fractions as tight balls)."""
    if m.dtype.kind == "f":
        return arb_mat(m.astype(np.float64).tolist())
    return arb_mat([[exact_arb(v) for v in row] for row in m])


def fmpq_matrix(m: np.ndarray) -> fmpq_mat:
    """An exact fmpq_mat with the values of ``m`` (floats taken exactly)."""
    rows = []
    for row in m:
        out = []
        for v in row:
            f = v if isinstance(v, Fraction) else Fraction(float(v))
            out.append(fmpq(f.numerator, f.denominator))
        rows.append(out)
    return fmpq_mat(rows)


def exact_product(a: np.ndarray, b_t: np.ndarray) -> arb_mat:
    """Enclosure of a · b_tᵀ for exact matrices.

    Float inputs: Arb's matrix product (exact block products, one rounding at working precision).
    Rational inputs: exact fmpq product, rounded once into balls.
    """
    if a.dtype.kind == "f" and b_t.dtype.kind == "f":
        return arb_matrix(a) * arb_matrix(b_t.T)
    return arb_mat(fmpq_matrix(a) * fmpq_matrix(b_t.T))


@dataclass
class Enclosure:
    """Balls (row-major) that contain the true output entries, produced at ``prec`` bits."""

    balls: list
    shape: tuple[int, ...]
    prec: int
    engine: str = "arb"
    _bounds: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.balls) != int(np.prod(self.shape)):
            raise ValueError(f"{len(self.balls)} balls for shape {self.shape}")

    @classmethod
    def from_arb_mat(cls, m: arb_mat, prec: int) -> "Enclosure":
        return cls(balls=list(m.entries()), shape=(m.nrows(), m.ncols()), prec=prec)

    def mid(self) -> np.ndarray:
        """Float64 midpoints (rounded to nearest)."""
        return np.array([float(b.mid()) for b in self.balls], dtype=np.float64).reshape(self.shape)

    def rad(self) -> np.ndarray:
        """Float64 radii (rounded to nearest)."""
        return np.array([float(b.rad()) for b in self.balls], dtype=np.float64).reshape(self.shape)

    def float_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Outward-rounded float64 bounds lo ≤ x ≤ hi for every entry.

        |m − fl(m)| ≤ |fl(m)|·2⁻⁵³ (+ a subnormal term) and r ≤ fl(r)(1 + 2⁻⁵²); the slack below is
        twice that, and a final nextafter absorbs the rounding of the subtraction/addition.
        Non-finite conversions give (−inf, +inf), which simply leaves the entry to the exact path.
        """
        if self._bounds is None:
            with np.errstate(over="ignore", invalid="ignore"):
                m = self.mid()
                r = self.rad()
                slack = r * (1 + 2.0**-50) + np.abs(m) * 2.0**-51 + _TINY
                lo = np.nextafter(m - slack, -np.inf)
                hi = np.nextafter(m + slack, np.inf)
                bad = ~(np.isfinite(lo) & np.isfinite(hi))
                lo[bad] = -np.inf
                hi[bad] = np.inf
            self._bounds = (lo, hi)
        return self._bounds

    def ball(self, index: Sequence[int]) -> arb:
        """The ball of one entry, by multi-index."""
        return self.balls[int(np.ravel_multi_index(tuple(index), self.shape))]

    def max_relative_radius(self) -> float:
        """max_i rad_i / |mid_i| (∞ where a midpoint is 0 with positive radius)."""
        m = np.abs(self.mid())
        r = self.rad()
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(r == 0, 0.0, r / m)
        if not rel.size or np.isnan(rel).all():  # no finite ball (a huge-logit case not yet refined)
            return 0.0 if not rel.size else float("inf")
        return float(np.nanmax(rel))

    def contains_floats(self, values: np.ndarray) -> bool:
        """True when every float in ``values`` lies inside its ball (exact check)."""
        vals = np.asarray(values, dtype=np.float64).reshape(-1)
        for b, x in zip(self.balls, vals):
            lo, hi = arb_bounds_fraction(b)
            if not lo <= Fraction(float(x)) <= hi:
                return False
        return True

    def overlaps(self, other: "Enclosure") -> bool:
        """True when every ball of ``self`` intersects the matching ball of ``other`` (exact check)."""
        if self.shape != other.shape:
            return False
        for a, b in zip(self.balls, other.balls):
            alo, ahi = arb_bounds_fraction(a)
            blo, bhi = arb_bounds_fraction(b)
            if ahi < blo or bhi < alo:
                return False
        return True


@dataclass
class BoundsEnclosure:
    """Certified float64 bounds ``lo[i] ≤ x[i] ≤ hi[i]`` for every entry of the true output.

    ``engine`` names what produced the bounds and ``assumptions`` lists what the certificate rests on
    beyond IEEE-754 binary64 round-to-nearest (empty when nothing else); both go into the evidence.
    An entry with ``lo = −inf`` or ``hi = +inf`` (or NaN) is *unbounded*: it decides nothing and the
    verdict engine refines it with Arb. ``prec`` is 53, the precision of the bounds' arithmetic.
    """

    lo: np.ndarray
    hi: np.ndarray
    engine: str = "fast-float64"
    assumptions: tuple[str, ...] = ()
    prec: int = 53

    def __post_init__(self) -> None:
        lo = np.array(self.lo, dtype=np.float64)  # host copies: the bounds never alias a caller's array
        hi = np.array(self.hi, dtype=np.float64)
        if lo.shape != hi.shape:
            raise ValueError(f"lo has shape {lo.shape}, hi {hi.shape}")
        bad = np.isnan(lo) | np.isnan(hi) | (lo > hi)
        lo[bad], hi[bad] = -np.inf, np.inf  # an inconsistent bound is no bound
        lo.flags.writeable = False
        hi.flags.writeable = False
        self.lo, self.hi = lo, hi

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.lo.shape)

    def float_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.lo, self.hi

    def bounded(self) -> np.ndarray:
        """Boolean array: True where the entry has finite bounds."""
        return np.isfinite(self.lo) & np.isfinite(self.hi)

    def ball(self, index: Sequence[int]) -> arb:
        """The exact ball [lo, hi] of one entry (midpoint and radius exact at 1100 bits), or a
        non-finite ball when the entry is unbounded."""
        idx = tuple(int(i) for i in index)
        lo, hi = float(self.lo[idx]), float(self.hi[idx])
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return arb(0, math.inf)
        with working_precision(1100):  # two float64s: their sum and half-difference are exact here
            a, b = arb(lo), arb(hi)
            return arb((a + b) / 2, (b - a) / 2)

    def exact_interval(self, index: Sequence[int]) -> tuple[Fraction, Fraction] | None:
        """[lo, hi] of one entry as exact rationals (an Arb ball's radius is a 30-bit upper bound, so
        :meth:`ball` may be one radius ulp wider), or None when the entry is unbounded."""
        idx = tuple(int(i) for i in index)
        lo, hi = float(self.lo[idx]), float(self.hi[idx])
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return None
        return Fraction(lo), Fraction(hi)

    def mid(self) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            return self.lo / 2 + self.hi / 2

    def rad(self) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            return self.hi / 2 - self.lo / 2

    def max_relative_radius(self) -> float:
        m, r = np.abs(self.mid()), self.rad()
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(r == 0, 0.0, r / m)
        if not rel.size:
            return 0.0
        return float("inf") if np.isnan(rel).any() else float(rel.max())

    def contains_floats(self, values: np.ndarray) -> bool:
        vals = np.asarray(values, dtype=np.float64).reshape(self.shape)
        return bool(np.all((self.lo <= vals) & (vals <= self.hi)))
