"""Certified softmax attention: enclosures of D⁻¹AV, A = exp(s·QKᵀ), for exact inputs.

Two independent engines:

- :func:`enclose` (python-flint / Arb): QKᵀ by Arb's matrix product of the exact inputs (rational
  inputs exactly in FLINT's fmpq_mat first), then per entry exp(s·L_ij − m_i) in balls, where the shift
  m_i is *any* exact number (we take the float64 row maximum): it cancels exactly in D⁻¹A, so it need
  not be certified, it only keeps exp in range. Then N = E·[V | 1] by one ball matrix product and
  out_il = N_il / N_i,d+1.
- :func:`enclose_mpmath` (mpmath's ``iv`` interval context): the same mathematics with plain loops,
  for small sizes; used to cross-check the Arb engine (the two enclosures must intersect).
"""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import numpy as np
from flint import arb, arb_mat

from attnspec.spec.softmax_attention import SoftmaxAttentionInstance
from attnspec.spec.validation import to_float64
from attnspec.reference.enclosure import Enclosure, arb_matrix, default_threads, exact_arb, exact_product, fraction_of, working_precision

DEFAULT_PREC = 128


def row_shifts(inst: SoftmaxAttentionInstance, rows: np.ndarray | None = None) -> np.ndarray:
    """Float64 approximations of each row's maximum logit (any finite value is a valid shift)."""
    q = inst.q if rows is None else inst.q[rows]
    with np.errstate(over="ignore", invalid="ignore"):  # non-finite rows fall back to the shift 0
        logits = float(inst.scale) * (to_float64(q) @ to_float64(inst.k).T)
    m = logits.max(axis=1)
    return np.where(np.isfinite(m), m, 0.0)


def logit_bits(scale, mats: list[np.ndarray], d: int) -> int:
    """A b ≥ 0 with every |logit| < 2^b: |s|·d·Π_m max|M_m| < 2^(e_s + bitlen(d) + Σ e_m) for the binary
    exponents e (|x| < 2^e), with no float64 product, so it holds where the logits overflow float64."""
    if float(scale) == 0:
        return 0
    bits = math.frexp(abs(float(scale)))[1] + int(d).bit_length()
    for m in mats:
        top = float(np.abs(to_float64(m)).max(initial=0.0))
        if top == 0:
            return 0
        bits += math.frexp(top)[1]
    return max(0, bits)


def enclose(inst: SoftmaxAttentionInstance, prec: int = DEFAULT_PREC, rows: np.ndarray | None = None) -> Enclosure:
    """Certified enclosure of Att(Q,K,V) = D⁻¹ exp(s·QKᵀ) V at ``prec`` bits of working precision.

    ``rows`` (a sorted 1-D int array; None = all): only those output rows, shape (len(rows), d_v), in
    O(|rows|·n·d) work: output row i depends on q_i and all of K, V only.

    Every returned ball contains the exact real output entry for the instance's exact inputs. Logits
    of magnitude up to 2^b are computed at ``prec`` + b bits, so that their *absolute* error (what exp
    turns into a relative error of the weights) is about 2^−prec whatever their size. Beyond
    :data:`HUGE_LOGIT_BITS` the float64 row maxima are too coarse a shift (exp of the shift's error
    would dwarf everything) and the shift is the largest logit ball's midpoint instead: any exact
    number is a valid shift, it cancels in D⁻¹A.
    """
    n, dv = inst.output_shape
    sel = None
    if rows is not None:
        sel = np.asarray(rows, dtype=np.int64).reshape(-1)
        if sel.size and (sel.min() < 0 or sel.max() >= n or np.any(np.diff(sel) <= 0)):
            raise ValueError(f"rows must be sorted, distinct and in [0, {n})")
    m = n if sel is None else len(sel)
    bits = logit_bits(inst.scale, [inst.q, inst.k], inst.d)
    huge = bits > HUGE_LOGIT_BITS
    shifts = np.zeros(m) if huge else row_shifts(inst, sel)
    with working_precision(prec + bits, threads=default_threads()):
        flat = shifted_logits(inst, shifts, sel).entries() if m else []
        if huge:
            flat = _shift_by_row_max(flat, n)
        exp = arb.exp
        if not m:
            return Enclosure(balls=[], shape=(0, dv), prec=prec)
        weights = arb_mat([list(map(exp, flat[i * n:(i + 1) * n])) for i in range(m)])
        v1 = np.empty((n, dv + 1), dtype=object)
        v1[:, :dv] = inst.v if inst.v.dtype == object else inst.v.astype(np.float64)
        v1[:, dv] = 1.0
        numer = weights * arb_matrix_mixed(v1)
        entries = numer.entries()
        out: list = []
        for i in range(m):
            row = entries[i * (dv + 1):(i + 1) * (dv + 1)]
            denom = row[dv]
            out.extend(x / denom for x in row[:dv])
    return Enclosure(balls=out, shape=(m, dv), prec=prec)


HUGE_LOGIT_BITS = 40  # below 2^40 the float64 shift is within ~2^-10 of the row maximum


def _shift_by_row_max(flat: list, n: int) -> list:
    """Row-major m×n logit balls minus, per row, the largest midpoint (an exact number)."""
    out: list = []
    for i in range(len(flat) // n):
        row = flat[i * n:(i + 1) * n]
        top = max((x.mid() for x in row), key=fraction_of)
        out.extend(x - top for x in row)
    return out


def shifted_logits(inst: SoftmaxAttentionInstance, shifts: np.ndarray, rows: np.ndarray | None = None) -> arb_mat:
    """Enclosure of s·QKᵀ − m·1ᵀ (m: the float row shifts) at the current precision.

    Float inputs: one ball matrix product [Q | −m]·[s·K | 1]ᵀ, so the scale and the shift cost O(n·d)
    instead of two n×n passes (the entries s·k are exact when s is dyadic; a ball otherwise).
    Rational inputs: the exact product QKᵀ first, then scale and shift as ball matrices.
    """
    q = inst.q if rows is None else inst.q[rows]
    n = q.shape[0]
    if q.dtype.kind == "f" and inst.k.dtype.kind == "f":
        left = np.hstack([q.astype(np.float64), -shifts.reshape(n, 1)])
        s = exact_arb(inst.scale)
        right = [[s * x for x in col] for col in inst.k.astype(np.float64).T.tolist()] + [[arb(1)] * inst.k.shape[0]]
        return arb_matrix(left) * arb_mat(right)
    logits = exact_product(q, inst.k) * exact_arb(inst.scale)
    return logits - arb_mat([[float(m)] for m in shifts]) * arb_mat([[1.0] * inst.k.shape[0]])


def arb_matrix_mixed(m: np.ndarray) -> arb_mat:
    """arb_mat from an object array mixing floats and Fractions (each taken exactly)."""
    if all(isinstance(x, float) for x in m.flat):
        return arb_matrix(m.astype(np.float64))
    return arb_mat([[exact_arb(x) for x in row] for row in m])


def _iv(x: Fraction | float):
    f = Fraction(x)
    return mpmath.iv.mpf(f.numerator) / f.denominator


def enclose_mpmath(inst: SoftmaxAttentionInstance, prec: int = DEFAULT_PREC) -> Enclosure:
    """Independent enclosure by mpmath interval arithmetic (O(n²d) Python loops: small n only).

    Returns balls converted exactly from mpmath's interval endpoints.
    """
    n, dv = inst.output_shape
    ctx = mpmath.iv
    old = ctx.prec
    ctx.prec = prec
    try:
        q = [[_iv(x) for x in row] for row in inst.q.tolist()]
        k = [[_iv(x) for x in row] for row in inst.k.tolist()]
        v = [[_iv(x) for x in row] for row in inst.v.tolist()]
        s = _iv(inst.scale)
        shifts = row_shifts(inst)
        out: list = []
        for i in range(n):
            m = _iv(float(shifts[i]))
            w = [ctx.exp(s * ctx.fsum(a * b for a, b in zip(q[i], k[j])) - m) for j in range(n)]
            denom = ctx.fsum(w)
            for col in range(dv):
                num = ctx.fsum(w[j] * v[j][col] for j in range(n))
                out.append(num / denom)
    finally:
        ctx.prec = old
    return Enclosure(balls=[_interval_to_ball(x, prec) for x in out], shape=(n, dv), prec=prec, engine="mpmath")


def _interval_to_ball(x, prec: int) -> arb:
    lo_raw, hi_raw = x._mpi_  # raw (sign, man, exp, bc) tuples of the two endpoints
    lo = _raw_mpf_fraction(lo_raw)
    hi = _raw_mpf_fraction(hi_raw)
    mid = (lo + hi) / 2
    with working_precision(prec + 64):
        # mid is dyadic, so exact_arb is exact; the radius is rounded up by arb's constructor.
        return arb(exact_arb(mid), exact_arb((hi - mid) * (1 + Fraction(1, 2**40))))


def _raw_mpf_fraction(raw: tuple) -> Fraction:
    sign, man, exp, _ = raw
    if man == 0:
        if exp != 0:  # mpmath encodes ±inf and nan with a zero mantissa and a special exponent
            raise ArithmeticError("mpmath interval endpoint is not finite")
        return Fraction(0)
    value = Fraction(int(man) * 2**exp) if exp >= 0 else Fraction(int(man), 2**-exp)
    return -value if sign else value


__all__ = ["enclose", "enclose_mpmath", "DEFAULT_PREC", "fraction_of"]
