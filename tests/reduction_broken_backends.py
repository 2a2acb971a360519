"""Dynamic-attention backends for the reduction tests: structures that are wrong mainly (or only) on
reduction-shaped traces, a backend declaring a coarse precision model, and a faulting one.

Loaded in-process as objects, or in a worker as ``<this file>:<ClassName>`` (:data:`SPEC_PREFIX`).
"""

from __future__ import annotations

from pathlib import Path

from attnspec.accelerated.dynamic_attention import EagerDynamicAttention, LazyDynamicAttention
from attnspec.conformance.judging.precision_model import PrecisionModel

import dynamic_broken_backends as dyn

SPEC_PREFIX = str(Path(__file__).resolve()) + ":"
DYNAMIC_CAPS = {"problems": {"dynamic_attention"}, "dtypes": {"float64"}, "devices": {"cpu"}}


class UniformInitShortcut(EagerDynamicAttention):
    """BROKEN on reduction shapes: when K is all zero at Init (A = J, as HMV's Phase 1 sets it), the
    structure takes a 'rank-one' fast path that assumes every row keeps the same weights: a key update
    applies the largest row's weight change to every row of D and C. Random traces never start from
    K = 0; every HMV trace does, and rows of M differ, so rows that the hint does not reach gain a
    spurious 1-bit (OAMV and ODAMV alike)."""

    def _build(self) -> None:
        super()._build()
        self._uniform = not bool(self.xp.any(self.k != 0))

    def update_k(self, i, j, delta) -> None:
        if not self._uniform:
            return super().update_k(i, j, delta)
        i, j, delta = self._check_update("K", i, j, delta)
        self.k[i, j] += delta
        e_new = self.xp.exp(self.scale * (self.q @ self.k[i]) - self.m)
        d_e = float((e_new - self.e[:, i]).max())
        self.dn += d_e
        self.c += d_e * self.v[i][None, :]
        self.e[:, i] += d_e


class StaleQueryColumnPerRow(EagerDynamicAttention):
    """BROKEN: the column update of key i uses l += s·δ·Q[:, j₀] with j₀ the column of the *first* update
    to key row i (cached per row): wrong once one key row gets updates in two different columns, as the
    rows of an HMV hint with several non-zeros do."""

    def update_k(self, i, j, delta) -> None:
        cache = self.__dict__.setdefault("_first_column", {})
        j0 = cache.setdefault(int(i), int(j))
        super().update_k(i, j0, delta)


class Float32Weights(LazyDynamicAttention):
    """IMPRECISE: rounds every answer to float32 (a 'mixed-precision cache'). The HMV gap is wide, so
    decoding stays right: only the certified judgement of each output catches it."""

    def query(self, i, j) -> float:
        import numpy as np

        return float(np.float32(super().query(i, j)))


class _Backend:
    structure: type = EagerDynamicAttention
    capabilities = DYNAMIC_CAPS

    def dynamic_attention(self, normalised: bool = True):
        return self.structure(normalised=normalised)


def backend_for(structure: type, capabilities: dict | None = None) -> _Backend:
    """A backend object whose dynamic_attention builds ``structure``."""
    b = _Backend()
    b.structure = structure
    b.capabilities = dict(capabilities or DYNAMIC_CAPS)
    return b


class UniformInitShortcutBackend(_Backend):
    structure = UniformInitShortcut


class CoarseBackend(_Backend):
    """Correct structure, but declares a bfloat16 precision model: the reductions must refuse it."""

    capabilities = {**DYNAMIC_CAPS, "precision": {"float64": PrecisionModel("bfloat16")}}


class LooseContractBackend(_Backend):
    """Correct structure, but claims only ε_a = 0.5: above every HMV decoding margin."""

    capabilities = {**DYNAMIC_CAPS, "contract_eps": 0.5}


class RaisesOnQuery(_Backend):
    """Faults: every query raises (a ReductionError for the instance, never a crash of the run)."""

    class structure(EagerDynamicAttention):  # noqa: N801
        def query(self, i, j):
            raise RuntimeError("query exploded")


REDUCTION_SHAPED = {
    "uniform_init_shortcut": UniformInitShortcut,
    "stale_query_column_per_row": StaleQueryColumnPerRow,
    "float32_weights": Float32Weights,
}
# From the general catalogue: the bugs an HMV trace can reach (key updates only, rebuilds included).
CATALOGUE = {name: dyn.BROKEN[name] for name in ("row_instead_of_column", "stale_normaliser", "rebuild_before_apply")}
# Caught through ODAMV only: an OAMV query reads column i alone, so a lost or misplaced key update is
# invisible unless that key has V_{k,i} = 1 (ODAMV's normaliser sees every key).
ODAMV_ONLY = {"stale_normaliser", "rebuild_before_apply", "stale_query_column_per_row"}
