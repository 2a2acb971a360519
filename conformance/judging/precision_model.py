"""Precision-model tolerances: a-priori forward-error bounds for floating-point attention backends.

The derivation is written out in ``docs/precision-model.md``; this module evaluates it. Summary for
softmax attention, entry (i, l), arithmetic with unit roundoff u, γ_k = k·u / (1 − k·u):

    P_i  = max_j Σ_t |q_it k_jt|,  S_i = |s|·P_i        (logit magnitude bound of row i)
    Δ_i  = γ_{d+4}·S_i + (1 + γ_{d+4})·λu·(d(1 + 2R_i) + 2) + |Δs|·P_i
                                                      (logit error: any product order and grouping, gradual
                                                      underflow of products magnified by a factor ≤ R_i,
                                                      and the rounding Δs of a non-float scale)
    W_i  = 2 (S_i + Δ_i)                               (max |argument| of any exp, shifted or not)
    α_i  = exp(Δ_i + 2u·W_i) · (1 + 2·c·u)^{R+1} · (1 + u)^{R+n+2} − 1
                                                      (relative perturbation of each weight, incl. sums)
    τ_il = ‖v_{:,l}‖∞ · [2α_i + 2u(1 + α_i)] / (1 − α_i)  +  2n·λ·‖v_{:,l}‖∞  +  (2n + 4)·λ

with c the exp accuracy in ulps, R the number of online-softmax rescalings a weight may undergo
(≤ ceil(n / block); n when unknown), λ the smallest positive normal of the format (underflow), λu half
its smallest subnormal, R_i = max(|s|, max_t|q_it|, max|k|, √|s|·max_t|q_it|, √|s|·max|k|) the largest
factor a rounded partial product of one logit term can still be multiplied by. The bound is vacuous (∞)
when α_i ≥ 1/2, i.e. when the format cannot say anything for this size. The last term covers operations
in the subnormal range (absolute errors, flush-to-zero included).

Where an intermediate of some evaluation order could overflow the format, no bound holds:
:func:`overflow_reason` / :func:`tensor_overflow_reason` name it, and the case is not applicable.
Derivations (each marked "derived here"): ``docs/precision-model.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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
# Safety factor for evaluating the bound itself in float64 (a few hundred roundings, each ≤ 2^-53).
_EVAL_SLACK = 1 + 2.0**-40


@dataclass(frozen=True)
class PrecisionModel:
    """How a backend computes: its arithmetic format, exp accuracy and online-softmax rescalings.

    ``fmt``            arithmetic format of every intermediate (the widest error applies);
    ``exp_ulps``       accuracy of exp in ulps (1 ulp ≤ 2u relative); libm/CUDA document 1–2 ulp;
    ``max_rescales``   bound on the rescalings of one weight in an online softmax; None means n
                       (the worst case: blocks of one key).
    ``exact_rounded``  the backend computes the exact value and rounds once to ``fmt`` (the reference
                       backend): the bound is then 2u·‖v‖∞.
    """

    fmt: str = "float64"
    exp_ulps: float = 2.0
    max_rescales: int | None = None
    exact_rounded: bool = False

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


def _softmax_magnifier(inst: SoftmaxAttentionInstance) -> np.ndarray:
    """R_i = max(|s|, max_t|q_it|, max|k|, √|s|·max_t|q_it|, √|s|·max|k|): what a rounded partial
    product of a term s·q_it·k_jt can still be multiplied by, in any order ((s·q)·k, s·(q·k), q·(s·k),
    the score scaled after the sum, or (√s·q)·(√s·k))."""
    s = abs(float(inst.scale)) * (1 + 2.0**-52)
    root = math.sqrt(s) * (1 + 2.0**-52)
    q_max = np.abs(to_float64(inst.q)).max(axis=1)
    k_max = float(np.abs(to_float64(inst.k)).max())
    return np.maximum.reduce([np.full_like(q_max, s), q_max, np.full_like(q_max, k_max), root * q_max,
                              np.full_like(q_max, root * k_max)]) * (1 + 2.0**-52)


def _unscaled_logit_magnitude(inst: SoftmaxAttentionInstance) -> np.ndarray:
    """P_i = max_j Σ_t |q_it k_jt|, from float64 and rounded up by its γ_d bound."""
    q = np.abs(to_float64(inst.q))
    k = np.abs(to_float64(inst.k))
    with np.errstate(over="ignore"):
        return (q @ k.T).max(axis=1) * (1 + (inst.d + 2) * 2.0**-52)


def softmax_tolerance(inst: SoftmaxAttentionInstance, model: PrecisionModel) -> np.ndarray:
    """Per-entry tolerance τ_il for ``inst`` under ``model`` (formula in the module docstring).

    ``exact_rounded``: the exact answer of the instance with the scale the backend received, rounded
    once: τ = 2u‖v_{:,l}‖∞ + λ + |Δs|·P_i·‖v_{:,l}‖∞, since |∂o_il/∂s| = |Cov_p(L_i·, v_·l)| ≤
    ‖v_{:,l}‖∞·(max_j L_ij − min_j L_ij)/2 ≤ P_i‖v_{:,l}‖∞ (L: unscaled logits; derived here).
    """
    n, d = inst.n, inst.d
    u = model.u
    lam = SMALLEST_NORMAL[model.fmt]
    v = np.abs(to_float64(inst.v))
    col_norm = v.max(axis=0)  # ‖v_{:,l}‖∞, exact for float inputs
    p_row = _unscaled_logit_magnitude(inst)
    ds = scale_rounding_error(inst.scale, _case_dtype(inst.q), model.fmt)
    with np.errstate(over="ignore", invalid="ignore"):
        scale_shift = np.where(ds == 0, 0.0, ds * p_row)  # |Δs|·P_i: logit change from the scale's rounding
    if model.exact_rounded:
        # One rounding of the exact value: relative 2u, or absolute ≤ λ in the subnormal range.
        with np.errstate(over="ignore", invalid="ignore"):
            tol = (2 * u + scale_shift[:, None]) * col_norm[None, :] + lam
        return np.broadcast_to(tol * _EVAL_SLACK, inst.output_shape).copy()
    # S_i computed in float64 then inflated: the product of |q||k| entries is a float64 dot with
    # relative error ≤ γ_d(2^-53); the factor (1 + 2^-40) dominates it for every d < 2^12.
    with np.errstate(over="ignore", invalid="ignore"):
        s_row = abs(float(inst.scale)) * (1 + 2.0**-52) * p_row
    rescales = n if model.max_rescales is None else int(model.max_rescales)
    gamma = _gamma(d + 4, u)
    delta = gamma * s_row + _underflow_logit_error(_softmax_magnifier(inst), 2, d, model.fmt, gamma) + scale_shift
    return _weights_to_tolerance(delta, s_row, n, n, 2, u, lam, model, rescales, col_norm)


def _weights_to_tolerance(delta, s_row, n_terms, n_sum, extra_roundings, u, lam, model, rescales, col_norm,
                          abs_ops: float | None = None) -> np.ndarray:
    """Steps 2–6 of the derivation from the logit error Δ_i and magnitude S_i (shared by softmax and
    tensor attention): α_i, the normalisation lemma and the underflow terms."""
    with np.errstate(over="ignore", invalid="ignore"):
        w = 2 * (s_row + delta)
        log_growth = (
            delta
            + 2 * u * w
            + (rescales + 1) * math.log1p(2 * model.exp_ulps * u)
            + (rescales + n_sum + extra_roundings) * math.log1p(u)
        )
        alpha = np.expm1(log_growth)
        row_factor = np.where(alpha < 0.5, (2 * alpha + 2 * u * (1 + alpha)) / (1 - alpha), np.inf)
    # Underflowing weights (relative to ‖v‖) and operations in the subnormal range, where rounding
    # (or flush-to-zero) errors are absolute, ≤ λ per operation on an output entry (n products,
    # n − 1 additions, division and cast).
    ops = (2 * n_terms + 4) if abs_ops is None else abs_ops
    tol = (row_factor[:, None] + 2 * n_terms * lam) * col_norm[None, :] + ops * lam
    return tol * _EVAL_SLACK


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


def _tensor_unscaled_magnitude(inst: TensorAttentionInstance, block: int = 4096) -> np.ndarray:
    """P_i = max_J Σ_t |q_it Π_m K_m[j_m, t]| from float64, rounded up by its γ_{d+k} bound."""
    qa = np.abs(to_float64(inst.q))
    keys = [np.abs(to_float64(x)) for x in inst.keys]
    out = np.zeros(inst.n)
    with np.errstate(over="ignore", invalid="ignore"):
        for t0, t1 in key_tuple_blocks(inst.n, len(keys), block):
            out = np.maximum(out, (qa @ column_kronecker(keys, (t0, t1)).T).max(axis=1))
        return out * (1 + (inst.d + inst.order + 2) * 2.0**-52)


def _tensor_factor_maxima(inst: TensorAttentionInstance) -> list[np.ndarray]:
    """Per-row maxima of the k + 1 factors of one logit term: |s|, |q_it|, |K_1[j, t]|, …"""
    q_max = np.abs(to_float64(inst.q)).max(axis=1)
    full = lambda x: np.full_like(q_max, x)  # noqa: E731
    return ([full(abs(float(inst.scale)) * (1 + 2.0**-52)), q_max]
            + [full(float(np.abs(to_float64(k)).max())) for k in inst.keys])


def tensor_tolerance(inst: TensorAttentionInstance, model: PrecisionModel) -> np.ndarray:
    """Per-entry precision-model tolerance τ_il (derivation: docs/tensor-attention.md and, for the
    underflow and scale terms, docs/precision-model.md).

    With N = n^{k−1} key tuples, P_i = max_J Σ_t |q_it Π_m K_m[j_m,t]|, S_i = |s|·P_i, u the unit
    roundoff, R_i the largest product of at most k − 1 of the factor maxima (|s|, max|q_i|, max|K_m|):

        Δ_i = γ_{d+k+2} S_i + (1 + γ)·λu·(d(1 + (k−1)R_i) + 2) + |Δs|·P_i,   W_i = 2(S_i + Δ_i)
        α_i = exp(Δ_i + 2u W_i)·(1 + 2cu)^{R+1}·(1 + u)^{R+N+k} − 1
        τ_il = ‖V⊘[:, l]‖∞ ([2α_i + 2u(1 + α_i)]/(1 − α_i) + 2Nλ) + ((k+1)N + 4)λ   (∞ if α_i ≥ 1/2)

    k = 2 reproduces the softmax model (up to R_i's √s terms). R = rescalings (N when unknown), c = exp
    ulps. ``exact_rounded``: 2u‖V⊘[:, l]‖∞ + λ + |Δs|·P_i·‖V⊘[:, l]‖∞ (the scale sensitivity bound).
    """
    d, k = inst.d, inst.order
    big_n = inst.num_tuples
    u = model.u
    lam = SMALLEST_NORMAL[model.fmt]
    col_norm = value_column_norms(inst)
    p_row = _tensor_unscaled_magnitude(inst)
    ds = scale_rounding_error(inst.scale, _case_dtype(inst.q), model.fmt)
    with np.errstate(over="ignore", invalid="ignore"):
        scale_shift = np.where(ds == 0, 0.0, ds * p_row)
        if model.exact_rounded:
            tol = (2 * u + scale_shift[:, None]) * col_norm[None, :] + lam
            return np.broadcast_to(tol * _EVAL_SLACK, inst.output_shape).copy()
        s_row = abs(float(inst.scale)) * (1 + 2.0**-52) * p_row
    rescales = big_n if model.max_rescales is None else int(model.max_rescales)
    gamma = _gamma(d + k + 2, u)
    magnifier = _product_magnifier(_tensor_factor_maxima(inst))
    delta = gamma * s_row + _underflow_logit_error(magnifier, k - 1, d, model.fmt, gamma) + scale_shift
    return _weights_to_tolerance(delta, s_row, big_n, big_n, k, u, lam, model, rescales, col_norm,
                                 abs_ops=(k + 1) * big_n + 4)


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


def overflow_reason(inst: SoftmaxAttentionInstance, model: PrecisionModel) -> str | None:
    """Why some evaluation order the softmax precision model allows could overflow ``model.fmt`` on
    ``inst`` (then no tolerance holds and the case is not applicable), or None.

    Bounds of every intermediate (derived here): products of two of the factors |s|, |q_it|, |k_jt|
    (or √|s| with one of them), the unscaled scores Σ_t|q_it k_jt| ≤ P_i and the scaled ones ≤ S_i
    (partial sums included), exp arguments after the shift ≤ W_i = 2(S_i + Δ_i), the weight sums
    ≤ n(1 + α) and the weighted sums Σ_j ã_j|v_jl| ≤ (1 + α)Σ_j|v_jl| (α ≤ 1/2 where the bound is
    finite). The ``exact_rounded`` model only needs its output, a convex combination of V, to fit.
    """
    if model.exact_rounded:
        return None
    fmt, u = model.fmt, model.u
    q = np.abs(to_float64(inst.q))
    k = np.abs(to_float64(inst.k))
    s = abs(float(inst.scale)) * (1 + 2.0**-52)
    root = math.sqrt(s)
    with np.errstate(over="ignore", invalid="ignore"):
        p_row = float(_unscaled_logit_magnitude(inst).max(initial=0.0))
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


def tensor_overflow_reason(inst: TensorAttentionInstance, model: PrecisionModel) -> str | None:
    """The tensor-attention version of :func:`overflow_reason` (derived here): any product of a subset
    of the k + 1 factors of a logit term (bounded by the product of per-column maxima), the unscaled and
    scaled scores, the shifted exp arguments, the weight sum over N = n^{k−1} tuples and the weighted
    sums, whose partial sums over a subset of the value factors are ≤ (1 + α)·Π_m max(1, Σ_j|V_m[j,l]|)."""
    if model.exact_rounded:
        return None
    fmt, u = model.fmt, model.u
    s = abs(float(inst.scale)) * (1 + 2.0**-52)
    cols = [np.abs(to_float64(inst.q))] + [np.abs(to_float64(x)).max(axis=0)[None, :] for x in inst.keys]
    with np.errstate(over="ignore", invalid="ignore"):
        worst_product = 0.0
        for mask in range(1, 2 ** len(cols)):
            members = [c for b, c in enumerate(cols) if mask >> b & 1]
            prod = np.ones((inst.n, inst.d))
            for c in members:
                prod = prod * c
            worst_product = max(worst_product, float(prod.max()) * s * (1 + 2.0**-50),
                                float(prod.max()) * (1 + 2.0**-50) if len(members) > 1 else 0.0)
        p_row = float(_tensor_unscaled_magnitude(inst).max(initial=0.0))
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


U64 = 2.0**-53


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
