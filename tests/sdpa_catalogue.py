"""Self-test catalogue for ``sdpa``: deliberately broken masked / GQA kernels and correct variants.

Every BROKEN backend must be caught by the quick profile (some case fails or errors); every CORRECT one
must pass every applicable case. Each class says in its docstring which bug (or convention) it models.
All compute densely in the case dtype (small sizes), one configurable kernel with one bug switched on.
"""

from __future__ import annotations

import numpy as np

ALL = ["cross", "gqa", "mqa", "causal_top_left", "causal_bottom_right", "window", "bool_mask", "bias"]


class _Dense:
    """A dense SDPA kernel in the inputs' dtype; class attributes switch on one bug each."""

    fully_masked = "zero"
    swap_alignment = False
    ignore_mask = False
    head_modulo = False
    bias_after_softmax = False
    window_left_extra = 0
    nan_rows = False
    uniform_rows = False

    @property
    def capabilities(self):
        return {"problems": {"sdpa"}, "dtypes": {"float64", "float32"},
                "variants": {"sdpa": {"supports": ALL, "fully_masked": self.fully_masked}}}

    def _visible(self, m, n, causal, window, walign):
        i = np.arange(m)[:, None]
        j = np.arange(n)[None, :]
        vis = np.ones((m, n), dtype=bool)
        if causal is not None:
            align = causal
            if self.swap_alignment:
                align = "top_left" if causal == "bottom_right" else "bottom_right"
            vis &= j <= i + (0 if align == "top_left" else n - m)
        if window is not None:
            off = 0 if walign == "top_left" else n - m
            if window[0] is not None:
                vis &= j >= i + off - window[0] - self.window_left_extra
            if window[1] is not None:
                vis &= j <= i + off + window[1]
        return vis

    def sdpa(self, q, k, v, *, scale, causal=None, window=None, window_alignment=None, attn_mask=None, bias=None):
        dt = q.dtype
        b, hq, m, _ = q.shape
        hkv, n = k.shape[1], k.shape[2]
        g = hq // hkv
        heads = np.arange(hq) % hkv if self.head_modulo else np.arange(hq) // g
        kk, vv = k[:, heads], v[:, heads]
        logits = np.einsum("bhid,bhjd->bhij", q, kk) * dt.type(scale)
        vis = np.broadcast_to(self._visible(m, n, causal, window, window_alignment), logits.shape).copy()
        if attn_mask is not None and not self.ignore_mask:
            vis &= np.broadcast_to(attn_mask, logits.shape)
        if bias is not None:
            bias = np.broadcast_to(bias.astype(dt), logits.shape)
            vis &= bias > -np.inf
            if not self.bias_after_softmax:
                logits = logits + np.where(vis, bias, 0).astype(dt)
        neg = dt.type(-np.finfo(dt).max) if self.uniform_rows else dt.type(-np.inf)
        logits = np.where(vis, logits, neg)
        top = logits.max(axis=-1, keepdims=True)
        with np.errstate(invalid="ignore"):
            w = np.exp(logits - (top if self.uniform_rows or self.nan_rows else np.where(np.isfinite(top), top, 0)))
            p = w / w.sum(axis=-1, keepdims=True)
        if self.bias_after_softmax and bias is not None:
            p = p + np.where(vis, bias, 0).astype(dt)
        if not (self.uniform_rows or self.nan_rows):
            p = np.where(np.isnan(p), 0, p).astype(dt)
        return np.einsum("bhij,bhjl->bhil", p, vv).astype(dt)


# ----------------------------------------------------------------------------------------- broken


class WrongCausalAlignment(_Dense):
    """Applies the other causal alignment (torch's top-left where bottom-right is asked, and back)."""

    swap_alignment = True


class IgnoresBoolMask(_Dense):
    """Drops the boolean attn_mask."""

    ignore_mask = True


class GqaHeadModulo(_Dense):
    """Maps query head h to KV head h % Hkv instead of h // (Hq/Hkv)."""

    head_modulo = True


class BiasAfterSoftmax(_Dense):
    """Adds the bias to the probabilities instead of the logits."""

    bias_after_softmax = True


class WindowOffByOne(_Dense):
    """Lets one extra key in on the left of a sliding window."""

    window_left_extra = 1


class FullyMaskedNaNDeclaredZero(_Dense):
    """Returns NaN (0/0) on fully masked rows while declaring the spec's zero convention."""

    nan_rows = True


class FullyMaskedUniformDeclaredZero(_Dense):
    """Masks with a finite large negative number (fully masked rows: the mean of V) but declares zero."""

    uniform_rows = True


BROKEN = [WrongCausalAlignment, IgnoresBoolMask, GqaHeadModulo, BiasAfterSoftmax, WindowOffByOne,
          FullyMaskedNaNDeclaredZero, FullyMaskedUniformDeclaredZero]


# ---------------------------------------------------------------------------------------- correct


class DenseCorrect(_Dense):
    """The dense kernel without a bug."""


class FullyMaskedNaNDeclared(_Dense):
    """NaN on fully masked rows, declared (``fully_masked = "nan"``): those cases are not applicable."""

    nan_rows = True
    fully_masked = "nan"


class FullyMaskedUniformDeclared(_Dense):
    """JAX's convention (a finite large-negative mask: the mean of V on fully masked rows), declared."""

    uniform_rows = True
    fully_masked = "uniform"


CORRECT = [DenseCorrect, FullyMaskedNaNDeclared, FullyMaskedUniformDeclared]
