"""Scaled dot-product attention with masks, GQA/MQA and m ≠ n on any array-API library (numpy, CuPy).

Computes the output of :mod:`attnspec.spec.sdpa` in the inputs' floating-point format (float32 or
float64) by a blocked online softmax (FlashAttention-style), vectorised over batch and heads, without
forming the m×n weight matrix of a head:

    for each key block [c0, c1):
        skip it when the causal/window masks hide it from every query (index arithmetic only);
        L   = s·Q·K_blkᵀ (+ bias_blk), and −inf where a key is not visible;
        m'  = max(m, rowmax L);  σ = m' where finite, else 0   (a row with nothing visible yet)
        α   = exp(m − σ),  P = exp(L − σ)                        (exp(−inf) = 0: masked keys weigh 0)
        l  ← α·l + rowsum P,   acc ← α·acc + P·V_blk,   m ← m'
    out = acc / l where l > 0, else 0                            (fully masked rows: the spec's 0)

GQA: Q is viewed as B×Hkv×g×m×d (query head h = kv·g + t reads KV head h // g = kv), so K and V are
broadcast over the g query heads of their group, never copied. Every exp argument is ≤ 0. A key's
weight is rescaled once per later non-skipped key block: at most ceil(n / block) − 1 times
(:func:`rescale_count`).

Memory: one B×Hq×m×block logit tile plus the accumulators, O(B·Hq·m·(block + dv)).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from attnspec.accelerated.array_namespace import array_namespace
from attnspec.spec.validation import SpecError, finite_real

PROBLEM = "sdpa"
SUPPORTED_DTYPE_NAMES = ("float32", "float64")
DEFAULT_KEY_BLOCK = 512


def rescale_count(n: int, block_size: int | None = None) -> int:
    """Most rescalings one key's weight undergoes: ceil(n / block) − 1."""
    b = min(n, DEFAULT_KEY_BLOCK) if block_size is None else int(block_size)
    return math.ceil(n / max(1, b)) - 1


def _offset(alignment: str, m: int, n: int) -> int:
    return 0 if alignment == "top_left" else n - m


def _block_hidden(causal: str | None, window: Any, walign: str, m: int, n: int, c0: int, c1: int) -> bool:
    """True when causal/window hide keys [c0, c1) from every query row 0 … m − 1."""
    if causal is not None and c0 > (m - 1) + _offset(causal, m, n):
        return True
    if window is not None:
        off = _offset(walign, m, n)
        left, right = window
        if left is not None and c1 - 1 < off - left:
            return True
        if right is not None and c0 > (m - 1) + off + right:
            return True
    return False


def _as_4d(xp: Any, x: Any, name: str, target: tuple[int, int, int, int]) -> Any:
    arr = xp.asarray(x)
    if arr.ndim > 4:
        raise SpecError(f"sdpa: {name} must have at most 4 dimensions, got shape {tuple(arr.shape)}")
    shape = (1,) * (4 - arr.ndim) + tuple(arr.shape)
    if any(g not in (1, w) for g, w in zip(shape, target)):
        raise SpecError(f"sdpa: {name} of shape {tuple(arr.shape)} is not broadcastable to {target}")
    return xp.reshape(arr, shape)


def sdpa(q: Any, k: Any, v: Any, *, scale: Any, causal: str | None = None, window: Any = None,
         window_alignment: str | None = None, attn_mask: Any = None, bias: Any = None,
         block_size: int | None = None) -> Any:
    """The SDPA output (B×Hq×m×dv, same library and dtype as ``q``) by a blocked online softmax.

    ``q``: B×Hq×m×d, ``k``: B×Hkv×n×d, ``v``: B×Hkv×n×dv, Hq a multiple of Hkv; ``causal`` None,
    ``"top_left"`` or ``"bottom_right"``; ``window`` (left, right) with None sides, aligned by
    ``window_alignment`` (default: the causal alignment, else bottom-right); ``attn_mask`` boolean and
    ``bias`` float (−inf = masked), broadcastable to B×Hq×m×n. Raises :class:`SpecError` for bad shapes,
    dtypes, a non-finite scale or an unknown alignment.
    """
    xp = array_namespace(q, k, v)
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise SpecError(f"sdpa: Q, K, V must be 4-D, got {q.ndim}-D, {k.ndim}-D, {v.ndim}-D")
    bsz, hq, m, d = (int(t) for t in q.shape)
    _, hkv, n, _ = (int(t) for t in k.shape)
    dv = int(v.shape[3])
    if k.shape[0] != bsz or v.shape[0] != bsz or k.shape[3] != d or tuple(v.shape[1:3]) != (hkv, n) or hkv < 1 or hq % hkv:
        raise SpecError(f"sdpa: incompatible shapes Q {tuple(q.shape)}, K {tuple(k.shape)}, V {tuple(v.shape)}")
    dtype = q.dtype
    if not (dtype == k.dtype == v.dtype) or str(dtype).split(".")[-1] not in SUPPORTED_DTYPE_NAMES:
        raise SpecError(f"sdpa: Q, K, V must all be float32 or all float64, got {q.dtype}, {k.dtype}, {v.dtype}")
    s = finite_real(scale, "sdpa scale")
    for name, val in (("causal", causal), ("window_alignment", window_alignment)):
        if val is not None and val not in ("top_left", "bottom_right"):
            raise SpecError(f"sdpa: {name} must be 'top_left' or 'bottom_right', got {val!r}")
    walign = window_alignment or causal or "bottom_right"
    g = hq // hkv
    block = min(n, DEFAULT_KEY_BLOCK) if block_size is None else int(block_size)
    if block < 1:
        raise SpecError(f"sdpa: block_size must be ≥ 1, got {block_size!r}")
    target = (bsz, hq, m, n)
    mask4 = None if attn_mask is None else _as_4d(xp, attn_mask, "attn_mask", target)
    bias4 = None if bias is None else xp.astype(_as_4d(xp, bias, "bias", target), dtype)
    neg_inf = float("-inf")
    qg = xp.reshape(q, (bsz, hkv, g, m, d))
    m_run = xp.full((bsz, hkv, g, m), neg_inf, dtype=dtype)
    l_run = xp.zeros((bsz, hkv, g, m), dtype=dtype)
    acc = xp.zeros((bsz, hkv, g, m, dv), dtype=dtype)
    rows = xp.reshape(xp.arange(m), (m, 1))
    for c0 in range(0, n, block):
        c1 = min(n, c0 + block)
        if _block_hidden(causal, window, walign, m, n, c0, c1):
            continue  # a key block no query may see: no work, no rescaling
        cols = xp.reshape(xp.arange(c0, c1), (1, c1 - c0))
        vis = xp.ones((m, c1 - c0), dtype=xp.bool)
        if causal is not None:
            vis = vis & (cols <= rows + _offset(causal, m, n))
        if window is not None:
            off = _offset(walign, m, n)
            if window[0] is not None:
                vis = vis & (cols >= rows + off - int(window[0]))
            if window[1] is not None:
                vis = vis & (cols <= rows + off + int(window[1]))
        full = xp.broadcast_to(vis, (bsz, hq, m, c1 - c0))
        if mask4 is not None:
            full = full & xp.broadcast_to(mask4[..., c0:c1] if mask4.shape[3] > 1 else mask4, (bsz, hq, m, c1 - c0))
        kb = k[:, :, None, c0:c1, :]
        logits = (qg @ xp.permute_dims(kb, (0, 1, 2, 4, 3))) * xp.asarray(s, dtype=dtype)
        if bias4 is not None:
            bb = xp.broadcast_to(bias4[..., c0:c1] if bias4.shape[3] > 1 else bias4, (bsz, hq, m, c1 - c0))
            full = full & (bb > neg_inf)
            logits = logits + xp.reshape(bb, (bsz, hkv, g, m, c1 - c0))
        visg = xp.reshape(full, (bsz, hkv, g, m, c1 - c0))
        if not bool(xp.any(visg)):
            continue
        logits = xp.where(visg, logits, xp.asarray(neg_inf, dtype=dtype))
        m_new = xp.maximum(m_run, xp.max(logits, axis=-1))
        shift = xp.where(m_new == neg_inf, xp.zeros_like(m_new), m_new)
        alpha = xp.exp(m_run - shift)
        p = xp.exp(logits - shift[..., None])
        l_run = alpha * l_run + xp.sum(p, axis=-1)
        acc = alpha[..., None] * acc + p @ v[:, :, None, c0:c1, :]
        m_run = m_new
    live = l_run > 0
    out = acc / xp.where(live, l_run, xp.ones_like(l_run))[..., None]
    out = xp.where(live[..., None], out, xp.zeros_like(out))
    return xp.reshape(out, (bsz, hq, m, dv))


def sdpa_numpy(q: np.ndarray, k: np.ndarray, v: np.ndarray, **kwargs: Any) -> np.ndarray:
    """:func:`sdpa` on host numpy arrays (the numpy backend's entry point)."""
    return np.asarray(sdpa(np.asarray(q), np.asarray(k), np.asarray(v), **kwargs))


def structural_mask(m: int, n: int, *, causal: str | None = None, window: Any = None,
                    window_alignment: str | None = None) -> np.ndarray:
    """The m×n boolean visibility of the causal and window masks alone (True = attend), for adapters
    that pass masks to a library as an array (the torch backend)."""
    walign = window_alignment or causal or "bottom_right"
    i = np.arange(m)[:, None]
    j = np.arange(n)[None, :]
    vis = np.ones((m, n), dtype=bool)
    if causal is not None:
        vis &= j <= i + _offset(causal, m, n)
    if window is not None:
        off = _offset(walign, m, n)
        if window[0] is not None:
            vis &= j >= i + off - int(window[0])
        if window[1] is not None:
            vis &= j <= i + off + int(window[1])
    return vis
