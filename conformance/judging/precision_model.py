"""Precision-model tolerances: a-priori forward-error bounds for floating-point attention backends.

The derivation is written out in ``docs/precision-model.md``; this module evaluates it. Summary for
softmax attention, entry (i, l), arithmetic with unit roundoff u, γ_k = k·u / (1 − k·u):

    Δ_ij = γ_{d+4}·|s|·Σ_t|q_it k_jt| + (1 + γ_{d+4})·λu·(d(1 + 2R_i) + 2) + |Δs|·Σ_t|q_it k_jt|
                                     (logit error of entry j: any product order and grouping, gradual
                                     underflow of products magnified by ≤ R_i, a non-float scale)
    x_ij = Δ_ij + u·A_ij + ℓ + ½(R·ℓ + u·Rng_i),   ℓ = −log(1 − 2cu),   ε_ij = e^{x_ij} − 1
                                     (each weight's relative error up to a common factor: its exp charged
                                     once, the R rescale factors by half of what they compound)
    F    = (Σ_j p_j ε_ij |v_jl − c_l| + |o_il − c_l|·ε̄_i) / (1 − ε̄_i)          (c_l: mid-range of column l)
    G    = (γ_{n+R}·Σ_j p'_j|v_jl| + γ_{n−1+R}·(|o_il| + F)) / (1 − γ_{n−1+R})   (sums in any order)
    τ_il = F + G + ρ(|o_il| + F + G) + 2(K_i + R)·λ·‖v_{:,l}‖∞ + (2n + 4 + 2R)·λ

with c the exp accuracy in ulps, R the rescalings a weight may undergo (≤ ceil(n / key_block) − 1; n
when unknown), A_ij a bound of the shifted exp argument, Rng_i how far the running maximum can move,
p_j and o_il enclosed a priori by a rigorous float64 softmax, ρ the division and cast, K_i the weights
that may be subnormal, λ the smallest positive normal of the format. The bound is vacuous (∞) when
ε̄_i ≥ 1/2, i.e. when the format cannot say anything for this size.

Where an intermediate of some evaluation order could overflow the format, no bound holds:
:func:`overflow_reason` / :func:`tensor_overflow_reason` name it, and the case is not applicable.
Derivations (each marked "derived here"): ``docs/precision-model.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any
from fractions import Fraction

import numpy as np

from attnspec.spec.dynamic_attention import Op, UpdateK, UpdateV
from attnspec.spec.softmax_attention import SoftmaxAttentionInstance
from attnspec.spec.tensor_attention import TensorAttentionInstance, column_kronecker, key_tuple_blocks
from attnspec.spec.validation import to_float64

UNIT_ROUNDOFF = {
    "float64": 2.0**-53,
    "float32": 2.0**-24,
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
}
SMALLEST_NORMAL = {
    "float64": 2.0**-1022,
    "float32": 2.0**-126,
    "float16": 2.0**-14,
    "bfloat16": 2.0**-126,
}


@dataclass(frozen=True)
class PrecisionModel:
    """How a backend computes: its arithmetic format, exp accuracy and online-softmax rescalings.

    ``fmt``            arithmetic format of every intermediate (the widest error applies);
    ``exp_ulps``       accuracy of exp in ulps (1 ulp ≤ 2u relative); libm/CUDA document 1–2 ulp;
    ``max_rescales``   bound on the rescalings of one weight in an online softmax; None means n
                       (the worst case: blocks of one key).
    ``exact_rounded``  the backend computes the exact value and rounds once to ``fmt`` (the reference
                       backend): the bound is then 2u·‖v‖∞.
    ``key_block``      keys (key tuples for tensor attention) per block of an online softmax, when the
                       backend knows it: a weight is then rescaled at most ceil(n / key_block) − 1 times
                       (the cap is applied on top of ``max_rescales``). None (the safe default): unknown.

    An online softmax is assumed to multiply its running numerator and denominator by the *same*
    computed factor exp(m_old − m_new) (as every FlashAttention-style kernel does). [S]
    """

    fmt: str = "float64"
    exp_ulps: float = 2.0
    max_rescales: int | None = None
    exact_rounded: bool = False
    key_block: int | None = None

    @property
    def u(self) -> float:
        try:
            return UNIT_ROUNDOFF[self.fmt]
        except KeyError:
            raise ValueError(f"unknown arithmetic format {self.fmt!r}; known: {sorted(UNIT_ROUNDOFF)}") from None


def _gamma(k: int, u: float) -> float:
    ku = k * u
    return math.inf if ku >= 1 else ku / (1 - ku)


FORMAT_MAX = {
    "float64": float(np.finfo(np.float64).max),
    "float32": float(np.finfo(np.float32).max),
    "float16": 65504.0,
    "bfloat16": float.fromhex("0x1.fep127"),
}
_NUMPY_FORMATS = ("float64", "float32", "float16")


def _times_half_subnormal(x: np.ndarray | float, fmt: str) -> np.ndarray:
    """An upper bound of x·λu (λu = half the smallest subnormal of ``fmt``, below float64's range for
    float64) for x ≥ 0: a power-of-two scaling, exact unless it underflows, then rounded up."""
    exponent = int(math.log2(UNIT_ROUNDOFF[fmt])) + int(math.log2(SMALLEST_NORMAL[fmt]))
    return np.ldexp(np.asarray(x, dtype=np.float64), exponent) + 5e-324


def _float_up(x: Fraction) -> float:
    f = float(x)
    return float(np.nextafter(f, np.inf)) if Fraction(f) < x else f


def scale_rounding_error(scale: Fraction, dtype: str, fmt: str) -> float:
    """Upper bound of |s' − s| over every scale s' a backend may compute with (derived here).

    The backend receives s₆₄ = float(s) (float64, round to nearest) and may round it again to the case
    dtype or to its arithmetic format; each candidate is computed and compared with s exactly. 0 for
    every scale that is a float of the case dtype (all generated cases). ∞ when a candidate overflows.
    """
    s = Fraction(scale)
    s64 = float(s)
    candidates = [s64]
    for t in {dtype, fmt}:
        if t in _NUMPY_FORMATS:
            with np.errstate(over="ignore"):
                candidates.append(float(np.asarray(s64, dtype=t)))
    err = Fraction(0)
    for c in candidates:
        if not math.isfinite(c):
            return math.inf
        err = max(err, abs(Fraction(c) - s))
    if fmt not in _NUMPY_FORMATS:  # a format numpy cannot round to: its rounding bound instead
        err += Fraction(UNIT_ROUNDOFF[fmt]) * abs(Fraction(s64)) + Fraction(SMALLEST_NORMAL[fmt]) * Fraction(UNIT_ROUNDOFF[fmt])
    return _float_up(err)


def _case_dtype(x: np.ndarray) -> str:
    return str(x.dtype) if x.dtype.kind == "f" else "float64"


def _product_magnifier(factor_maxima: list[np.ndarray]) -> np.ndarray:
    """R: the largest product of the factors *outside* a rounded partial product of one logit term.

    A term is a product of F factors (|s|, |q_it|, |k_jt|, … with s possibly split as √s·√s); in any
    grouping the error of an inner product node is multiplied by the product of the factors outside
    it: a proper non-empty subset of at most F − 2 factors. Bounded with per-factor maxima."""
    size = len(factor_maxima)
    best = np.zeros(np.broadcast(*factor_maxima).shape)
    for mask in range(1, 2**size):
        members = [f for b, f in enumerate(factor_maxima) if mask >> b & 1]
        if len(members) > size - 2:
            continue
        prod = np.ones_like(best)
        for f in members:
            prod = prod * f
        best = np.maximum(best, prod)
    return best


def _underflow_logit_error(magnifier: np.ndarray, inner: int, d: int, fmt: str, gamma: float) -> np.ndarray:
    """Absolute logit error from gradual underflow (derived here, docs/precision-model.md §1b).

    fl(x·y) = xy(1 + δ) + η with |η| ≤ λu (half the smallest subnormal; η = 0 unless the product is
    subnormal). A term takes ``inner`` + 1 products: the last one's η enters as is, each inner one's is
    multiplied by the factors outside it, at most R = ``magnifier``; the d terms are summed (additions
    are exact in the subnormal range, relative errors grow η by at most 1 + γ) and the scale may be
    applied once more to the sum: |error| ≤ (1 + γ)·λu·(d·(1 + inner·R) + 2)."""
    eta = _times_half_subnormal(1.0, fmt)
    eta_r = _times_half_subnormal(magnifier, fmt)  # λu·R first: R itself may be near the float64 maximum
    with np.errstate(over="ignore", invalid="ignore"):
        return (d * (eta + inner * eta_r) + 2 * eta) * (1 + gamma) * (1 + 2.0**-50)


def _softmax_magnifier(inst: SoftmaxAttentionInstance, rows: np.ndarray | None = None) -> np.ndarray:
    """R_i = max(|s|, max_t|q_it|, max|k|, √|s|·max_t|q_it|, √|s|·max|k|): what a rounded partial
    product of a term s·q_it·k_jt can still be multiplied by, in any order ((s·q)·k, s·(q·k), q·(s·k),
    the score scaled after the sum, or (√s·q)·(√s·k)). One entry per selected row."""
    s = abs(float(inst.scale)) * (1 + 2.0**-52)
    root = math.sqrt(s) * (1 + 2.0**-52)
    q = to_float64(inst.q)
    q_max = np.abs(q if rows is None else q[rows]).max(axis=1)
    k_max = float(np.abs(to_float64(inst.k)).max())
    return np.maximum.reduce([np.full_like(q_max, s), q_max, np.full_like(q_max, k_max), root * q_max,
                              np.full_like(q_max, root * k_max)]) * (1 + 2.0**-52)


def _select_rows(rows, m: int) -> np.ndarray:
    """``rows`` as a 1-D int64 index array into 0..m−1 (None: every row); a clear error otherwise."""
    if rows is None:
        return np.arange(m)
    idx = np.asarray(rows)
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
        raise ValueError(f"rows must be a 1-D array of row indices, got shape {idx.shape} and dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= m):
        raise ValueError(f"rows must lie in [0, {m}), got {int(idx.min())}..{int(idx.max())}")
    return idx


# Work tile of the blocked evaluation: row block × key block ≤ 2^18 numbers (2 MiB per float64 array).
_TILE = 1 << 18
_KEY_BLOCK = 2048
U64 = 2.0**-53
# numpy's float64 exp is taken to be accurate to 32 ulps (its documented accuracy is < 4 ulp): the p
# enclosure below only weights first-order terms, so a loose margin costs nothing. [S]
_EXP64_LOG_ERR = 64 * U64
_MU64 = 2.0**-1072  # absolute error of a float64 exp whose result is subnormal or flushed (≥ 1 subnormal ulp)


def _eval_slack(n_terms: int, d: int) -> float:
    """Relative slack covering the float64 evaluation of the bound itself: sums of ≤ n_terms + d terms
    (γ_{n+d} in float64) and a few dozen further roundings, each ≤ 2^-53."""
    return 1 + (n_terms + d + 64) * 2.0**-49


@dataclass(frozen=True)
class _Terms:
    """Everything the blocked evaluation needs about the logits and the model (one instance, some rows)."""

    q: np.ndarray            # (m, d) float64, the selected rows of Q
    s64: float               # float(s): the scale of the float64 logits
    key_blocks: Any          # () -> iterator of (b×d key rows, b×dv value rows), float64, in order
    n_terms: int             # n (softmax) or N = n^(k−1) key tuples
    p_inflate: float         # (|Q||K|ᵀ)·p_inflate ≥ Σ_t|q_it k_jt| although evaluated in float64
    delta_coef: float        # Δ_ij = delta_coef·P_ij + delta_abs_i   (the backend's logit error)
    delta_abs: np.ndarray    # (m,)
    e64_coef: float          # e_ij = e64_coef·P_ij + e64_abs_i       (the float64 logits' error)
    e64_abs: np.ndarray      # (m,)


def _key_block_size(n_terms: int) -> int:
    return max(1, min(n_terms, _KEY_BLOCK))


def _row_stats(t: _Terms, r0: int, r1: int):
    """Pass 1 over the keys for rows r0..r1: max and min float64 logit and max P_ij."""
    qc = t.q[r0:r1]
    qa = np.abs(qc)
    lmax = np.full(r1 - r0, -np.inf)
    lmin = np.full(r1 - r0, np.inf)
    pmax = np.zeros(r1 - r0)
    for kb, _ in t.key_blocks():
        lt = (qc @ kb.T) * t.s64
        lmax = np.maximum(lmax, lt.max(axis=1))
        lmin = np.minimum(lmin, lt.min(axis=1))
        pmax = np.maximum(pmax, (qa @ np.abs(kb).T).max(axis=1) * t.p_inflate)
    return lmax, lmin, pmax


def _first_order_tolerance(t: _Terms, model: PrecisionModel, *, rescales: int, value_roundings: int,
                           col_norm: np.ndarray, center: np.ndarray, u_out: float, abs_ops: float,
                           d: int) -> np.ndarray:
    """τ_il for the selected rows (docs/precision-model.md, "Derivation", steps 1–7; derived here).

    Per row i, weight j: the backend's weight enters both sums as a_j(1 + θ_j) up to a common factor,
    |log(1 + θ_j)| ≤ x_ij = Δ_ij + u·A_ij + ℓ + ½(R·ℓ + u·Rng_i) with ℓ = −log(1 − 2cu); ε_ij = e^{x_ij} − 1.
    Exactly, o' − o = Σ_j p_j θ_j (v_j − o) / (1 + θ̄), so with any centre c_l and ε̄ = Σ_j p_j ε_j:
        F = (Σ_j p_j ε_j |v_jl − c_l| + |o_il − c_l|·ε̄) / (1 − ε̄)
        G = (γ_N·Σ_j p'_j|v_jl| + γ_D·(|o_il| + F)) / (1 − γ_D)      (sums in any order, rescaled partial sums)
        τ = F + G + ρ·(|o| + F + G) + 2(K_i + R)λ‖v_{:,l}‖∞ + abs_ops·λ,    ρ = (1 + u)(1 + u_out) − 1.
    p_j and o are enclosed a priori by a float64 softmax with a rigorous error bound (p_j ≤ p_hi_j)."""
    u = model.u
    lam = SMALLEST_NORMAL[model.fmt]
    n_terms = t.n_terms
    m, dv = t.q.shape[0], col_norm.shape[0]
    out = np.empty((m, dv))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        two_cu = 2 * model.exp_ulps * u
        ell = -math.log1p(-two_cu) if two_cu < 1 else math.inf
        gamma_n = _gamma(n_terms - 1 + value_roundings + rescales, u)
        gamma_d = _gamma(n_terms - 1 + rescales, u)
        gamma64_n = _gamma(n_terms + 2, U64)
        rho = (1 + u) * (1 + u_out) - 1
        log_2lam = math.log(2 * lam)
        kb_size = _key_block_size(n_terms)
        rb = max(1, _TILE // kb_size)
        for r0 in range(0, m, rb):
            r1 = min(m, r0 + rb)
            qc = t.q[r0:r1]
            qa = np.abs(qc)
            lmax, lmin, pmax = _row_stats(t, r0, r1)
            d_abs, e_abs = t.delta_abs[r0:r1], t.e64_abs[r0:r1]
            dmax = t.delta_coef * pmax + d_abs
            emax = t.e64_coef * pmax + e_abs
            spread = (lmax - lmin) * (1 + 2.0**-50)
            rng = spread + 2 * (emax + dmax)  # the running maximum of computed logits moves at most this far
            half_resc = 0.5 * (rescales * ell + u * rng)
            eta_row = emax + U64 * spread * (1 + 2.0**-50) + _EXP64_LOG_ERR
            sum_e = np.zeros(r1 - r0)
            sum_he = np.zeros(r1 - r0)
            count = np.zeros(r1 - r0)
            acc_o, acc_c, acc_ec, acc_a, acc_ea = (np.zeros((r1 - r0, dv)) for _ in range(5))
            for kb, vb in t.key_blocks():
                lt = (qc @ kb.T) * t.s64
                pa = (qa @ np.abs(kb).T) * t.p_inflate
                delta = t.delta_coef * pa + d_abs[:, None]
                e64 = t.e64_coef * pa + e_abs[:, None]
                arg = lt - lmax[:, None]  # ≤ 0
                reach = np.maximum(np.maximum(np.abs(lt), -arg), lt - lmin[:, None])
                a_bound = reach * (1 + 2.0**-50) + 2 * emax[:, None] + delta + dmax[:, None]
                eps = np.expm1(delta + u * a_bound + ell + half_resc[:, None])
                et = np.exp(arg)
                h = (et + _MU64) * np.exp(e64 + U64 * np.abs(arg) * (1 + 2.0**-50) + _EXP64_LOG_ERR)
                he = h * eps
                vc = np.abs(vb - center[None, :])
                va = np.abs(vb)
                acc_o += et @ vb
                acc_c += h @ vc
                acc_ec += he @ vc
                acc_a += h @ va
                acc_ea += he @ va
                sum_e += et.sum(axis=1)
                sum_he += he.sum(axis=1)
                # weights that may fall into the subnormal range (relative to the largest weight ≈ 1)
                count += (arg - e64 - emax[:, None] - delta - dmax[:, None] < log_2lam).sum(axis=1)
            denom = sum_e / (1 + gamma64_n) - n_terms * _MU64
            z = np.where(denom > 0, np.exp(eta_row) / denom, np.inf)[:, None]
            eps_bar = z[:, 0] * sum_he
            p_c, p_ec, p_a, p_ea = z * acc_c, z * acc_ec, z * acc_a, z * acc_ea
            o_est = acc_o / sum_e[:, None]
            two_eta = 2 * eta_row[:, None]
            omega = (np.exp(two_eta) * (np.expm1(two_eta) * p_c + 3 * _gamma(n_terms + 1, U64) * p_a)
                     + 4 * n_terms * _MU64 * col_norm[None, :] * z * np.exp(-eta_row[:, None]))
            o_abs = (np.abs(o_est) + omega) * (1 + 2.0**-50)
            o_c = (np.abs(o_est - center[None, :]) + omega) * (1 + 2.0**-50)
            eb = eps_bar[:, None]
            first = (p_ec + o_c * eb) / (1 - eb)
            sums = (gamma_n * (p_a + p_ea) / (1 - eb) + gamma_d * (o_abs + first)) / (1 - gamma_d)
            tol = first + sums + rho * (o_abs + first + sums)
            tol += 2 * (count[:, None] + rescales) * lam * col_norm[None, :] + abs_ops * lam
            ok = (eb < 0.5) & (gamma_d < 0.5) & np.isfinite(tol)
            out[r0:r1] = np.where(ok, tol * _eval_slack(n_terms, d), np.inf)
    return out


def _effective_rescales(model: PrecisionModel, n_terms: int) -> int:
    """R: ``max_rescales`` (None: n_terms, the worst case), capped by ceil(n_terms / key_block) − 1."""
    r = n_terms if model.max_rescales is None else int(model.max_rescales)
    if model.key_block is not None:
        r = min(r, -(-n_terms // int(model.key_block)) - 1)
    return max(r, 0)


def _output_roundoff(case_dtype: str, model: PrecisionModel) -> float:
    """The unit roundoff of the final cast to the case dtype (at least the model's own u)."""
    return max(model.u, UNIT_ROUNDOFF.get(case_dtype, model.u))


def _scale_sensitivity(p_row: np.ndarray, ds: float) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(ds == 0, 0.0, ds * p_row)


def softmax_tolerance(inst: SoftmaxAttentionInstance, model: PrecisionModel, rows=None) -> np.ndarray:
    """Per-entry tolerance τ_il for the output rows ``rows`` (None: all; shape (len(rows), dv)) of
    ``inst`` under ``model`` (formula: module docstring; derivation: docs/precision-model.md).

    Blocked: O(|rows|·n·d) time, O(block·n) memory, never an n×n array.

    ``exact_rounded``: the exact answer of the instance with the scale the backend received, rounded
    once: τ = 2u‖v_{:,l}‖∞ + λ + |Δs|·P_i·‖v_{:,l}‖∞, since |∂o_il/∂s| = |Cov_p(L_i·, v_·l)| ≤
    ‖v_{:,l}‖∞·(max_j L_ij − min_j L_ij)/2 ≤ P_i‖v_{:,l}‖∞ (L: unscaled logits; derived here).
    """
    idx = _select_rows(rows, inst.n)
    n, d = inst.n, inst.d
    u = model.u
    lam = SMALLEST_NORMAL[model.fmt]
    vf = to_float64(inst.v)
    col_norm = np.abs(vf).max(axis=0)  # ‖v_{:,l}‖∞, exact for float inputs
    ds = scale_rounding_error(inst.scale, _case_dtype(inst.q), model.fmt)
    if model.exact_rounded:
        # One rounding of the exact value: relative 2u, or absolute ≤ λ in the subnormal range.
        shift = _scale_sensitivity(_unscaled_logit_magnitude(inst, idx), ds) if ds else np.zeros(idx.size)
        with np.errstate(over="ignore", invalid="ignore"):
            tol = (2 * u + shift[:, None]) * col_norm[None, :] + lam
        return np.where(np.isnan(tol), np.inf, tol * (1 + 2.0**-40))
    qf, kf = to_float64(inst.q)[idx], to_float64(inst.k)
    s_up = abs(float(inst.scale)) * (1 + 2.0**-52)
    gamma = _gamma(d + 4, u)
    gamma64 = _gamma(d + 8, U64)
    ds64 = _float_up(abs(Fraction(float(inst.scale)) - Fraction(inst.scale)))
    mag = _softmax_magnifier(inst, idx)
    with np.errstate(over="ignore", invalid="ignore"):
        under = np.broadcast_to(np.asarray(_underflow_logit_error(mag, 2, d, model.fmt, gamma), dtype=float), idx.shape)
        under64 = np.broadcast_to(np.asarray(_underflow_logit_error(mag, 3, d, "float64", gamma64), dtype=float), idx.shape)
    kb = _key_block_size(n)

    def blocks():
        for j0 in range(0, n, kb):
            yield kf[j0:j0 + kb], vf[j0:j0 + kb]

    terms = _Terms(q=qf, s64=float(inst.scale), key_blocks=blocks, n_terms=n, p_inflate=1 + (d + 6) * 2.0**-52,
                   delta_coef=gamma * s_up + ds, delta_abs=under, e64_coef=gamma64 * s_up + ds64, e64_abs=under64)
    rescales = _effective_rescales(model, n)
    center = 0.5 * (vf.max(axis=0) + vf.min(axis=0))
    return _first_order_tolerance(terms, model, rescales=rescales, value_roundings=1, col_norm=col_norm,
                                  center=center, u_out=_output_roundoff(_case_dtype(inst.q), model),
                                  abs_ops=2 * n + 4 + 2 * rescales, d=d)


def _unscaled_logit_magnitude(inst: SoftmaxAttentionInstance, rows: np.ndarray | None = None) -> np.ndarray:
    """P_i = max_j Σ_t |q_it k_jt| for the selected rows, from float64 (blocked) and rounded up by its
    γ_d bound."""
    idx = _select_rows(rows, inst.n)
    q = np.abs(to_float64(inst.q)[idx])
    k = np.abs(to_float64(inst.k))
    kb = _key_block_size(inst.n)
    rb = max(1, _TILE // kb)
    out = np.zeros(idx.size)
    with np.errstate(over="ignore", invalid="ignore"):
        for r0 in range(0, idx.size, rb):
            for j0 in range(0, inst.n, kb):
                block = (q[r0:r0 + rb] @ k[j0:j0 + kb].T).max(axis=1)
                out[r0:r0 + rb] = np.maximum(out[r0:r0 + rb], block)
        return out * (1 + (inst.d + 2) * 2.0**-52)


def contract_tolerance(eps: float, shape: tuple[int, ...]) -> np.ndarray:
    """The problem's own additive tolerance ε_a for every entry."""
    if not eps > 0:
        raise ValueError("contract eps must be positive")
    return np.full(shape, float(eps))


# ---------------------------------------------------------------------------------------------
# Tensor (k-th order) attention


def value_column_norms(inst: TensorAttentionInstance) -> np.ndarray:
    """‖(V₁⊘…⊘V_{k−1})[:, l]‖∞ = Π_m ‖V_m[:, l]‖∞ per column, rounded up from float64."""
    norms = np.ones(inst.output_shape[1])
    for v in inst.values:
        norms = norms * np.abs(to_float64(v)).max(axis=0)
    return norms * (1 + len(inst.values) * 2.0**-52)


def _tensor_unscaled_magnitude(inst: TensorAttentionInstance, block: int = 4096, rows: np.ndarray | None = None) -> np.ndarray:
    """P_i = max_J Σ_t |q_it Π_m K_m[j_m, t]| from float64, rounded up by its γ_{d+k} bound."""
    idx = _select_rows(rows, inst.n)
    qa = np.abs(to_float64(inst.q)[idx])
    keys = [np.abs(to_float64(x)) for x in inst.keys]
    out = np.zeros(idx.size)
    with np.errstate(over="ignore", invalid="ignore"):
        for t0, t1 in key_tuple_blocks(inst.n, len(keys), block):
            out = np.maximum(out, (qa @ column_kronecker(keys, (t0, t1)).T).max(axis=1))
        return out * (1 + (inst.d + inst.order + 2) * 2.0**-52)


def _tensor_factor_maxima(inst: TensorAttentionInstance, rows: np.ndarray | None = None) -> list[np.ndarray]:
    """Per-row maxima of the k + 1 factors of one logit term: |s|, |q_it|, |K_1[j, t]|, …"""
    q = np.abs(to_float64(inst.q))
    q_max = (q if rows is None else q[rows]).max(axis=1)
    full = lambda x: np.full_like(q_max, x)  # noqa: E731
    return ([full(abs(float(inst.scale)) * (1 + 2.0**-52)), q_max]
            + [full(float(np.abs(to_float64(k)).max())) for k in inst.keys])


def tensor_tolerance(inst: TensorAttentionInstance, model: PrecisionModel, rows=None) -> np.ndarray:
    """Per-entry precision-model tolerance τ_il for the output rows ``rows`` (None: all; shape
    (len(rows), dv)): the softmax model of :func:`softmax_tolerance` over the N = n^{k−1} key tuples
    (derivation: docs/tensor-attention.md and docs/precision-model.md).

    Logit error Δ_iJ = γ_{d+k+2}·|s|·P_iJ + (1 + γ)·λu·(d(1 + (k−1)R_i) + 2) + |Δs|·P_iJ with
    P_iJ = Σ_t |q_it Π_m K_m[j_m,t]| and R_i the largest product of at most k − 1 of the factor maxima
    (|s|, max|q_i|, max|K_m|); the value rows are Kronecker products of k − 1 factors (k − 2 products
    and one with the weight: γ_{N−1+(k−1)+R} for the weighted sums). R = rescalings (N when unknown).
    ``exact_rounded``: 2u‖V⊘[:, l]‖∞ + λ + |Δs|·P_i·‖V⊘[:, l]‖∞ (the scale sensitivity bound).
    Blocked over key tuples: O(|rows|·N·d) time, O(block·(d + dv)) memory beyond the output.
    """
    idx = _select_rows(rows, inst.n)
    d, k = inst.d, inst.order
    big_n = inst.num_tuples
    u = model.u
    lam = SMALLEST_NORMAL[model.fmt]
    col_norm = value_column_norms(inst)
    ds = scale_rounding_error(inst.scale, _case_dtype(inst.q), model.fmt)
    if model.exact_rounded:
        shift = _scale_sensitivity(_tensor_unscaled_magnitude(inst, rows=idx), ds) if ds else np.zeros(idx.size)
        with np.errstate(over="ignore", invalid="ignore"):
            tol = (2 * u + shift[:, None]) * col_norm[None, :] + lam
        return np.where(np.isnan(tol), np.inf, tol * (1 + 2.0**-40))
    keys = [to_float64(x) for x in inst.keys]
    values = [to_float64(x) for x in inst.values]
    s_up = abs(float(inst.scale)) * (1 + 2.0**-52)
    gamma = _gamma(d + k + 2, u)
    gamma64 = _gamma(d + k + 6, U64)
    ds64 = _float_up(abs(Fraction(float(inst.scale)) - Fraction(inst.scale)))
    mag = _product_magnifier(_tensor_factor_maxima(inst, idx))
    with np.errstate(over="ignore", invalid="ignore"):
        under = np.broadcast_to(np.asarray(_underflow_logit_error(mag, k - 1, d, model.fmt, gamma), dtype=float), idx.shape)
        under64 = np.broadcast_to(np.asarray(_underflow_logit_error(mag, k, d, "float64", gamma64), dtype=float), idx.shape)
    kb = _key_block_size(big_n)

    def blocks():
        for t0, t1 in key_tuple_blocks(inst.n, k - 1, kb):
            yield column_kronecker(keys, (t0, t1)), column_kronecker(values, (t0, t1))

    vmax = np.full(col_norm.shape, -np.inf)
    vmin = np.full(col_norm.shape, np.inf)
    for t0, t1 in key_tuple_blocks(inst.n, k - 1, kb):
        vb = column_kronecker(values, (t0, t1))
        vmax, vmin = np.maximum(vmax, vb.max(axis=0)), np.minimum(vmin, vb.min(axis=0))
    terms = _Terms(q=to_float64(inst.q)[idx], s64=float(inst.scale), key_blocks=blocks, n_terms=big_n,
                   p_inflate=1 + (d + k + 4) * 2.0**-52, delta_coef=gamma * s_up + ds, delta_abs=under,
                   e64_coef=gamma64 * s_up + ds64, e64_abs=under64)
    rescales = _effective_rescales(model, big_n)
    return _first_order_tolerance(terms, model, rescales=rescales, value_roundings=k - 1, col_norm=col_norm,
                                  center=0.5 * (vmax + vmin), u_out=_output_roundoff(_case_dtype(inst.q), model),
                                  abs_ops=(k + 1) * big_n + 4 + 2 * rescales, d=d)


# ---------------------------------------------------------------------------------------------
# Intermediate overflow: where no bound holds, the case is not applicable (derived here)


def _first_overflow(candidates: list[tuple[str, float]], fmt: str) -> str | None:
    top = FORMAT_MAX[fmt]
    for what, value in candidates:
        if not value <= top:  # NaN (inf·0 in the float64 bound) counts as overflow too
            return f"{what} can reach {value:.3g} > {fmt} max {top:.3g}: the {fmt} precision model gives no bound"
    return None


def _value_sum_bound(col_abs_sums: np.ndarray, n_terms: int, u: float) -> float:
    # Σ_j |ã_j||v_jl| with weights ã_j ≤ 1 + α ≤ 3/2 after the shift, and any order of n − 1 additions
    return float(col_abs_sums.max(initial=0.0)) * 1.5 * (1 + _gamma(n_terms + 2, u))


def overflow_reason(inst: SoftmaxAttentionInstance, model: PrecisionModel, rows=None) -> str | None:
    """Why some evaluation order the softmax precision model allows could overflow ``model.fmt`` on
    ``inst`` (then no tolerance holds and the case is not applicable), or None. ``rows``: only these
    output rows (None: all); blocked, O(|rows|·n·d) time, never an n×n array.

    Bounds of every intermediate (derived here): products of two of the factors |s|, |q_it|, |k_jt|
    (or √|s| with one of them), the unscaled scores Σ_t|q_it k_jt| ≤ P_i and the scaled ones ≤ S_i
    (partial sums included), exp arguments after the shift ≤ W_i = 2(S_i + Δ_i), the weight sums
    ≤ n(1 + α) and the weighted sums Σ_j ã_j|v_jl| ≤ (1 + α)Σ_j|v_jl| (α ≤ 1/2 where the bound is
    finite). The ``exact_rounded`` model only needs its output, a convex combination of V, to fit.
    """
    if model.exact_rounded:
        return None
    idx = _select_rows(rows, inst.n)
    fmt, u = model.fmt, model.u
    q = np.abs(to_float64(inst.q)[idx])
    k = np.abs(to_float64(inst.k))
    s = abs(float(inst.scale)) * (1 + 2.0**-52)
    root = math.sqrt(s)
    with np.errstate(over="ignore", invalid="ignore"):
        p_row = float(_unscaled_logit_magnitude(inst, idx).max(initial=0.0))
        q_max, k_max = float(q.max(initial=0.0)), float(k.max(initial=0.0))
        pair = float((q * k.max(axis=0)).max(initial=0.0)) * (1 + 2.0**-52)  # max over t of |q_it|·max_j|k_jt|
        s_row = s * p_row
        candidates = [
            ("q·kᵀ before scaling", max(pair, p_row)),
            ("the scaled query or key s·q, s·k", s * max(q_max, k_max)),
            ("√s·q or √s·k", root * max(q_max, k_max) * (1 + 2.0**-52)),
            ("the scaled logits s·q·kᵀ", s_row * (1 + _gamma(inst.d + 4, u))),
            ("a shifted exp argument", 2 * s_row * (1 + _gamma(inst.d + 4, u)) * (1 + 2.0**-50)),
            ("the weight sum", 1.5 * inst.n * (1 + _gamma(inst.n + 2, u))),
            ("Σ_j p_j·v_jl (weights ≤ 1 summed over n)", _value_sum_bound(np.abs(to_float64(inst.v)).sum(axis=0), inst.n, u)),
        ]
    return _first_overflow(candidates, fmt)


def tensor_overflow_reason(inst: TensorAttentionInstance, model: PrecisionModel, rows=None) -> str | None:
    """The tensor-attention version of :func:`overflow_reason` (derived here): any product of a subset
    of the k + 1 factors of a logit term (bounded by the product of per-column maxima), the unscaled and
    scaled scores, the shifted exp arguments, the weight sum over N = n^{k−1} tuples and the weighted
    sums, whose partial sums over a subset of the value factors are ≤ (1 + α)·Π_m max(1, Σ_j|V_m[j,l]|).
    ``rows``: only these output rows (None: all); blocked over key tuples."""
    if model.exact_rounded:
        return None
    idx = _select_rows(rows, inst.n)
    fmt, u = model.fmt, model.u
    s = abs(float(inst.scale)) * (1 + 2.0**-52)
    cols = [np.abs(to_float64(inst.q)[idx])] + [np.abs(to_float64(x)).max(axis=0)[None, :] for x in inst.keys]
    with np.errstate(over="ignore", invalid="ignore"):
        worst_product = 0.0
        for mask in range(1, 2 ** len(cols)):
            members = [c for b, c in enumerate(cols) if mask >> b & 1]
            prod = np.ones((idx.size, inst.d))
            for c in members:
                prod = prod * c
            top = float(prod.max(initial=0.0))
            worst_product = max(worst_product, top * s * (1 + 2.0**-50), top * (1 + 2.0**-50) if len(members) > 1 else 0.0)
        p_row = float(_tensor_unscaled_magnitude(inst, rows=idx).max(initial=0.0))
        s_row = s * p_row * (1 + _gamma(inst.d + inst.order + 2, u))
        value_sums = np.ones(inst.output_shape[1])
        for v in inst.values:
            value_sums = value_sums * np.maximum(1.0, np.abs(to_float64(v)).sum(axis=0))
        candidates = [
            ("a partial product of q and the keys before scaling", worst_product),
            ("q·(K₁⊘…)ᵀ before scaling", p_row),
            ("the scaled logits", s_row),
            ("a shifted exp argument", 2 * s_row * (1 + 2.0**-50)),
            ("the weight sum", 1.5 * inst.num_tuples * (1 + _gamma(inst.num_tuples + 2, u))),
            ("Σ_J p_J·Π_m V_m (weights ≤ 1 summed over n^(k-1) tuples)", _value_sum_bound(value_sums, inst.num_tuples, u)),
        ]
    return _first_overflow(candidates, fmt)


# ---------------------------------------------------------------------------------------------
# Dynamic attention (ODAMV / OAMV), float64 structures


@dataclass
class History:
    """Magnitudes over every state reached since Init (float64, padded outward): the inputs of the
    precision model. ``logit_lo/hi`` bound every logit s⟨q_r, k_l⟩ ever present."""

    n: int = 0
    d: int = 0
    scale: float = 1.0
    scale_error: float = 0.0  # |float(s) − s| for a scale that is not a float64
    q_l1: float = 0.0
    q_max: float = 0.0
    k_max: float = 0.0
    v_max: float = 0.0
    logit_lo: float = math.inf
    logit_hi: float = -math.inf
    updates_k: int = 0
    updates_v: int = 0
    _q: np.ndarray | None = field(default=None, repr=False)

    def _logit_pad(self) -> float:
        # float64 evaluation error of s·Q k (γ_{d+1}·|s|·‖q‖₁·max|k|) plus a relative margin
        return 2 * (self.d + 2) * U64 * abs(self.scale) * self.q_l1 * self.k_max + 1e-300

    def _see_logits(self, logits: np.ndarray) -> None:
        pad = self._logit_pad()
        self.logit_lo = min(self.logit_lo, float(logits.min()) - pad)
        self.logit_hi = max(self.logit_hi, float(logits.max()) + pad)

    def start(self, state) -> None:
        q, k, v = (to_float64(x) for x in (state.q, state.k, state.v))
        self._q = q
        self.n, self.d, self.scale = k.shape[0], k.shape[1], float(state.scale)
        self.scale_error = _float_up(abs(Fraction(self.scale) - Fraction(state.scale)))
        self.q_l1 = float(np.abs(q).sum(axis=1).max())
        self.q_max = float(np.abs(q).max())
        self.k_max = float(np.abs(k).max())
        self.v_max = float(np.abs(v).max())
        self._see_logits(self.scale * (q @ k.T))

    def see(self, op: Op, state) -> None:
        if isinstance(op, UpdateK):
            self.updates_k += 1
            row = np.array([float(x) for x in state.k[op.i]])
            self.k_max = max(self.k_max, float(np.abs(row).max()))
            self._see_logits(self.scale * (self._q @ row))
        elif isinstance(op, UpdateV):
            self.updates_v += 1
            self.v_max = max(self.v_max, abs(float(state.v[op.i, op.j])))


SMALLEST_SUBNORMAL_64 = 5e-324


def _dynamic_logit_error(h: History) -> float:
    """Δℓ: rounding of the dot product, the scale and the K updates, plus the gradual-underflow term of
    :func:`_underflow_logit_error` (R = max(|s|, max|q|, K̄, √|s|·max(|q|, K̄))) and the scale's rounding
    |Δs|·‖q‖₁K̄ when the trace's scale is no float64 (derived here)."""
    s = abs(h.scale)
    root = math.sqrt(s)
    magnifier = max(s, h.q_max, h.k_max, root * h.q_max, root * h.k_max) * (1 + 2.0**-50)
    gamma = _gamma(h.d + 4, U64)
    underflow = float(_underflow_logit_error(np.array([magnifier]), 2, h.d, "float64", gamma)[0])
    return s * h.q_l1 * h.k_max * (h.d + 2 + 2 * h.updates_k) * U64 + underflow + h.scale_error * h.q_l1 * h.k_max


def dynamic_tolerance(h: History, normalised: bool) -> float:
    """Float64 forward-error tolerance for one query (docs/dynamic-attention.md, "Tolerance").

    With U = U_K + U_V updates since Init, T = n + 3U + 2 terms at most in any maintained sum,
        Δℓ  = |s|·‖q‖₁·K̄·(d + 2 + 2U_K)·u + (underflow and scale terms, :func:`_dynamic_logit_error`)
        ε_w = (1 + 4u)·e^{Δℓ} − 1 + 2u·(U + 1)             (weight error, rescalings included)
        η   = (γ_T + ε_w + (U_V + 1)·u)·(T/n)·e^{ℓ_hi − ℓ_lo}
    ODAMV: τ = 2ηV̄/(1 − η) + 2uV̄ + T·μ(2V̄ + 1)e^{span}/(n(1 − η)) + μ   (∞ when η ≥ 1/2);
    OAMV:  τ = (η·n + (|ℓ|max + 4)·n·u)·e^{ℓ_hi}·V̄ + (1 + η)·T·μ·[(V̄ + 1)·max(1, e^{ℓ_hi}) + V̄·e^{span}] + μ,
    μ = 2⁻¹⁰⁷⁴ the smallest subnormal: the absolute error of one operation whose result is subnormal
    (gradual underflow; exp within one subnormal ulp), derived here. The result is doubled for the
    float evaluation of this formula itself.
    """
    u = U64
    mu = SMALLEST_SUBNORMAL_64
    big_u = h.updates_k + h.updates_v
    t = h.n + 3 * big_u + 2
    gamma_t = t * u / (1 - t * u)
    dl = _dynamic_logit_error(h)
    if not dl < 700:
        return math.inf
    eps_w = (1 + 4 * u) * math.exp(dl) - 1 + 2 * u * (big_u + 1)
    span = h.logit_hi - h.logit_lo
    if span > 700:
        return math.inf
    eta = (gamma_t + eps_w + (h.updates_v + 1) * u) * (t / h.n) * math.exp(span)
    vbar = h.v_max
    with np.errstate(over="ignore"):
        if normalised:
            if eta >= 0.5:
                return math.inf
            tol = 2 * eta * vbar / (1 - eta) + 2 * u * vbar
            tol += t * mu * (2 * vbar + 1) * math.exp(span) / (h.n * (1 - eta)) + mu
        else:
            if h.logit_hi > 700:
                return math.inf
            lmax = max(abs(h.logit_hi), abs(h.logit_lo))
            tol = (eta * h.n + (lmax + 4) * h.n * u) * math.exp(h.logit_hi) * vbar
            tol += (1 + eta) * t * mu * ((vbar + 1) * max(1.0, math.exp(h.logit_hi)) + vbar * math.exp(span)) + mu
    return 2 * tol if math.isfinite(tol) else math.inf


def vacuous(tol: float, h: History, normalised: bool) -> bool:
    """True when the tolerance cannot tell answers apart (any value of the right size would pass)."""
    if not math.isfinite(tol):
        return True
    if normalised:
        return h.v_max > 0 and tol >= h.v_max
    return h.v_max > 0 and tol >= h.n * math.exp(h.logit_hi) * h.v_max  # ≥ the largest possible |AV|
