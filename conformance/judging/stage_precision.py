"""Per-stage (mixed-precision) models: the a-priori tolerance of a FlashAttention-style kernel.

A single-format model (:mod:`attnspec.conformance.judging.precision_model`) charges every intermediate
the unit roundoff of one format, so a bf16 kernel that accumulates in float32 gets a bound ≈ n·u_bf16,
vacuous beyond a few hundred keys. Real kernels (FlashAttention-2/3, cuDNN, the SDPA kernels) use one
format per *stage*; :class:`StagePrecisionModel` names them and :func:`stage_softmax_tolerance` bounds
the error of every kernel that computes as declared. Derivation (each step "derived here"):
``docs/mixed-precision.md``. Summary for row i, column l (u_X: unit roundoff of stage X, λ_X its
smallest normal, η_X half its smallest subnormal, γ_k(u) = ku/(1 − ku)):

    P_i = max_j Σ_t |q_it k_jt|,  S_i = |s|·P_i,  Ŝ_i = S_i·(1 + ρ_in)²  (ρ_in = u_in if the case's
          inputs are not exact in the input format, else 0)
    Δ_i = γ_{d+4}(u_s)·Ŝ_i + [(1 + ρ_in)² − 1]·S_i + (input subnormals) + (logit underflow) + |Δs|·P_i
    W_i = 2(Ŝ_i + Δ_i)                                     (any exp argument, shifted or a rescale)
    log(1 + α_i) = Δ_i + 2γ_3(u_s)·W_i + (R + 1)·log1p(2c·u_s) + log1p(u_p) + r_σ·log1p(u_s)
                   + (R + n + 2)·log1p(u_a)                (relative error of each weight)
    β_i = α_i + n·η_w·(1 + α_i)·e^{Δ_i} / D_i^lo            (absolute errors of tiny stored weights)
    τ_il = ‖v̂_l‖·[2β_i + ((1 + u_a)²(1 + u_o) − 1)(1 + β_i)] / (1 − β_i)
           + ρ_in-terms + (2n + 4)λ_a + 2nλ_a‖v̂_l‖ + λ_o

with R the rescalings one weight undergoes (⌈n/B_c⌉ − 1 for key blocks of B_c, n when unknown), c the
exp accuracy in ulps of the logit format, η_w = (λ_s + η_p)/σ + λ_s the absolute error of one stored
weight (η_p → λ_p when the P format flushes subnormals), σ the per-tensor scale of the stored P
(r_σ = 3 roundings when σ ≠ 1), and D_i^lo ≥ 1 a certified lower bound of Σ_j exp(s_ij − max_j s_ij)
(float64, padded). τ = ∞ (vacuous, reported as not applicable) when β_i ≥ 1/2 or when τ_il ≥ 2‖v_l‖∞
(every answer in the convex hull of V would pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import ml_dtypes
import numpy as np

from attnspec.spec.validation import to_float64

# Formats a stage may use; each is a numpy dtype (ml_dtypes for bf16 and fp8).
FORMAT_NAMES = ("float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")
P_FORMATS = ("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")
_EVAL_SLACK = 1 + 2.0**-40  # the bound is evaluated in float64 (a few hundred roundings, each ≤ 2^-53)
# [S] numpy's float64 exp is accurate to a few ulp (≤ 1e-15 relative); 1e-12 is a wide margin.
_EXP64_SLACK = 1e-12


@dataclass(frozen=True)
class FormatInfo:
    """A binary floating-point format: unit roundoff u = 2^-(p) (p = mantissa bits + 1), smallest
    normal λ, smallest subnormal μ (η = μ/2 is the absolute error of rounding to nearest in the
    subnormal range), largest finite value."""

    name: str
    u: float
    smallest_normal: float
    smallest_subnormal: float
    max: float

    @property
    def half_subnormal(self) -> float:
        return self.smallest_subnormal / 2

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.name)


def format_info(name: str) -> FormatInfo:
    """:class:`FormatInfo` of ``name`` (one of :data:`FORMAT_NAMES`), from ``ml_dtypes.finfo``."""
    if name not in FORMAT_NAMES:
        raise ValueError(f"unknown format {name!r}; known: {', '.join(FORMAT_NAMES)}")
    fi = ml_dtypes.finfo(np.dtype(name))
    return FormatInfo(name, 2.0 ** -(int(fi.nmant) + 1), float(fi.tiny), float(fi.smallest_subnormal), float(fi.max))


def representable(x: np.ndarray, fmt: str) -> bool:
    """True when every entry of the float64 array ``x`` is exactly a finite value of ``fmt``."""
    with np.errstate(over="ignore", invalid="ignore"):
        back = np.asarray(x, dtype=np.float64).astype(fmt).astype(np.float64)
    return bool(np.all(np.isfinite(back)) and np.array_equal(back, x))


@dataclass(frozen=True)
class StagePrecisionModel:
    """How a FlashAttention-style kernel computes, one format per stage.

    ``inputs``       format the kernel reads Q, K, V in (a case whose entries are not exact in it is
                     rounded by the kernel: the model charges that rounding);
    ``logits``       format of S = s·QKᵀ (products and accumulation), the running max, the shifted
                     exp arguments, exp itself and the rescale factors;
    ``exp_ulps``     accuracy of exp in the logit format, in ulps (1 ulp ≤ 2u relative);
    ``p_format``     format the (unnormalised) weights P̃ = exp(S − m_running) ∈ (0, 1] are stored in
                     before P·V;
    ``p_scale``      σ: per-tensor scale of the stored P (fp8, as FA3/Transformer Engine): the kernel
                     stores fl_p(σ·P̃) and divides σ out of the accumulator; 1 = no scale;
    ``p_subnormals`` whether rounding to ``p_format`` keeps subnormals (False: flush to zero);
    ``accumulate``   format of the P·V accumulator O, the row sum ℓ, the rescalings and O/ℓ;
    ``output``       format the result is rounded to;
    ``block_keys``   B_c, keys per block (a weight is rescaled at most ⌈n/B_c⌉ − 1 times); None: n.

    The row sum ℓ may be accumulated from the stored (rounded) P or from the unrounded P̃ (FA2 does the
    latter): both are covered by the same bound (docs/mixed-precision.md, step 5).
    """

    inputs: str = "bfloat16"
    logits: str = "float32"
    exp_ulps: float = 2.0
    p_format: str = "bfloat16"
    p_scale: float = 1.0
    p_subnormals: bool = True
    accumulate: str = "float32"
    output: str = "bfloat16"
    block_keys: int | None = None

    def __post_init__(self) -> None:
        for name in ("inputs", "logits", "accumulate", "output"):
            value = getattr(self, name)
            if value not in FORMAT_NAMES:
                raise ValueError(f"stage model field {name!r} must be one of {', '.join(FORMAT_NAMES)}, got {value!r}")
        if self.p_format not in P_FORMATS:
            raise ValueError(f"stage model field 'p_format' must be one of {', '.join(P_FORMATS)}, got {self.p_format!r}")
        if self.logits not in ("float64", "float32") or self.accumulate not in ("float64", "float32"):
            raise ValueError("stage model fields 'logits' and 'accumulate' must be float32 or float64 (the bound "
                             "assumes the weights' relative errors stay far below 1/2 per operation)")
        for name in ("exp_ulps", "p_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"stage model field {name!r} must be a finite number, got {value!r}")
        if self.exp_ulps < 0:
            raise ValueError(f"stage model field 'exp_ulps' must be >= 0, got {self.exp_ulps!r}")
        if not self.p_scale > 0:
            raise ValueError(f"stage model field 'p_scale' must be > 0, got {self.p_scale!r}")
        if not isinstance(self.p_subnormals, bool):
            raise ValueError(f"stage model field 'p_subnormals' must be True or False, got {self.p_subnormals!r}")
        if self.block_keys is not None and (isinstance(self.block_keys, bool) or not isinstance(self.block_keys, int)
                                            or self.block_keys < 1):
            raise ValueError(f"stage model field 'block_keys' must be a positive integer or None, got {self.block_keys!r}")

    @property
    def fmt(self) -> str:
        """A one-line description (read where a single-format model's ``fmt`` is shown)."""
        scale = f" (scale {self.p_scale:g})" if self.p_scale != 1 else ""
        return (f"stage[{self.inputs} in, {self.logits} logits, P {self.p_format}{scale}, "
                f"{self.accumulate} acc, {self.output} out]")

    def rescales(self, n: int) -> int:
        """R: how many times one weight may be rescaled by the online softmax."""
        return n if self.block_keys is None else max(0, -(-n // self.block_keys) - 1)


STAGE_MODEL_FIELDS = ("inputs", "logits", "exp_ulps", "p_format", "p_scale", "p_subnormals", "accumulate",
                      "output", "block_keys")


def _gamma(k: int, u: float) -> float:
    ku = k * u
    return math.inf if ku >= 1 else ku / (1 - ku)


def _round_to(x: float, fmt: str) -> float:
    with np.errstate(over="ignore"):
        return float(np.asarray(x, dtype=np.float64).astype(fmt).astype(np.float64))


def scale_error(scale: Fraction, model: StagePrecisionModel) -> float:
    """|Δs|: the largest |s′ − s| over the scales s′ the kernel may compute with: float(s) (what it
    receives), rounded to the logit or the input format; computed exactly, rounded up. ∞ on overflow."""
    s = Fraction(scale)
    s64 = float(s)
    err = Fraction(0)
    for c in (s64, _round_to(s64, model.logits), _round_to(s64, model.inputs)):
        if not math.isfinite(c):
            return math.inf
        err = max(err, abs(Fraction(c) - s))
    f = float(err)
    return float(np.nextafter(f, np.inf)) if Fraction(f) < err else f


@dataclass
class RowQuantities:
    """Per-row inputs of the bound, from float64 (rounded outward): P_i, max_t |q_it|, a certified lower
    bound of D_i = Σ_j exp(s_ij − max_j s_ij), and max over k."""

    p_row: np.ndarray
    q_max: np.ndarray
    d_lo: np.ndarray
    k_max: float


def row_quantities(q: np.ndarray, k: np.ndarray, scale: Fraction, *, block: int = 2048) -> RowQuantities:
    """P_i = max_j Σ_t|q_it k_jt| and D_i^lo, in O(m·n·d) time and O(m·block) memory.

    D_i^lo (derived here): the float64 logits L̂_ij = fl(s₆₄·(q_i·k_j)) differ from s_ij by at most
    e_i = (d + 3)·2⁻⁵²·|s|P_i + |s₆₄ − s|·P_i + (d + 1)·2⁻¹⁰⁷⁴·max(1, |s|); so s_ij − max_j s_ij ≥
    L̂_ij − max_j L̂_ij − 2e_i, and Σ_j exp(L̂_ij − M̂_i − 2e_i), evaluated in float64 (exp within
    1e-12 relative, n additions of positive terms within (1 + 2⁻⁵²)^n), times (1 − 1e-12)(1 − (n + 2)2⁻⁵²)
    is ≤ D_i. The term j attaining M̂_i alone gives D_i^lo ≥ exp(−2e_i)(…) > 0.
    """
    m, d = q.shape
    n = k.shape[0]
    qa, ka = np.abs(q), np.abs(k)
    s64 = float(scale)
    ds = abs(Fraction(s64) - Fraction(scale))
    p_row = np.zeros(m)
    top = np.full(m, -np.inf)
    with np.errstate(over="ignore", invalid="ignore"):
        for c0 in range(0, n, block):
            p_row = np.maximum(p_row, (qa @ ka[c0:c0 + block].T).max(axis=1))
            top = np.maximum(top, (s64 * (q @ k[c0:c0 + block].T)).max(axis=1))
        p_row = p_row * (1 + (d + 2) * 2.0**-52)
        err = ((d + 3) * 2.0**-52 * abs(s64) * p_row + float(ds) * 1.0000001 * p_row
               + (d + 1) * 5e-324 * max(1.0, abs(s64)))
        total = np.zeros(m)
        for c0 in range(0, n, block):
            logits = s64 * (q @ k[c0:c0 + block].T)
            total += np.exp(logits - top[:, None] - 2 * err[:, None]).sum(axis=1)
        d_lo = total * (1 - _EXP64_SLACK) * (1 - (n + 2) * 2.0**-52)
        d_lo = np.where(np.isfinite(d_lo) & (d_lo > 0), d_lo, 0.0)
    return RowQuantities(p_row, qa.max(axis=1, initial=0.0), d_lo, float(ka.max(initial=0.0)))


def _inputs_rounded(inst: Any, model: StagePrecisionModel) -> bool:
    return not all(representable(to_float64(x), model.inputs) for x in (inst.q, inst.k, inst.v))


def stage_softmax_tolerance(inst: Any, model: StagePrecisionModel, rows: np.ndarray | None = None) -> np.ndarray:
    """Per-entry tolerance τ_il of a softmax-attention instance under a stage model (formula in the
    module docstring; derivation in docs/mixed-precision.md). ``rows``: the output rows (sorted 1-D
    int array; None = all); the result has shape (len(rows), d_v). O(|rows|·n·d) time, O(|rows|·block)
    memory. Entries are ∞ where the model is vacuous."""
    q = to_float64(inst.q)
    k = to_float64(inst.k)
    v = to_float64(inst.v)
    if rows is not None:
        q = q[np.asarray(rows, dtype=np.int64)]
    n, d = k.shape
    fs, fp, fa, fo, fi = (format_info(getattr(model, f)) for f in ("logits", "p_format", "accumulate", "output", "inputs"))
    u_s, u_a, u_o = fs.u, fa.u, fo.u
    rounded = _inputs_rounded(inst, model)
    u_in = fi.u if rounded else 0.0
    eta_in = fi.half_subnormal if rounded else 0.0
    s = abs(float(inst.scale)) * (1 + 2.0**-52)
    ds = scale_error(inst.scale, model)
    rq = row_quantities(q, k, inst.scale)
    col = np.abs(v).max(axis=0)
    col_hat = col * (1 + u_in) + eta_in  # ‖v̂_l‖∞: the values the kernel multiplies
    with np.errstate(over="ignore", invalid="ignore"):
        s_row = s * rq.p_row
        grow_in = (1 + u_in) ** 2
        s_hat = s_row * grow_in + s * d * eta_in * (rq.q_max + rq.k_max + eta_in)  # |ŝ| with rounded inputs
        gamma = _gamma(d + 4, u_s)
        root = math.sqrt(s)
        q_hat, k_hat = rq.q_max * (1 + u_in) + eta_in, rq.k_max * (1 + u_in) + eta_in
        magnifier = np.maximum.reduce([np.full_like(q_hat, s), q_hat, np.full_like(q_hat, k_hat), root * q_hat,
                                       np.full_like(q_hat, root * k_hat)]) * (1 + 2.0**-50)
        underflow = (1 + gamma) * fs.half_subnormal * (d * (1 + 2 * magnifier) + 2)
        scale_shift = np.where(ds == 0, 0.0, ds * rq.p_row * grow_in)
        delta = gamma * s_hat + (s_hat - s_row) + underflow + scale_shift
        w = 2 * (s_hat + delta)
        rescales = model.rescales(n)
        eps_exp = 2 * model.exp_ulps * u_s
        scaled = model.p_scale != 1
        log_growth = (delta + 2 * _gamma(3, u_s) * w + (rescales + 1) * math.log1p(eps_exp) + math.log1p(fp.u)
                      + (3 if scaled else 0) * math.log1p(u_s) + (rescales + n + 2) * math.log1p(u_a))
        alpha = np.expm1(log_growth)
        eta_p = fp.half_subnormal if model.p_subnormals else fp.smallest_normal
        eta_w = (fs.smallest_normal + eta_p) / model.p_scale + fs.smallest_normal
        beta = alpha + n * eta_w * (1 + alpha) * np.exp(delta) / rq.d_lo
        beta = np.where(np.isfinite(beta), beta, np.inf)
        ok = beta < 0.5
        b = np.where(ok, beta, 0.0)
        rel_out = (1 + u_a) ** 2 * (1 + u_o) - 1
        row_factor = np.where(ok, (2 * b + rel_out * (1 + b)) / (1 - b), np.inf)
        hull = ((1 + b) / (1 - b))[:, None]
        tol = row_factor[:, None] * col_hat[None, :] + (u_in * col[None, :] + eta_in) * hull
        tol = tol + (2 * n * fa.smallest_normal) * col_hat[None, :] + (2 * n + 4) * fa.smallest_normal + fo.smallest_normal
        tol = tol * _EVAL_SLACK
        tol = np.where(np.isfinite(tol), tol, np.inf)
        vacuous = (tol >= 2 * col[None, :]) & (col[None, :] > 0)
        tol = np.where(vacuous, np.inf, tol)
    return np.ascontiguousarray(tol)


def stage_overflow_reason(inst: Any, model: StagePrecisionModel) -> str | None:
    """Why some stage could overflow its format on ``inst`` (then no bound holds: not applicable), or
    None. Bounds of every intermediate (derived here): the inputs rounded to the input format; the
    products and logits in the logit format (≤ |s|·max(|q|,|k|), √|s|·max, P_i, S_i, the exp arguments
    ≤ W_i); the stored σ·P̃ ≤ σ(1 + 2c·u_s)(1 + u_s) in the P format; ℓ ≤ 1.5n and the scaled
    accumulator Σ_j σ·P̃_j|v_jl| ≤ 1.5σ·Σ_j|v_jl|·(1 + γ_{n+2}) in the accumulator format; the output
    ≤ 1.5‖v‖∞ in the output format."""
    fs, fp, fa, fo, fi = (format_info(getattr(model, f)) for f in ("logits", "p_format", "accumulate", "output", "inputs"))
    q, k, v = (np.abs(to_float64(x)) for x in (inst.q, inst.k, inst.v))
    pad = 1 + 2.0**-40
    with np.errstate(over="ignore", invalid="ignore"):
        x_max = max(float(a.max(initial=0.0)) for a in (q, k, v)) * (1 + fi.u)
        s = abs(float(inst.scale)) * (1 + 2.0**-52)
        qk_max = max(float(q.max(initial=0.0)), float(k.max(initial=0.0))) * (1 + fi.u) ** 2
        p_max = float((q @ k.T).max(initial=0.0)) * (1 + (inst.d + 2) * 2.0**-52) * (1 + fi.u) ** 2
        g = 1 + _gamma(inst.d + 4, fs.u)
        n = k.shape[0]
        checks = [
            (fi, "an input rounded to the input format", x_max),
            (fs, "s·q or s·k, √s·q or √s·k", max(s, math.sqrt(s)) * qk_max * pad),
            (fs, "q·kᵀ before scaling", p_max * g * pad),
            (fs, "the scaled logits s·q·kᵀ", s * p_max * g * pad),
            (fs, "a shifted exp argument", 2 * s * p_max * g * pad),
            (fp, "the stored σ·P̃", model.p_scale * (1 + 2 * model.exp_ulps * fs.u) * (1 + fs.u) * pad),
            (fa, "the row sum ℓ", 1.5 * n * pad),
            (fa, "the accumulator Σ_j σ·P̃_j·v_jl", 1.5 * model.p_scale * float(v.sum(axis=0).max(initial=0.0))
             * (1 + _gamma(n + 2, fa.u)) * pad),
            (fo, "the output", 1.5 * float(v.max(initial=0.0)) * pad),
        ]
    for info, what, value in checks:
        if not value <= info.max:
            return (f"{what} can reach {value:.3g} > {info.name} max {info.max:.3g}: "
                    f"the stage model {model.fmt} gives no bound")
    return None


def output_format_violation(output: Any, model: StagePrecisionModel) -> str | None:
    """None when every output entry is a value of the declared output format; otherwise what is wrong
    (a kernel that declares bf16 output and returns unrounded float32 values breaks its declaration)."""
    y = np.asarray(output)
    try:
        y64 = y.astype(np.float64)
    except (TypeError, ValueError):
        return None  # not numeric: the verdict engine reports it
    if representable(y64[np.isfinite(y64)], model.output):
        return None
    bad = np.argwhere(np.isfinite(y64) & (y64.astype(model.output).astype(np.float64) != y64))
    idx = [int(i) for i in bad[0]] if len(bad) else []
    return f"output entry {idx} = {float(y64[tuple(idx)])!r} is not a {model.output} value, as the declared stage model says"


def stage_model_from_mapping(value: Any) -> StagePrecisionModel:
    """A :class:`StagePrecisionModel` from a dict of its fields (``model: "stage"`` allowed); raises
    ValueError naming the first unknown or malformed field."""
    unknown = sorted(str(key) for key in value if key not in STAGE_MODEL_FIELDS and key != "model")
    if unknown:
        raise ValueError(f"unknown stage model field(s) {unknown}; known: {', '.join(STAGE_MODEL_FIELDS)}")
    spec = {key: val for key, val in value.items() if key != "model"}
    return StagePrecisionModel(**spec)


# ---------------------------------------------------------------------------------------------
# FA3's acceptance rule, for comparison with the derived bound (not a verdict)


def fa3_rule(out: np.ndarray, ref32: np.ndarray, ref_lowprec: np.ndarray, out_format: str, *, rtol: float = 2.0) -> dict[str, float | bool]:
    """What FlashAttention-3's tests would have said (their rule, restated here; tuned, not derived):
    pass when max|out − ref32| ≤ rtol·max|ref_lowprec − ref32| + atol, atol = 2·max|fl(fl(ref + 0.3) − 0.3)
    − ref| in the output format (ref: ref32 rounded to it). ``ref32``: a float32 reference computed
    from the same low-precision inputs; ``ref_lowprec``: the framework's low-precision reference."""
    ref32 = np.asarray(ref32, dtype=np.float64)
    err = float(np.abs(np.asarray(out, dtype=np.float64) - ref32).max(initial=0.0))
    base = float(np.abs(np.asarray(ref_lowprec, dtype=np.float64) - ref32).max(initial=0.0))
    dt = np.dtype(out_format)
    r = ref32.astype(dt)
    bumped = ((r.astype(np.float32) + np.float32(0.3)).astype(dt).astype(np.float32) - np.float32(0.3)).astype(dt)
    atol = 2 * float(np.abs(bumped.astype(np.float64) - r.astype(np.float64)).max(initial=0.0))
    return {"error": err, "lowprec_reference_error": base, "atol": atol, "limit": rtol * base + atol,
            "passes": err <= rtol * base + atol}


# ---------------------------------------------------------------------------------------------
# Low-precision cases


def low_precision_draws(strategy: Any, count: int, dtype: str) -> list:
    """``count`` softmax instances drawn (derandomized) from a float32 ``strategy``, their entries and
    scale rounded to ``dtype`` (bfloat16, fp8): hypothesis has no such float widths. Entries that
    overflow the format become 0 (:func:`cast_to`); the instance stays exact."""
    from attnspec.conformance.judging.case_common import cast_to, derandomized_draws
    from attnspec.spec.softmax_attention import make_instance

    out = []
    for inst in derandomized_draws(strategy, count):
        q, k, v = (cast_to(to_float64(x), dtype) for x in (inst.q, inst.k, inst.v))
        scale = _round_to(float(inst.scale), dtype)
        out.append(make_instance(q, k, v, scale=Fraction(scale if math.isfinite(scale) else 0.0)))
    return out
