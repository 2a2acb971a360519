"""Streaming backends for the conformance tests: correct ones that must pass, broken ones that must fail.

Each broken one breaks exactly one thing the suite checks: the one-pass model, the state measurement, the
estimator, the sparse-recovery threshold, or the declared failure probability.
"""

from __future__ import annotations

import numpy as np

from attnspec.accelerated.streaming_attention import (SketchedStreaming, StreamingBackend, SufficientStatistics,
                                                      TiledOnlineSoftmax)
from attnspec.spec.streaming_attention import Guarantee, SecondPassError


class TwoPasses(SufficientStatistics):
    """Reads the stream, then tries to read it again (a second pass), ignoring the refusal."""

    def consume(self, stream):
        for chunk in stream:
            self.feed(chunk)
        try:
            for _ in stream:
                pass
        except SecondPassError:
            pass
        return self.finish()


class HashTableOfN(SketchedStreaming):
    """Keeps every row in a dict keyed by token (a table of size n) and reports only its sketches."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.rows_seen: dict[int, np.ndarray] = {}

    def take_rows(self, start, rows):
        super().take_rows(start, rows)
        for i, r in enumerate(rows):
            self.rows_seen[start + i] = r.copy()

    def state_bytes(self):  # under-reports: the sketches only
        return int(self.phi.table.nbytes + self.psi.table.nbytes)


class BiasedEstimator(SufficientStatistics):
    """Normalises by 1.05·φ(q)ᵀs: every output row is 5% too small."""

    def rows(self, q):
        return super().rows(q) / 1.05


class WrongThreshold(SketchedStreaming):
    """Sparse recovery with a threshold set too high: only entries above 0.9× the column's largest estimate are
    kept (the rest reported as 0), so most of the k heavy entries are dropped."""

    def finish(self):
        idx, val = super().finish()
        keep = np.abs(val) >= 0.9 * np.abs(val).max(axis=1, keepdims=True)
        return idx, np.where(keep, val, 0.0)


class Unreliable(SketchedStreaming):
    """Correct with probability ≈ 0.8 over the seed, while δ = 0.01 is declared: otherwise the values are
    shifted to the wrong tokens."""

    def finish(self):
        idx, val = super().finish()
        if np.random.default_rng([self.seed, 77]).random() < 0.2:
            return (idx + 1) % self.n, val
        return idx, val

    @property
    def guarantee(self):
        g = super().guarantee
        return Guarantee(g.eps1, g.eps2, 0.01)


CORRECT = {
    "sufficient_statistics": StreamingBackend(SufficientStatistics),
    "tiled_online_softmax": StreamingBackend(TiledOnlineSoftmax),
    "sketched_delta_0.05": StreamingBackend(SketchedStreaming, delta=0.05),
}
BROKEN = {
    "two_passes": (StreamingBackend(TwoPasses), "second_pass"),
    "hash_table_of_n": (StreamingBackend(HashTableOfN, delta=0.05), "state_growth"),
    "biased_estimator": (StreamingBackend(BiasedEstimator), None),
    "wrong_threshold": (StreamingBackend(WrongThreshold, delta=0.05), None),
    "unreliable_0.8": (StreamingBackend(Unreliable), None),
}
