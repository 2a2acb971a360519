"""Polynomial approximations of exp and symmetric monomial features (Alman–Song polynomial method).

Shared by matrix attention (:mod:`attnspec.accelerated.polynomial_attention`) and tensor attention
(:mod:`attnspec.accelerated.tensor_attention`). Derivations: ``docs/polynomial-method.md``.

The factorisation [D, digest §2.3]
----------------------------------
Let P(x) = Σ_{t=0}^{g} c_t xᵗ approximate exp on the logit interval [−R, R] and let x = s·⟨q, k⟩.
By the multinomial theorem (s⟨q,k⟩)ᵗ = Σ_{|α|=t} (t choose α) sᵗ q^α k^α, hence

    P(s⟨q,k⟩) = Σ_{|α| ≤ g} U₁[α] · U₂[α],
    U₁[α] = c_{|α|} · s^{|α|} · (|α| choose α) · q^α     (:func:`query_features`)
    U₂[α] = k^α                                          (:func:`key_features`)

over the r = binom(d+g, g) multi-indices α ∈ ℕ^d with |α| ≤ g (:func:`rank`), never the Σ_t dᵗ
columns of tensor powers. Key features are bare monomials, so they are multiplicative:
(k₁∘k₂)^α = k₁^α·k₂^α, which is what tensor attention needs (U₂⊘U₃ is the feature map of k₁∘k₂).

Column order (one list shared by both sides, :func:`multi_indices`)
--------------------------------------------------------------------
Graded by total degree t = 0, 1, …, g. Degree 0 is the single column α = 0. Every degree-t column
(t ≥ 1) is a degree-(t−1) *parent* column times one variable l that is ≥ the largest variable of the
parent (so each monomial arises exactly once); degree-t columns are listed parent by parent (in the
parent's order), and for one parent by increasing l. E.g. d = 2, g = 2: 1, x₀, x₁, x₀², x₀x₁, x₁².
Building column = parent column · x_l costs one multiplication per entry: O(n·r) in all.

The polynomial (:func:`choose_polynomial`)
------------------------------------------
Fitted for RELATIVE error on [−R, R]: weighted least squares of p(x)·e^{−x} ≈ 1 on Chebyshev points in
the Chebyshev basis, converted once to the power basis in x and rounded to float64. Those float64
coefficients *are* the polynomial: its relative error sup|P/exp − 1| is estimated here on a dense grid in
extended precision ([S] design estimate) and certified with Arb by
:mod:`attnspec.reference.polynomial_exp` (a theorem about exactly these coefficients).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from attnspec.spec.validation import SpecError
from attnspec.accelerated.array_namespace import array_namespace

UNIT_ROUNDOFF = 2.0**-53
MAX_DEGREE = 64
# Safety factor between the grid estimate of the relative error and the claim (the error curve of a
# degree-g fit has g+2 extrema; a grid of GRID_POINTS ≫ g points sees each within far less than 25%).
GRID_SAFETY = 1.25
GRID_POINTS = 4097
# Stop raising the degree after this many degrees without improvement (the float64 floor ≈ u·e^{2R}).
STALL_DEGREES = 6


def rank(d: int, g: int) -> int:
    """Number of feature columns r = #{α ∈ ℕ^d : |α| ≤ g} = binom(d+g, g)."""
    if d < 1 or g < 0:
        raise SpecError(f"rank needs d ≥ 1 and g ≥ 0, got d={d}, g={g}")
    return math.comb(d + g, g)


def logit_radius(bound: float, scale: float, d: int, order: int = 2) -> float:
    """Half-width R of the logit interval: |s·Σ_l q_l k_l| ≤ R = |s|·d·B^order for entries in [−B, B]
    (order 2: matrix attention; order 3: tensor attention, logits s·Σ_l q_l k1_l k2_l)."""
    return abs(float(scale)) * int(d) * float(bound) ** order


@dataclass(frozen=True)
class MonomialPlan:
    """The shared column list for dimension d and degree g (see the module docstring for the order).

    ``exponents``: r×d int array of the α; ``degrees``: |α| per column; ``parents``/``variables``:
    column c (c ≥ 1) is column ``parents[c]`` times variable ``variables[c]`` (−1 for column 0);
    ``multinomials``: (|α| choose α) = |α|!/Π α_l! as float64 (exact when < 2⁵³);
    ``degree_starts[t]``: first column of degree t (``degree_starts[g+1] = r``).
    """

    d: int
    g: int
    exponents: np.ndarray
    degrees: np.ndarray
    parents: np.ndarray
    variables: np.ndarray
    multinomials: np.ndarray
    degree_starts: tuple[int, ...] = field(default=())

    @property
    def rank(self) -> int:
        return int(self.exponents.shape[0])


@lru_cache(maxsize=64)
def monomial_plan(d: int, g: int) -> MonomialPlan:
    """Build (and cache) the :class:`MonomialPlan` for (d, g)."""
    d, g = int(d), int(g)
    r = rank(d, g)
    exps = np.zeros((r, d), dtype=np.int64)
    parents = np.full(r, -1, dtype=np.int64)
    variables = np.full(r, -1, dtype=np.int64)
    degrees = np.zeros(r, dtype=np.int64)
    last_var = np.zeros(r, dtype=np.int64)  # largest variable of column c (0 for the constant)
    starts = [0]
    c = 1
    prev_lo, prev_hi = 0, 1
    for t in range(1, g + 1):
        starts.append(c)
        for p in range(prev_lo, prev_hi):
            for l in range(int(last_var[p]), d):
                exps[c] = exps[p]
                exps[c, l] += 1
                parents[c], variables[c], degrees[c], last_var[c] = p, l, t, l
                c += 1
        prev_lo, prev_hi = prev_hi, c
    starts.append(c)
    assert c == r, (c, r)
    multi = np.array(
        [float(math.factorial(int(t)) // math.prod(math.factorial(int(a)) for a in row)) for t, row in zip(degrees, exps)],
        dtype=np.float64,
    )
    for arr in (exps, parents, variables, degrees, multi):
        arr.setflags(write=False)
    return MonomialPlan(d, g, exps, degrees, parents, variables, multi, tuple(starts))


def multi_indices(d: int, g: int) -> np.ndarray:
    """The r×d exponent array of the shared column list (order: module docstring)."""
    return monomial_plan(d, g).exponents


@dataclass(frozen=True, eq=False)
class ExpPolynomial:
    """P(x) = Σ_t coeffs[t]·xᵗ (float64 coefficients, power basis in the logit x) approximating exp on
    ``interval`` = (−R, R) with design relative error ``claimed_rel_eps`` ≥ sup|P(x)/eˣ − 1| (grid
    estimate × GRID_SAFETY; certified by :mod:`attnspec.reference.polynomial_exp`)."""

    coeffs: np.ndarray
    degree: int
    interval: tuple[float, float]
    claimed_rel_eps: float

    @property
    def radius(self) -> float:
        return float(self.interval[1])

    def __call__(self, x: Any) -> np.ndarray:
        """Horner evaluation in float64."""
        x = np.asarray(x, dtype=np.float64)
        acc = np.zeros_like(x)
        for c in self.coeffs[::-1]:
            acc = acc * x + c
        return acc

    def abs_coeff_sum(self, radius: float | None = None) -> float:
        """Σ_t |c_t|·ρᵗ (ρ = R by default): bounds Σ_α |U₁[α]U₂[α]| for logits' |s|Σ|q_l k_l| ≤ ρ."""
        rho = self.radius if radius is None else float(radius)
        return float(sum(abs(float(c)) * rho**t for t, c in enumerate(self.coeffs)))

    def cancellation_factor(self) -> float:
        """κ = e^R · Σ_t |c_t| Rᵗ: the ratio of the magnitude of the summed feature products to the
        smallest true value e^{−R} (≈ e^{2R}; multiplies unit roundoff in the evaluation error)."""
        return math.exp(self.radius) * self.abs_coeff_sum()


def rounding_gamma(m: int, u: float = UNIT_ROUNDOFF) -> float:
    """γ_m = m·u/(1 − m·u) (Higham): |Π(1+δ_i)^{±1} − 1| ≤ γ_m for m roundings with |δ_i| ≤ u."""
    if m * u >= 1:
        return math.inf
    return m * u / (1 - m * u)


def _fit_power_coeffs(radius: float, g: int) -> np.ndarray:
    """Float64 power-basis coefficients (in x) of the weighted LSQ fit p(x)e^{−x} ≈ 1 on [−R, R]."""
    cheb = np.polynomial.chebyshev
    m = max(8 * (g + 1), 64)
    y = np.cos(np.pi * (np.arange(m) + 0.5) / m)  # Chebyshev points of the first kind in [−1, 1]
    x = radius * y
    design = cheb.chebvander(y, g) * np.exp(-x)[:, None]
    a, *_ = np.linalg.lstsq(design, np.ones(m), rcond=None)
    power_y = cheb.cheb2poly(a)  # coefficients in y = x/R
    return np.array([float(cy) / radius**t for t, cy in enumerate(power_y)], dtype=np.float64)


def grid_relative_error(coeffs: np.ndarray, radius: float, points: int = GRID_POINTS) -> float:
    """max |P(x)/eˣ − 1| over an even grid of [−R, R], evaluated in extended precision (longdouble)
    so that the float64 coefficients are measured rather than float64 Horner's rounding."""
    x = np.linspace(-radius, radius, points).astype(np.longdouble)
    acc = np.zeros_like(x)
    for c in coeffs[::-1]:
        acc = acc * x + np.longdouble(float(c))
    return float(np.max(np.abs(acc * np.exp(-x) - 1)))


@lru_cache(maxsize=256)
def _choose_cached(radius: float, rel_eps: float, max_degree: int) -> ExpPolynomial:
    best, best_g = math.inf, 0
    for g in range(0, max_degree + 1):
        coeffs = _fit_power_coeffs(radius, g) if radius > 0 else np.array([1.0] + [0.0] * g)
        err = grid_relative_error(coeffs, radius) if radius > 0 else 0.0
        if err < best:
            best, best_g = err, g
        elif g - best_g >= STALL_DEGREES:  # float64 floor reached: more degree only adds rounding
            break
        if err * GRID_SAFETY <= rel_eps:
            coeffs.setflags(write=False)
            return ExpPolynomial(coeffs, g, (-radius, radius), err * GRID_SAFETY)
    raise SpecError(
        f"no polynomial of degree ≤ {max_degree} with float64 coefficients reaches relative error "
        f"{rel_eps:.3g} for exp on [−{radius:g}, {radius:g}] (best seen {best:.3g}): the logit radius R is "
        "too large or ε too small for float64 (cancellation ≈ u·e^{2R}; docs/polynomial-method.md)"
    )


def choose_polynomial(logit_radius: float, rel_eps: float, *, max_degree: int = MAX_DEGREE) -> ExpPolynomial:
    """The lowest-degree fitted polynomial P with design relative error ≤ ``rel_eps`` on [−R, R].

    Raises :class:`SpecError` for R < 0 or non-finite, ε ∉ (0, 1), or when no degree ≤ ``max_degree``
    reaches ε in float64 coefficients (large R: the relative error floor is ≈ u·e^{2R}).
    """
    R = float(logit_radius)
    e = float(rel_eps)
    if not math.isfinite(R) or R < 0:
        raise SpecError(f"logit radius R must be finite and ≥ 0, got {logit_radius!r}")
    if not (0 < e < 1):
        raise SpecError(f"relative error ε must lie in (0, 1), got {rel_eps!r}")
    if 2 * R > 700:  # e^{2R}·u ≥ 1 long before this: nothing float64 can do
        raise SpecError(f"logit radius R = {R:g} is far beyond float64 (features and values ≈ e^R overflow)")
    return _choose_cached(R, e, int(max_degree))


def key_features(x: Any, degree: int | ExpPolynomial) -> Any:
    """U₂[j, α] = x_j^α for all |α| ≤ g (n×r, columns in the shared order), in x's array library.

    ``degree`` is g or an :class:`ExpPolynomial` (its degree). Each degree-t block is its parent block
    (gathered) times one input column: O(g) array operations, O(n·r) arithmetic. Every entry is a
    product of at most g−1 roundings away from the exact monomial (t−1 multiplications for degree t).
    """
    return _monomials_transposed(x, degree.degree if isinstance(degree, ExpPolynomial) else int(degree)).T


def _monomials_transposed(x: Any, g: int) -> Any:
    """The r×n array of monomials (transposed layout: each new row is a contiguous row gather times a
    contiguous input row, which is several times faster than gathering columns)."""
    xp = array_namespace(x)
    if len(x.shape) != 2:
        raise SpecError(f"features need a 2-D (n x d) array, got shape {tuple(x.shape)}")
    n, d = int(x.shape[0]), int(x.shape[1])
    plan = monomial_plan(d, int(g))
    dev = getattr(x, "device", None)
    xt = x.T
    blocks = [xp.ones((1, n), dtype=x.dtype, device=dev)]
    prev = blocks[0]
    for t in range(1, plan.g + 1):
        lo, hi = plan.degree_starts[t], plan.degree_starts[t + 1]
        plo = plan.degree_starts[t - 1]
        parent_idx = xp.asarray(plan.parents[lo:hi] - plo, device=dev)
        var_idx = xp.asarray(plan.variables[lo:hi], device=dev)
        block = xp.take(prev, parent_idx, axis=0) * xp.take(xt, var_idx, axis=0)
        blocks.append(block)
        prev = block
    return xp.concat(blocks, axis=0)


def query_column_weights(poly: ExpPolynomial, d: int, scale: float = 1.0) -> np.ndarray:
    """Float64 weights w[α] = (c_{|α|} · s^{|α|}) · (|α| choose α), so that U₁ = w ⊙ monomials.

    Rounding count per weight (for the error budget): sᵗ ≤ t − 1, the multinomial 1 (exact below
    2⁵³), two products: ≤ g + 2."""
    plan = monomial_plan(d, poly.degree)
    t = plan.degrees
    # sᵗ by repeated multiplication: t − 1 roundings (counted in the evaluation error budget).
    s_pow = np.ones(poly.degree + 1, dtype=np.float64)
    for k in range(1, poly.degree + 1):
        s_pow[k] = s_pow[k - 1] * float(scale) if k > 1 else float(scale)
    return np.asarray(poly.coeffs, dtype=np.float64)[t] * s_pow[t] * plan.multinomials


def query_features(x: Any, poly: ExpPolynomial, scale: float = 1.0) -> Any:
    """U₁[i, α] = c_{|α|} · s^{|α|} · (|α| choose α) · x_i^α (n×r), so that U₁U₂ᵀ = P(s·XKᵀ) exactly
    in exact arithmetic (module docstring). ``scale`` may also be folded into x by the caller."""
    xp = array_namespace(x)
    mono_t = _monomials_transposed(x, poly.degree)
    w = query_column_weights(poly, int(x.shape[1]), scale)
    return (mono_t * xp.asarray(w, dtype=x.dtype, device=getattr(x, "device", None))[:, None]).T


__all__ = [
    "ExpPolynomial",
    "MonomialPlan",
    "choose_polynomial",
    "grid_relative_error",
    "key_features",
    "logit_radius",
    "monomial_plan",
    "multi_indices",
    "query_column_weights",
    "query_features",
    "rank",
    "rounding_gamma",
]
