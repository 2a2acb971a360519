"""Self-test catalogue: deliberately broken softmax-attention backends and correct variants.

Every BROKEN backend must be caught by the quick profile (some case fails or errors); every CORRECT one
must pass every case. Each entry says in its docstring which bug it models.
"""

from __future__ import annotations

import math

import numpy as np


def _softmax_rows(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _plain(q, k, v, scale):
    return _softmax_rows(scale * (q @ k.T)) @ v


def _blocked(q, k, v, scale, block, *, drop_last=False, double_last=False, rescale=True):
    """Online softmax over key blocks with running max m, running sum l and accumulator acc."""
    n = k.shape[0]
    m = np.full(q.shape[0], -np.inf)
    l = np.zeros(q.shape[0])
    acc = np.zeros((q.shape[0], v.shape[1]))
    stop = n - (n % block) if drop_last and n % block else n
    starts = list(range(0, stop, block))
    if double_last and n % block:
        starts.append(starts[-1])
    for s in starts:
        logits = scale * (q @ k[s:s + block].T)
        m_new = np.maximum(m, logits.max(axis=1))
        factor = np.exp(m - m_new) if rescale else np.ones_like(m)
        p = np.exp(logits - m_new[:, None])
        l = l * factor + p.sum(axis=1)
        acc = acc * factor[:, None] + p @ v[s:s + block]
        m = m_new
    return acc / l[:, None]


# ----------------------------------------------------------------------------------------- broken


class WrongScale:
    """Uses 1/√d whatever scale it is given."""

    def attention(self, q, k, v, *, scale):
        return _plain(q, k, v, 1 / math.sqrt(q.shape[1]))


class IgnoresScale:
    """Forgets to multiply the scores by the scale."""

    def attention(self, q, k, v, *, scale):
        return _plain(q, k, v, 1.0)


class NormalisesWrongAxis:
    """Softmax over the query axis (columns of A) instead of over keys."""

    def attention(self, q, k, v, *, scale):
        logits = scale * (q @ k.T)
        e = np.exp(logits - logits.max(axis=0, keepdims=True))
        return (e / e.sum(axis=0, keepdims=True)) @ v


class NoMaxShift:
    """exp of raw logits: overflows (inf/NaN) once logits pass ~709."""

    def attention(self, q, k, v, *, scale):
        e = np.exp(scale * (q @ k.T))
        return (e / e.sum(axis=1, keepdims=True)) @ v


class GlobalMaxShift:
    """Shifts by the global maximum: rows far below it underflow to 0/0."""

    def attention(self, q, k, v, *, scale):
        logits = scale * (q @ k.T)
        e = np.exp(logits - logits.max())
        return (e / e.sum(axis=1, keepdims=True)) @ v


class Float32ClaimingFloat64:
    """Computes in float32 while declaring float64 arithmetic."""

    capabilities = {"dtypes": {"float64"}}

    def attention(self, q, k, v, *, scale):
        f = np.float32
        return _plain(q.astype(f), k.astype(f), v.astype(f), f(scale)).astype(np.float64)


class DroppedLastBlock:
    """Blocked online softmax whose loop skips the final partial block of keys."""

    def attention(self, q, k, v, *, scale):
        return _blocked(q, k, v, scale, 16, drop_last=True)


class DoubleCountedLastBlock:
    """Blocked online softmax that processes the last full block twice when n is not a multiple."""

    def attention(self, q, k, v, *, scale):
        return _blocked(q, k, v, scale, 16, double_last=True)


class MissingRescale:
    """Online softmax that never rescales the accumulator when the running max grows."""

    def attention(self, q, k, v, *, scale):
        return _blocked(q, k, v, scale, 8, rescale=False)


class StaleCache:
    """Caches outputs by input shape: returns a previous answer for new data of the same shape."""

    def __init__(self):
        self._cache = {}

    def attention(self, q, k, v, *, scale):
        key = (q.shape, v.shape)
        if key not in self._cache:
            self._cache[key] = _plain(q, k, v, scale)
        return self._cache[key]


class KeysAsQueries:
    """Scores transposed: exp(s·KQᵀ) normalised over its rows."""

    def attention(self, q, k, v, *, scale):
        return _plain(k, q, v, scale)


class DropsTinyWeights:
    """A 'sparse' shortcut claiming exactness: weights below 1e-8 of the row maximum are zeroed."""

    def attention(self, q, k, v, *, scale):
        logits = scale * (q @ k.T)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        e[e < 1e-8] = 0.0
        return (e / e.sum(axis=1, keepdims=True)) @ v


class HalfPrecisionOutput:
    """Correct arithmetic, but the result passes through float16 on the way out."""

    def attention(self, q, k, v, *, scale):
        return _plain(q, k, v, scale).astype(np.float16)


class NoisyOutput:
    """Adds relative noise of 1e-10: far above what float64 arithmetic can explain."""

    def __init__(self):
        self._rng = np.random.default_rng(0)

    def attention(self, q, k, v, *, scale):
        out = _plain(q, k, v, scale)
        return out * (1 + 1e-10 * self._rng.standard_normal(out.shape))


class ValuesOffByOne:
    """Pairs weight j with value row j+1 (cyclically)."""

    def attention(self, q, k, v, *, scale):
        return _softmax_rows(scale * (q @ k.T)) @ np.roll(v, -1, axis=0)


class WrongShape:
    """Returns the transposed output."""

    def attention(self, q, k, v, *, scale):
        return _plain(q, k, v, scale).T


BROKEN = [
    WrongScale, IgnoresScale, NormalisesWrongAxis, NoMaxShift, GlobalMaxShift, Float32ClaimingFloat64,
    DroppedLastBlock, DoubleCountedLastBlock, MissingRescale, StaleCache, KeysAsQueries, DropsTinyWeights,
    HalfPrecisionOutput, NoisyOutput, ValuesOffByOne, WrongShape,
]


# ---------------------------------------------------------------------------------------- correct


class Plain:
    """Row-max shifted softmax, float64."""

    def attention(self, q, k, v, *, scale):
        return _plain(q, k, v, scale)


class ReversedKeyOrder:
    """Sums over keys in reverse order (a different rounding pattern)."""

    def attention(self, q, k, v, *, scale):
        return _plain(q, k[::-1], v[::-1], scale)


class SortedSummation:
    """Sums weights in ascending order (accurate summation order)."""

    def attention(self, q, k, v, *, scale):
        logits = scale * (q @ k.T)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        order = np.argsort(e, axis=1)
        denom = np.take_along_axis(e, order, axis=1).cumsum(axis=1)[:, -1]
        return (e @ v) / denom[:, None]


class LogSumExp:
    """Normalises in the log domain: exp(L − logsumexp(L))·V."""

    def attention(self, q, k, v, *, scale):
        logits = scale * (q @ k.T)
        m = logits.max(axis=1, keepdims=True)
        lse = m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
        return np.exp(logits - lse) @ v


def _online(block):
    class Online:
        __doc__ = f"Online (blocked) softmax with block size {block}."

        def attention(self, q, k, v, *, scale):
            return _blocked(q, k, v, scale, block)

    Online.__name__ = f"OnlineBlock{block}"
    return Online


class Float32Declared:
    """float32 arithmetic, honestly declared: judged by the float32 precision model."""

    capabilities = {"dtypes": {"float32"}}

    def attention(self, q, k, v, *, scale):
        f = np.float32
        return _plain(q.astype(f), k.astype(f), v.astype(f), f(scale))


CORRECT = [Plain, ReversedKeyOrder, SortedSummation, LogSumExp, _online(1), _online(7), _online(64), Float32Declared]
