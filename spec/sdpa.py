"""Scaled dot-product attention (SDPA) in production layouts: batch, heads, GQA/MQA, m ≠ n, masks.

Definition
----------
Inputs (exact values: a float entry means the dyadic rational it encodes)

    Q ∈ ℝ^{B×Hq×m×d},  K ∈ ℝ^{B×Hkv×n×d},  V ∈ ℝ^{B×Hkv×n×dv},   Hq = g·Hkv (g ≥ 1 an integer)

and an exact scale s (default: the float64 nearest 1/√d, :func:`default_scale`). Query head h reads
KV head h // g (grouped-query attention; Hkv = 1 is multi-query attention, g = 1 plain multi-head).

Visibility. Key j is *visible* to query row (b, h, i) iff every declared mask admits it:

- ``causal="top_left"`` (mask name ``causal_top_left``): j ≤ i;
- ``causal="bottom_right"`` (``causal_bottom_right``): j ≤ i + n − m;
- ``window=(left, right)`` (sliding window, either side None = unbounded) with the alignment offset
  o = 0 (``window_alignment="top_left"``) or o = n − m (``"bottom_right"``, the default; it must equal
  the causal alignment when both are given): i + o − left ≤ j ≤ i + o + right;
- ``attn_mask`` (boolean, broadcastable to B×Hq×m×n, True = attend, as in torch): attn_mask[b,h,i,j];
- ``bias`` (additive float, broadcastable to B×Hq×m×n, −inf allowed): bias[b,h,i,j] > −inf.

Every combination is allowed; the visible set is the intersection (causal with a window is the usual
"causal sliding window"). With V(b,h,i) the visible set of a row and β = bias (0 when absent):

    ℓ_j   = s·⟨q_{b,h,i}, k_{b,h//g,j}⟩ + β_{b,h,i,j}                     (j ∈ V(b,h,i))
    out_{b,h,i} = Σ_{j ∈ V} softmax_V(ℓ)_j · v_{b,h//g,j}                  (V ≠ ∅)
    out_{b,h,i} = 0                                                          (V = ∅: fully masked row)

Fully-masked rows. The softmax over an empty set is undefined; the spec defines the output as 0, the
value flash-attn documents ("If the row of the mask is all zero, the output will be zero") and torch's
math kernel returns (verified here, ``docs/sdpa.md``). It is the only choice that is the limit of the
computation as every logit of the row tends to −∞ *with the normaliser kept* (Σ exp → 0, and the
common online-softmax convention acc / max(l, tiny) → 0), and it keeps the output finite. A backend
whose convention differs declares it (``docs/sdpa.md``: the cases with such rows are then not
applicable to it, with the reason).

Validity (:class:`SpecError` naming the problem otherwise): Q, K, V 4-D with every dimension ≥ 1, one
supported float dtype (float16/32/64), finite; equal B; K, V equal Hkv and n; Q, K equal d; Hq a
multiple of Hkv; scale finite; causal/alignments known names; window sides None or integers ≥ 0; the
mask boolean and the bias a supported float dtype, each of ndim ≤ 4 and broadcastable to B×Hq×m×n;
the bias free of NaN and +inf.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from numbers import Integral
from typing import Any

import numpy as np

from attnspec.spec.softmax_attention import standard_scale
from attnspec.spec.validation import SUPPORTED_FLOAT_DTYPES, SpecError, exact_scalar, frozen_copy

PROBLEM = "sdpa"
ALIGNMENTS = ("top_left", "bottom_right")
MASK_NAMES = {"causal_top_left": "top_left", "causal_bottom_right": "bottom_right"}


def _err(message: str) -> SpecError:
    return SpecError(f"{PROBLEM}: {message}")


@dataclass(frozen=True, eq=False)
class SdpaInstance:
    """A validated SDPA instance (see the module docstring). Arrays are immutable private copies;
    ``attn_mask`` and ``bias`` are stored 4-D (leading size-1 axes added), still broadcastable."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    scale: Fraction
    causal: str | None = None
    window: tuple[int | None, int | None] | None = None
    window_alignment: str = "bottom_right"
    attn_mask: np.ndarray | None = None
    bias: np.ndarray | None = None

    # --- shape ------------------------------------------------------------------------------------
    @property
    def batch(self) -> int:
        return int(self.q.shape[0])

    @property
    def hq(self) -> int:
        return int(self.q.shape[1])

    @property
    def hkv(self) -> int:
        return int(self.k.shape[1])

    @property
    def group(self) -> int:
        """g = Hq / Hkv: query heads per KV head."""
        return self.hq // self.hkv

    @property
    def m(self) -> int:
        return int(self.q.shape[2])

    @property
    def n(self) -> int:
        return int(self.k.shape[2])

    @property
    def d(self) -> int:
        return int(self.q.shape[3])

    @property
    def dv(self) -> int:
        return int(self.v.shape[3])

    @property
    def dtype(self) -> np.dtype:
        return self.q.dtype

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.hq, self.m, self.dv)

    @property
    def num_rows(self) -> int:
        """B·Hq·m output rows; row r = ((b·Hq) + h)·m + i."""
        return self.batch * self.hq * self.m

    @property
    def has_mask(self) -> bool:
        return self.causal is not None or self.window is not None or self.attn_mask is not None or self.bias is not None

    def kv_head(self, h: int) -> int:
        """The KV head query head h reads: h // g."""
        return h // self.group

    def row_coords(self, r: int) -> tuple[int, int, int]:
        """(b, h, i) of flat row r."""
        bh, i = divmod(int(r), self.m)
        b, h = divmod(bh, self.hq)
        return b, h, i

    # --- masks --------------------------------------------------------------------------------------
    def visible_block(self, b: int, h: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Boolean (r1−r0)×(c1−c0): key j ∈ [c0, c1) visible to query i ∈ [r0, r1) of (b, h)."""
        i = np.arange(r0, r1)[:, None]
        j = np.arange(c0, c1)[None, :]
        vis = np.ones((r1 - r0, c1 - c0), dtype=bool)
        if self.causal is not None:
            vis &= j <= i + (0 if self.causal == "top_left" else self.n - self.m)
        if self.window is not None:
            off = 0 if self.window_alignment == "top_left" else self.n - self.m
            left, right = self.window
            if left is not None:
                vis &= j >= i + off - left
            if right is not None:
                vis &= j <= i + off + right
        if self.attn_mask is not None:
            vis &= _broadcast_block(self.attn_mask, b, h, r0, r1, c0, c1)
        if self.bias is not None:
            vis &= _broadcast_block(self.bias, b, h, r0, r1, c0, c1) > -np.inf
        return vis

    def structural_block_empty(self, r0: int, r1: int, c0: int, c1: int) -> bool:
        """True when the causal and window masks alone hide every key of [c0, c1) from every query
        of [r0, r1) (a key block an online softmax may skip), from the bounds of the index ranges."""
        lo, hi = c0, c1 - 1  # visible keys of row i form [i + a, i + b]; rows move the range monotonically
        if self.causal is not None:
            top = (r1 - 1) + (0 if self.causal == "top_left" else self.n - self.m)
            if lo > top:
                return True
        if self.window is not None:
            off = 0 if self.window_alignment == "top_left" else self.n - self.m
            left, right = self.window
            if left is not None and hi < r0 + off - left:
                return True
            if right is not None and lo > (r1 - 1) + off + right:
                return True
        return False

    def bias_block(self, b: int, h: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray | None:
        """The bias block as exact float64 (−inf kept), or None without a bias."""
        if self.bias is None:
            return None
        return _broadcast_block(self.bias, b, h, r0, r1, c0, c1).astype(np.float64)

    def visible(self, b: int, h: int, i: int) -> np.ndarray:
        """Indices of the keys visible to row (b, h, i)."""
        return np.flatnonzero(self.visible_block(b, h, i, i + 1, 0, self.n)[0])


def _broadcast_block(arr: np.ndarray, b: int, h: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """arr (4-D, broadcastable to B×Hq×m×n) at [b, h, r0:r1, c0:c1], broadcast to (r1−r0)×(c1−c0)."""
    bb = 0 if arr.shape[0] == 1 else b
    hh = 0 if arr.shape[1] == 1 else h
    rows = slice(0, 1) if arr.shape[2] == 1 else slice(r0, r1)
    cols = slice(0, 1) if arr.shape[3] == 1 else slice(c0, c1)
    return np.broadcast_to(arr[bb, hh, rows, cols], (r1 - r0, c1 - c0))


def default_scale(d: int) -> Fraction:
    """1/√d as torch and flash-attn default it: exact when d is a square, else the float64 nearest."""
    return standard_scale(d, "1/sqrt(d)")


def _tensor(x: Any, name: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception as exc:
            raise _err(f"{name} is not a rectangular array: {exc}") from None
    if x.ndim != 4:
        raise _err(f"{name} must be 4-D (batch × heads × length × dim), got {x.ndim}-D with shape {x.shape}")
    if min(x.shape) < 1:
        raise _err(f"{name} must have every dimension ≥ 1, got shape {x.shape}")
    if x.dtype not in SUPPORTED_FLOAT_DTYPES:
        raise _err(f"{name} has unsupported dtype {x.dtype}; use float16, float32 or float64")
    bad = ~np.isfinite(x)
    if bad.any():
        idx = tuple(int(t) for t in np.argwhere(bad)[0])
        raise _err(f"{name} has a non-finite entry {x[idx]!r} at {list(idx)}")
    return frozen_copy(x)


def _broadcastable(x: np.ndarray, name: str, target: tuple[int, ...]) -> np.ndarray:
    if x.ndim > 4:
        raise _err(f"{name} must have at most 4 dimensions (broadcastable to B×Hq×m×n = {target}), got shape {x.shape}")
    shape = (1,) * (4 - x.ndim) + tuple(x.shape)
    for got, want in zip(shape, target):
        if got not in (1, want):
            raise _err(f"{name} of shape {x.shape} is not broadcastable to B×Hq×m×n = {target}")
    return frozen_copy(x.reshape(shape))


def _window(window: Any) -> tuple[int | None, int | None] | None:
    if window is None:
        return None
    if isinstance(window, (str, bytes)) or not hasattr(window, "__len__") or len(window) != 2:
        raise _err(f"window must be a pair (left, right) of integers ≥ 0 or None, got {window!r}")
    out: list[int | None] = []
    for side, w in zip(("left", "right"), window):
        if w is None:
            out.append(None)
            continue
        if isinstance(w, (bool, np.bool_)) or not isinstance(w, Integral) or int(w) < 0:
            raise _err(f"window {side} must be an integer ≥ 0 or None, got {w!r}")
        out.append(int(w))
    if out[0] is None and out[1] is None:
        return None
    return (out[0], out[1])


def _alignment(value: Any, what: str) -> str:
    if isinstance(value, str) and value in MASK_NAMES:
        value = MASK_NAMES[value]
    if value not in ALIGNMENTS:
        raise _err(f"{what} must be one of {', '.join(ALIGNMENTS)} (or {', '.join(MASK_NAMES)}), got {value!r}")
    return str(value)


def make_instance(q: Any, k: Any, v: Any, *, scale: Any = None, causal: Any = None, window: Any = None,
                  window_alignment: Any = None, attn_mask: Any = None, bias: Any = None) -> SdpaInstance:
    """Validate inputs and build an :class:`SdpaInstance` (rules: module docstring).

    ``scale`` None means :func:`default_scale` (d). ``causal``: None, ``"top_left"``/``"bottom_right"``
    (or the mask names ``causal_top_left``/``causal_bottom_right``). ``window_alignment`` defaults to
    the causal alignment, else ``"bottom_right"``.
    """
    q, k, v = _tensor(q, "Q"), _tensor(k, "K"), _tensor(v, "V")
    if len({q.dtype, k.dtype, v.dtype}) != 1:
        raise _err(f"Q, K, V must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.shape[0] == k.shape[0] == v.shape[0]:
        raise _err(f"Q, K, V must share the batch size B: {q.shape[0]}, {k.shape[0]}, {v.shape[0]}")
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise _err(f"K and V must share the KV heads and length n: K {k.shape}, V {v.shape}")
    if q.shape[3] != k.shape[3]:
        raise _err(f"Q and K must share the head dimension d: Q {q.shape}, K {k.shape}")
    if q.shape[1] % k.shape[1]:
        raise _err(f"query heads Hq = {q.shape[1]} must be a multiple of the KV heads Hkv = {k.shape[1]} (GQA/MQA)")
    s = default_scale(int(q.shape[3])) if scale is None else exact_scalar(scale, f"{PROBLEM} scale")
    c = None if causal is None or causal is False else _alignment(causal, "causal")
    w = _window(window)
    if window_alignment is None:
        wa = c if c is not None else "bottom_right"
    else:
        wa = _alignment(window_alignment, "window_alignment")
        if c is not None and w is not None and wa != c:
            raise _err(f"window_alignment {wa!r} differs from the causal alignment {c!r}: one alignment per instance")
    target = (int(q.shape[0]), int(q.shape[1]), int(q.shape[2]), int(k.shape[2]))
    mask = None
    if attn_mask is not None:
        mask = np.asarray(attn_mask)
        if mask.dtype != np.bool_:
            raise _err(f"attn_mask must be boolean (True = attend), got dtype {mask.dtype}; pass an additive mask as bias")
        mask = _broadcastable(mask, "attn_mask", target)
    bias_arr = None
    if bias is not None:
        bias_arr = np.asarray(bias)
        if bias_arr.dtype not in SUPPORTED_FLOAT_DTYPES:
            raise _err(f"bias has unsupported dtype {bias_arr.dtype}; use float16, float32 or float64 (a boolean mask is attn_mask)")
        for what, bad in (("NaN", np.isnan(bias_arr)), ("+inf", np.isposinf(bias_arr))):
            if bad.any():
                idx = [int(t) for t in np.argwhere(bad)[0]]
                raise _err(f"bias has a {what} entry at {idx} (only −inf, meaning masked, may be non-finite)")
        bias_arr = _broadcastable(bias_arr, "bias", target)
    return SdpaInstance(q=q, k=k, v=v, scale=s, causal=c, window=w, window_alignment=wa, attn_mask=mask, bias=bias_arr)


def variant_tags(inst: SdpaInstance) -> set[str]:
    """The variants an instance uses, as a backend declares them (``docs/sdpa.md``): ``cross`` (m ≠ n),
    ``gqa`` (1 < Hkv < Hq), ``mqa`` (Hkv = 1 < Hq), ``batch`` (B > 1), ``causal_top_left``,
    ``causal_bottom_right``, ``window``, ``bool_mask``, ``bias``."""
    tags = set()
    if inst.m != inst.n:
        tags.add("cross")
    if inst.group > 1:
        tags.add("mqa" if inst.hkv == 1 else "gqa")
    if inst.batch > 1:
        tags.add("batch")
    if inst.causal is not None:
        tags.add(f"causal_{inst.causal}")
    if inst.window is not None:
        tags.add("window")
    if inst.attn_mask is not None:
        tags.add("bool_mask")
    if inst.bias is not None:
        tags.add("bias")
    return tags


def fully_masked_rows(inst: SdpaInstance, block: int = 1024) -> np.ndarray:
    """Flat indices of the rows with no visible key (O(B·Hq·m·n) mask work, blocked over keys)."""
    out: list[int] = []
    for b in range(inst.batch):
        for h in range(inst.hq):
            for r0 in range(0, inst.m, block):
                r1 = min(inst.m, r0 + block)
                any_vis = np.zeros(r1 - r0, dtype=bool)
                for c0 in range(0, inst.n, block):
                    c1 = min(inst.n, c0 + block)
                    if not inst.structural_block_empty(r0, r1, c0, c1):
                        any_vis |= inst.visible_block(b, h, r0, r1, c0, c1).any(axis=1)
                base = (b * inst.hq + h) * inst.m
                out.extend(base + r0 + np.flatnonzero(~any_vis))
    return np.array(out, dtype=np.int64)


def conditioning(inst: SdpaInstance, rows: np.ndarray | None = None) -> dict[str, float | int]:
    """Numbers that govern how hard the instance is (reported with each verdict), over ``rows``
    (flat indices; None = all): sizes, the most visible keys of a row, the largest |logit| and row
    logit range over visible keys, ‖V‖∞ and the number of fully masked rows among ``rows``."""
    rows_arr = np.arange(inst.num_rows) if rows is None else np.asarray(rows, dtype=np.int64)
    max_abs = 0.0
    max_range = 0.0
    max_vis = 0
    empty = 0
    q = inst.q.astype(np.float64)
    k = inst.k.astype(np.float64)
    s = float(inst.scale)
    for r in rows_arr.tolist():
        b, h, i = inst.row_coords(r)
        vis = inst.visible_block(b, h, i, i + 1, 0, inst.n)[0]
        cnt = int(vis.sum())
        max_vis = max(max_vis, cnt)
        if cnt == 0:
            empty += 1
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            logit = s * (k[b, inst.kv_head(h)] @ q[b, h, i])
            bias = inst.bias_block(b, h, i, i + 1, 0, inst.n)
            if bias is not None:
                logit = logit + bias[0]
        lv = logit[vis]
        max_abs = max(max_abs, float(np.abs(lv).max()))
        max_range = max(max_range, float(lv.max() - lv.min()))
    return {"batch": inst.batch, "hq": inst.hq, "hkv": inst.hkv, "m": inst.m, "n": inst.n, "d": inst.d,
            "max_visible_keys": max_vis, "fully_masked_rows": empty, "max_abs_logit": max_abs,
            "max_row_logit_range": max_range, "v_inf_norm": float(np.abs(inst.v.astype(np.float64)).max())}
