"""Backends that are wrong only on Gap-MaxIP-reduction-shaped inputs (zero query rows, all-zero or
repeated key rows, 0/1-pattern values) and right on the generic conformance cases: each docstring names
the bug. The reduction must catch every one (a wrong decoded answer, an inconsistent answer, or a
failed certified judgement)."""

from __future__ import annotations

import numpy as np

from attnspec.accelerated.softmax_attention import softmax_attention
from attnspec.accelerated.tensor_attention import tensor_attention

CAPS = {"problems": {"softmax_attention", "tensor_attention"}, "dtypes": {"float64"}, "deterministic": True}


def _softmax(q, k, v, scale):
    logits = scale * (q @ k.T)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e @ v) / e.sum(axis=1, keepdims=True)


def _padded(q: np.ndarray) -> bool:
    return bool((np.abs(q).sum(axis=1) == 0).any())


class MasksZeroKeys:
    """Treats all-zero key rows as padding and masks them out (a padding-mask heuristic)."""

    capabilities = CAPS

    def attention(self, q, k, v, *, scale):
        keep = np.abs(k).sum(axis=1) > 0
        if keep.all() or not keep.any():
            return softmax_attention(q, k, v, scale=scale)
        return _softmax(q, k[keep], v[keep], scale)


class DedupesRepeatedKeys:
    """Caches key rows by value: repeated rows (the dummy keys) are counted once."""

    capabilities = CAPS

    def attention(self, q, k, v, *, scale):
        _, first = np.unique(k, axis=0, return_index=True)
        if first.size == k.shape[0]:
            return softmax_attention(q, k, v, scale=scale)
        keep = np.sort(first)
        return _softmax(q, k[keep], v[keep], scale)


def _dense_tensor(q, keys, values, scale, *, drop_last=False, reverse_values=False):
    n = q.shape[0]
    grids = np.meshgrid(*[np.arange(n)] * len(keys), indexing="ij")
    idx = np.stack([g.ravel() for g in grids], axis=1)  # lexicographic, j₁ slowest
    kr = np.ones((idx.shape[0], q.shape[1]))
    for m, key in enumerate(keys):
        kr = kr * key[idx[:, m]]
    vidx = idx[:, ::-1] if reverse_values else idx
    vr = np.ones((idx.shape[0], values[0].shape[1]))
    for m, val in enumerate(values):
        vr = vr * val[vidx[:, m]]
    if drop_last:
        kr, vr = kr[:-1], vr[:-1]
    logits = scale * (q @ kr.T)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e @ vr) / e.sum(axis=1, keepdims=True)


class DropsLastTupleWhenPadded:
    """Off-by-one in the last block, triggered only when some query row is zero: the last key tuple is lost."""

    capabilities = CAPS

    def tensor_attention(self, q, keys, values, *, scale):
        if _padded(q):
            return _dense_tensor(q, keys, values, scale, drop_last=True)
        return tensor_attention(q, keys, values, scale=scale)


class ReversesKroneckerOnBinaryValues:
    """A fast path for 0/1 value matrices that combines V₁⊘V₂ in the other factor order (V row of tuple
    (j₁, j₂) taken from (j₂, j₁)); the keys keep the right order."""

    capabilities = CAPS

    def tensor_attention(self, q, keys, values, *, scale):
        if all(np.isin(v, (0.0, 1.0)).all() for v in values):
            return _dense_tensor(q, keys, values, scale, reverse_values=True)
        return tensor_attention(q, keys, values, scale=scale)


class LiesAboutFloat16:
    """Computes in float16 but declares float64 (its declared precision model is wrong)."""

    capabilities = CAPS

    def attention(self, q, k, v, *, scale):
        h = np.float16
        logits = (q.astype(h) @ k.astype(h).T) * h(scale)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return np.asarray((e @ v.astype(h)) / e.sum(axis=1, keepdims=True), dtype=np.float64)
