"""Precision-model tolerances: a-priori forward-error bounds for floating-point attention backends.

The derivation is written out in ``docs/precision-model.md``; this module evaluates it. Summary for
softmax attention, entry (i, l), arithmetic with unit roundoff u, γ_k = k·u / (1 − k·u):

    S_i  = |s| · max_j Σ_t |q_it k_jt|                 (logit magnitude bound of row i)
    Δ_i  = γ_{d+4} · S_i                               (logit error, any dot-product order, scale rounding)
    W_i  = 2 (S_i + Δ_i)                               (max |argument| of any exp, shifted or not)
    α_i  = exp(Δ_i + 2u·W_i) · (1 + 2·c·u)^{R+1} · (1 + u)^{R+n+2} − 1
                                                      (relative perturbation of each weight, incl. sums)
    τ_il = ‖v_{:,l}‖∞ · [2α_i + 2u(1 + α_i)] / (1 − α_i)  +  2n·λ·‖v_{:,l}‖∞  +  (2n + 4)·λ

with c the exp accuracy in ulps, R the number of online-softmax rescalings a weight may undergo
(≤ ceil(n / block); n when unknown), λ the smallest positive normal of the format (underflow). The
bound is vacuous (∞) when α_i ≥ 1/2, i.e. when the format cannot say anything for this size. The last
term covers operations in the subnormal range (absolute errors, flush-to-zero included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from attnspec.spec.dynamic_attention import Op, UpdateK, UpdateV
from attnspec.spec.softmax_attention import SoftmaxAttentionInstance
from attnspec.spec.tensor_attention import TensorAttentionInstance, _abs_logit_row_max
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


def softmax_tolerance(inst: SoftmaxAttentionInstance, model: PrecisionModel) -> np.ndarray:
    """Per-entry tolerance τ_il for ``inst`` under ``model`` (formula in the module docstring)."""
    n, d = inst.n, inst.d
    u = model.u
    v = np.abs(to_float64(inst.v))
    col_norm = v.max(axis=0)  # ‖v_{:,l}‖∞, exact for float inputs
    if model.exact_rounded:
        # One rounding of the exact value: relative 2u, or absolute ≤ λ in the subnormal range.
        tol = 2 * u * col_norm + SMALLEST_NORMAL[model.fmt]
        return np.broadcast_to(tol * _EVAL_SLACK, inst.output_shape).copy()
    q = np.abs(to_float64(inst.q))
    k = np.abs(to_float64(inst.k))
    # S_i computed in float64 then inflated: the product of |q||k| entries is a float64 dot with
    # relative error ≤ γ_d(2^-53); the factor (1 + 2^-40) dominates it for every d < 2^12.
    s_row = abs(float(inst.scale)) * (q @ k.T).max(axis=1) * (1 + (d + 2) * 2.0**-52)
    rescales = n if model.max_rescales is None else int(model.max_rescales)
    delta = _gamma(d + 4, u) * s_row
    w = 2 * (s_row + delta)
    log_growth = (
        delta
        + 2 * u * w
        + (rescales + 1) * math.log1p(2 * model.exp_ulps * u)
        + (rescales + n + 2) * math.log1p(u)
    )
    alpha = np.expm1(log_growth)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        row_factor = np.where(alpha < 0.5, (2 * alpha + 2 * u * (1 + alpha)) / (1 - alpha), np.inf)
    lam = SMALLEST_NORMAL[model.fmt]
    # Underflowing weights (relative to ‖v‖) and operations in the subnormal range, where rounding
    # (or flush-to-zero) errors are absolute, ≤ λ per operation on an output entry (n products,
    # n − 1 additions, division and cast).
    tol = (row_factor[:, None] + 2 * n * lam) * col_norm[None, :] + (2 * n + 4) * lam
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


def tensor_tolerance(inst: TensorAttentionInstance, model: PrecisionModel) -> np.ndarray:
    """Per-entry precision-model tolerance τ_il (derivation: docs/tensor-attention.md).

    With N = n^{k−1} key tuples, S_i = |s|·max_J Σ_t |q_it Π_m K_m[j_m,t]|, u the unit roundoff:

        Δ_i = γ_{d+k+2} S_i,   W_i = 2(S_i + Δ_i)
        α_i = exp(Δ_i + 2u W_i)·(1 + 2cu)^{R+1}·(1 + u)^{R+N+k} − 1
        τ_il = ‖V⊘[:, l]‖∞ ([2α_i + 2u(1 + α_i)]/(1 − α_i) + 2Nλ) + ((k+1)N + 4)λ   (∞ if α_i ≥ 1/2)

    k = 2 reproduces the softmax model exactly. R = rescalings (N when unknown), c = exp ulps.
    """
    d, k = inst.d, inst.order
    big_n = inst.num_tuples
    u = model.u
    lam = SMALLEST_NORMAL[model.fmt]
    col_norm = value_column_norms(inst)
    if model.exact_rounded:
        tol = 2 * u * col_norm + lam
        return np.broadcast_to(tol * _EVAL_SLACK, inst.output_shape).copy()
    _, _, mag = _abs_logit_row_max(inst)
    # mag is a float64 evaluation of k-fold products summed over d terms: inflate by its own γ bound.
    s_row = mag * (1 + (d + k + 2) * 2.0**-52)
    rescales = big_n if model.max_rescales is None else int(model.max_rescales)
    delta = _gamma(d + k + 2, u) * s_row
    w = 2 * (s_row + delta)
    log_growth = (delta + 2 * u * w + (rescales + 1) * math.log1p(2 * model.exp_ulps * u)
                  + (rescales + big_n + k) * math.log1p(u))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        alpha = np.expm1(log_growth)
        row_factor = np.where(alpha < 0.5, (2 * alpha + 2 * u * (1 + alpha)) / (1 - alpha), np.inf)
    tol = (row_factor[:, None] + 2 * big_n * lam) * col_norm[None, :] + ((k + 1) * big_n + 4) * lam
    return tol * _EVAL_SLACK


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
    q_l1: float = 0.0
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
        self.q_l1 = float(np.abs(q).sum(axis=1).max())
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


def dynamic_tolerance(h: History, normalised: bool) -> float:
    """Float64 forward-error tolerance for one query (docs/dynamic-attention.md, "Tolerance").

    With U = U_K + U_V updates since Init, T = n + 3U + 2 terms at most in any maintained sum,
        Δℓ  = |s|·‖q‖₁·K̄·(d + 2 + 2U_K)·u                  (logit error, K rounding included)
        ε_w = (1 + 4u)·e^{Δℓ} − 1 + 2u·(U + 1)             (weight error, rescalings included)
        η   = (γ_T + ε_w + (U_V + 1)·u)·(T/n)·e^{ℓ_hi − ℓ_lo}
    ODAMV: τ = 2ηV̄/(1 − η) + 2uV̄  (∞ when η ≥ 1/2);   OAMV: τ = (η·n + (|ℓ|max + 4)·n·u)·e^{ℓ_hi}·V̄.
    The result is doubled for the float evaluation of this formula itself.
    """
    u = U64
    big_u = h.updates_k + h.updates_v
    t = h.n + 3 * big_u + 2
    gamma_t = t * u / (1 - t * u)
    dl = abs(h.scale) * h.q_l1 * h.k_max * (h.d + 2 + 2 * h.updates_k) * u
    eps_w = (1 + 4 * u) * math.exp(dl) - 1 + 2 * u * (big_u + 1)
    span = h.logit_hi - h.logit_lo
    if span > 700:
        return math.inf
    eta = (gamma_t + eps_w + (h.updates_v + 1) * u) * (t / h.n) * math.exp(span)
    vbar = h.v_max
    if normalised:
        if eta >= 0.5:
            return math.inf
        tol = 2 * eta * vbar / (1 - eta) + 2 * u * vbar
    else:
        if h.logit_hi > 700:
            return math.inf
        lmax = max(abs(h.logit_hi), abs(h.logit_lo))
        tol = (eta * h.n + (lmax + 4) * h.n * u) * math.exp(h.logit_hi) * vbar
    return 2 * tol


def vacuous(tol: float, h: History, normalised: bool) -> bool:
    """True when the tolerance cannot tell answers apart (any value of the right size would pass)."""
    if not math.isfinite(tol):
        return True
    if normalised:
        return h.v_max > 0 and tol >= h.v_max
    return h.v_max > 0 and tol >= h.n * math.exp(h.logit_hi) * h.v_max  # ≥ the largest possible |AV|
