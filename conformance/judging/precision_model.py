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
from dataclasses import dataclass

import numpy as np

from attnspec.spec.softmax_attention import SoftmaxAttentionInstance
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
