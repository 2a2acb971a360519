"""Certified SDPA: Arb enclosures of chosen output rows (b, h, i), each over its visible key set.

For a row with visible set V ≠ ∅ and logits ℓ_j = s·⟨q, k_j⟩ + β_j (``attnspec.spec.sdpa``):

- the logits of the rows of one (b, h) are one Arb matrix product Q_rows·(s·K)ᵀ of the exact inputs
  (float entries are exact balls; s exact, a tight ball when it is not dyadic), at ``prec`` + b bits
  where every |ℓ| < 2^b (:func:`attnspec.reference.softmax_attention.logit_bits` plus the bias's
  exponent), so their absolute error is about 2^−prec whatever their size; the bias is added exactly;
- each row is shifted by the largest midpoint of its visible logit balls (any exact number is a
  valid shift: it cancels in the quotient, it only keeps exp in range), the weights are
  w_j = exp(ℓ_j − shift) for j ∈ V and exactly 0 for the masked keys;
- [numerator | normaliser] = W·[V | 1] by one ball matrix product, out = numerator / normaliser.

A fully masked row (V = ∅) is the exact 0 of the spec. The result is an
:class:`attnspec.reference.enclosure.Enclosure` of shape (len(rows), dv), row order as given.
Cost O(|rows|·n·d) ball operations and O(rows_per_head·n) balls of memory: long rows are judged on row
subsets (a case chooses its rows).
"""

from __future__ import annotations

import math

import numpy as np
from flint import arb, arb_mat

from attnspec.reference.enclosure import Enclosure, arb_matrix, default_threads, exact_arb, fraction_of, working_precision
from attnspec.reference.softmax_attention import logit_bits
from attnspec.spec.sdpa import SdpaInstance

DEFAULT_PREC = 128


def all_rows(inst: SdpaInstance) -> np.ndarray:
    """Every flat row index 0 … B·Hq·m − 1."""
    return np.arange(inst.num_rows, dtype=np.int64)


def _bias_bits(inst: SdpaInstance) -> int:
    if inst.bias is None:
        return 0
    b = inst.bias.astype(np.float64)
    finite = np.abs(b[np.isfinite(b)])
    top = float(finite.max(initial=0.0))
    return 0 if top == 0 else max(0, math.frexp(top)[1])


def _check_rows(inst: SdpaInstance, rows: np.ndarray | None) -> np.ndarray:
    if rows is None:
        return all_rows(inst)
    r = np.asarray(rows, dtype=np.int64).reshape(-1)
    if r.size and (r.min() < 0 or r.max() >= inst.num_rows):
        raise ValueError(f"sdpa rows must lie in [0, {inst.num_rows}), got {r.min()}…{r.max()}")
    return r


def enclose(inst: SdpaInstance, prec: int = DEFAULT_PREC, rows: np.ndarray | None = None) -> Enclosure:
    """Certified enclosure of the output rows ``rows`` (flat indices, None = all) at ``prec`` bits.

    Every ball contains the exact output entry of the spec (fully masked rows: the exact 0)."""
    rows_arr = _check_rows(inst, rows)
    dv, n = inst.dv, inst.n
    bits = max(logit_bits(inst.scale, [inst.q.reshape(-1, inst.d), inst.k.reshape(-1, inst.d)], inst.d),
               _bias_bits(inst)) + 1
    balls: list = [None] * (len(rows_arr) * dv)
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for pos, r in enumerate(rows_arr.tolist()):
        b, h, i = inst.row_coords(r)
        groups.setdefault((b, h), []).append((pos, i))
    v1_cache: dict[tuple[int, int], arb_mat] = {}
    with working_precision(prec + bits, threads=default_threads()):
        zero = arb(0)
        s = exact_arb(inst.scale)
        for (b, h), members in groups.items():
            kvh = inst.kv_head(h)
            idx = [i for _, i in members]
            vis = np.stack([inst.visible_block(b, h, i, i + 1, 0, n)[0] for i in idx])
            live = [t for t in range(len(idx)) if vis[t].any()]
            for t in range(len(idx)):
                if t not in live:
                    pos = members[t][0]
                    balls[pos * dv:(pos + 1) * dv] = [zero] * dv
            if not live:
                continue
            q_rows = inst.q[b, h][[idx[t] for t in live]].astype(np.float64)
            k_t = inst.k[b, kvh].astype(np.float64).T
            logits = (arb_matrix(q_rows) * arb_matrix(k_t)) * s
            flat = logits.entries()
            if (b, kvh) not in v1_cache:
                v1 = np.ones((n, dv + 1), dtype=np.float64)
                v1[:, :dv] = inst.v[b, kvh].astype(np.float64)
                v1_cache[(b, kvh)] = arb_matrix(v1)
            weights = []
            for row_no, t in enumerate(live):
                i = idx[t]
                row = flat[row_no * n:(row_no + 1) * n]
                bias = inst.bias_block(b, h, i, i + 1, 0, n)
                mask = vis[t]
                cols = np.flatnonzero(mask).tolist()
                if bias is not None:
                    brow = bias[0]
                    for j in cols:
                        row[j] = row[j] + arb(float(brow[j]))
                top = max((row[j].mid() for j in cols), key=fraction_of)
                w = [zero] * n
                for j in cols:
                    w[j] = (row[j] - top).exp()
                weights.append(w)
            numer = arb_mat(weights) * v1_cache[(b, kvh)]
            entries = numer.entries()
            for row_no, t in enumerate(live):
                pos = members[t][0]
                out = entries[row_no * (dv + 1):(row_no + 1) * (dv + 1)]
                denom = out[dv]
                balls[pos * dv:(pos + 1) * dv] = [x / denom for x in out[:dv]]
    return Enclosure(balls=balls, shape=(len(rows_arr), dv), prec=prec, engine="arb-sdpa")


def dense_reference_float(inst: SdpaInstance) -> np.ndarray:
    """A plain float64 evaluation of the spec with the full B×Hq×m×n matrix (tests, small sizes only):
    masked logits −inf, fully masked rows 0. Not certified."""
    q = inst.q.astype(np.float64)
    k = np.repeat(inst.k.astype(np.float64), inst.group, axis=1)
    v = np.repeat(inst.v.astype(np.float64), inst.group, axis=1)
    logits = float(inst.scale) * np.einsum("bhid,bhjd->bhij", q, k)
    vis = np.zeros(logits.shape, dtype=bool)
    for b in range(inst.batch):
        for h in range(inst.hq):
            vis[b, h] = inst.visible_block(b, h, 0, inst.m, 0, inst.n)
            bias = inst.bias_block(b, h, 0, inst.m, 0, inst.n)
            if bias is not None:
                logits[b, h] = logits[b, h] + np.where(vis[b, h], bias, 0.0)
    logits = np.where(vis, logits, -np.inf)
    top = logits.max(axis=-1, keepdims=True)
    w = np.where(vis, np.exp(logits - np.where(np.isfinite(top), top, 0.0)), 0.0)
    denom = w.sum(axis=-1, keepdims=True)
    out = np.einsum("bhij,bhjl->bhil", w, v) / np.where(denom > 0, denom, 1.0)
    return np.where(denom > 0, out, 0.0)


__all__ = ["enclose", "all_rows", "dense_reference_float", "DEFAULT_PREC"]
