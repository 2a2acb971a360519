"""Streaming attention behind one interface: ``feed(chunk)``, ``finish() -> (indices, values)``, ``state_bytes()``.

Three algorithms (docs/streaming-attention.md; order ``kv_first`` unless stated):

- :class:`SufficientStatistics` — exact for the polynomial kernel: S_V = U₂ᵀV (t×d_v) and s = U₂ᵀ1 (t) from
  the key chunks (digest C1), then each query row r_i = φ(q_i)ᵀS_V / φ(q_i)ᵀs, of which only the k largest
  |entries| per column are kept (a running top-k). State O(t·d_v + k·d_v), no sketch.
- :class:`TiledOnlineSoftmax` — the reviewers' baseline: exact softmax by key tiles with the online
  (running max, rescaled sum) recurrence. It must keep K and V (O(n·d)) because queries come later (or,
  interleaved, because later keys change earlier rows): its state grows with n. Both orders.
- :class:`SketchedStreaming` — the paper's algorithm as the digest reconstructs it (B4, [R]): the same
  statistics, then each row goes into two CountSketches Φ (r×B×d_v) and Ψ (r′×B′×d_v) instead of being kept;
  hashes and signs are multiply-shift functions of seeds (never an r×n table). Decode: stage 1 estimates
  every index from Φ (median over rows, in chunks: O(chunk) working memory) and keeps 2k candidates per
  column; stage 2 re-estimates them with the independent Ψ and keeps the top k.

Guarantees declared (``guarantee``): with η a bound on |T̂_ij − T_ij| (polynomial relative error ε of the
weights: 2ε/(1 − ε)·max|V|, plus a float allowance), ‖y − H_k(T̂)‖ ≤ Err_k(y) + 2√n·η (triangle
inequality twice), so the statistics declare (0, 2√n·η, 0); the sketch declares (ε₁, (2 + ε₁)√n·η, δ).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from attnspec.accelerated import polynomial_features as pf
from attnspec.spec.streaming_attention import Chunk, Guarantee, reachable_bytes

U = 2.0**-53
_MASK64 = np.uint64(2**64 - 1)


def _top_k_merge(idx: np.ndarray, val: np.ndarray, new_idx: np.ndarray, new_val: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the k entries of largest |value| among the kept (d×m) and the new (d×c) ones."""
    all_idx = np.concatenate([idx, new_idx], axis=1)
    all_val = np.concatenate([val, new_val], axis=1)
    if all_idx.shape[1] <= k:
        return all_idx, all_val
    order = np.argsort(-np.abs(all_val), axis=1, kind="stable")[:, :k]
    return np.take_along_axis(all_idx, order, 1), np.take_along_axis(all_val, order, 1)


class _Base:
    orders: tuple[str, ...] = ("kv_first",)
    sublinear_state = True

    def __init__(self, *, n: int, d: int, dv: int, k: int, scale: float, bound: float, seed: int = 0):
        self.n, self.d, self.dv, self.k = int(n), int(d), int(dv), int(k)
        self.scale, self.bound, self.seed = float(scale), float(bound), int(seed)

    def feed(self, chunk: Chunk) -> None:
        raise NotImplementedError

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def state_bytes(self) -> int:
        return reachable_bytes(self)

    def consume(self, stream: Any) -> tuple[np.ndarray, np.ndarray]:
        for chunk in stream:
            self.feed(chunk)
        return self.finish()


class SufficientStatistics(_Base):
    """Exact streaming for the polynomial kernel (module docstring). ``rel_eps``: the polynomial's design
    relative error on the logit interval [−R, R], R = |s|·d·B²."""

    def __init__(self, *, rel_eps: float = 1e-10, **kw: Any):
        super().__init__(**kw)
        radius = abs(self.scale) * self.d * self.bound**2
        self.poly = pf.choose_polynomial(radius, rel_eps)
        t = pf.rank(self.d, self.poly.degree)
        self.weights = pf.query_column_weights(self.poly, self.d, self.scale)
        self.s_v = np.zeros((t, self.dv))
        self.s_1 = np.zeros(t)
        self.top_idx = np.zeros((self.dv, 0), dtype=np.int64)
        self.top_val = np.zeros((self.dv, 0))
        self.vmax = 0.0

    def entry_error(self) -> float:
        """η: bound on |T̂_ij − T_ij| (polynomial weights' relative error plus a float allowance)."""
        e = self.poly.claimed_rel_eps
        t = self.s_1.shape[0]
        floats = 8 * (t + self.n + self.d) * U * self.poly.cancellation_factor()
        return (2 * e / (1 - e) + floats) * self.vmax_bound

    @property
    def vmax_bound(self) -> float:
        return self.bound

    @property
    def guarantee(self) -> Guarantee:
        return Guarantee(0.0, 2 * math.sqrt(self.n) * self.entry_error(), 0.0)

    def absorb_keys(self, k: np.ndarray, v: np.ndarray) -> None:
        u2 = pf.key_features(k, self.poly)
        self.s_v += u2.T @ v
        self.s_1 += u2.sum(axis=0)

    def rows(self, q: np.ndarray) -> np.ndarray:
        u1 = pf.key_features(q, self.poly) * self.weights
        return (u1 @ self.s_v) / (u1 @ self.s_1)[:, None]

    def feed(self, chunk: Chunk) -> None:
        if chunk.kind == "kv":
            assert chunk.k is not None and chunk.v is not None
            self.absorb_keys(chunk.k, chunk.v)
        elif chunk.kind == "q":
            assert chunk.q is not None
            self.take_rows(chunk.start, self.rows(chunk.q))
        else:
            raise ValueError(f"{type(self).__name__} reads the kv_first order, got a {chunk.kind!r} chunk")

    def take_rows(self, start: int, rows: np.ndarray) -> None:
        idx = np.broadcast_to(np.arange(start, start + rows.shape[0]), (self.dv, rows.shape[0]))
        self.top_idx, self.top_val = _top_k_merge(self.top_idx, self.top_val, idx, rows.T, self.k)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        return self.top_idx.copy(), self.top_val.copy()


class TiledOnlineSoftmax(_Base):
    """Exact softmax attention by key tiles (online softmax); keeps K and V, so its state is O(n·d)."""

    orders = ("kv_first", "interleaved")
    sublinear_state = False

    def __init__(self, *, tile: int = 64, **kw: Any):
        super().__init__(**kw)
        self.tile = int(tile)
        self.keys: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self.queries: list[tuple[int, np.ndarray]] = []

    @property
    def guarantee(self) -> Guarantee:
        eta = 16 * (self.n + self.d + 16) * U * self.bound
        return Guarantee(0.0, 2 * math.sqrt(self.n) * eta, 0.0)

    def feed(self, chunk: Chunk) -> None:
        if chunk.k is not None and chunk.v is not None:
            self.keys.append(chunk.k)
            self.values.append(chunk.v)
        if chunk.q is not None:
            self.queries.append((chunk.start, chunk.q))

    def exact_rows(self, q: np.ndarray) -> np.ndarray:
        """Online softmax over key tiles: running max m, rescaled sum l and numerator acc."""
        k, v = np.concatenate(self.keys), np.concatenate(self.values)
        m = np.full(q.shape[0], -np.inf)
        l = np.zeros(q.shape[0])
        acc = np.zeros((q.shape[0], v.shape[1]))
        for a in range(0, k.shape[0], self.tile):
            logits = self.scale * (q @ k[a:a + self.tile].T)
            m_new = np.maximum(m, logits.max(axis=1))
            w = np.exp(logits - m_new[:, None])
            r = np.exp(m - m_new)
            l = l * r + w.sum(axis=1)
            acc = acc * r[:, None] + w @ v[a:a + self.tile]
            m = m_new
        return acc / l[:, None]

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        idx = np.zeros((self.dv, 0), dtype=np.int64)
        val = np.zeros((self.dv, 0))
        for start, q in self.queries:
            rows = self.exact_rows(q)
            new = np.broadcast_to(np.arange(start, start + q.shape[0]), (self.dv, q.shape[0]))
            idx, val = _top_k_merge(idx, val, new, rows.T, self.k)
        return idx, val


class SeededHashes:
    """r multiply-shift hashes [n] → [2^b] and signs [n] → {±1}, computed from r pairs of 64-bit seeds:
    h(i) = ((a·i + c) mod 2⁶⁴) >> (64 − b), sign from the top bit of a second such function. State O(r)."""

    def __init__(self, rows: int, log2_buckets: int, seed: int):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(0, 2**63, size=(rows, 2), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.c = rng.integers(0, 2**63, size=(rows, 2), dtype=np.uint64)
        self.shift = np.uint64(64 - log2_buckets)

    def __call__(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i = idx.astype(np.uint64)[None, :]
        with np.errstate(over="ignore"):
            hb = (self.a[:, 0:1] * i + self.c[:, 0:1]) >> self.shift
            sb = (self.a[:, 1:2] * i + self.c[:, 1:2]) >> np.uint64(63)
        return hb.astype(np.int64), 1.0 - 2.0 * sb.astype(np.float64)


class CountSketch:
    """C[ℓ, h_ℓ(i), :] += s_ℓ(i)·x_i; point estimate x̂_i = median_ℓ s_ℓ(i)·C[ℓ, h_ℓ(i), :]."""

    def __init__(self, rows: int, log2_buckets: int, width: int, seed: int):
        self.hashes = SeededHashes(rows, log2_buckets, seed)
        self.table = np.zeros((rows, 2**log2_buckets, width))

    def add(self, idx: np.ndarray, x: np.ndarray) -> None:
        h, s = self.hashes(idx)
        for ell in range(h.shape[0]):
            np.add.at(self.table[ell], h[ell], s[ell][:, None] * x)

    def estimate(self, idx: np.ndarray) -> np.ndarray:
        h, s = self.hashes(idx)
        picks = np.stack([s[ell][:, None] * self.table[ell][h[ell]] for ell in range(h.shape[0])])
        return np.median(picks, axis=0)  # (len(idx), width)


class SketchedStreaming(SufficientStatistics):
    """The paper's algorithm as reconstructed in the digest (module docstring).

    ``rows``, ``log2_buckets``: Φ's shape (Ψ the same with an independent seed); declared (ε₁, δ)."""

    def __init__(self, *, rows: int = 9, log2_buckets: int = 6, eps1: float = 0.25, delta: float = 0.01,
                 decode_chunk: int = 256, **kw: Any):
        super().__init__(**kw)
        self.phi = CountSketch(rows, log2_buckets, self.dv, self.seed * 2 + 1)
        self.psi = CountSketch(rows, log2_buckets, self.dv, self.seed * 2 + 2)
        self.eps1, self.delta, self.decode_chunk = float(eps1), float(delta), int(decode_chunk)

    @property
    def guarantee(self) -> Guarantee:
        float_slack = 64 * self.phi.table.shape[0] * U * self.bound * math.sqrt(self.n)
        return Guarantee(self.eps1, (2 + self.eps1) * math.sqrt(self.n) * self.entry_error() + float_slack, self.delta)

    def take_rows(self, start: int, rows: np.ndarray) -> None:
        idx = np.arange(start, start + rows.shape[0])
        self.phi.add(idx, rows)
        self.psi.add(idx, rows)

    def candidates(self, m: int) -> np.ndarray:
        """Stage 1: per column the m indices of largest |Φ estimate| (decode in chunks of indices)."""
        best_idx = np.zeros((self.dv, 0), dtype=np.int64)
        best_val = np.zeros((self.dv, 0))
        for a in range(0, self.n, self.decode_chunk):
            idx = np.arange(a, min(self.n, a + self.decode_chunk))
            est = self.phi.estimate(idx)
            best_idx, best_val = _top_k_merge(best_idx, best_val, np.broadcast_to(idx, (self.dv, idx.size)), est.T, m)
        return best_idx

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        cand = self.candidates(min(self.n, 2 * self.k))
        idx = np.zeros((self.dv, self.k), dtype=np.int64)
        val = np.zeros((self.dv, self.k))
        for c in range(self.dv):
            est = self.psi.estimate(cand[c])[:, c]  # stage 2: independent re-estimation
            order = np.argsort(-np.abs(est), kind="stable")[: self.k]
            idx[c], val[c] = cand[c][order], est[order]
        return idx, val


class StreamingBackend:
    """A conformance backend: ``streaming_attention(algorithm options) -> structure``."""

    def __init__(self, algorithm: type = SketchedStreaming, **options: Any):
        self.algorithm, self.options = algorithm, options

    def streaming_attention(self, **kw: Any) -> Any:
        return self.algorithm(**{**self.options, **kw})

    def __repr__(self) -> str:
        return f"StreamingBackend({self.algorithm.__name__})"


# Ready-made backends: ``attnspec conform --backend attnspec.accelerated.streaming_attention:sketched``.
sketched = StreamingBackend(SketchedStreaming)
statistics = StreamingBackend(SufficientStatistics)
online_softmax = StreamingBackend(TiledOnlineSoftmax)

__all__ = ["sketched", "statistics", "online_softmax", "SufficientStatistics", "TiledOnlineSoftmax", "SketchedStreaming", "CountSketch", "SeededHashes",
           "StreamingBackend"]
