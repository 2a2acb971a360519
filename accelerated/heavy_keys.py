"""Fast heavy keys (LevAttention) on any array-API library (numpy on CPU, CuPy on GPU).

Definitions (:mod:`attnspec.spec.heavy_keys`): f(x) = |x|^p with p ∈ {2, 4};
A_ij = f(⟨q_i, k_j⟩) / Σ_l f(⟨q_i, k_l⟩); the universal set U_ε = {j : τ_j ≥ ε} where τ_j is the leverage
score of row j of K (p = 2) or of the lifted row φ(k_j) in Φ = φ(K) (p = 4). Since A_ij ≤ τ_j for every
query, every ε-heavy entry of every row lies in U_ε, and |U_ε| ≤ rank/ε.

The p = 4 lift (exact identity, no √2): φ(x) = (x_a·x_b)_{a≤b} and ψ(x) = (w_ab·x_a·x_b)_{a≤b} with
w_aa = 1, w_ab = 2, so ⟨x, y⟩² = ⟨ψ(x), φ(y)⟩ and ⟨x, y⟩⁴ = ⟨ψ(x), φ(y)⟩². Leverage scores are invariant
under an invertible column scaling, so the leverage of φ(k_j) in Φ equals that of the symmetric
(√2-weighted) lift of dimension binom(d+1, 2). Both lifts cost one rounding per entry (relative 2⁻⁵³).

What is here (all O(n·poly(D)), D = d for p = 2 and binom(d+1, 2) for p = 4):

- :func:`leverage_scores` by Gram/Cholesky, with a **certified** a-posteriori relative error bound η
  (below); :func:`leverage_scores_qr` (Householder QR, row norms of Q) and :func:`leverage_scores_svd`
  (rank-revealing, relative rank threshold) for rank-deficient K (estimates, not certified);
- :func:`sketched_leverage_scores`: CountSketch + JL, with the one-sided threshold ε/(1+δ);
- :class:`StreamingSelector`: one pass, persistent state O(D²+D·cap) bytes, independent of n;
  :func:`distributed_universal_set`: per-shard Grams, local pre-filter, exact re-score;
- :func:`heavy_entries`: U first, then A_ij only for j ∈ U with the exact normaliser
  Z_i = ψ_iᵀ G ψ_i (G = ΦᵀΦ): n·|U|·D + n·D² work, never n²;
- :func:`lev_attention`: softmax or f-attention restricted to the selected keys (top-r or threshold).

Error bound of the Cholesky scores (u = 2⁻⁵³, γ_k = k·u/(1 − k·u); classical backward-error results,
Higham, *Accuracy and Stability of Numerical Algorithms*, Thm 8.5 and 10.3, constants doubled for blocked
BLAS/LAPACK kernels). μ = u for the p = 4 lift (one rounding per lifted entry), 0 for p = 2.

1. Ĝ = fl(ΦᵀΦ): |Ĝ − G| ≤ γ'_n·|Φ|ᵀ|Φ|, γ'_n = (1+μ)²(1+γ_n) − 1, so ‖E₁‖₂ ≤ γ'_n·‖Φ‖²_F.
2. Cholesky: L̂L̂ᵀ = Ĝ + E_c, |E_c| ≤ γ_{2D+2}|L̂||L̂ᵀ|, so ‖E_c‖₂ ≤ γ_{2D+2}·‖L̂‖²_F.
3. Triangular solve for row j: (L̂ + ΔL_j)ẑ_j = φ_j, |ΔL_j| ≤ γ_{2D}|L̂|; squared norm: relative γ_D.
   Then ‖ẑ_j‖² = φ_jᵀ(G + F_j)⁻¹φ_j with ‖F_j‖₂ ≤ δ := ‖E₁‖ + ‖E_c‖ + (2γ_{2D} + γ²_{2D})‖L̂‖²_F.
4. λ_min(G) ≥ λ_lo: X̂ = fl(L̂⁻¹) (triangular solve with I), r ≥ ‖I − L̂X̂‖₂ bounded from the computed
   residual plus its own rounding; if r < 1, σ_min(L̂) ≥ (1 − r)/‖X̂‖_F, and by Weyl
   λ_lo = ((1 − r)/‖X̂‖_F)² − ‖E_c‖ − ‖E₁‖.
5. With θ = δ/λ_lo < 1: (1 − θ)G ⪯ G + F_j ⪯ (1 + θ)G, hence τ̂_j/τ_j ∈ [(1−γ_D)/(1+θ), (1+γ_D)/(1−θ)]
   (p = 4 adds the rounding of φ̂_j: :func:`certified_rel_error`); η is the larger of the two relative
   deviations, so τ̂_j/τ_j ∈ [1/(1+η), 1+η]. The bound is evaluated in float64 and inflated by
   BOUND_INFLATION. θ ≥ 1 (rank-deficient or very ill-conditioned K): no certificate.

Thresholds. Keeping {j : τ̂_j ≥ ε/(1+η)} contains every j with τ_j ≥ ε, and every kept j has
τ_j ≥ ε/(1+η)² ≥ ε/(1 + slack) for any slack ≥ 2η + η²: the declared ``heavy_slack``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import array_api_compat
import numpy as np

from attnspec.accelerated.array_namespace import array_namespace, native_module
from attnspec.spec.validation import SpecError

UNIT = 2.0**-53
BOUND_INFLATION = 1.0 + 2.0**-20  # the error bounds are themselves float64 expressions
SUPPORTED_P = (2, 4)
# Relative rank threshold of the SVD path: singular values s_i ≤ RANK_RTOL_FACTOR·max(n, D)·u·s_1 count
# as zero (numpy.linalg.matrix_rank's rule, times a safety factor of 8).
RANK_RTOL_FACTOR = 8.0
QUERY_BLOCK = 1 << 13  # query rows per block in the enumeration (memory O(block·(|U| + D)))


def gamma(k: int | float, u: float = UNIT) -> float:
    """γ_k = k·u/(1 − k·u) (infinite when k·u ≥ 1)."""
    ku = float(k) * u
    return math.inf if ku >= 1 else ku / (1.0 - ku)


def lifted_dimension(d: int, p: int) -> int:
    """D = d for p = 2, binom(d+1, 2) for p = 4."""
    _check_p(p)
    return d if p == 2 else d * (d + 1) // 2


def _check_p(p: Any) -> int:
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or int(p) not in SUPPORTED_P:
        raise SpecError(f"p must be 2 or 4, got {p!r}")
    return int(p)


def _check_eps(eps: Any) -> float:
    e = float(eps)
    if not (0.0 < e <= 1.0) or not math.isfinite(e):
        raise SpecError(f"eps must lie in (0, 1], got {eps!r}")
    return e


def _as_float64(xp, x, name: str):
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise SpecError(f"{name} must be a non-empty 2-D array, got shape {tuple(x.shape)}")
    if x.dtype not in (xp.float64, xp.float32):
        raise SpecError(f"{name} must be float32 or float64, got {x.dtype}")
    x = xp.astype(x, xp.float64)  # float32 → float64 is exact
    if not bool(xp.all(xp.isfinite(x))):
        raise SpecError(f"{name} has a non-finite entry")
    return x


def lift_keys(k, p: int):
    """Φ = φ(K): K itself for p = 2; rows (k_a·k_b)_{a≤b} for p = 4 (n×binom(d+1,2))."""
    xp = array_namespace(k)
    if _check_p(p) == 2:
        return k
    a, b = np.triu_indices(k.shape[1])
    ia, ib = (xp.asarray(t, device=array_api_compat.device(k)) for t in (a, b))
    return xp.take(k, ia, axis=1) * xp.take(k, ib, axis=1)


def lift_queries(q, p: int):
    """Ψ = ψ(Q): Q for p = 2; rows (w_ab·q_a·q_b)_{a≤b}, w = 1 on and 2 off the diagonal, for p = 4."""
    xp = array_namespace(q)
    if _check_p(p) == 2:
        return q
    a, b = np.triu_indices(q.shape[1])
    dev = array_api_compat.device(q)
    w = xp.asarray(np.where(a == b, 1.0, 2.0), dtype=q.dtype, device=dev)
    return xp.take(q, xp.asarray(a, device=dev), axis=1) * xp.take(q, xp.asarray(b, device=dev), axis=1) * w


# --------------------------------------------------------------------------------------------------
# Leverage scores


@dataclass
class LeverageScores:
    """Scores τ̂ (length n), their certified relative error bound η (inf: none) and the factor used."""

    scores: Any
    rel_error: float
    lambda_lower: float  # certified lower bound on λ_min(ΦᵀΦ) (0 when none)
    method: str
    rank: int | None = None
    gram: Any = None
    factor: Any = None  # lower Cholesky factor L̂ of Ĝ (Cholesky path)
    columns: Any = None  # the lifted columns kept (all-zero columns dropped: exact, scores unchanged)

    @property
    def certified(self) -> bool:
        return math.isfinite(self.rel_error) and self.rel_error < 1


def _solve_lower(xp, lower, rhs):
    """L⁻¹·rhs by forward substitution (scipy / cupyx); other libraries: a general solve."""
    native = native_module(lower)
    if native is np:
        from scipy.linalg import solve_triangular

        return solve_triangular(lower, rhs, lower=True, check_finite=False)
    if native is not None:
        from cupyx.scipy.linalg import solve_triangular

        return solve_triangular(lower, rhs, lower=True)
    return xp.linalg.solve(lower, rhs)


def _fro2(xp, x) -> float:
    return float(xp.sum(x * x))


def cholesky_certificate(xp, gram, lower, phi_fro2: float, n: int, mu: float) -> tuple[float, float, float]:
    """(δ, λ_lo, ‖E₁‖ bound) of the module docstring, steps 1–4 (λ_lo ≤ 0: no certificate)."""
    D = gram.shape[0]
    e1 = ((1 + mu) ** 2 * (1 + gamma(n)) - 1) * phi_fro2 * BOUND_INFLATION
    l_fro2 = _fro2(xp, lower) * BOUND_INFLATION
    ec = gamma(2 * D + 2) * l_fro2
    g2 = gamma(2 * D)
    delta = (e1 + ec + (2 * g2 + g2 * g2) * l_fro2) * BOUND_INFLATION
    eye = xp.eye(D, dtype=xp.float64, device=array_api_compat.device(gram))
    inv = _solve_lower(xp, lower, eye)
    resid = eye - xp.matmul(lower, inv)
    # rounding of the residual's own evaluation: |fl(I − L̂X̂) − (I − L̂X̂)| ≤ γ_{D+1}(I + |L̂||X̂|)
    slack_mat = eye + xp.matmul(xp.abs(lower), xp.abs(inv))
    r = (math.sqrt(_fro2(xp, resid)) + gamma(D + 1) * math.sqrt(_fro2(xp, slack_mat))) * BOUND_INFLATION
    if not r < 1:
        return delta, 0.0, e1
    smin = (1 - r) / (math.sqrt(_fro2(xp, inv)) * BOUND_INFLATION)
    lam_lo = smin * smin / BOUND_INFLATION - (ec + e1) * BOUND_INFLATION
    return delta, lam_lo, e1


def certified_rel_error(xp, gram, lower, phi_fro2: float, n: int, p: int) -> tuple[float, float, float]:
    """(η, λ_lo, ‖E₁‖): τ̂_j/τ_j ∈ [1/(1+η), 1+η] for every row (η = inf: no certificate).

    Step 5 of the module docstring, plus, for p = 4, the rounding of the lifted row φ̂_j itself
    (|φ̂_j − φ_j| ≤ u|φ_j|): with M = G + F_j, |‖M^{-1/2}φ̂_j‖ − ‖M^{-1/2}φ_j‖| ≤ u‖φ_j‖/√λ_min(M)
    ≤ ρ·‖M^{-1/2}φ_j‖, ρ = u·√(λ_hi(1+θ)/(λ_lo(1−θ))), λ_hi = ‖Ĝ‖_F + ‖E₁‖ ≥ λ_max(G). So
    τ̂_j/τ_j ∈ [(1−ρ)²(1−γ_D)/(1+θ), (1+ρ)²(1+γ_D)/(1−θ)].
    """
    mu = UNIT if p == 4 else 0.0
    D = gram.shape[0]
    delta, lam_lo, e1 = cholesky_certificate(xp, gram, lower, phi_fro2, n, mu)
    theta = delta / lam_lo if lam_lo > 0 else math.inf
    if not theta < 1:
        return math.inf, max(lam_lo, 0.0), e1
    lam_hi = math.sqrt(_fro2(xp, gram)) * BOUND_INFLATION + e1
    rho = mu * math.sqrt(lam_hi * (1 + theta) / (lam_lo * (1 - theta))) * BOUND_INFLATION
    if not rho < 1:
        return math.inf, lam_lo, e1
    g = gamma(D)
    upper = (1 + rho) ** 2 * (1 + g) / (1 - theta)
    lower_ratio = (1 - rho) ** 2 * (1 - g) / (1 + theta)
    eta = max(upper - 1, 1 / lower_ratio - 1) * BOUND_INFLATION
    return eta, lam_lo, e1


def leverage_scores(k, *, p: int = 2, drop_zero_columns: bool = True) -> LeverageScores:
    """τ̂_j = ‖L̂⁻¹φ_j‖² with Ĝ = ΦᵀΦ = L̂L̂ᵀ (O(n·D²)), and the certified relative bound η.

    ``k``: n×d float array (numpy or CuPy). All-zero columns of Φ are dropped first (exactly: they
    change neither τ nor any ⟨ψ, φ⟩), so a K with a zero column still gets a certificate. When Cholesky
    fails or the certificate does not hold (θ ≥ 1: rank-deficient or ill-conditioned Φ) this returns the
    SVD path's estimates with ``rel_error = inf`` (not certified).
    """
    xp = array_namespace(k)
    p = _check_p(p)
    k = _as_float64(xp, k, "K")
    phi = lift_keys(k, p)
    columns = xp.arange(phi.shape[1], device=array_api_compat.device(phi))
    if drop_zero_columns:
        columns = xp.nonzero(xp.any(phi != 0, axis=0))[0]
        phi = xp.take(phi, columns, axis=1)
    n, D = phi.shape
    if D == 0:  # K = 0: every τ_j = 0 (Ψ = 0), exactly
        zero = xp.zeros(n, dtype=xp.float64, device=array_api_compat.device(phi))
        return LeverageScores(zero, 0.0, 0.0, "zero", rank=0, gram=xp.zeros((0, 0), dtype=xp.float64), columns=columns)
    gram = xp.matmul(xp.permute_dims(phi, (1, 0)), phi)
    try:
        lower = xp.linalg.cholesky(gram)
        ok = bool(xp.all(xp.isfinite(lower)))
    except Exception:  # numpy raises LinAlgError; CuPy returns NaNs
        ok = False
    if ok:
        z = _solve_lower(xp, lower, xp.permute_dims(phi, (1, 0)))
        scores = xp.sum(z * z, axis=0)
        eta, lam_lo, _ = certified_rel_error(xp, gram, lower, _fro2(xp, phi), n, p)
        if math.isfinite(eta) and bool(xp.all(xp.isfinite(scores))):
            return LeverageScores(scores, eta, lam_lo, "cholesky", rank=D, gram=gram, factor=lower, columns=columns)
    est = leverage_scores_svd(k, p=p)
    est.gram, est.columns = gram, columns
    return est


def leverage_scores_qr(k, *, p: int = 2) -> LeverageScores:
    """τ̂_j = ‖row j of Q‖² with Φ = QR (Householder). Full column rank only (the estimate's relative
    error is about n·D·u·κ(Φ)²; a deficient Φ gives meaningless rows of Q, so it is refused)."""
    xp = array_namespace(k)
    phi = lift_keys(_as_float64(xp, k, "K"), _check_p(p))
    qf, rf = xp.linalg.qr(phi)
    diag = xp.abs(xp.linalg.diagonal(rf))
    n, D = phi.shape
    if float(xp.min(diag)) <= RANK_RTOL_FACTOR * max(n, D) * UNIT * float(xp.max(diag)):
        raise SpecError("leverage_scores_qr: K (or its lift) looks rank-deficient; use leverage_scores_svd")
    return LeverageScores(xp.sum(qf * qf, axis=1), math.inf, 0.0, "qr", rank=D)


def leverage_scores_svd(k, *, p: int = 2, rtol: float | None = None) -> LeverageScores:
    """Rank-revealing scores: τ̂_j = ‖row j of U_r‖² with Φ = UΣVᵀ and r = #{s_i > rtol·s_1}.

    ``rtol`` defaults to RANK_RTOL_FACTOR·max(n, D)·2⁻⁵³. Exact for an exactly deficient Φ whose nonzero
    singular values are well above the threshold (first-order error ≈ n·D·u·(s_1/s_r)); not certified.
    """
    xp = array_namespace(k)
    phi = lift_keys(_as_float64(xp, k, "K"), _check_p(p))
    n, D = phi.shape
    tol = RANK_RTOL_FACTOR * max(n, D) * UNIT if rtol is None else float(rtol)
    u, s, _ = xp.linalg.svd(phi, full_matrices=False)
    smax = float(xp.max(s)) if s.shape[0] else 0.0
    rank = int(xp.sum(xp.astype(s > tol * smax, xp.int64))) if smax > 0 else 0
    ur = u[:, :rank]
    return LeverageScores(xp.sum(ur * ur, axis=1), math.inf, 0.0, "svd", rank=rank)


def select(scores: LeverageScores, eps: float):
    """Indices {j : τ̂_j ≥ ε/(1+η)} (η = 0 when not certified), sorted, as an int64 array."""
    xp = array_namespace(scores.scores)
    eta = scores.rel_error if scores.certified else 0.0
    threshold = _check_eps(eps) / (1 + eta)
    return xp.astype(xp.nonzero(scores.scores >= threshold)[0], xp.int64)


def slack_needed(eta: float) -> float:
    """The smallest declared slack that thresholding at ε/(1+η) respects: kept keys have
    τ_j ≥ τ̂_j/(1+η) ≥ ε/(1+η)², so (1+η)² − 1 = 2η + η²."""
    return 2 * eta + eta * eta


def universal_set(k, *, eps: float, p: int = 2):
    """(U, LeverageScores): U = {j : τ̂_j ≥ ε/(1+η)} ⊇ {j : τ_j ≥ ε} when the scores are certified."""
    lev = leverage_scores(k, p=p)
    return select(lev, eps), lev


# --------------------------------------------------------------------------------------------------
# Sketched scores


@dataclass
class SketchedScores:
    scores: Any
    delta: float  # one-sided loosening: keep τ̃ ≥ ε/(1+δ)
    failure_probability: float  # bound on P(some j with τ_j ≥ ε is dropped); may be ≥ 1 (vacuous)
    sketch_rows: int
    jl_columns: int


def sketch_failure_probability(D: int, m: int, t: int, delta_s: float, delta_j: float, heavy_count: float) -> float:
    """P(drop) ≤ 2(D²+D)/(m·δ_s²) + heavy_count·exp(−t·δ_j²/4).

    First term: CountSketch with m rows fails to be a (1±δ_s) subspace embedding of col-span(Φ) with
    probability ≤ E‖(SU)ᵀSU − I‖²_F/δ_s² ≤ 2(D²+D)/(m·δ_s²) (second moment + Markov, U orthonormal).
    Second: a Gaussian JL matrix with t columns shrinks one fixed vector's squared norm below (1 − δ_j)
    with probability ≤ exp(−t·δ_j²/4); only the ≤ rank/ε heavy rows must not shrink (union bound).
    """
    return 2.0 * (D * D + D) / (m * delta_s * delta_s) + heavy_count * math.exp(-t * delta_j * delta_j / 4)


def sketched_leverage_scores(k, *, p: int = 2, sketch_rows: int | None = None, jl_columns: int | None = None,
                             delta_s: float = 0.25, delta_j: float = 0.25, eps_for_bound: float = 0.05,
                             seed: int = 0) -> SketchedScores:
    """τ̃_j = ‖φ_jᵀR⁻¹Π‖² with SΦ = QR (S: CountSketch, m×n) and Π (D×t) Gaussian/√t.

    If S is a (1±δ_s) embedding then ‖φ_jᵀR⁻¹‖² ≥ τ_j/(1+δ_s)², and if Π does not shrink that vector by
    more than (1−δ_j) then τ̃_j ≥ τ_j(1−δ_j)/(1+δ_s)². So with δ = (1+δ_s)²/(1−δ_j) − 1, keeping
    τ̃_j ≥ ε/(1+δ) drops no j with τ_j ≥ ε, except with probability ≤ ``failure_probability``.
    Cost O(nnz(Φ) + m·D² + n·D·t); when t ≥ D the JL step is skipped (Π = I, δ_j = 0). numpy uses scipy's CountSketch (``clarkson_woodruff_transform``);
    other libraries get a seeded Gaussian sketch of the same size, applied in row chunks.
    """
    xp = array_namespace(k)
    phi = lift_keys(_as_float64(xp, k, "K"), _check_p(p))
    n, D = phi.shape
    m = int(sketch_rows) if sketch_rows is not None else min(n, max(4 * D * D, 64))
    t = int(jl_columns) if jl_columns is not None else max(8, math.ceil(24 * math.log(max(n, 2))))
    if native_module(phi) is np:
        from scipy.linalg import clarkson_woodruff_transform

        sk = clarkson_woodruff_transform(phi, m, seed=seed)
    else:
        sk = _gaussian_sketch(xp, phi, m, seed)
    _, r = xp.linalg.qr(sk)
    dev = array_api_compat.device(phi)
    if t >= D:  # a JL map would not shrink anything: use Π = I (no JL failure term, δ_j = 0)
        t, delta_j, pi = D, 0.0, xp.eye(D, dtype=xp.float64, device=dev)
    else:
        rng = np.random.default_rng(seed + 1)
        pi = xp.asarray(rng.standard_normal((D, t)) / math.sqrt(t), device=dev)
    # the rows φ_jᵀR⁻¹Π, as Φ·(R⁻¹Π): one D×D solve, then an n×D×t product
    y = xp.matmul(phi, xp.linalg.solve(r, pi))
    delta = (1 + delta_s) ** 2 / (1 - delta_j) - 1
    fail = sketch_failure_probability(D, m, t, delta_s, delta_j, D / eps_for_bound) if delta_j > 0 else \
        2.0 * (D * D + D) / (m * delta_s * delta_s)
    return SketchedScores(xp.sum(y * y, axis=1), delta, fail, m, t)


def _gaussian_sketch(xp, phi, m: int, seed: int, chunk: int = 1 << 14):
    n = phi.shape[0]
    out = None
    dev = array_api_compat.device(phi)
    for c0 in range(0, n, chunk):
        rng = np.random.default_rng([seed, c0])
        s = xp.asarray(rng.standard_normal((m, min(n, c0 + chunk) - c0)) / math.sqrt(m), device=dev)
        part = xp.matmul(s, phi[c0:c0 + chunk, :])
        out = part if out is None else out + part
    return out


def sketched_universal_set(k, *, eps: float, p: int = 2, **kw) -> tuple[Any, SketchedScores]:
    """{j : τ̃_j ≥ ε/(1+δ)}: every j with τ_j ≥ ε, with probability ≥ 1 − failure_probability."""
    sk = sketched_leverage_scores(k, p=p, eps_for_bound=eps, **kw)
    xp = array_namespace(sk.scores)
    return xp.astype(xp.nonzero(sk.scores >= _check_eps(eps) / (1 + sk.delta))[0], xp.int64), sk


# --------------------------------------------------------------------------------------------------
# Streaming and distributed selection


class StreamingSelector:
    """One pass over K in row chunks: running Gram matrix G_t and a pruned candidate set C.

    Prefix leverage φ_cᵀG_t⁻¹φ_c only decreases as rows arrive (G_t grows in the PSD order), so a
    candidate whose prefix score is certainly < ε (τ̂ < ε/(1+η_t)) can never enter U and is dropped for
    good. After each chunk: G ← G + Φ_chunkᵀΦ_chunk, Cholesky of G (O(D³) per chunk: the batch form of a
    Sherman–Morrison update, without its drift), re-score C ∪ chunk, prune. While G has no certified
    factor yet (the first rows, or deficient data), nothing is pruned.

    Persistent state (between chunks): G and its factor (2·D² float64), the candidates' lifted rows and
    indices in preallocated buffers of ``capacity`` = ⌊(1+η_max)·D/ε⌋ + 1 rows (Σ τ ≤ D, so at most that
    many scores reach ε/(1+η)): :attr:`state_bytes`, independent of n. The chunk being read is transient
    input, not state. :meth:`finish` re-scores the survivors against the final G: that is the offline U.
    Prefix scores are also what causal (decoder) attention needs; that variant is not a conformance problem.
    """

    def __init__(self, d: int, *, eps: float, p: int = 2, xp=np, eta_max: float = 1e-6, device=None):
        self.p = _check_p(p)
        self.eps = _check_eps(eps)
        self.xp = xp
        self.D = lifted_dimension(int(d), self.p)
        self.capacity = int(math.floor((1 + eta_max) * self.D / self.eps)) + 1
        self.eta_max = float(eta_max)
        kw = {} if device is None else {"device": device}
        self.gram = xp.zeros((self.D, self.D), dtype=xp.float64, **kw)
        self.factor = xp.zeros((self.D, self.D), dtype=xp.float64, **kw)
        self.cand_rows = xp.zeros((self.capacity, self.D), dtype=xp.float64, **kw)
        self.cand_index = np.zeros(self.capacity, dtype=np.int64)
        self.count = 0
        self.seen = 0
        self.fro2 = 0.0
        self.max_held = 0
        self.max_state_bytes = 0  # largest state_bytes seen after any chunk
        self.overflow: list[tuple[Any, Any]] = []  # only while nothing can be pruned (uncertified)

    @property
    def state_bytes(self) -> int:
        """Bytes of the persistent state: G, its factor, candidate buffers, counters."""
        over = sum(int(r.nbytes) + int(i.nbytes) for r, i in self.overflow)
        return int(self.gram.nbytes + self.factor.nbytes + self.cand_rows.nbytes + self.cand_index.nbytes) + 4 * 8 + over

    def update(self, k_chunk) -> None:
        xp = self.xp
        phi = lift_keys(_as_float64(xp, k_chunk, "K chunk"), self.p)
        b = phi.shape[0]
        idx = np.arange(self.seen, self.seen + b, dtype=np.int64)
        self.seen += b
        self.fro2 += _fro2(xp, phi)
        self.gram = self.gram + xp.matmul(xp.permute_dims(phi, (1, 0)), phi)
        rows = xp.concat([self.cand_rows[: self.count]] + [r for r, _ in self.overflow] + [phi], axis=0)
        index = np.concatenate([self.cand_index[: self.count]] + [i for _, i in self.overflow] + [idx])
        keep = self._survivors(rows)
        if keep is None:  # no certified factor yet: hold everything (bounded only by rank deficiency)
            self.overflow = [(rows[self.count:], index[self.count:])]
            self.max_held = max(self.max_held, rows.shape[0])
            self.max_state_bytes = max(self.max_state_bytes, self.state_bytes)
            return
        rows, index = rows[keep], index[_host(keep)]
        if rows.shape[0] > self.capacity:  # impossible with certified scores (Σ τ ≤ D)
            raise AssertionError(f"{rows.shape[0]} candidates exceed the capacity {self.capacity}")
        self.overflow = []
        self.count = rows.shape[0]
        self.cand_rows[: self.count] = rows
        self.cand_index[: self.count] = index
        self.max_held = max(self.max_held, self.count)
        self.max_state_bytes = max(self.max_state_bytes, self.state_bytes)

    def _survivors(self, rows):
        """Mask of rows whose prefix score may still reach ε (None when G has no certified factor)."""
        xp = self.xp
        try:
            lower = xp.linalg.cholesky(self.gram)
        except Exception:
            return None
        if not bool(xp.all(xp.isfinite(lower))):
            return None
        eta, _, _ = certified_rel_error(xp, self.gram, lower, self.fro2, self.seen, self.p)
        if not eta <= self.eta_max:
            return None
        self.factor = lower
        self._eta = eta
        z = _solve_lower(xp, lower, xp.permute_dims(rows, (1, 0)))
        return xp.sum(z * z, axis=0) >= self.eps / (1 + eta)

    def finish(self):
        """U: sorted int64 host indices of the survivors whose final score is ≥ ε/(1+η)."""
        xp = self.xp
        if self.overflow:
            rows = xp.concat([self.cand_rows[: self.count]] + [r for r, _ in self.overflow], axis=0)
            index = np.concatenate([self.cand_index[: self.count]] + [i for _, i in self.overflow])
            keep = self._survivors(rows)
            if keep is None:
                raise SpecError("streaming selection: the Gram matrix has no certified factor (rank-deficient K)")
            return np.sort(index[_host(keep)])
        return np.sort(self.cand_index[: self.count])


def _host(mask) -> np.ndarray:
    return np.asarray(mask.get() if hasattr(mask, "get") else mask)


def streaming_universal_set(chunks: Iterable[Any], d: int, *, eps: float, p: int = 2, xp=np) -> tuple[np.ndarray, StreamingSelector]:
    """Run :class:`StreamingSelector` over ``chunks`` (row blocks of K, in order)."""
    sel = StreamingSelector(d, eps=eps, p=p, xp=xp)
    for c in chunks:
        sel.update(c)
    return sel.finish(), sel


@dataclass
class ShardMessage:
    """What one machine sends: its Gram matrix (D² words) and its locally heavy rows."""

    gram: Any
    fro2: float
    rows: int
    indices: np.ndarray
    candidates: Any


def shard_message(k_shard, offset: int, *, eps: float, p: int = 2) -> ShardMessage:
    """Local pre-filter: τ_j(K) ≤ τ_j(K_s) (a sub-block's Gram is ⪯ the whole), so only rows with a
    certified local score ≥ ε/(1+η_s) can be globally heavy; others are dropped before any talk."""
    lev = leverage_scores(k_shard, p=p, drop_zero_columns=False)  # every shard's G_s in the same coordinates
    xp = array_namespace(lev.scores)
    if lev.certified:
        local = _host(select(lev, eps))
    else:  # deficient shard: no safe pre-filter, send every row
        local = np.arange(k_shard.shape[0], dtype=np.int64)
    phi = lift_keys(_as_float64(xp, k_shard, "K shard"), p)
    cand = xp.take(phi, xp.asarray(local, device=array_api_compat.device(phi)), axis=0)
    return ShardMessage(lev.gram, _fro2(xp, phi), int(k_shard.shape[0]), local + int(offset), cand)


def merge_shards(messages: Sequence[ShardMessage], *, eps: float, p: int = 2) -> np.ndarray:
    """Coordinator: G = Σ_s G_s, then certified re-scoring of the surviving candidates → U."""
    xp = array_namespace(messages[0].gram)
    gram = messages[0].gram
    for msg in messages[1:]:
        gram = gram + msg.gram
    n = sum(m.rows for m in messages)
    lower = xp.linalg.cholesky(gram)
    eta, _, _ = certified_rel_error(xp, gram, lower, sum(m.fro2 for m in messages), n, p)
    if not math.isfinite(eta):
        raise SpecError("distributed selection: the merged Gram matrix has no certified factor")
    rows = xp.concat([m.candidates for m in messages], axis=0)
    index = np.concatenate([m.indices for m in messages])
    z = _solve_lower(xp, lower, xp.permute_dims(rows, (1, 0)))
    keep = _host(xp.sum(z * z, axis=0) >= _check_eps(eps) / (1 + eta))
    return np.sort(index[keep])


def distributed_universal_set(k, shards: int, *, eps: float, p: int = 2) -> np.ndarray:
    """Split K into ``shards`` row blocks, pre-filter each, merge (simulated on one machine)."""
    n = k.shape[0]
    cuts = [round(s * n / shards) for s in range(shards + 1)]
    msgs = [shard_message(k[a:b], a, eps=eps, p=p) for a, b in zip(cuts, cuts[1:]) if b > a]
    return merge_shards(msgs, eps=eps, p=p)


# --------------------------------------------------------------------------------------------------
# Heavy-entry enumeration


@dataclass
class HeavyEntries:
    """Pairs (i, j) with Â_ij ≥ ε − α, α a certified bound on |Â_ij − A_ij| (inf: not certified)."""

    pairs: np.ndarray
    alpha: float
    keys: np.ndarray  # the universal set used
    key_rel_error: float
    zero_rows: int = 0

    @property
    def certified(self) -> bool:
        return math.isfinite(self.alpha) and math.isfinite(self.key_rel_error)

    def slack(self, eps: float) -> float:
        """The smallest declared slack these pairs respect: reported A_ij ≥ ε − 2α = ε/(1 + slack)."""
        lo = eps - 2 * self.alpha
        return math.inf if lo <= 0 else eps / lo - 1


def entry_error_bound(lam_lo: float, e1: float, gram_fro: float, max_phi_norm: float, D: int, mu: float) -> float:
    """α with |Â_ij − A_ij| ≤ α for every i, j (A_ij ≤ 1).

    Z_i = ψ_iᵀGψ_i ≥ λ_lo‖ψ_i‖²; Ẑ = fl(ψᵀĜψ) has |Ẑ − Z| ≤ (‖E₁‖ + γ_{2D}‖Ĝ‖_F)·‖ψ‖² (+μ: the lift of
    ψ), so Ẑ = Z(1+ζ), |ζ| ≤ θ_Z. The numerator x̂ = fl(ψ̂ᵀφ̂_j) has |x̂ − x| ≤ γ'·‖ψ‖‖φ_j‖,
    γ' = (1+μ)²(1+γ_D) − 1, so β = γ'·max‖φ_j‖/√λ_lo bounds |x̂ − x|/√Z. With one rounding each for
    x̂² and the division:
        |Â − A| ≤ [(1+u)²/(1−θ_Z) − 1] + (1+u)²/(1−θ_Z)·β(2 + β).
    """
    if lam_lo <= 0:
        return math.inf
    theta_z = (e1 + (gamma(2 * D) * (1 + mu) ** 2 + 2 * mu + mu * mu) * gram_fro) / lam_lo * BOUND_INFLATION
    if not theta_z < 1:
        return math.inf
    g = (1 + mu) ** 2 * (1 + gamma(D)) - 1
    beta = g * max_phi_norm * (1 + 2 * mu) / math.sqrt(lam_lo)  # ‖φ_j‖ ≤ ‖φ̂_j‖(1 + 2μ)
    c = (1 + UNIT) ** 2 / (1 - theta_z)
    return ((c - 1) + c * beta * (2 + beta)) * BOUND_INFLATION


def heavy_entries(q, k, *, eps: float, p: int = 2, query_block: int = QUERY_BLOCK) -> HeavyEntries:
    """Every (i, j) with A_ij ≥ ε, in O(n·|U|·D + n·D²) time: U first, then for each query block
    Z_i = ψ_iᵀĜψ_i (the exact normaliser Σ_l f(⟨q_i,k_l⟩) up to rounding) and Â_ij = x̂_ij^{p/2}… for j ∈ U
    only (x̂_ij = ⟨ψ_i, φ_j⟩, Â_ij = x̂²_ij/Ẑ_i); report Â_ij ≥ ε − α (α: :func:`entry_error_bound`).

    Rows with Ẑ_i = 0 (ψ_i = 0 or Φψ_i = 0) have no heavy entries. Without a certificate (deficient K)
    the pairs are float estimates thresholded at ε and ``alpha`` is inf.
    """
    xp = array_namespace(q, k)
    p = _check_p(p)
    eps = _check_eps(eps)
    q = _as_float64(xp, q, "Q")
    k = _as_float64(xp, k, "K")
    if q.shape[1] != k.shape[1]:
        raise SpecError(f"Q and K need the same width, got {q.shape[1]} and {k.shape[1]}")
    keys, lev = universal_set(k, eps=eps, p=p)
    phi = xp.take(lift_keys(k, p), lev.columns, axis=1)
    D = phi.shape[1]
    gram = lev.gram
    mu = UNIT if p == 4 else 0.0
    if lev.certified:
        e1 = ((1 + mu) ** 2 * (1 + gamma(phi.shape[0])) - 1) * _fro2(xp, phi)
        phi_u = xp.take(phi, keys, axis=0)
        max_norm = math.sqrt(float(xp.max(xp.sum(phi_u * phi_u, axis=1)))) if keys.shape[0] else 0.0
        alpha = entry_error_bound(lev.lambda_lower, e1, math.sqrt(_fro2(xp, gram)), max_norm, D, mu)
    else:
        alpha = math.inf
    threshold = eps - (alpha if math.isfinite(alpha) else 0.0)
    phi_ut = xp.permute_dims(xp.take(phi, keys, axis=0), (1, 0))
    found: list[np.ndarray] = []
    zero_rows = 0
    for i0 in range(0, q.shape[0], query_block):
        psi = xp.take(lift_queries(q[i0:i0 + query_block], p), lev.columns, axis=1)
        z = xp.sum(xp.matmul(psi, gram) * psi, axis=1)
        zero = z <= 0
        zero_rows += int(xp.sum(xp.astype(zero, xp.int64)))
        if keys.shape[0] == 0:
            continue
        x = xp.matmul(psi, phi_ut)
        a = (x * x) / xp.where(zero, xp.asarray(1.0, dtype=xp.float64), z)[:, None]
        hit = (a >= threshold) & ~zero[:, None]
        ii, jj = xp.nonzero(hit)
        if ii.shape[0]:
            found.append(np.stack([_host(ii) + i0, _host(keys)[_host(jj)]], axis=1).astype(np.int64))
    pairs = np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)
    return HeavyEntries(pairs, alpha, _host(keys), lev.rel_error, zero_rows)


def exact_heavy_entries_dense(q, k, *, eps: float, p: int = 2, tile_elements: int = 1 << 21) -> np.ndarray:
    """The n²·d baseline in float64: A = f(QKᵀ) row-normalised in row blocks (a tile of about
    ``tile_elements`` logits, reused in place on numpy/CuPy), pairs with A ≥ ε."""
    xp = array_namespace(q, k)
    p = _check_p(p)
    native = native_module(q)
    n_keys = k.shape[0]
    rb = max(1, min(q.shape[0], tile_elements // max(1, n_keys)))
    kt = xp.permute_dims(k, (1, 0))
    tile = xp.empty((rb, n_keys), dtype=xp.float64) if native is not None else None
    found = []
    for i0 in range(0, q.shape[0], rb):
        qb = q[i0:i0 + rb]
        if native is not None and tile is not None:
            s = tile[: qb.shape[0]]
            native.matmul(qb, kt, out=s)
            native.multiply(s, s, out=s)
            if p == 4:
                native.multiply(s, s, out=s)
        else:
            s = xp.matmul(qb, kt)
            s = s * s if p == 2 else (s * s) * (s * s)
        z = xp.sum(s, axis=1)
        hit = s >= (eps * z)[:, None]
        ii, jj = xp.nonzero(hit)
        keep = z[ii] > 0
        ii, jj = ii[keep], jj[keep]
        if ii.shape[0]:
            found.append(np.stack([_host(ii) + i0, _host(jj)], axis=1).astype(np.int64))
    return np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# LevAttention output


def lev_attention(q, k, v, *, scale: float = 1.0, mode: str = "top_r", r: int | None = None, eps: float | None = None,
                  f: str | int = "softmax", select_p: int = 2):
    """Attention restricted to the selected keys S (LevAttention, non-causal).

    S = the r keys of largest leverage score (``mode="top_r"``, the paper's fixed budget per head), or
    U_ε (``mode="threshold"``, |S| ≤ rank/ε). Output row i = Σ_{j∈S} w_ij v_j with w_i = softmax over S of
    scale·⟨q_i, k_j⟩ (``f="softmax"``), or w_ij = |⟨q_i,k_j⟩|^p / Σ_{l∈S} |⟨q_i,k_l⟩|^p (``f=p``; rows with
    an all-zero restricted sum get 0). Returns (output, S). For f = |x|^p and threshold mode every
    ε-heavy key of the full attention is in S; for softmax no such guarantee exists (a heuristic).
    """
    xp = array_namespace(q, k, v)
    lev = leverage_scores(k, p=select_p)
    if mode == "top_r":
        if r is None or int(r) < 1:
            raise SpecError("top_r mode needs r ≥ 1")
        order = xp.argsort(-lev.scores, stable=True)
        sel = xp.sort(order[: min(int(r), k.shape[0])])
    elif mode == "threshold":
        if eps is None:
            raise SpecError("threshold mode needs eps")
        sel = select(lev, eps)
    else:
        raise SpecError(f"mode must be 'top_r' or 'threshold', got {mode!r}")
    ks, vs = xp.take(k, sel, axis=0), xp.take(v, sel, axis=0)
    logits = xp.matmul(q, xp.permute_dims(ks, (1, 0)))
    if sel.shape[0] == 0:
        return xp.zeros((q.shape[0], v.shape[1]), dtype=v.dtype), sel
    if f == "softmax":
        logits = logits * scale
        w = xp.exp(logits - xp.max(logits, axis=1, keepdims=True))
    else:
        pp = _check_p(f)
        w = logits**pp
    z = xp.sum(w, axis=1, keepdims=True)
    out = xp.matmul(w, vs) / xp.where(z > 0, z, xp.asarray(1.0, dtype=z.dtype))
    return out, sel


__all__ = [
    "gamma", "lifted_dimension", "lift_keys", "lift_queries", "LeverageScores", "leverage_scores",
    "leverage_scores_qr", "leverage_scores_svd", "select", "slack_needed", "universal_set", "SketchedScores",
    "sketched_leverage_scores", "sketched_universal_set", "sketch_failure_probability", "StreamingSelector",
    "streaming_universal_set", "ShardMessage", "shard_message", "merge_shards", "distributed_universal_set",
    "HeavyEntries", "entry_error_bound", "heavy_entries", "exact_heavy_entries_dense", "lev_attention",
]


# --------------------------------------------------------------------------------------------------
# Guards and the exact fallback of the built-in backend

SAFE_EXPONENT = 240  # nonzero |x| in [2⁻²⁴⁰, 2²⁴⁰]: degree-4 products and n-term sums stay normal and finite


def in_safe_range(x) -> bool:
    """True when every nonzero entry's magnitude lies in [2^-SAFE_EXPONENT, 2^SAFE_EXPONENT] and all are
    finite: the error model (relative rounding u per operation, no underflow or overflow) then holds
    for p ≤ 4 and n < 2⁶⁰."""
    xp = array_namespace(x)
    a = xp.abs(xp.astype(x, xp.float64))
    if not bool(xp.all(xp.isfinite(a))):
        return False
    nz = a[a > 0]
    if nz.shape[0] == 0:
        return True
    return float(xp.max(nz)) <= 2.0**SAFE_EXPONENT and float(xp.min(nz)) >= 2.0**-SAFE_EXPONENT


def exact_fallback_universal_set(k, *, eps, p) -> np.ndarray:
    """{j : τ_j ≥ ε} in exact rational arithmetic (the certified reference), host int64."""
    from fractions import Fraction

    from attnspec.reference.heavy_keys import leverage_scores as exact_scores

    kk = np.asarray(k.get() if hasattr(k, "get") else k, dtype=np.float64)
    return np.asarray(exact_scores(kk, _check_p(p)).at_least(Fraction(float(eps))), dtype=np.int64)


def exact_fallback_heavy_entries(q, k, *, eps, p) -> np.ndarray:
    """{(i, j) : A_ij ≥ ε} in exact integer arithmetic (the certified reference), host int64 (h, 2)."""
    from attnspec.reference.heavy_keys import HeavyEntriesReference
    from attnspec.spec.heavy_keys import make_heavy_instance

    host = [np.asarray(x.get() if hasattr(x, "get") else x, dtype=np.float64) for x in (q, k)]
    return HeavyEntriesReference(make_heavy_instance(*host, eps=float(eps), p=_check_p(p))).heavy()
