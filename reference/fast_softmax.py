"""Fast certified softmax attention: rigorous float64 bounds on numpy (BLAS) or CuPy (cuBLAS).

:func:`enclose_fast` returns a :class:`~attnspec.reference.enclosure.BoundsEnclosure` whose certificate
rests on IEEE-754 binary64 round-to-nearest with gradual underflow plus one stated assumption on the
BLAS (each GEMM entry is a float64 sum of float64 products/FMAs in some order: no Strassen, no reduced
or emulated precision). Work O(|rows|·n·d), extra memory O(n·(d + d_v) + block²), never n².

Method (derived here; full analysis in docs/fast-engine.md). For an output row i, key j, value column l:

1. Scale: the true scale s lies in [s_lo, s_hi]; s̃ = fl((s_lo + s_hi)/2), s_rad ≥ |s − s̃|,
   q'_i = fl(s̃·q_i).
2. Shift m_i (any float: it cancels in D⁻¹A). m_i = 0 when Λ_i ≤ 300, Λ_i an upper bound of
   max_j |q'_i·k_j|; otherwise (and always when a ``logit_offset`` is given) m_i = the float row
   maximum of a first GEMM pass.
3. Logits: x̃_ij = fl(fl(q'_i·k_j) − m_i) by BLAS and one subtraction (+ fl(· + offset_ij)). With
   P_i ≥ max_j |q_i|·|k_j| (min of Cauchy–Schwarz ‖q_i‖₂·max‖k_j‖₂ and Hölder Σ_t|q_it|·max_j|k_jt|,
   computed upwards):

       |x̃_ij − x_ij| ≤ r_i = γ_{d+1}((1+u)|s̃|P_i + ηK₁/2) + (u|s̃| + s_rad)P_i + ηK₁ + 2(d+1)η
                              + u(Λ_i + |m_i| + 1)·[m_i ≠ 0]
                              [+ u(Λ_i + |m_i| + OFF_i + 2) with offsets],  K₁ ≥ max_j ‖k_j‖₁.

   Rows with r_i ≥ 1/2 (or any non-finite quantity) are left unbounded (±∞).
4. Weights w̃_ij = exp_inplace(x̃_ij) (reference/fast_float64.py): |w̃ − e^{x̃}| ≤ ε·e^{x̃} + τ₀, so the
   true weight w = e^{x} satisfies |w − w̃| ≤ ρ_i·w̃ + τ with ρ_i = (r_i/(1 − r_i) + ε)/(1 − ε)
   (e^r ≤ 1/(1 − r)) and τ = 2⁻¹⁰²¹ ≥ τ₀e^{r}/(1 − ε).
5. One BLAS product per key block with [V | |V| | 1], accumulated over key blocks of size C: the
   numerator Ñ, the absolute numerator Ã and the denominator D̃. Every entry is a dot product of
   length n along a summation tree with at most T = C + ⌈n/C⌉ roundings per path, so (lemma of
   fast_float64.dot_error_bound) with g = γ_T: A ≤ (Ã + nη)/(1 − g), |Ñ − N| ≤ g·A + nη,
   D ≤ (D̃ + nη)/(1 − g), |D̃ − D| ≤ g·D + nη (N, A, D: the exact sums of the computed weights).
   The values are first centred (``fast_softmax_bounds``): ṽ = fl(v − c), c the column mid-range, so
   A and the error terms below scale with the spread |v − c|; Att(V) = Att(V − c) + c exactly, and the
   rounding of ṽ joins as a relative value error ν = u/(1 − u).
6. Output õ = fl(Ñ/D̃) and, since o − õ = Σ_j w_j(v_j − õ)/Σ_j w_j,

       |o − õ| ≤ [g·A + nη + |õ|(g·D + nη) + D̃(2u|õ| + η) + ρ(A + |õ|D) + nτ(‖v‖∞ + |õ|)] / D_lo,
       D_lo = D̃ − (g·D + nη) − ρ·D̃ − nτ  (a lower bound of Σ_j w_j, must be > 0),

   all evaluated with directed (nextafter) operations; finally intersected with the convex hull
   [min_j v_jl, max_j v_jl], which always contains the output.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from fractions import Fraction
from types import ModuleType
from typing import Any, Callable, Iterator

import numpy as np

from attnspec.reference import fast_float64 as ff
from attnspec.reference.enclosure import BoundsEnclosure
from attnspec.spec.softmax_attention import SoftmaxAttentionInstance
from attnspec.spec.validation import SpecError

ROW_BLOCK = 256  # 256×512 blocks: BLAS efficient, 1 MB exp buffers (measured best of 64…512 rows)
KEY_BLOCK = 512
SHIFT_FREE_LOGIT = 300.0  # |x̃| ≤ 300.5 keeps every weight and every sum of n ≤ 2^60 weights finite
R_CAP = 0.5  # rows whose logit error bound reaches this are left unbounded

BLAS_ASSUMPTION = ("BLAS/cuBLAS dgemm computes every entry as a float64 sum of float64 products (or FMAs) in "
                   "some order, each operation rounded to nearest (no Strassen/Winograd, no reduced-precision "
                   "or emulated FP64)")
UNDERFLOW_ASSUMPTION = "gradual underflow (no flush-to-zero, no denormals-are-zero)"
LIBM_ASSUMPTION = f"trust_libm_exp: the array library's exp is within {ff.LIBM_EXP_REL_ERR:.3g} relative error (2 ulp)"

KeyBlocks = Callable[[int, int], tuple[Any, Any]]


def _native(xp: ModuleType | None, *arrays: Any) -> ModuleType:
    if xp is not None:
        name = getattr(xp, "__name__", "")
        if name.startswith("array_api_compat."):
            name = name.split(".", 1)[1]
        if name == "cupy":
            import cupy

            return cupy
        return np
    from attnspec.accelerated.array_namespace import native_module

    for a in arrays:
        mod = native_module(a)
        if mod is not None:
            return mod
    return np


def gpu_math_modes(xp: ModuleType) -> tuple[str, ...]:
    """On CuPy: pin cuBLAS to pedantic math (no TF32, no FP64 emulation) and return what was pinned;
    on numpy: nothing. Refuses an environment that asks cuBLAS for eager FP64 emulation."""
    if getattr(xp, "__name__", "") != "cupy":
        return ()
    import cupy

    if os.environ.get("CUBLAS_EMULATION_STRATEGY", "").lower() == "eager":
        raise RuntimeError("CUBLAS_EMULATION_STRATEGY=eager would emulate FP64 GEMMs: unset it for certified bounds")
    os.environ.setdefault("CUPY_TF32", "0")
    handle = cupy.cuda.device.get_cublas_handle()
    from cupy_backends.cuda.libs import cublas

    pedantic = getattr(cublas, "CUBLAS_PEDANTIC_MATH", 2)
    cublas.setMathMode(handle, pedantic)
    return (f"cuBLAS math mode CUBLAS_PEDANTIC_MATH ({pedantic}) on the current handle", "CUPY_TF32=0",
            "CUBLAS_EMULATION_STRATEGY not 'eager'")


def _row_norm_bounds(xp: ModuleType, a: Any) -> tuple[Any, Any]:
    """Per row of a (float64): upper bounds of ‖a_i‖₂ and ‖a_i‖₁ (directed)."""
    d = a.shape[1]
    aa = xp.abs(a)
    sq = ff.mul_up(xp, aa, aa)
    l2 = ff.sqrt_up(xp, ff.sum_nonneg_up(xp, xp.sum(sq, axis=1), d))
    l1 = ff.sum_nonneg_up(xp, xp.sum(aa, axis=1), d)
    return l2, l1


def logit_error_bounds(xp: ModuleType, q: Any, k_l2max: float, k_l1max: float, k_colmax: Any,
                       s_abs: float, s_rad: float, d: int) -> tuple[Any, Any]:
    """(P, Λ) per query row: P_i ≥ max_j Σ_t |q_it||k_jt| (min of Cauchy–Schwarz and Hölder bounds) and
    Λ_i ≥ max_j |fl(s̃ q_i)·k_j| = (1+u)|s̃|P_i + ηK₁/2, from key-side bounds given as floats."""
    q_l2, _ = _row_norm_bounds(xp, q)
    cs = ff.mul_up(xp, q_l2, k_l2max)
    hol = ff.sum_nonneg_up(xp, xp.abs(q) @ k_colmax, d)
    p = xp.minimum(cs, hol)
    if s_abs == 0 and s_rad == 0:
        p = xp.zeros_like(p)  # the logits are exactly 0 whatever the inputs
    lam = ff.add_up(xp, ff.mul_up(xp, p, ff.mul_up(xp, s_abs, 1 + ff.U)), ff.mul_up(xp, 0.5 * ff.ETA, k_l1max))
    return p, lam


def _blocks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for a in range(0, total, size):
        yield a, min(a + size, total)


def softmax_core(q: Any, n_keys: int, d: int, dv: int, key_blocks: KeyBlocks, *, key_bounds: dict[str, Any],
                 scale_lo: float, scale_hi: float, logit_offset: Callable | None = None, xp: ModuleType = np,
                 row_block: int = ROW_BLOCK, key_block: int = KEY_BLOCK, trust_libm_exp: bool = False,
                 extra_logit_err: Any = None, value_rel_err: float = 0.0,
                 value_abs_err: float = 0.0) -> tuple[Any, Any]:
    """The blocked engine shared by softmax and tensor attention (see the module docstring).

    ``key_blocks(c0, c1)`` returns (k_aug, v_aug) for keys [c0, c1): k_aug = [k | 1] ((c1−c0)×(d+1)) and
    v_aug = [v | |v| | 1] ((c1−c0)×(2dv+1)), float64 on ``xp``. ``key_bounds``: floats ``l2max`` ≥
    max_j‖k_j‖₂, ``l1max`` ≥ max_j‖k_j‖₁, array ``colmax`` ≥ max_j|k_jt|, arrays ``vmin``/``vmax`` (per
    column, exact) and ``vabsmax``. ``extra_logit_err`` (per row, optional) is added to r_i: the tensor
    engine's rounding of key tuples. ``value_rel_err`` ν, ``value_abs_err`` e_v: the exact values satisfy
    |v − ṽ| ≤ ν|ṽ| + e_v for the ṽ in v_aug (tensor value tuples); derived here: Σ_j w_j|v_j − ṽ_j| ≤
    ν((1+ρ)A + nτ‖ṽ‖∞) + e_v((1+ρ)D + nτ) joins the numerator of the error. ``key_bounds`` vmin/vmax
    must then bound the *exact* values.
    Returns (lo, hi) of shape (m, dv) on ``xp``.
    """
    m = q.shape[0]
    u, eta = ff.U, ff.ETA
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        s_mid = scale_lo / 2 + scale_hi / 2
        s_rad = max(float(np.nextafter(scale_hi - s_mid, np.inf)), float(np.nextafter(s_mid - scale_lo, np.inf)), 0.0)
        if scale_lo == scale_hi:
            s_mid, s_rad = scale_lo, 0.0
        s_abs = abs(s_mid)
        qp = s_mid * q  # q' = fl(s̃ q)
        p, lam = logit_error_bounds(xp, q, key_bounds["l2max"], key_bounds["l1max"], key_bounds["colmax"], s_abs, s_rad, d)
        shift = xp.zeros(m)
        off_max = xp.zeros(m)
        two_pass = (lam > SHIFT_FREE_LOGIT) if logit_offset is None else xp.ones(m, dtype=bool)
        two_pass &= xp.isfinite(lam) & (lam <= 1e300)
        idx = xp.nonzero(two_pass)[0]
        if idx.size:
            with _deterministic_blas(xp):
                shift[idx], off_max[idx] = _row_max_pass(xp, qp[idx], idx, n_keys, key_blocks, logit_offset, row_block, key_block)
        all_masked = shift == -xp.inf
        shift = xp.where(xp.isfinite(shift), shift, 0.0)
        ms = xp.abs(shift)
        g1 = ff.gamma_up(d + 1)
        k1 = key_bounds["l1max"]
        # The shift is subtracted after the GEMM (x̃ = fl(fl(q'·k) − m)), not folded into it: the
        # subtraction costs u·|fl(q'·k) − m| ≤ u(Λ + |m| + 1) (|fl(q'·k)| ≤ Λ + r ≤ Λ + ½), where a
        # GEMM column −m would cost γ_{d+1}·|m|, about d times more on rows with large logits.
        r = ff.mul_up(xp, g1, ff.add_up(xp, ff.mul_up(xp, ff.mul_up(xp, s_abs, 1 + u), p), 0.5 * eta * k1))
        r = ff.add_up(xp, r, ff.mul_up(xp, ff.add_up(xp, u * s_abs, s_rad), p))
        r = ff.add_up(xp, r, ff.add_up(xp, eta * k1, 2 * (d + 1) * eta))
        r = ff.add_up(xp, r, xp.where(ms > 0, ff.mul_up(xp, u, ff.add_up(xp, ff.add_up(xp, lam, ms), 1.0)), 0.0))
        if logit_offset is not None:
            r = ff.add_up(xp, r, ff.mul_up(xp, u, ff.add_up(xp, ff.add_up(xp, lam, ms), ff.add_up(xp, off_max, 2.0))))
        if extra_logit_err is not None:
            r = ff.add_up(xp, r, extra_logit_err)
        ok = xp.isfinite(r) & (r < R_CAP) & xp.isfinite(lam) & (lam <= 1e300) & ~all_masked
        qa = xp.empty((m, d + 1))
        qa[:, :d] = xp.where(ok[:, None], qp, 0.0)
        qa[:, d] = 0.0  # the ones column of k_aug contributes an exact 0
        qa_abs = xp.abs(qa)
        shift_ok = xp.where(ok, shift, 0.0)
        # Per-entry logit error (r above is the row maximum, used for validity and for κ_i below):
        #   |x̃_ij − x_ij| ≤ (1 + 3u)·t̂_ij + β_i,   t̂_ij = fl(γ'·c_ij) [+ fl(u'·|x̃_ij|) on shifted rows],
        # c_ij = fl(|q'_i|·|k_j|) (a GEMM of non-negative terms: Σ|q'k| ≤ (c + (d+1)η)/(1 − γ_{d+1})), so the
        # GEMM error γ_{d+1}Σ|q'k| + (d+1)η ≤ γ'c + 2(d+1)η with γ' = γ_{d+1}/(1 − γ_{d+1}); the shift's
        # subtraction y = fl(a − m) errs by ≤ u|a − m| ≤ u'|y|, u' = u/(1 − u). β_i: the scale's rounding
        # and interval, the underflow of q' and of products, offsets, the tensor tuples' rounding, and
        # η for a t̂ that underflows. (Derived here.)
        gamma_c = float(np.nextafter(g1 / (1.0 - g1), np.inf))
        u_sub = float(np.nextafter(u / (1.0 - u), np.inf))
        per_entry_sub = logit_offset is None
        sub_rate = xp.where(shift_ok != 0, u_sub, 0.0) if per_entry_sub else xp.zeros(m)
        lbeta = ff.add_up(xp, ff.mul_up(xp, ff.add_up(xp, u * s_abs, s_rad), p), ff.add_up(xp, eta * k1, 5 * (d + 1) * eta))
        if logit_offset is not None:
            lbeta = ff.add_up(xp, lbeta, xp.where(ms > 0, ff.mul_up(xp, u, ff.add_up(xp, ff.add_up(xp, lam, ms), 1.0)), 0.0))
            lbeta = ff.add_up(xp, lbeta, ff.mul_up(xp, u, ff.add_up(xp, ff.add_up(xp, lam, ms), ff.add_up(xp, off_max, 2.0))))
        if extra_logit_err is not None:
            lbeta = ff.add_up(xp, lbeta, extra_logit_err)
        eps = ff.LIBM_EXP_REL_ERR if trust_libm_exp else ff.EXP_REL_ERR
        exp_fn = ff.exp_libm_inplace if trust_libm_exp else ff.exp_inplace
        acc = xp.zeros((m, 2 * dv + 1))
        acc_t = xp.zeros((m, dv + 1))  # Σ_j w̃_j t̂_ij·[|ṽ_j| | 1]
        kbs = list(_blocks(n_keys, key_block))
        nkb = len(kbs)
        rbs = list(_blocks(m, row_block))
        local = threading.local()

        def tile(r0: int, r1: int, c0: int, c1: int, k_t: Any, kabs_t: Any, v_aug: Any, vabs_aug: Any) -> None:
            # one row block against one key block; row blocks are disjoint, so tiles of one key block
            # may run concurrently (each thread keeps its own buffers)
            bufs = local.__dict__.setdefault("bufs", {})
            shape = (r1 - r0, c1 - c0)
            if shape not in bufs:
                bufs[shape] = tuple(xp.empty(shape) for _ in range(5))
            x, t1, t2, t3, te = bufs[shape]
            xp.matmul(qa[r0:r1], k_t, out=x)
            xp.matmul(qa_abs[r0:r1], kabs_t, out=te)
            xp.multiply(te, gamma_c, out=te)  # t̂ = fl(γ'·c)
            sh = shift_ok[r0:r1]
            if bool((sh != 0).any()):
                xp.subtract(x, sh[:, None], out=x)
                if per_entry_sub:
                    xp.abs(x, out=t1)
                    xp.multiply(t1, sub_rate[r0:r1, None], out=t1)
                    xp.add(te, t1, out=te)  # + fl(u'·|x̃|)
            if logit_offset is not None:
                off = logit_offset(r0, r1, c0, c1)
                if off is not None:
                    xp.add(x, xp.asarray(off, dtype=xp.float64), out=x)
            w = exp_fn(x, (t1, t2, t3), xp)
            acc[r0:r1] += w @ v_aug
            xp.multiply(te, w, out=te)
            acc_t[r0:r1] += te @ vabs_aug

        with _deterministic_blas(xp) as pool:
            for c0, c1 in kbs:
                k_aug, v_aug = key_blocks(c0, c1)
                k_t = k_aug.T
                kabs_t = xp.abs(k_aug).T
                vabs_aug = xp.ascontiguousarray(v_aug[:, dv:])  # [|ṽ| | 1]
                args = (c0, c1, k_t, kabs_t, v_aug, vabs_aug)
                if pool is None or len(rbs) < 2:
                    for r0, r1 in rbs:
                        tile(r0, r1, *args)
                else:
                    for f in [pool.submit(tile, r0, r1, *args) for r0, r1 in rbs]:
                        f.result()
        # --- error bounds (directed operations on O(m·dv) arrays) ---
        num, aab, den = acc[:, :dv], acc[:, dv:2 * dv], acc[:, 2 * dv:2 * dv + 1]
        big_t = key_block + nkb if n_keys > key_block else n_keys
        g = ff.gamma_up(big_t)
        one_minus_g = float(np.nextafter(1.0 - g, 0.0))
        neta = n_keys * eta
        a_up = ff.div_up(xp, ff.add_up(xp, aab, neta), one_minus_g)
        d_up = ff.div_up(xp, ff.add_up(xp, den, neta), one_minus_g)
        beta = ff.add_up(xp, ff.mul_up(xp, g, d_up), neta)
        rho_r = ff.div_up(xp, r, ff.sub_down(xp, 1.0, r))
        rho = ff.div_up(xp, ff.add_up(xp, rho_r, eps), float(np.nextafter(1.0 - eps, 0.0)))[:, None]
        tau = 2.0**-1021
        ntau = n_keys * tau
        o = num / den
        oa = xp.abs(o)
        e = ff.add_up(xp, ff.mul_up(xp, g, a_up), neta)
        e = ff.add_up(xp, e, ff.mul_up(xp, oa, beta))
        e = ff.add_up(xp, e, ff.mul_up(xp, den, ff.add_up(xp, ff.mul_up(xp, 2 * u, oa), eta)))
        # Σ_j |w_j − w̃_j|(|ṽ_j| + |õ|) with |w − w̃| ≤ w̃(κ_i e_ij + ε'') + τ, κ_i = 1/((1 − r_i)(1 − ε)),
        # ε'' = ε/(1 − ε), e_ij ≤ (1 + 3u)t̂_ij + β_i (e^e − 1 ≤ e/(1 − e), e_ij ≤ r_i; derived here).
        # G = the exact Σ_j w̃_j t̂_ij[|ṽ_j| | 1]: ≤ ((acc_t + nη)/(1 − g) + nη·[‖ṽ‖∞ | 1]/2)/(1 − u).
        one_minus_eps = float(np.nextafter(1.0 - eps, 0.0))
        kappa_den = xp.nextafter(ff.sub_down(xp, 1.0, r) * one_minus_eps, 0.0)  # ≤ (1 − r_i)(1 − ε)
        kappa = ff.div_up(xp, 1.0, kappa_den)[:, None]
        eps2 = float(np.nextafter(eps / (1.0 - eps), np.inf))
        one_3u = 1.0 + 4 * u
        ga = ff.div_up(xp, ff.add_up(xp, ff.div_up(xp, ff.add_up(xp, acc_t[:, :dv], neta), one_minus_g),
                                     0.5 * neta * key_bounds["vabsmax"][None, :]), 1.0 - u) * one_3u
        gd = ff.div_up(xp, ff.add_up(xp, ff.div_up(xp, ff.add_up(xp, acc_t[:, dv:dv + 1], neta), one_minus_g), 0.5 * neta),
                       1.0 - u) * one_3u
        ga = xp.nextafter(ga, xp.inf)
        gd = xp.nextafter(gd, xp.inf)
        lb = lbeta[:, None]
        w_err_den = ff.add_up(xp, ff.mul_up(xp, kappa, ff.add_up(xp, gd, ff.mul_up(xp, lb, d_up))), ff.mul_up(xp, eps2, d_up))
        w_err_num = ff.mul_up(xp, kappa, ff.add_up(xp, ff.add_up(xp, ga, ff.mul_up(xp, lb, a_up)),
                                                   ff.mul_up(xp, oa, ff.add_up(xp, gd, ff.mul_up(xp, lb, d_up)))))
        w_err_num = ff.add_up(xp, w_err_num, ff.mul_up(xp, eps2, ff.add_up(xp, a_up, ff.mul_up(xp, oa, d_up))))
        e = ff.add_up(xp, e, w_err_num)
        e = ff.add_up(xp, e, ff.mul_up(xp, ntau, ff.add_up(xp, key_bounds["vabsmax"][None, :], oa)))
        if value_rel_err or value_abs_err:
            # exact values v = ṽ + e with |e| ≤ ν|ṽ| + e_v: Σ w|e| ≤ ν((1+ρ)A + nτ‖ṽ‖∞) + e_v((1+ρ)D + nτ)
            one_rho = ff.add_up(xp, 1.0, rho)
            ev = ff.mul_up(xp, value_rel_err, ff.add_up(xp, ff.mul_up(xp, one_rho, a_up), ff.mul_up(xp, ntau, key_bounds["vabsmax"][None, :])))
            ev = ff.add_up(xp, ev, ff.mul_up(xp, value_abs_err, ff.add_up(xp, ff.mul_up(xp, one_rho, d_up), ntau)))
            e = ff.add_up(xp, e, ev)
        sub = ff.add_up(xp, ff.add_up(xp, beta, w_err_den), ntau)
        d_lo = ff.sub_down(xp, den, sub)
        err = ff.div_up(xp, e, d_lo)
        lo = ff.sub_down(xp, o, err)
        hi = ff.add_up(xp, o, err)
        good = ok[:, None] & (d_lo > 0) & xp.isfinite(lo) & xp.isfinite(hi)
        # Clamped to the convex hull widened by one ulp: an Arb ball of the exact output (whose midpoint
        # may sit a hair outside the hull when the output is a hull point, e.g. n = 1) keeps its midpoint
        # inside these bounds.
        lo = xp.where(good, xp.maximum(lo, xp.nextafter(key_bounds["vmin"], -xp.inf)[None, :]), -xp.inf)
        hi = xp.where(good, xp.minimum(hi, xp.nextafter(key_bounds["vmax"], xp.inf)[None, :]), xp.inf)
        lo = xp.where(all_masked[:, None], 0.0, lo)
        hi = xp.where(all_masked[:, None], 0.0, hi)
    return lo, hi


_POOL: Any = None
_BLAS: Any = None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextmanager
def _deterministic_blas(xp: ModuleType) -> Iterator[Any]:
    """On numpy: BLAS limited to one thread while the engine runs, and a pool of one thread per core
    (at most ATTNSPEC_FAST_THREADS) that runs the fixed row blocks of each key block side by side.

    Why: a multi-threaded BLAS splits a product differently for different thread counts, so its bits
    (and the bounds' last bits) would depend on the machine's load or a Dask worker's thread setting.
    With fixed blocks and single-threaded products, every tile is computed the same way whatever the
    number of threads, and a report is the same serially and on any number of workers (same CPU kind
    and BLAS). Yields the pool, or None (one core, or not numpy)."""
    global _POOL, _BLAS
    if xp is not np:
        yield None
        return
    want = _cores()
    cap = os.environ.get("ATTNSPEC_FAST_THREADS", "")
    if cap.isdigit() and int(cap) >= 1:
        want = min(want, int(cap))
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController()
    with _BLAS.limit(limits=1, user_api="blas"):
        if want < 2:
            yield None
            return
        if _POOL is None or _POOL._max_workers != want:
            from concurrent.futures import ThreadPoolExecutor

            _POOL = ThreadPoolExecutor(max_workers=want, thread_name_prefix="attnspec-fast")
        yield _POOL


def _row_max_pass(xp: ModuleType, qp: Any, idx: Any, n_keys: int, key_blocks: KeyBlocks, logit_offset: Callable | None,
                  row_block: int, key_block: int) -> tuple[Any, Any]:
    """First pass for the rows ``idx``: the float row maximum of fl(fl(q'·k) + offset) (−∞ when every key
    is masked) and the largest finite |offset| per row."""
    m = qp.shape[0]
    top = xp.full(m, -xp.inf)
    off_max = xp.zeros(m)
    for c0, c1 in _blocks(n_keys, key_block):
        k_aug, _ = key_blocks(c0, c1)
        kt = k_aug[:, :-1].T
        for r0, r1 in _blocks(m, row_block):
            y = qp[r0:r1] @ kt
            if logit_offset is not None:
                rows = idx[r0:r1]
                off = _offset_rows(logit_offset, xp, rows, c0, c1)
                if off is not None:
                    y = y + off
                    fin = xp.where(xp.isfinite(off), xp.abs(off), 0.0)
                    off_max[r0:r1] = xp.maximum(off_max[r0:r1], fin.max(axis=1))
            top[r0:r1] = xp.maximum(top[r0:r1], y.max(axis=1))
    return top, off_max


def _offset_rows(logit_offset: Callable, xp: ModuleType, rows: Any, c0: int, c1: int) -> Any:
    """The offset block for an arbitrary set of (local) rows, built from contiguous row runs."""
    rows_h = np.asarray(rows.get() if hasattr(rows, "get") else rows)
    parts = []
    start = 0
    any_off = False
    while start < len(rows_h):
        end = start
        while end + 1 < len(rows_h) and rows_h[end + 1] == rows_h[end] + 1:
            end += 1
        blk = logit_offset(int(rows_h[start]), int(rows_h[end]) + 1, c0, c1)
        if blk is None:
            blk = np.zeros((end - start + 1, c1 - c0))
        else:
            any_off = True
        parts.append(xp.asarray(blk, dtype=xp.float64))
        start = end + 1
    return xp.concatenate(parts, axis=0) if any_off else None


def key_bounds_of(xp: ModuleType, k: Any, v: Any) -> dict[str, Any]:
    """Key/value-side bounds for :func:`softmax_core` from exact float64 k (n×d) and v (n×dv)."""
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        l2, l1 = _row_norm_bounds(xp, k)
        return {"l2max": float(l2.max()), "l1max": float(l1.max()), "colmax": xp.abs(k).max(axis=0),
                "vmin": v.min(axis=0), "vmax": v.max(axis=0), "vabsmax": xp.abs(v).max(axis=0)}


def fast_softmax_bounds(q: Any, k: Any, v: Any, *, scale_lo: float, scale_hi: float, rows: Any = None,
                        logit_offset: Callable | None = None, xp: ModuleType | None = None,
                        row_block: int = ROW_BLOCK, key_block: int = KEY_BLOCK,
                        trust_libm_exp: bool = False) -> tuple[Any, Any]:
    """Certified float64 (lo, hi), shape (len(rows), dv), with lo ≤ Att(Q,K,V)[rows] ≤ hi entrywise, for
    exact float64 q (m×d), k (n×d), v (n×dv) and any true scale s ∈ [scale_lo, scale_hi].

    ``logit_offset(r0, r1, c0, c1)`` (rows r0:r1 *of the selected rows*, keys c0:c1) returns None or an
    exact float64 block added to the logits, −∞ for a masked key. A row whose keys are all masked gets
    lo = hi = 0 (the convention of a masked softmax that returns zeros; the caller decides whether that
    is its semantics). Entries the analysis cannot bound are (−∞, +∞). See the module docstring.
    """
    xp = _native(xp, q, k, v)
    q = xp.asarray(q, dtype=xp.float64)
    k = xp.asarray(k, dtype=xp.float64)
    v = xp.asarray(v, dtype=xp.float64)
    if q.ndim != 2 or k.ndim != 2 or v.ndim != 2 or q.shape[1] != k.shape[1] or k.shape[0] != v.shape[0]:
        raise SpecError(f"fast_softmax_bounds: need q (m×d), k (n×d), v (n×dv); got {q.shape}, {k.shape}, {v.shape}")
    if not (bool(xp.isfinite(q).all()) and bool(xp.isfinite(k).all()) and bool(xp.isfinite(v).all())):
        raise SpecError("fast_softmax_bounds: inputs must be finite")
    if not (np.isfinite(scale_lo) and np.isfinite(scale_hi)) or scale_lo > scale_hi:
        raise SpecError(f"fast_softmax_bounds: need finite scale_lo ≤ scale_hi, got {scale_lo}, {scale_hi}")
    if rows is not None:
        q = q[xp.asarray(_check_rows(rows, q.shape[0]))]
    n, d = k.shape
    dv = v.shape[1]
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        # Centre each value column at its mid-range c (any float will do): Att(Q,K,V) = Att(Q,K,V − c) + c
        # exactly, since each row's weights sum to 1. The error terms then scale with |v − c| (the spread a
        # weight error can move), not with |v| (a common offset, which only costs the final addition).
        # ṽ = fl(v − c) = (v − c)(1 + δ), |δ| ≤ u, so |(v − c) − ṽ| ≤ ν|ṽ| with ν = u/(1 − u) (derived here).
        vmin, vmax = v.min(axis=0), v.max(axis=0)
        c = vmin / 2 + vmax / 2
        # Only where it clearly pays (a column with a common offset): for zero-mean data the mid-range is
        # noise and |v − c| is no smaller than |v|.
        c = xp.where(xp.abs(v - c[None, :]).sum(axis=0) < xp.abs(v).sum(axis=0), c, 0.0)
        if logit_offset is not None or not bool(xp.isfinite(c).all()):
            # No centring with offsets (an all-masked row's output is 0, not c) or with |v| near the
            # float64 maximum (v − c could overflow).
            c = xp.zeros_like(c)
        vt = v - c[None, :]
        nu = float(np.nextafter(ff.U / (1 - ff.U), np.inf)) if bool((c != 0).any()) else 0.0
    k_aug = xp.concatenate([k, xp.ones((n, 1))], axis=1)
    v_aug = xp.concatenate([vt, xp.abs(vt), xp.ones((n, 1))], axis=1)
    bounds = key_bounds_of(xp, k, vt)
    bounds["vmin"] = ff.sub_down(xp, vmin, c)  # bounds of the *exact* v − c (vmin − c ≤ v − c ≤ vmax − c)
    bounds["vmax"] = ff.sub_up(xp, vmax, c)
    lo, hi = softmax_core(q, n, d, dv, lambda c0, c1: (k_aug[c0:c1], v_aug[c0:c1]), key_bounds=bounds,
                          scale_lo=float(scale_lo), scale_hi=float(scale_hi), logit_offset=logit_offset, xp=xp,
                          row_block=row_block, key_block=key_block, trust_libm_exp=trust_libm_exp,
                          value_rel_err=nu)
    if not bool((c != 0).any()):
        return lo, hi
    with np.errstate(over="ignore", invalid="ignore"):
        bounded = xp.isfinite(lo) & xp.isfinite(hi)  # an unbounded entry stays unbounded (left to Arb)
        hull_lo, hull_hi = xp.nextafter(vmin, -xp.inf), xp.nextafter(vmax, xp.inf)  # as in softmax_core
        return (xp.where(bounded, xp.maximum(ff.sub_down(xp, lo, -c[None, :]), hull_lo[None, :]), -xp.inf),
                xp.where(bounded, xp.minimum(ff.sub_up(xp, hi, -c[None, :]), hull_hi[None, :]), xp.inf))


def _check_rows(rows: Any, m: int) -> np.ndarray:
    r = np.asarray(rows.get() if hasattr(rows, "get") else rows)
    if r.ndim != 1 or (r.size and not np.issubdtype(r.dtype, np.integer)):
        raise SpecError(f"rows must be a 1-D integer array, got {r.dtype} with shape {r.shape}")
    if r.size and (r.min() < 0 or r.max() >= m or np.any(np.diff(r) <= 0)):
        raise SpecError(f"rows must be sorted, distinct and in [0, {m})")
    return r.astype(np.int64)


def scale_interval(s: Fraction) -> tuple[float, float]:
    """Floats lo ≤ s ≤ hi: lo = hi = s when s is a float64, else the two neighbours (outward)."""
    s = Fraction(s)
    f = float(s)  # correctly rounded (may overflow to ±inf: then the rows are unbounded)
    if Fraction(f) == s if np.isfinite(f) else False:
        return f, f
    if not np.isfinite(f):
        return (-np.inf, np.inf)
    return (f, float(np.nextafter(f, np.inf))) if Fraction(f) < s else (float(np.nextafter(f, -np.inf)), f)


def exact_float64(m: np.ndarray) -> np.ndarray | None:
    """``m`` as float64 when every entry is exactly a float64 (float dtypes always; Fractions when
    dyadic and representable), else None (the engine then leaves everything to Arb)."""
    if m.dtype.kind == "f":
        return m.astype(np.float64)
    out = np.empty(m.shape)
    flat = out.reshape(-1)
    for i, x in enumerate(m.reshape(-1)):
        f = float(x)
        if not np.isfinite(f) or Fraction(f) != Fraction(x):
            return None
        flat[i] = f
    return out


def engine_assumptions(xp: ModuleType, trust_libm_exp: bool) -> tuple[str, ...]:
    extra = (LIBM_ASSUMPTION,) if trust_libm_exp else ()
    return (BLAS_ASSUMPTION, UNDERFLOW_ASSUMPTION, *gpu_math_modes(xp), *extra)


def enclose_fast(inst: SoftmaxAttentionInstance, rows: Any = None, *, xp: ModuleType | None = None,
                 trust_libm_exp: bool = False, row_block: int = ROW_BLOCK, key_block: int = KEY_BLOCK) -> BoundsEnclosure:
    """Certified float64 bounds of Att(Q,K,V)[rows] (shape (len(rows), d_v); rows None = all).

    Float16/32/64 inputs are exact in float64. Rational (object-dtype) inputs that are not all exact
    float64 values give an all-unbounded enclosure (left to Arb). A scale that is not a float64 is
    enclosed by its two float neighbours. ``xp``: numpy (default) or cupy.
    """
    xp = _native(xp)
    r = _check_rows(np.arange(inst.n) if rows is None else rows, inst.n)
    dv = inst.v.shape[1]
    mats = [exact_float64(x) for x in (inst.q, inst.k, inst.v)]
    name = f"fast-float64({getattr(xp, '__name__', 'numpy')})"
    assumptions = engine_assumptions(xp, trust_libm_exp)
    s_lo, s_hi = scale_interval(inst.scale)
    if any(x is None for x in mats) or not (np.isfinite(s_lo) and np.isfinite(s_hi)):
        inf = np.full((len(r), dv), np.inf)
        return BoundsEnclosure(-inf, inf, engine=name, assumptions=assumptions)
    q, k, v = (xp.asarray(x) for x in mats)
    lo, hi = fast_softmax_bounds(q, k, v, scale_lo=s_lo, scale_hi=s_hi, rows=r, xp=xp, row_block=row_block,
                                 key_block=key_block, trust_libm_exp=trust_libm_exp)
    from attnspec.accelerated.array_namespace import to_numpy

    return BoundsEnclosure(to_numpy(lo), to_numpy(hi), engine=name, assumptions=assumptions)


__all__ = ["enclose_fast", "fast_softmax_bounds", "softmax_core", "scale_interval", "exact_float64",
           "gpu_math_modes", "BLAS_ASSUMPTION", "ROW_BLOCK", "KEY_BLOCK"]
