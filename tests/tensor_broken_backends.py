"""Self-test catalogue for tensor attention: deliberately broken backends and correct variants.

Every BROKEN backend must be caught by the quick profile (some case fails or errors); every CORRECT one
must pass every applicable case. Each docstring says which bug or which legitimate variation it models.
All of them speak ``tensor_attention(q, keys, values, *, scale)`` for any order k = len(keys) + 1.
"""

from __future__ import annotations

import itertools

import numpy as np

from attnspec.accelerated.tensor_attention import tensor_attention as blocked_exact


def _tuples(n: int, factors: int) -> np.ndarray:
    """All key tuples, lexicographic (j₁ slowest), as an (n^{factors} × factors) index array."""
    return np.array(list(itertools.product(range(n), repeat=factors)), dtype=np.int64).reshape(-1, factors)


def _rows(mats, idx):
    out = mats[0][idx[:, 0]].astype(np.float64)
    for m in range(1, len(mats)):
        out = out * mats[m][idx[:, m]]
    return out


def _softmax_out(logits, vr):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e @ vr) / e.sum(axis=1, keepdims=True)


def _dense(q, keys, values, scale, *, key_idx=None, value_idx=None, key_mats=None, value_mats=None):
    """Brute force over all tuples, with optional (buggy) index maps for the key and value sides."""
    n = q.shape[0]
    idx = _tuples(n, len(keys))
    kr = _rows(key_mats or keys, idx if key_idx is None else key_idx(idx))
    vr = _rows(value_mats or values, idx if value_idx is None else value_idx(idx))
    return _softmax_out(scale * (q @ kr.T), vr)


# ----------------------------------------------------------------------------------------- broken


class WrongValuePairing:
    """Pairs the value rows of a tuple the wrong way round: V₁[j_{k−1}] ∘ … ∘ V_{k−1}[j₁]."""

    def tensor_attention(self, q, keys, values, *, scale):
        return _dense(q, keys, values, scale, value_idx=lambda idx: idx[:, ::-1])


class NormalisesOverLastIndexOnly:
    """Softmax over j_{k−1} alone for each (i, j₁…j_{k−2}), then an average over the outer indices:
    still a convex combination of value rows, but not the tensor softmax."""

    def tensor_attention(self, q, keys, values, *, scale):
        n = q.shape[0]
        idx = _tuples(n, len(keys))
        logits = scale * (q @ _rows(keys, idx).T)  # n × n^{k−1}, last index fastest
        blocks = logits.reshape(n, -1, n)
        e = np.exp(blocks - blocks.max(axis=2, keepdims=True))
        w = (e / e.sum(axis=2, keepdims=True)).reshape(n, -1) / (n ** (len(keys) - 1))
        return w @ _rows(values, idx)


class SwappedKeys:
    """Uses K₂ where K₁ belongs and K₁ where K₂ belongs (values paired correctly)."""

    def tensor_attention(self, q, keys, values, *, scale):
        return _dense(q, keys, values, scale, key_mats=list(keys)[::-1])


class IgnoresScale:
    """Forgets the scale s."""

    def tensor_attention(self, q, keys, values, *, scale):
        return _dense(q, keys, values, 1.0)


class FirstValueOnly:
    """Uses V₁⊘V₁⊘… (the first value matrix for every factor)."""

    def tensor_attention(self, q, keys, values, *, scale):
        return _dense(q, keys, values, scale, value_mats=[values[0]] * len(values))


class SumsValues:
    """Combines the value rows of a tuple by a sum instead of a Hadamard product."""

    def tensor_attention(self, q, keys, values, *, scale):
        n = q.shape[0]
        idx = _tuples(n, len(keys))
        vr = sum(v[idx[:, m]] for m, v in enumerate(values))
        return _softmax_out(scale * (q @ _rows(keys, idx).T), vr)


class ThirdOrderOnly:
    """Ignores every key/value matrix after the second (wrong for k = 4; exact for k ≤ 3)."""

    def tensor_attention(self, q, keys, values, *, scale):
        return _dense(q, list(keys)[:2], list(values)[:2], scale)


class DropsLastBlock:
    """Blocked online softmax that silently drops the last, partial block of key tuples."""

    block = 8

    def tensor_attention(self, q, keys, values, *, scale):
        n = q.shape[0]
        idx = _tuples(n, len(keys))
        total = len(idx)
        keep = total - total % self.block if total % self.block and total > self.block else total
        idx = idx[:keep]
        return _softmax_out(scale * (q @ _rows(keys, idx).T), _rows(values, idx))


class NoRescale:
    """Online softmax that never rescales the running sums when the maximum grows."""

    block = 5

    def tensor_attention(self, q, keys, values, *, scale):
        n = q.shape[0]
        idx = _tuples(n, len(keys))
        m = np.full(n, -np.inf)
        total = np.zeros(n)
        acc = np.zeros((n, values[0].shape[1]))
        for t0 in range(0, len(idx), self.block):
            part = idx[t0:t0 + self.block]
            logits = scale * (q @ _rows(keys, part).T)
            m = np.maximum(m, logits.max(axis=1))
            p = np.exp(logits - m[:, None])
            total += p.sum(axis=1)
            acc += p @ _rows(values, part)
        return acc / total[:, None]


class Float32Inside:
    """Computes in float32 while declaring float64 (the precision model catches the lost digits)."""

    def tensor_attention(self, q, keys, values, *, scale):
        f = np.float32
        out = blocked_exact(q.astype(f), [k.astype(f) for k in keys], [v.astype(f) for v in values], scale=float(scale))
        return out.astype(np.float64)


class NoShift:
    """Unshifted exp: overflows (inf/NaN) once logits pass ~709."""

    def tensor_attention(self, q, keys, values, *, scale):
        n = q.shape[0]
        idx = _tuples(n, len(keys))
        with np.errstate(over="ignore", invalid="ignore"):
            e = np.exp(scale * (q @ _rows(keys, idx).T))
            return (e @ _rows(values, idx)) / e.sum(axis=1, keepdims=True)


BROKEN = [WrongValuePairing, NormalisesOverLastIndexOnly, SwappedKeys, IgnoresScale, FirstValueOnly, SumsValues,
          ThirdOrderOnly, DropsLastBlock, NoRescale, Float32Inside, NoShift]


# ---------------------------------------------------------------------------------------- correct


class PaperRowOrder:
    """The paper's ⊘ convention (j₁ fastest) on both the key and the value side: same output."""

    def tensor_attention(self, q, keys, values, *, scale):
        n = q.shape[0]
        idx = _tuples(n, len(keys))[:, ::-1]  # column-reversed lexicographic list: j₁ varies fastest
        kr = _rows(keys, idx)
        vr = _rows(values, idx)
        return _softmax_out(scale * (q @ kr.T), vr)


class FactoredSums:
    """k = 3 by nested sums Σ_{j₁} V₁[j₁] Σ_{j₂} w V₂[j₂] with a global shift (other k: dense)."""

    def tensor_attention(self, q, keys, values, *, scale):
        if len(keys) != 2:
            return _dense(q, keys, values, scale)
        k1, k2 = keys
        v1, v2 = values
        logits = scale * np.einsum("it,at,bt->iab", q, k1, k2)
        e = np.exp(logits - logits.max(axis=(1, 2), keepdims=True))
        inner = np.einsum("iab,bl->ial", e, v2)
        num = np.einsum("ial,al->il", inner, v1)
        return num / e.sum(axis=(1, 2))[:, None]


class BlockedTiny:
    """attnspec's blocked exact kernel with blocks of 3 tuples (many rescalings, ragged last block)."""

    def tensor_attention(self, q, keys, values, *, scale):
        return blocked_exact(q, keys, values, scale=scale, block_size=3)


class BlockedOneShot:
    """attnspec's blocked exact kernel with one block holding every tuple."""

    def tensor_attention(self, q, keys, values, *, scale):
        return blocked_exact(q, keys, values, scale=scale, block_size=10**9)


class PermutedTuples:
    """Visits the key tuples in a random order (keys and values permuted together): same output."""

    def tensor_attention(self, q, keys, values, *, scale):
        n = q.shape[0]
        idx = _tuples(n, len(keys))
        idx = idx[np.random.default_rng(len(idx)).permutation(len(idx))]
        return _softmax_out(scale * (q @ _rows(keys, idx).T), _rows(values, idx))


CORRECT = [PaperRowOrder, FactoredSums, BlockedTiny, BlockedOneShot, PermutedTuples]
