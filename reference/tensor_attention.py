"""Certified tensor attention: enclosures of D⁻¹A(V₁⊘…⊘V_{k−1}), A = exp(s·Q(K₁⊘…⊘K_{k−1})ᵀ).

Two independent engines, both O(n^k·d) work:

- :func:`enclose` (python-flint / Arb). Blocks over the *outer* key indices J' = (j₁, …, j_{k−2}); each
  block covers all n values of the last index j_{k−1}, so only n×n balls are alive at a time (never
  the n^{k−1} tuples). For one block:

      P   = Q · diag(K₁[j₁]) ⋯ diag(K_{k−2}[j_{k−2}])     (n×d; Hadamard-scaled queries)
      L   = s · P K_{k−1}ᵀ                                (n×n logits of the tuples (J', ·))
      E   = exp(L − m)                                    (row shift m_i, see below)
      M   = E · [V_{k−1} | 1]                             (n×(d_v+1))
      acc += M · diag(c₁, …, c_{d_v}, 1),   c_l = Π_{m≤k−2} V_m[j_m, l]

  because Σ_{j_{k−1}} E_{i,j}·Π_m V_m[j_m, l] = c_l · (E V_{k−1})_{il}. Finally out_il = acc_il / acc_i,d_v+1.
  All products are Arb ball operations on the exact inputs, so every ball is rigorous. The shift m_i
  is any exact number (the float64 row maximum of the logits): it cancels exactly in D⁻¹A and only keeps
  the exponentials near 1.
- :func:`enclose_mpmath` (mpmath's ``iv`` interval context): the entrywise formula with plain loops over
  all key tuples, tiny sizes only; a cross-check of the Arb engine (the enclosures must intersect).
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import mpmath
import numpy as np
from flint import arb, arb_mat

from attnspec.spec.tensor_attention import TensorAttentionInstance, _abs_logit_row_max
from attnspec.reference.enclosure import Enclosure, arb_matrix, default_threads, exact_arb, working_precision
from attnspec.reference.enclosure import fraction_of
from attnspec.reference.softmax_attention import HUGE_LOGIT_BITS, _interval_to_ball, _iv, logit_bits

DEFAULT_PREC = 128


def row_shifts(inst: TensorAttentionInstance, rows: np.ndarray | None = None) -> np.ndarray:
    """Float64 approximations of each row's maximum logit over all key tuples (any finite value works)."""
    if rows is None:
        hi, _, _ = _abs_logit_row_max(inst)
    else:
        from attnspec.spec.tensor_attention import column_kronecker, key_tuple_blocks
        from attnspec.spec.validation import to_float64

        q = to_float64(inst.q)[rows]
        hi = np.full(len(rows), -np.inf)
        with np.errstate(over="ignore", invalid="ignore"):
            for t0, t1 in key_tuple_blocks(inst.n, len(inst.keys), 4096):
                hi = np.maximum(hi, (float(inst.scale) * (q @ column_kronecker(inst.keys, (t0, t1)).T)).max(axis=1))
    return np.where(np.isfinite(hi), hi, 0.0)


def _diag(entries: list) -> arb_mat:
    size = len(entries)
    return arb_mat([[entries[r] if r == c else arb(0) for c in range(size)] for r in range(size)])


def _exact_entry(x) -> arb:
    return exact_arb(x if isinstance(x, Fraction) else float(x))


def enclose(inst: TensorAttentionInstance, prec: int = DEFAULT_PREC, rows: np.ndarray | None = None) -> Enclosure:
    """Certified enclosure of the tensor attention output at ``prec`` bits of working precision.

    Every returned ball contains the exact real output entry for the instance's exact inputs.
    ``rows`` (sorted 1-D int array; None = all): only those output rows, shape (len(rows), d_v), in
    O(|rows|·n^{k−1}·d) work (an output row depends on its query row and all keys and values only).
    """
    n, dv = inst.output_shape
    d = inst.d
    sel = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
    if sel.size and (sel.min() < 0 or sel.max() >= n or np.any(np.diff(sel) <= 0)):
        raise ValueError(f"rows must be sorted, distinct and in [0, {n})")
    nq = len(sel)
    if nq == 0:
        return Enclosure(balls=[], shape=(0, dv), prec=prec)
    outer = len(inst.keys) - 1  # number of outer key indices j₁ … j_{k−2}
    bits = logit_bits(inst.scale, [inst.q, *inst.keys], d)  # logits < 2^bits: computed at prec + bits
    huge = bits > HUGE_LOGIT_BITS
    shifts = np.zeros(nq) if huge else row_shifts(inst, None if rows is None else sel)
    with working_precision(prec + bits, threads=default_threads()):
        q = arb_matrix(inst.q[sel])
        keys = [[[_exact_entry(x) for x in row] for row in k] for k in inst.keys[:-1]]
        vals = [[[_exact_entry(x) for x in row] for row in v] for v in inst.values[:-1]]
        k_last_t = arb_matrix(inst.keys[-1]).transpose()
        v_last = arb_matrix(inst.values[-1])
        v_aug = arb_mat([[v_last[r, c] for c in range(dv)] + [arb(1)] for r in range(n)])
        s = exact_arb(inst.scale)

        def block_logits(outer_idx):
            scale_vec = [s] * d  # s · Π_m K_m[j_m, t], per column t
            col = [arb(1)] * dv  # c_l = Π_m V_m[j_m, l]
            for m, j in enumerate(outer_idx):
                scale_vec = [a * b for a, b in zip(scale_vec, keys[m][j])]
                col = [a * b for a, b in zip(col, vals[m][j])]
            return ((q * _diag(scale_vec)) * k_last_t).entries(), col

        if huge:  # float64 row maxima are too coarse: shift by the largest logit ball's midpoint (exact)
            tops: list = [None] * nq
            for outer_idx in itertools.product(range(n), repeat=outer):
                flat, _ = block_logits(outer_idx)
                for i in range(nq):
                    row_top = max((x.mid() for x in flat[i * n:(i + 1) * n]), key=fraction_of)
                    if tops[i] is None or fraction_of(row_top) > fraction_of(tops[i]):
                        tops[i] = row_top
            neg_shift = [-t for t in tops]
        else:
            neg_shift = [-arb(float(m)) for m in shifts]
        acc = arb_mat(nq, dv + 1)
        exp = arb.exp
        for outer_idx in itertools.product(range(n), repeat=outer):
            flat, col = block_logits(outer_idx)
            weights = arb_mat([[exp(x + neg_shift[i]) for x in flat[i * n:(i + 1) * n]] for i in range(nq)])
            acc += (weights * v_aug) * _diag(col + [arb(1)])
        entries = acc.entries()
        out: list = []
        for i in range(nq):
            row = entries[i * (dv + 1):(i + 1) * (dv + 1)]
            out.extend(x / row[dv] for x in row[:dv])
    return Enclosure(balls=out, shape=(nq, dv), prec=prec)


def enclose_mpmath(inst: TensorAttentionInstance, prec: int = DEFAULT_PREC) -> Enclosure:
    """Independent enclosure by mpmath interval arithmetic: the entrywise definition over every key
    tuple (O(n^k·d) Python loops; tiny sizes only)."""
    n, dv = inst.output_shape
    ctx = mpmath.iv
    old = ctx.prec
    ctx.prec = prec
    try:
        q = [[_iv(x) for x in row] for row in inst.q.tolist()]
        keys = [[[_iv(x) for x in row] for row in k.tolist()] for k in inst.keys]
        vals = [[[_iv(x) for x in row] for row in v.tolist()] for v in inst.values]
        s = _iv(inst.scale)
        shifts = row_shifts(inst)
        tuples = list(itertools.product(range(n), repeat=len(keys)))
        kr, vr = [], []
        for tup in tuples:  # rows of K₁⊘…⊘K_{k−1} and V₁⊘…⊘V_{k−1}, as intervals
            krow = [ctx.mpf(1)] * inst.d
            vrow = [ctx.mpf(1)] * dv
            for m, j in enumerate(tup):
                krow = [a * b for a, b in zip(krow, keys[m][j])]
                vrow = [a * b for a, b in zip(vrow, vals[m][j])]
            kr.append(krow)
            vr.append(vrow)
        out: list = []
        for i in range(n):
            m = _iv(float(shifts[i]))
            w = [ctx.exp(s * ctx.fsum(a * b for a, b in zip(q[i], krow)) - m) for krow in kr]
            denom = ctx.fsum(w)
            for col in range(dv):
                out.append(ctx.fsum(wj * vrow[col] for wj, vrow in zip(w, vr)) / denom)
    finally:
        ctx.prec = old
    return Enclosure(balls=[_interval_to_ball(x, prec) for x in out], shape=(n, dv), prec=prec, engine="mpmath")


__all__ = ["enclose", "enclose_mpmath", "row_shifts", "DEFAULT_PREC"]
