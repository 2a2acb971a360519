"""Dynamic attention maintenance (ODAMV / OAMV) in floating point, on any array-API library.

Four structures share one interface (``init(q, k, v, scale)``, ``update_k(i, j, δ)``, ``update_v(i, j, δ)``,
``query(i, j) -> float``; ``normalised=True`` is ODAMV = (D⁻¹AV)_ij, ``False`` is OAMV = (AV)_ij):

- :class:`EagerDynamicAttention` — applies every update at once. A key update rewrites **column** i of
  A (key i feeds every row's logit), D and C = AV: O(m·d + m·d_v); a value update is O(m); query O(1).
- :class:`LazyRecomputeDynamicAttention` — "lazy everything": O(1) updates, a query recomputes row i
  in O(n·d).
- :class:`LazyDynamicAttention` — the van den Brand–Song–Zhou lazy-update structure [R/I]: keep a
  snapshot (E0, D0, C0, V0), collect pending key rows and value rows, rebuild every b = ⌈n^τ⌉ updates
  with two matrix products (T_mat(m, d, b) + T_mat(m, b, d_v)); a query corrects the snapshot with the
  ≤ b pending keys in O(b·d).
- :class:`WorstCaseDynamicAttention` — the same, but the rebuild of a frozen batch is spread over the
  next b updates (⌈m/b⌉ rows each) while new updates collect in a second batch (Remark B.2 [V:
  paraphrase]): worst-case update O(m·d·b/b + …) instead of amortized.

Numerics (derivation and the tolerance in docs/dynamic-attention.md):

- Weights are stored shifted per row, E[r,k] = exp(L[r,k] − m_r). ODAMV is invariant under the shift;
  OAMV multiplies back by exp(m_r) at query time. A new logit above m_r + HEADROOM raises m_r and
  rescales the row (E, D, C) by exp(m_old − m_new), so exp never overflows; below that it is left alone
  (e^64 cannot overflow the sums), which keeps key updates O(1) rows of rescaling in practice.
- Splitting used everywhere: A_cur·V_cur = A0·V0 + A0·ΔV + ΔA·V_cur. Mixing it with the other
  splitting (ΔA·V0 with A0·ΔV) drops the ΔA·ΔV cross term.
- Removing a dominant weight can cancel D catastrophically; when a row's normaliser loses more than
  26 bits the row is recomputed from the live K, V (O(n·d)), so the error stays relative to the
  current magnitudes in practice (the tolerance does not rely on this).
"""

from __future__ import annotations

import math
from typing import Any

from attnspec.spec.validation import SpecError, finite_real
from attnspec.accelerated.array_namespace import array_namespace, namespace_for, native_module

HEADROOM = 64.0  # max logit − shift allowed before a row is rescaled (e^64 ≈ 6e27: no overflow)
CANCEL = 2.0**-26  # a normaliser that shrank below this fraction of its old value is recomputed

# Both variants (ODAMV and OAMV) are served: the factory's ``normalised`` flag picks one.
CAPABILITIES = {"problems": {"dynamic_attention"}, "dtypes": {"float64"}, "devices": {"cpu", "cuda"}}


def _scaled(numer: float, shift: float) -> float:
    """exp(shift)·numer without forming inf·0 (OAMV's un-shifting)."""
    if numer == 0.0:
        return 0.0
    if abs(shift) < 700.0:
        return math.exp(shift) * numer
    try:
        return math.copysign(math.exp(shift + math.log(abs(numer))), numer)
    except OverflowError:
        return math.copysign(math.inf, numer)


def row_value(xp, q_i, k, v_col, scale: float, normalised: bool) -> float:
    """One query answered from scratch: l = s·K q_i, w = exp(l − max l),
    ODAMV Σ w v / Σ w, OAMV exp(max l)·Σ w v. O(n·d)."""
    logits = scale * (k @ q_i)
    top = float(xp.max(logits))
    w = xp.exp(logits - top)
    numer = float(xp.sum(w * v_col))
    if normalised:
        return numer / float(xp.sum(w))
    return _scaled(numer, top)


class _DynamicBase:
    """Validation and the live matrices shared by every structure."""

    capabilities = CAPABILITIES

    def __init__(self, normalised: bool = True, device: str | None = None):
        self.normalised = bool(normalised)
        self.device = device  # None: compute where Init's arrays live; "cpu"/"cuda": move them there
        # Q, K, V (arrays of the structure's namespace) once init has run
        self.q: Any = None
        self.k: Any = None
        self.v: Any = None

    # -- validation ----------------------------------------------------------------------------
    def _require_init(self, what: str) -> None:
        if self.q is None:
            raise SpecError(f"{what} before init: the structure holds no Q, K, V yet")

    @staticmethod
    def _index(x: Any, size: int, what: str) -> int:
        if isinstance(x, bool) or not hasattr(x, "__index__"):
            raise SpecError(f"{what} must be an integer index, got {x!r}")
        x = int(x)
        if not 0 <= x < size:
            raise SpecError(f"{what} = {x} is out of range [0, {size})")
        return x

    def init(self, q, k, v, scale: float = 1.0) -> None:
        """Init(Q, K, V, scale): copies the inputs as float64 (the structure owns its state)."""
        xp = array_namespace(q, k, v) if self.device is None else namespace_for(self.device)
        self.xp = xp
        q, k, v = (xp.asarray(x, dtype=xp.float64) for x in (q, k, v))
        for name, x in (("Q", q), ("K", k), ("V", v)):
            if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
                raise SpecError(f"{name} must be a non-empty 2-D matrix, got shape {tuple(x.shape)}")
            if not bool(xp.all(xp.isfinite(x))):
                raise SpecError(f"{name} has a non-finite entry")
        if q.shape[1] != k.shape[1]:
            raise SpecError(f"Q and K must have the same number of columns d: {q.shape} vs {k.shape}")
        if k.shape[0] != v.shape[0]:
            raise SpecError(f"K and V must have the same number of rows n: {k.shape} vs {v.shape}")
        self.scale = finite_real(scale, "scale")
        self.q, self.k, self.v = xp.asarray(q, copy=True), xp.asarray(k, copy=True), xp.asarray(v, copy=True)
        self.m_rows, self.n_keys = q.shape[0], k.shape[0]
        self.d, self.dv = k.shape[1], v.shape[1]
        self._build()

    def _build(self) -> None:
        pass

    def _check_update(self, mat_name: str, i, j, delta) -> tuple[int, int, float]:
        self._require_init(f"update_{mat_name.lower()}")
        cols = self.d if mat_name == "K" else self.dv
        return (self._index(i, self.n_keys, f"update_{mat_name.lower()} row i"),
                self._index(j, cols, f"update_{mat_name.lower()} column j"), finite_real(delta, "delta"))

    def _check_query(self, i, j) -> tuple[int, int]:
        self._require_init("query")
        return self._index(i, self.m_rows, "query row i"), self._index(j, self.dv, "query column j")

    def _full_rows(self, rows, k=None, v=None):
        """Recompute snapshot rows from scratch for keys ``k`` and values ``v`` (default: the live ones):
        (m, E, D, C) for the given row indices, O(|rows|·n·(d + d_v))."""
        xp = self.xp
        k = self.k if k is None else k
        v = self.v if v is None else v
        logits = self.scale * (self.q[rows, :] @ k.T)
        m = xp.max(logits, axis=1)
        e = xp.exp(logits - m[:, None])
        return m, e, xp.sum(e, axis=1), e @ v


class LazyRecomputeDynamicAttention(_DynamicBase):
    """Naive baseline "lazy everything": updates write K or V (O(1)); a query recomputes row i (O(n·d))."""

    def update_k(self, i, j, delta) -> None:
        i, j, delta = self._check_update("K", i, j, delta)
        self.k[i, j] += delta

    def update_v(self, i, j, delta) -> None:
        i, j, delta = self._check_update("V", i, j, delta)
        self.v[i, j] += delta

    def query(self, i, j) -> float:
        i, j = self._check_query(i, j)
        return row_value(self.xp, self.q[i], self.k, self.v[:, j], self.scale, self.normalised)


class EagerDynamicAttention(_DynamicBase):
    """Naive baseline "eager": every update applied at once to E = exp(L − m), D and C = E·V.

    UpdateK(i, ·, δ) changes key i, hence column i of the logits: l = s·Q k_i (O(m·d)),
    ΔE = exp(l − m) − E[:, i], D += ΔE, C += ΔE ⊗ v_i (in-place rank-1 update, O(m·d_v)).
    UpdateV(i, j, δ): C[:, j] += E[:, i]·δ (O(m)). Query: C_ij / D_i (ODAMV) or e^{m_i}·C_ij (OAMV).
    """

    def _build(self) -> None:
        xp = self.xp
        logits = self.scale * (self.q @ self.k.T)
        self.m = xp.max(logits, axis=1)
        self.e = xp.exp(logits - self.m[:, None])
        self.dn = xp.sum(self.e, axis=1)
        self.c = self.e @ self.v
        self._ger = _rank1_updater(self.c)

    def _raise_shift(self, rows, new_m) -> None:
        f = self.xp.exp(self.m[rows] - new_m)
        self.e[rows, :] *= f[:, None]
        self.dn[rows] *= f
        self.c[rows, :] *= f[:, None]
        self.m[rows] = new_m

    def _repair(self, old_dn) -> None:
        xp = self.xp
        bad = xp.nonzero(~(self.dn >= CANCEL * old_dn))[0]
        if bad.shape[0]:
            self.m[bad], self.e[bad, :], self.dn[bad], self.c[bad, :] = self._full_rows(bad)

    def update_k(self, i, j, delta) -> None:
        i, j, delta = self._check_update("K", i, j, delta)
        xp = self.xp
        self.k[i, j] += delta
        logits = self.scale * (self.q @ self.k[i])
        over = xp.nonzero(logits - self.m > HEADROOM)[0]
        if over.shape[0]:
            self._raise_shift(over, logits[over])
        e_new = xp.exp(logits - self.m)
        d_e = e_new - self.e[:, i]
        old_dn = xp.asarray(self.dn, copy=True)
        self.dn += d_e
        self._ger(d_e, self.v[i])
        self.e[:, i] = e_new
        self._repair(old_dn)

    def update_v(self, i, j, delta) -> None:
        i, j, delta = self._check_update("V", i, j, delta)
        old = self.v[i, j]
        self.v[i, j] += delta
        applied = self.v[i, j] - old  # the change the float state actually made
        self.c[:, j] += self.e[:, i] * applied

    def query(self, i, j) -> float:
        i, j = self._check_query(i, j)
        if self.normalised:
            return float(self.c[i, j]) / float(self.dn[i])
        return _scaled(float(self.c[i, j]), float(self.m[i]))


def _rank1_updater(c):
    """C += x ⊗ y in place: BLAS dger on numpy (no m×d temporary), broadcasting elsewhere."""
    if native_module(c) is not None and type(c).__module__ == "numpy" and c.flags.c_contiguous:
        try:
            from scipy.linalg.blas import dger
        except ImportError:  # pragma: no cover - scipy is optional
            dger = None
        if dger is not None:
            ct = c.T  # Fortran-ordered view: Cᵀ += y xᵀ

            def ger(x, y):
                out = dger(1.0, y, x, a=ct, overwrite_a=True)
                if out is not ct and not (out.ctypes.data == ct.ctypes.data):  # pragma: no cover
                    ct[...] = out
            return ger

    def ger(x, y):
        c[...] += x[:, None] * y[None, :]
    return ger


class _Batch:
    """A frozen batch of updates being folded into the snapshot (rows [0, done) already are)."""

    def __init__(self, s: "LazyDynamicAttention", keys: list[int], vrows: list[int]):
        xp = s.xp
        self.keys, self.vrows = keys, vrows
        self.kidx = xp.asarray(keys, dtype=xp.int64)
        self.vidx = xp.asarray(vrows, dtype=xp.int64)
        self.k_frozen = xp.asarray(s.k[self.kidx, :], copy=True)
        self.v_at_keys = s._delta_a_rows(self.kidx)
        self.v_frozen = xp.asarray(s.v[self.vidx, :], copy=True)
        self.done = 0


class LazyDynamicAttention(_DynamicBase):
    """The lazy-update structure with rebuild period b = ⌈n^τ⌉ (or ``period``).

    Snapshot S: E0 = exp(L0 − m), D0 = E0·1, C0 = E0·V0, V0. Pending: key rows P (read from the live
    K) and value rows R (ΔV = V − V0 on them). Query(i, j) in O(|P|·d + |R|):
        e_k = exp(s⟨q_i, k_k⟩ − m_i) for k ∈ P
        N = C0_ij + Σ_{a∈R} E0_ia ΔV_aj + Σ_{k∈P} (e_k − E0_ik) V_kj,   Dn = D0_i + Σ_{k∈P} (e_k − E0_ik)
    Rebuild of a batch (P, R), all rows at once or ``spread`` over the next b updates:
        ΔE = exp(s·Q K[P]ᵀ − m) − E0[:, P]       (GEMM m×d×|P|)
        C0 += E0[:, R]·(V[R] − V0[R]) + ΔE·V[P]   (GEMMs m×|R|×d_v and m×|P|×d_v)
        D0 += ΔE·1;  E0[:, P] += ΔE;  V0[R] = V[R].
    """

    def __init__(self, normalised: bool = True, tau: float = 0.5, period: int | None = None, spread: bool = False,
                 device: str | None = None):
        super().__init__(normalised, device)
        if period is None and not 0 < tau <= 1:
            raise SpecError(f"tau must lie in (0, 1], got {tau!r}")
        if period is not None and int(period) < 1:
            raise SpecError(f"period must be a positive integer, got {period!r}")
        self.tau, self._period, self.spread = tau, period, bool(spread)
        self.rebuilds = 0

    @property
    def rebuild_period(self) -> int:
        """b: a batch is frozen every b updates."""
        if self._period is not None:
            return int(self._period)
        return max(1, math.ceil(self.n_keys ** self.tau - 1e-9))

    def _build(self) -> None:
        m, self.e0, self.d0, self.c0 = self._full_rows(slice(None))
        self.m = m
        self.v0 = self.xp.asarray(self.v, copy=True)
        self.v0_next: Any = None
        # the worst-case variant also keeps K's snapshot, to recompute a cancelled row mid-rebuild
        self.k0 = self.xp.asarray(self.k, copy=True) if self.spread else None
        self.k0_next: Any = None
        self._pk: dict[int, Any] = {}
        self._pv: dict[int, Any] = {}
        self._count = 0
        self._batch: _Batch | None = None
        self.rebuilds = 0

    # -- updates -------------------------------------------------------------------------------
    def update_k(self, i, j, delta) -> None:
        i, j, delta = self._check_update("K", i, j, delta)
        self.k[i, j] += delta
        self._pk[i] = None
        self._after_update()

    def update_v(self, i, j, delta) -> None:
        i, j, delta = self._check_update("V", i, j, delta)
        self.v[i, j] += delta
        self._pv[i] = None
        self._after_update()

    @property
    def pending_updates(self) -> int:
        """Updates collected since the last freeze."""
        return self._count

    def _after_update(self) -> None:
        self._count += 1
        b = self.rebuild_period
        if self._batch is not None:  # spread mode: advance the frozen batch by one chunk
            self._advance(self._batch, self._batch.done + math.ceil(self.m_rows / b))
        if self._count >= b:
            if self._batch is not None:
                self._advance(self._batch, self.m_rows)
            self._freeze()

    def _freeze(self) -> None:
        batch = _Batch(self, list(self._pk), list(self._pv))
        self._pk, self._pv, self._count = {}, {}, 0
        if self.spread:  # the snapshot being built (live K, V move on while it is)
            self.v0_next = self.xp.asarray(self.v0, copy=True)
            self.v0_next[batch.vidx, :] = batch.v_frozen
            self.k0_next = self.xp.asarray(self.k0, copy=True)
            self.k0_next[batch.kidx, :] = batch.k_frozen
            self._batch = batch
        else:
            self._batch = batch
            self._advance(batch, self.m_rows)

    def _advance(self, batch: _Batch, upto: int) -> None:
        """Fold ``batch`` into snapshot rows [batch.done, upto)."""
        xp = self.xp
        r0, r1 = batch.done, min(upto, self.m_rows)
        if r1 > r0:
            rows = slice(r0, r1)
            if batch.keys:
                logits = self.scale * (self.q[rows, :] @ batch.k_frozen.T)
                over = xp.nonzero(xp.max(logits, axis=1) - self.m[rows] > HEADROOM)[0]
                if over.shape[0]:
                    self._raise_shift(over + r0, xp.max(logits[over, :], axis=1))
            old_d0 = xp.asarray(self.d0[rows], copy=True)
            if batch.keys:
                e_new = xp.exp(logits - self.m[rows][:, None])
                d_e = e_new - self.e0[rows, batch.kidx]
            if batch.vrows:  # E0[:, R]·ΔV on the value columns that changed (single-entry updates)
                dv = batch.v_frozen - self.v0[batch.vidx, :]
                cols = xp.nonzero(xp.any(dv != 0, axis=0))[0]
                if cols.shape[0]:
                    self.c0[rows, cols] += self.e0[rows, batch.vidx] @ dv[:, cols]
            if batch.keys:
                self.c0[rows, :] += d_e @ batch.v_at_keys
                self.d0[rows] += xp.sum(d_e, axis=1)
                self.e0[rows, batch.kidx] = e_new
            bad = xp.nonzero(~(self.d0[rows] >= CANCEL * old_d0))[0]
            if bad.shape[0]:  # a cancelled normaliser: recompute the row from the frozen K, V
                bad = bad + r0
                k, v = (self.k0_next, self.v0_next) if self.spread else (None, None)
                self.m[bad], self.e0[bad, :], self.d0[bad], self.c0[bad, :] = self._full_rows(bad, k, v)
            batch.done = r1
        if batch.done >= self.m_rows:
            if self.spread:
                self.v0, self.v0_next = self.v0_next, None
                self.k0, self.k0_next = self.k0_next, None
            else:
                self.v0[batch.vidx, :] = batch.v_frozen
            self._batch = None
            self.rebuilds += 1

    def _raise_shift(self, rows, new_m) -> None:
        f = self.xp.exp(self.m[rows] - new_m)
        self.e0[rows, :] *= f[:, None]
        self.d0[rows] *= f
        self.c0[rows, :] *= f[:, None]
        self.m[rows] = new_m

    # The value rows that multiply ΔA must be the *current* ones: A_cur·V_cur = A0·V0 + A0·ΔV + ΔA·V_cur.
    # (ΔA·V0 here would drop the ΔA·ΔV cross term.)
    def _delta_a_rows(self, kidx):
        return self.xp.asarray(self.v[kidx, :], copy=True)

    def _delta_a_values(self, kidx, j, v_snap):
        return self.v[kidx, j]

    # -- query ---------------------------------------------------------------------------------
    def query(self, i, j) -> float:
        i, j = self._check_query(i, j)
        xp = self.xp
        batch = self._batch
        if batch is not None and i >= batch.done:  # row i still on the old snapshot
            keys = list(dict.fromkeys(batch.keys + list(self._pk)))
            vrows = list(dict.fromkeys(batch.vrows + list(self._pv)))
            v_snap = self.v0
        else:
            keys, vrows = list(self._pk), list(self._pv)
            v_snap = self.v0 if batch is None else self.v0_next
        m_i = float(self.m[i])
        numer = float(self.c0[i, j])
        denom = float(self.d0[i])
        if vrows:
            ridx = xp.asarray(vrows, dtype=xp.int64)
            numer += float(xp.sum(self.e0[i, ridx] * (self.v[ridx, j] - v_snap[ridx, j])))
        shift = 0.0
        if keys:
            kidx = xp.asarray(keys, dtype=xp.int64)
            logits = self.scale * (self.k[kidx, :] @ self.q[i]) - m_i
            top = float(xp.max(logits))
            shift = top if top > HEADROOM else 0.0
            e_old = self.e0[i, kidx]
            v_col = self._delta_a_values(kidx, j, v_snap)
            e_new = xp.exp(logits - shift)
            f = math.exp(-shift)
            scaled_d0 = f * denom
            numer = f * (numer - float(xp.sum(e_old * v_col))) + float(xp.sum(e_new * v_col))
            denom = f * (denom - float(xp.sum(e_old))) + float(xp.sum(e_new))
            if not denom >= CANCEL * (scaled_d0 + float(xp.sum(e_new))):
                # the pending keys cancelled most of D0: answer this query from scratch
                return row_value(xp, self.q[i], self.k, self.v[:, j], self.scale, self.normalised)
        if not denom > 0:  # cannot happen in exact arithmetic; never divide by a cancelled D
            return row_value(xp, self.q[i], self.k, self.v[:, j], self.scale, self.normalised)
        if self.normalised:
            return numer / denom
        return _scaled(numer, m_i + shift)


class WorstCaseDynamicAttention(LazyDynamicAttention):
    """The lazy structure with each rebuild spread over the next b updates (⌈m/b⌉ rows per update)."""

    def __init__(self, normalised: bool = True, tau: float = 0.5, period: int | None = None, device: str | None = None):
        super().__init__(normalised, tau=tau, period=period, spread=True, device=device)


STRUCTURES = {
    "eager": EagerDynamicAttention,
    "lazy_recompute": LazyRecomputeDynamicAttention,
    "lazy": LazyDynamicAttention,
    "worst_case": WorstCaseDynamicAttention,
}

__all__ = ["EagerDynamicAttention", "LazyRecomputeDynamicAttention", "LazyDynamicAttention",
           "WorstCaseDynamicAttention", "STRUCTURES", "row_value", "HEADROOM", "CAPABILITIES"]
