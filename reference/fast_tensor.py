"""Fast certified tensor attention: rigorous float64 bounds for D⁻¹A(V₁⊘…⊘V_{k−1}).

The blocked engine of :mod:`attnspec.reference.fast_softmax` (``softmax_core``) runs over the n^{k−1} key
tuples J, block by block (``key_tuple_blocks``), never materialising more than a block of tuples. The
tuple rows k̃_J = fl(K₁[j₁]∘…∘K_{k−1}[j_{k−1}]) and ṽ_J (``column_kronecker``) are *rounded*; their
errors are bounded here and passed to the core (derived here):

- a product of f = k − 1 float factors, each multiplication rounding to nearest, satisfies
  |x − x̃| ≤ γ_{f−1}|x| + (f−1)·η·M, where M bounds the product of the remaining factors' magnitudes
  (an underflow error η/2 of a partial product is multiplied by the later factors, amplified by at
  most 2). With |x| ≤ Π_m max|X_m| (per column) this gives per column an absolute bound e_t;
- keys: the logit with exact keys differs from the one with k̃ by |s|·Σ_t|q_it|·e_t, added to the
  core's per-row logit error r_i (``extra_logit_err``), with |s| ≤ |s̃| + s_rad;
- values: |v_J − ṽ_J| ≤ ν|ṽ_J| + e_v with ν = γ_{f−1}/(1 − γ_{f−1}) (relative, since |x| ≤
  |x̃|/(1 − γ) + …) and e_v = 2(f−1)η·M_v/(1 − γ), passed as ``value_rel_err``/``value_abs_err``.

Key-side bounds (‖k̃_J‖₂, ‖k̃_J‖₁, column maxima, value ranges) come from a pre-pass over the tuple
blocks, O(n^{k−1}·(d + d_v)). Work O(|rows|·n^{k−1}·d), memory O(block·(d + d_v)).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from attnspec.reference import fast_float64 as ff
from attnspec.reference.enclosure import BoundsEnclosure
from attnspec.reference.fast_softmax import (KEY_BLOCK, ROW_BLOCK, _check_rows, _native, engine_assumptions,
                                             exact_float64, key_bounds_of, scale_interval, softmax_core)
from attnspec.spec.tensor_attention import TensorAttentionInstance, column_kronecker, key_tuple_blocks


def _product_abs_error(xp: ModuleType, mats: list[Any]) -> tuple[Any, float]:
    """(e, ν): per column t an upper bound e_t of |x_Jt − fl-product_Jt| over all tuples J, and the
    relative constant ν for |x − x̃| ≤ ν|x̃| + e_abs (see the module docstring)."""
    f = len(mats)
    if f == 1:
        return xp.zeros(mats[0].shape[1]), 0.0
    g = ff.gamma_up(f - 1)
    colmax = [xp.abs(m).max(axis=0) for m in mats]
    prod = colmax[0]
    for c in colmax[1:]:
        prod = ff.mul_up(xp, prod, c)
    rest = colmax[1]
    for c in colmax[2:]:
        rest = ff.mul_up(xp, rest, c)
    m_rest = xp.maximum(rest, 1.0)  # the later factors' magnitudes (at least 1: covers the last rounding)
    e = ff.add_up(xp, ff.mul_up(xp, g, prod), ff.mul_up(xp, 2.0 * (f - 1) * ff.ETA, m_rest))
    nu = float(np.nextafter(g / float(np.nextafter(1.0 - g, 0.0)), np.inf))
    return e, nu


def enclose_fast(inst: TensorAttentionInstance, rows: Any = None, *, xp: ModuleType | None = None,
                 trust_libm_exp: bool = False, row_block: int = ROW_BLOCK, key_block: int = KEY_BLOCK) -> BoundsEnclosure:
    """Certified float64 bounds of the tensor attention output rows ``rows`` (None = all), shape
    (len(rows), d_v). Same conventions as :func:`attnspec.reference.fast_softmax.enclose_fast`."""
    xp = _native(xp)
    n, dv = inst.output_shape
    d = inst.d
    r = _check_rows(np.arange(n) if rows is None else rows, n)
    name = f"fast-float64-tensor({getattr(xp, '__name__', 'numpy')})"
    assumptions = engine_assumptions(xp, trust_libm_exp)
    q = exact_float64(inst.q)
    keys = [exact_float64(x) for x in inst.keys]
    vals = [exact_float64(x) for x in inst.values]
    s_lo, s_hi = scale_interval(inst.scale)
    if q is None or any(x is None for x in keys + vals) or not (np.isfinite(s_lo) and np.isfinite(s_hi)):
        inf = np.full((len(r), dv), np.inf)
        return BoundsEnclosure(-inf, inf, engine=name, assumptions=assumptions)
    keys_f: list[np.ndarray] = [x for x in keys if x is not None]
    vals_f: list[np.ndarray] = [x for x in vals if x is not None]
    qx = xp.asarray(q)[xp.asarray(r)]
    kx = [xp.asarray(x) for x in keys_f]
    vx = [xp.asarray(x) for x in vals_f]
    f = len(keys)
    total = n ** f

    def tuple_block(t0: int, t1: int) -> tuple[Any, Any]:
        kt = xp.asarray(column_kronecker(keys_f, (t0, t1)))
        vt = xp.asarray(column_kronecker(vals_f, (t0, t1)))
        ka = xp.concatenate([kt, xp.ones((t1 - t0, 1))], axis=1)
        va = xp.concatenate([vt, xp.abs(vt), xp.ones((t1 - t0, 1))], axis=1)
        return ka, va

    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        kb: dict[str, Any] | None = None
        for t0, t1 in key_tuple_blocks(n, f, key_block):
            ka, va = tuple_block(t0, t1)
            b = key_bounds_of(xp, ka[:, :d], va[:, :dv])
            if kb is None:
                kb = b
            else:
                kb = {"l2max": max(kb["l2max"], b["l2max"]), "l1max": max(kb["l1max"], b["l1max"]),
                      "colmax": xp.maximum(kb["colmax"], b["colmax"]), "vmin": xp.minimum(kb["vmin"], b["vmin"]),
                      "vmax": xp.maximum(kb["vmax"], b["vmax"]), "vabsmax": xp.maximum(kb["vabsmax"], b["vabsmax"])}
        assert kb is not None
        ek, _ = _product_abs_error(xp, kx)
        ev_cols, nu = _product_abs_error(xp, vx)
        ev = float(ev_cols.max()) if f > 1 else 0.0
        e_v = float(np.nextafter(ev - 0.0, np.inf))
        if f > 1:  # hull of the exact values: widen the rounded tuples' range by ν|ṽ| + e_v
            widen = ff.add_up(xp, ff.mul_up(xp, nu, kb["vabsmax"]), e_v)
            kb["vmin"] = ff.sub_down(xp, kb["vmin"], widen)
            kb["vmax"] = ff.add_up(xp, kb["vmax"], widen)
        s_bound = float(np.nextafter(max(abs(s_lo), abs(s_hi)), np.inf))
        extra = ff.mul_up(xp, s_bound, ff.sum_nonneg_up(xp, xp.abs(qx) @ ek, d)) if f > 1 else None
        lo, hi = softmax_core(qx, total, d, dv, tuple_block, key_bounds=kb, scale_lo=s_lo, scale_hi=s_hi, xp=xp,
                              row_block=row_block, key_block=key_block, trust_libm_exp=trust_libm_exp,
                              extra_logit_err=extra, value_rel_err=nu, value_abs_err=e_v)
    from attnspec.accelerated.array_namespace import to_numpy

    return BoundsEnclosure(to_numpy(lo), to_numpy(hi), engine=name, assumptions=assumptions)


__all__ = ["enclose_fast"]
