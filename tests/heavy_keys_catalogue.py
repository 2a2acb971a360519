"""Heavy-key backends for the project's own tests: broken ones (each a mistake seen in practice or
easy to make; the quick profile must catch every one) and correct ones (they must pass every case).

All implement both ``universal_set(k, *, eps, p)`` and ``heavy_entries(q, k, *, eps, p)``. The
LevAttention-style ones enumerate heavy entries only over their universal set (so a wrong U shows in
both problems); the normaliser is always over all n keys unless the mistake is about it.

Correct ones compute in float64 and keep a documented safety margin: they report every candidate whose
float score is ≥ ε·(1 − MARGIN) and declare ``heavy_slack = SLACK`` with ε(1 − MARGIN)(1 − 10⁻¹²) ≥
ε/(1 + SLACK), i.e. float error up to 10⁻¹² relative is covered (the quick profile's instances are
well conditioned for float64; near-dependent keys are 2⁻⁸ off their span).
"""

from __future__ import annotations

import numpy as np

MARGIN = 1e-9
SLACK = 1e-8
PROBLEMS = {"heavy_entries", "universal_set"}


def lift(x: np.ndarray, p: int, weighted: bool = True) -> np.ndarray:
    """Rows φ(x): x itself (p = 2), or x_a·x_b for a ≤ b with √2 on a < b (p = 4: ⟨x,y⟩⁴ = ⟨φx, φy⟩²)."""
    if p == 2:
        return x
    d = x.shape[1]
    cols = [x[:, a] * x[:, b] * (np.sqrt(2.0) if (a < b and weighted) else 1.0) for a in range(d) for b in range(a, d)]
    return np.stack(cols, axis=1)


def svd_leverage(m: np.ndarray) -> np.ndarray:
    """τ_j = ‖row j of U_r‖², U_r the left singular vectors above a rank cutoff (never a plain QR)."""
    if not m.any():
        return np.zeros(m.shape[0])
    u, s, _ = np.linalg.svd(m, full_matrices=False)
    r = int((s > s[0] * max(m.shape) * np.finfo(np.float64).eps).sum())
    return (u[:, :r] ** 2).sum(axis=1)


def attention(q: np.ndarray, k: np.ndarray, p: int) -> np.ndarray:
    """A = |QKᵀ|^p row-normalised over all keys (zero rows stay zero)."""
    w = np.abs(q @ k.T) ** p
    z = w.sum(axis=1, keepdims=True)
    return np.divide(w, z, out=np.zeros_like(w), where=z > 0)


def pairs(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).astype(np.int64).reshape(-1, 2)


class _Base:
    """A LevAttention-style backend: U from ``scores``, heavy entries over U with the full normaliser."""

    capabilities = {"problems": PROBLEMS, "dtypes": {"float64"}, "heavy_slack": SLACK}
    margin = MARGIN

    def scores(self, k: np.ndarray, p: int) -> np.ndarray:
        return svd_leverage(lift(k, p))

    def select(self, scores: np.ndarray, eps: float) -> np.ndarray:
        return np.flatnonzero(scores >= eps * (1 - self.margin)).astype(np.int64)

    def universal_set(self, k, *, eps, p):
        k = np.asarray(k, dtype=np.float64)
        return self.select(self.scores(k, p), eps)

    def weights(self, q: np.ndarray, k: np.ndarray, p: int, u: np.ndarray) -> np.ndarray:
        a = attention(q, k, p)
        out = np.zeros_like(a)
        out[:, u] = a[:, u]
        return out

    def heavy_entries(self, q, k, *, eps, p):
        q, k = np.asarray(q, dtype=np.float64), np.asarray(k, dtype=np.float64)
        u = self.universal_set(k, eps=eps, p=p)
        return pairs(self.weights(q, k, p, u) >= eps * (1 - self.margin))


# --------------------------------------------------------------------------------------------- correct


class ExactFloat64(_Base):
    """Correct: SVD leverage (rank cutoff) of K or φ(K), A over all keys, margin 1e-9, slack 1e-8."""


class BruteForceFloat64:
    """Correct: no universal set at all, A over every pair (n²d), U from SVD leverage; margin and slack."""

    capabilities = {"problems": PROBLEMS, "dtypes": {"float64"}, "heavy_slack": SLACK}

    def universal_set(self, k, *, eps, p):
        return np.flatnonzero(svd_leverage(lift(np.asarray(k, dtype=np.float64), p)) >= eps * (1 - MARGIN)).astype(np.int64)

    def heavy_entries(self, q, k, *, eps, p):
        return pairs(attention(np.asarray(q, dtype=np.float64), np.asarray(k, dtype=np.float64), p) >= eps * (1 - MARGIN))


class GramNormaliser(_Base):
    """Correct: LevAttention's normaliser Z_i = φ(q_i)ᵀ G_φ φ(q_i) (G_φ = φ(K)ᵀφ(K)) over U only."""

    def weights(self, q, k, p, u):
        fq, fk = lift(q, p), lift(k, p)
        z = np.einsum("ij,jk,ik->i", fq, fk.T @ fk, fq)[:, None]
        w = np.zeros((q.shape[0], k.shape[0]))
        w[:, u] = np.abs(q @ k[u].T) ** p
        return np.divide(w, z, out=np.zeros_like(w), where=z > 0)


CORRECT = [ExactFloat64, BruteForceFloat64, GramNormaliser]


# --------------------------------------------------------------------------------------------- broken


class RowNorms(_Base):
    """Broken: 'leverage' = ‖k_j‖² (squared row norms, as after a random orthogonal rotation)."""

    def scores(self, k, p):
        return (lift(k, p) ** 2).sum(axis=1)


class Ridge(_Base):
    """Broken: τ_j = k_jᵀ(KᵀK + λI)⁻¹k_j with λ = 10⁻³ (≤ τ_j: drops keys near ε and small-norm keys)."""

    def scores(self, k, p):
        m = lift(k, p)
        g = m.T @ m + 1e-3 * np.eye(m.shape[1])
        return np.einsum("ij,ji->i", m, np.linalg.solve(g, m.T))


class UnloosenedSketch(_Base):
    """Broken: sketched scores (Gaussian sketch S of 2D rows, R from QR of SK) kept at τ̃ ≥ ε instead of
    ε/(1+δ)."""

    margin = 0.0

    def scores(self, k, p):
        m = lift(k, p)
        rng = np.random.default_rng(7)
        sketch = rng.standard_normal((2 * m.shape[1] + 2, m.shape[0])) / np.sqrt(2 * m.shape[1] + 2)
        _, r = np.linalg.qr(sketch @ m)
        x = np.linalg.lstsq(r.T, m.T, rcond=None)[0].T  # rows k_jᵀ R⁻¹ (least squares: R may be singular)
        return (x ** 2).sum(axis=1)


class DropsLastKey(_Base):
    """Broken: an off-by-one loop over keys never looks at the last one."""

    def select(self, scores, eps):
        return super().select(scores[:-1], eps)


class Float32Gram(_Base):
    """Broken: G = KᵀK accumulated in float32 (then pinv): a key 2⁻⁸ off the span of the others is lost."""

    def scores(self, k, p):
        m = lift(k, p).astype(np.float32)
        g = (m.T @ m).astype(np.float32)
        return np.einsum("ij,ji->i", m, np.linalg.pinv(g) @ m.T).astype(np.float64)


class AlwaysSquares(_Base):
    """Broken: computes with p = 2 whatever p is asked."""

    def universal_set(self, k, *, eps, p):
        return super().universal_set(k, eps=eps, p=2)

    def heavy_entries(self, q, k, *, eps, p):
        return super().heavy_entries(q, k, eps=eps, p=2)


class DropsTies(_Base):
    """Broken: strict '>' ε (a tie A_ij = ε or τ_j = ε is dropped), no margin."""

    margin = 0.0

    def select(self, scores, eps):
        return np.flatnonzero(scores > eps).astype(np.int64)

    def heavy_entries(self, q, k, *, eps, p):
        q, k = np.asarray(q, dtype=np.float64), np.asarray(k, dtype=np.float64)
        return pairs(self.weights(q, k, p, self.universal_set(k, eps=eps, p=p)) > eps)


class NormaliserOverU(_Base):
    """Broken: renormalises over the selected keys only (A over U), so too many entries look heavy."""

    def weights(self, q, k, p, u):
        w = np.zeros((q.shape[0], k.shape[0]))
        w[:, u] = np.abs(q @ k[u].T) ** p
        z = w.sum(axis=1, keepdims=True)
        return np.divide(w, z, out=np.zeros_like(w), where=z > 0)


class AllKeys(_Base):
    """Broken: U = every key (trivially universal, but not within (1+s)·Ψ/ε, members far below ε)."""

    def select(self, scores, eps):
        return np.arange(scores.shape[0], dtype=np.int64)

    def heavy_entries(self, q, k, *, eps, p):
        q, k = np.asarray(q, dtype=np.float64), np.asarray(k, dtype=np.float64)
        return pairs(attention(q, k, p) > 0)


BROKEN = [RowNorms, Ridge, UnloosenedSketch, DropsLastKey, Float32Gram, AlwaysSquares, DropsTies, NormaliserOverU,
          AllKeys]
