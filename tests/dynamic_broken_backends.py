"""Catalogue for dynamic attention: deliberately broken structures and correct variants.

Every BROKEN structure must be caught (some query fails) by the stateful conformance tests and by its
fixed regression trace; every CORRECT one must pass. Each docstring names the bug or the variation.
All are factories ``cls(normalised=...)`` speaking the interface of attnspec.accelerated.dynamic_attention.
"""

from __future__ import annotations

from functools import partial

from attnspec.accelerated.dynamic_attention import (
    EagerDynamicAttention,
    LazyDynamicAttention,
    LazyRecomputeDynamicAttention,
    WorstCaseDynamicAttention,
)


class RowInsteadOfColumn(EagerDynamicAttention):
    """BROKEN: a key update recomputes *row* i of A (as the public DynamicAttention code does) instead of
    column i; every other row keeps the stale weight of key i."""

    def update_k(self, i, j, delta):
        i, j, delta = self._check_update("K", i, j, delta)
        self.k[i, j] += delta
        if i < self.m_rows:
            rows = [i]
            self.m[rows], self.e[rows, :], self.dn[rows], self.c[rows, :] = self._full_rows(rows)


class ForgetCrossTerm(LazyDynamicAttention):
    """BROKEN: multiplies ΔA by the snapshot V0 instead of the current V (mixing the two splittings), so
    the ΔA·ΔV cross term is lost whenever a pending key row also had a value update."""

    def _delta_a_rows(self, kidx):
        return self.xp.asarray(self.v0[kidx, :], copy=True)

    def _delta_a_values(self, kidx, j, v_snap):
        return v_snap[kidx, j]


class StaleNormaliser(LazyDynamicAttention):
    """BROKEN: the rebuild updates E0 and C0 but keeps the old D0 (stale D after a rebuild). Visible in
    ODAMV only: OAMV never divides by D."""

    def _advance(self, batch, upto):
        saved = self.xp.asarray(self.d0, copy=True)
        super()._advance(batch, upto)
        self.d0[...] = saved


class RebuildBeforeApply(LazyDynamicAttention):
    """BROKEN: off-by-one in the rebuild counter: the b-th update triggers the rebuild *before* it is
    written, and the pending list is then cleared, so that update never reaches the snapshot."""

    def update_k(self, i, j, delta):
        i, j, delta = self._check_update("K", i, j, delta)
        self._pk[i] = None
        self._after_update()
        self.k[i, j] += delta

    def update_v(self, i, j, delta):
        i, j, delta = self._check_update("V", i, j, delta)
        self._pv[i] = None
        self._after_update()
        self.v[i, j] += delta


BROKEN = {
    "row_instead_of_column": RowInsteadOfColumn,
    "forget_cross_term": ForgetCrossTerm,
    "stale_normaliser": StaleNormaliser,
    "rebuild_before_apply": RebuildBeforeApply,
}

# Bugs that only show in one variant (OAMV has no normaliser).
ODAMV_ONLY = {"stale_normaliser"}


def _named(factory, name):
    factory.__name__ = name
    return factory


CORRECT = {
    "eager": EagerDynamicAttention,
    "lazy_recompute": LazyRecomputeDynamicAttention,
    "lazy_tau_0.5": _named(partial(LazyDynamicAttention, tau=0.5), "lazy_tau_0.5"),
    "lazy_tau_1": _named(partial(LazyDynamicAttention, tau=1.0), "lazy_tau_1"),
    "lazy_period_1": _named(partial(LazyDynamicAttention, period=1), "lazy_period_1"),
    "lazy_period_3": _named(partial(LazyDynamicAttention, period=3), "lazy_period_3"),
    "worst_case_tau_0.5": _named(partial(WorstCaseDynamicAttention, tau=0.5), "worst_case_tau_0.5"),
    "worst_case_period_2": _named(partial(WorstCaseDynamicAttention, period=2), "worst_case_period_2"),
}


class SuiteBackend:
    """A conformance-suite backend (``dynamic_attention`` capability) serving one structure class, so
    the catalogue can also be run through ``attnspec conform`` and its worker process."""

    capabilities = {"problems": {"dynamic_attention"}, "dtypes": {"float64"}, "devices": {"cpu"}}
    structure = LazyDynamicAttention

    def dynamic_attention(self, normalised=True):
        return self.structure(normalised=normalised)


def suite_backend(structure):
    """A :class:`SuiteBackend` subclass (importable by name) for ``structure``."""
    return type(f"Suite_{getattr(structure, '__name__', 'structure')}", (SuiteBackend,), {"structure": staticmethod(structure)})


ForgetCrossTermBackend = suite_backend(ForgetCrossTerm)


class HangingBackend(SuiteBackend):
    """Never answers its third query when n = 7 (a deadlock in a rebuild, say); correct otherwise."""

    class structure(LazyDynamicAttention):
        def query(self, i, j):
            self.queries = getattr(self, "queries", 0) + 1
            if self.queries == 3 and self.n_keys == 7:
                import time

                time.sleep(3600)
            return super().query(i, j)
