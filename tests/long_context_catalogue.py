"""Long-context catalogue: softmax-attention backends that break only at long context, at tile
boundaries, in float32 accumulation or with late maxima, and correct blocked kernels.

Every backend here is one blocked online-softmax kernel (:func:`flash`, FlashAttention's recurrence:
running max m, running sum ℓ, accumulator O, one rescale factor exp(m_old − m_new) per tile) with one
realistic bug switched on. Queries are processed in chunks of ``Q_CHUNK`` rows and keys in tiles, so
memory stays O(Q_CHUNK·block) at any n.

Each entry's class attributes say where the suite is expected to catch it:

``profile``   "quick" (CI's profile) or "thorough";
``families``  the softmax families whose cases reveal it (the tests judge only those, to keep CI fast);
``needs``     what the judge must provide first: "rows" (row-subset cases, so n > 1100 is certified),
              "tight" (the tightened float32/float64 tolerances: exp error charged once). An entry whose
              need is not met yet is expected to pass unnoticed, and the tests mark it so (strict
              xfail: the mark must be removed as soon as the suite catches it).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

Q_CHUNK = 512
LONG_FAMILIES = ("tile_edges", "late_max", "long_rows", "exp_probe")


def _exp_in(fmt: np.dtype) -> Callable[[np.ndarray], np.ndarray]:
    """exp in ``fmt``, correctly rounded up to a float64 error of ~1e-16 relative: float32 values are
    computed in float64 and rounded once (≤ 0.5 ulp + 2^-52, inside any declared 2-ulp exp)."""
    if fmt == np.float64:
        return np.exp
    return lambda x: np.exp(x.astype(np.float64)).astype(fmt)


def default_tiles(n: int, block: int) -> list[tuple[int, int]]:
    """Key tiles [c0, c1) of ``block`` keys (the last one partial)."""
    return [(c0, min(c0 + block, n)) for c0 in range(0, n, block)]


def flash(q, k, v, scale, *, block: int, fmt: Any = np.float64, tiles: Callable[[int], list] | None = None,
          update_max: bool = True, rescale_l: bool = True, lazy_tau: float | None = None, lazy_bug: bool = False,
          l_fmt: Any = None, p_fmt: Any = None, acc_fmt: Any = None, exp: Callable | None = None, out_factor: float = 1.0,
          scale_factor: float = 1.0, row_bug: Callable[[int, int, list], list] | None = None) -> np.ndarray:
    """Blocked online softmax: per query chunk and key tile [c0, c1),

        L = s·Q Kᵀ[c0:c1],  m' = max(m, rowmax L),  α = exp(m − m'),  P = exp(L − m'),
        ℓ ← α·ℓ + rowsum P,  O ← α·O + P·V[c0:c1],  m ← m',      output O/ℓ,

    in arithmetic ``fmt`` (float32 or float64). The switches model bugs: ``tiles`` replaces the tile
    list; ``update_max=False`` keeps the first tile's maximum; ``rescale_l=False`` rescales O but not
    ℓ; ``lazy_tau`` rescales only when the max grows by more than τ (FlashAttention-4's conditional
    rescale; correct: the old max is kept otherwise), ``lazy_bug`` then moves m anyway without
    rescaling; ``l_fmt``/``p_fmt``/``acc_fmt`` round ℓ / the P fed to P·V / O to that format after each tile; ``exp`` replaces exp;
    ``out_factor`` and ``scale_factor`` perturb the output and the scale; ``row_bug(r0, n, tiles)``
    changes the tile list of the query chunk starting at row r0."""
    f = np.dtype(fmt)
    q, k, v = (np.asarray(x, dtype=f) for x in (q, k, v))
    s = f.type(float(scale) * scale_factor)
    n = k.shape[0]
    exp_f = exp or _exp_in(f)
    base_tiles = tiles(n) if tiles is not None else default_tiles(n, block)
    out = np.empty((q.shape[0], v.shape[1]), dtype=f)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for r0 in range(0, q.shape[0], Q_CHUNK):
            qs = q[r0:r0 + Q_CHUNK]
            mx = np.full(qs.shape[0], -np.inf, dtype=f)
            ell = np.zeros(qs.shape[0], dtype=f)
            acc = np.zeros((qs.shape[0], v.shape[1]), dtype=f)
            chunk_tiles = row_bug(r0, n, base_tiles) if row_bug is not None else base_tiles
            for t, (c0, c1) in enumerate(chunk_tiles):
                logits = s * (qs @ k[c0:c1].T)
                m_new = np.maximum(mx, logits.max(axis=1)) if (update_max or t == 0) else mx
                if lazy_tau is not None and t > 0:
                    small = m_new - mx <= lazy_tau
                    if lazy_bug:  # the max moves, the old sums are not rescaled
                        factor = np.where(small, f.type(1), exp_f(mx - m_new))
                    else:  # correct: keep the old max while it grew by ≤ τ
                        m_new = np.where(small, mx, m_new)
                        factor = exp_f(mx - m_new)
                else:
                    factor = np.where(np.isneginf(mx), f.type(0), exp_f(mx - m_new))
                p = exp_f(logits - m_new[:, None])
                ell = (ell * factor if rescale_l else ell) + p.sum(axis=1, dtype=f)
                if l_fmt is not None:
                    ell = ell.astype(l_fmt).astype(f)
                pv = p.astype(p_fmt).astype(f) if p_fmt is not None else p
                acc = acc * factor[:, None] + pv @ v[c0:c1]
                if acc_fmt is not None:
                    acc = acc.astype(acc_fmt).astype(f)
                mx = m_new
            out[r0:r0 + Q_CHUNK] = acc / ell[:, None]
    return out * f.type(out_factor) if out_factor != 1.0 else out


class _Kernel:
    """A backend running :func:`flash` with ``kwargs`` and declaring ``fmt``'s dtype."""

    fmt: Any = np.float64
    block = 128
    kwargs: dict[str, Any] = {}
    profile = "quick"
    families: tuple[str, ...] = LONG_FAMILIES
    needs: tuple[str, ...] = ()

    @property
    def capabilities(self) -> dict[str, Any]:
        return {"dtypes": {np.dtype(self.fmt).name}}

    def attention(self, q, k, v, *, scale):
        return flash(q, k, v, scale, block=self.block, fmt=self.fmt, **self.kwargs)


def _exp_ulps_off(fmt: Any, ulps: float) -> Callable[[np.ndarray], np.ndarray]:
    """An exp that is up to ``ulps`` ulps off, the error varying with the reduced argument like a poor
    polynomial's: exp(x)·(1 + ulps·2^{1−p}·w), w = 2·frac(x/ln 2) − 1 ∈ [−1, 1) (p: precision bits)."""
    f = np.dtype(fmt)
    rel = ulps * float(np.finfo(f).eps)
    exact = _exp_in(f)

    def exp(x):
        w = 2 * np.mod(x.astype(np.float64) / math.log(2), 1.0) - 1
        return (exact(x).astype(np.float64) * (1 + rel * w)).astype(f)

    return exp


def _exp_float16(fmt: Any) -> Callable[[np.ndarray], np.ndarray]:
    """exp evaluated in float16 (argument and result rounded to float16), returned in ``fmt``."""
    return lambda x: np.exp(x.astype(np.float16)).astype(fmt)


# ----------------------------------------------------------------------------------------- broken


class DropsLaterTiles(_Kernel):
    """Processes only the first key tile of 1024 keys: every key from 1024 on is dropped (n > 1024)."""

    block = 1024
    kwargs = {"tiles": lambda n: default_tiles(n, 1024)[:1]}
    families = ("tile_edges", "late_max")


class DoubleCountsLaterTiles(_Kernel):
    """Key tiles of 512: the second and later tiles are accumulated twice (a split-K reduction that
    adds the partial results of tiles ≥ 1 again)."""

    block = 512
    kwargs = {"tiles": lambda n: default_tiles(n, 512) + default_tiles(n, 512)[1:]}
    families = ("tile_edges", "late_max")


def _off_by_one_at(boundary: int, skip: bool) -> Callable[[int], list]:
    """Tiles of 256 keys, except that the tile starting at ``boundary`` starts one key late (skip: key
    ``boundary`` is never seen) or one key early (key boundary − 1 is seen twice); n ≤ boundary is
    untouched."""
    def tiles(n: int) -> list:
        out = default_tiles(n, 256)
        return [((c0 + 1 if skip else c0 - 1), c1) if c0 == boundary else (c0, c1) for c0, c1 in out]

    return tiles


class SkipsKey2048(_Kernel):
    """Off by one at the 2048 boundary: the tile starting at key 2048 starts at 2049 (n > 2048 only)."""

    block = 256
    kwargs = {"tiles": _off_by_one_at(2048, skip=True)}
    families = ("tile_edges", "late_max", "long_rows")
    needs = ("rows",)


class DoublesKey4095(_Kernel):
    """Off by one at the 4096 boundary: the tile starting at 4096 starts at 4095, so key 4095 is counted
    twice (n > 4096 only)."""

    block = 256
    kwargs = {"tiles": _off_by_one_at(4096, skip=False)}
    families = ("tile_edges", "late_max", "long_rows")
    needs = ("rows",)


class IgnoresLastPartialTile(_Kernel):
    """Tiles of 256 keys; a last tile shorter than 256 is ignored (n not a multiple of 256)."""

    block = 256
    kwargs = {"tiles": lambda n: [t for t in default_tiles(n, 256) if t[1] - t[0] == 256] or default_tiles(n, 256)}
    families = ("tile_edges",)


class FirstTileMaxOnly(_Kernel):
    """The running max is never updated after the first tile (128 keys): exp(L − m) overflows when a
    later tile's logits rise more than ~88.7 (float32) / ~709.8 (float64) above it."""

    block = 128
    kwargs = {"update_max": False}
    families = ("late_max",)


class FirstTileMaxOnlyFloat32(FirstTileMaxOnly):
    """The same in float32: overflow at late rises above ~88.7."""

    fmt = np.float32


class RescalesOutputNotSum(_Kernel):
    """When the running max grows, rescales O by exp(m_old − m_new) but not ℓ."""

    block = 256
    kwargs = {"rescale_l": False}
    families = ("late_max", "tile_edges")


class LazyRescaleMovesMax(_Kernel):
    """FlashAttention-4-style conditional rescaling done wrong: when the max grows by ≤ τ = 8 the old
    sums are not rescaled, but the new max is used anyway (weights off by up to e^8)."""

    block = 256
    kwargs = {"lazy_tau": 8.0, "lazy_bug": True}
    families = ("tile_edges", "late_max")


class ClampedExpArgument(_Kernel):
    """A 'fast' exp that clamps its argument to [−20, 0] (float64): wrong only where some weight is
    below e^−20 of the row max, i.e. rows with a late rise ≥ 20."""

    block = 128
    kwargs = {"exp": lambda x: np.exp(np.maximum(x, -20.0))}
    families = ("late_max",)


class SumInFloat16(_Kernel):
    """float32 kernel whose running sum ℓ is stored in float16 between tiles (tiles of 64)."""

    fmt = np.float32
    block = 64
    kwargs = {"l_fmt": np.float16}
    families = ("long_rows", "tile_edges")


class LongPathFloat32ClaimingFloat64(_Kernel):
    """Declares float64, and is float64 up to n = 4096; beyond, a 'long-context path' runs the kernel in
    float32 (accumulators included)."""

    block = 512
    families = ("tile_edges", "long_rows", "late_max")
    needs = ("rows",)

    def attention(self, q, k, v, *, scale):
        fmt = np.float32 if k.shape[0] > 4096 else np.float64
        return flash(q, k, v, scale, block=self.block, fmt=fmt).astype(np.float64)


class Float32AccumulatorsClaimingFloat64(_Kernel):
    """Declares float64; logits and exp in float64, but ℓ and O accumulated in float32 (rounded after
    every tile)."""

    block = 256
    kwargs = {"l_fmt": np.float32, "p_fmt": np.float32, "acc_fmt": np.float32}
    families = ("long_rows",)


class PInFloat16(_Kernel):
    """float32 kernel that rounds P to float16 before P·V (ℓ from the float32 P), as fp16 tensor-core
    kernels do."""

    fmt = np.float32
    kwargs = {"p_fmt": np.float16}
    families = ("late_max", "long_rows", "tile_edges")
    needs = ("tight",)


class ExpInFloat16(_Kernel):
    """float32 kernel evaluating exp in float16."""

    fmt = np.float32
    kwargs = {"exp": _exp_float16(np.float32)}
    families = ("late_max", "long_rows", "tile_edges")
    needs = ("tight",)


class OutputScaled(_Kernel):
    """float32 kernel whose output comes out multiplied by 1 + 1e-3."""

    fmt = np.float32
    kwargs = {"out_factor": 1 + 1e-3}
    families = ("long_rows", "tile_edges")
    needs = ("tight",)


class ScaleOff(_Kernel):
    """float32 kernel using the scale s·(1 + 1e-3)."""

    fmt = np.float32
    kwargs = {"scale_factor": 1 + 1e-3}
    families = ("long_rows", "late_max", "tile_edges")
    needs = ("tight",)


class Exp40Ulps(_Kernel):
    """float64 kernel whose exp is up to 40 ulps off (error varying with the reduced argument)."""

    kwargs = {"exp": _exp_ulps_off(np.float64, 40)}
    families = ("exp_probe",)


class Exp40UlpsFloat32(Exp40Ulps):
    """float32 kernel whose exp is up to 40 ulps off."""

    fmt = np.float32
    kwargs = {"exp": _exp_ulps_off(np.float32, 40)}


def _late_rows_skip_last_tile(r0: int, n: int, tiles: list) -> list:
    """Query chunks from row 2048 on (when n > 2048) skip the last key tile (a causal-mask bound
    computed from the wrong tile index)."""
    return tiles[:-1] if n > 2048 and r0 >= 2048 and len(tiles) > 1 else tiles


class LateQueriesSkipLastTile(_Kernel):
    """Wrong only on query rows ≥ 2048 of an instance with n > 2048: their last key tile is skipped.
    Caught only if a certified row lies there (tile-boundary and last rows)."""

    block = 256
    kwargs = {"row_bug": _late_rows_skip_last_tile}
    families = ("tile_edges", "long_rows", "late_max")
    needs = ("rows",)


BROKEN = [
    DropsLaterTiles, DoubleCountsLaterTiles, SkipsKey2048, DoublesKey4095, IgnoresLastPartialTile,
    FirstTileMaxOnly, FirstTileMaxOnlyFloat32, RescalesOutputNotSum, LazyRescaleMovesMax, ClampedExpArgument,
    SumInFloat16, LongPathFloat32ClaimingFloat64, Float32AccumulatorsClaimingFloat64, PInFloat16, ExpInFloat16,
    OutputScaled, ScaleOff, Exp40Ulps, Exp40UlpsFloat32, LateQueriesSkipLastTile,
]


# ---------------------------------------------------------------------------------------- correct


def _online(block: int, fmt: Any) -> type:
    name = f"Online{np.dtype(fmt).name.capitalize()}Block{block}"
    return type(name, (_Kernel,), {"__doc__": f"Correct blocked online softmax, tiles of {block}, {np.dtype(fmt).name}.",
                                   "block": block, "fmt": fmt})


class LazyRescale(_Kernel):
    """Correct conditional rescaling (FlashAttention-4): keep the old max while the row max grows by at
    most τ = 8 (weights up to e^8, no overflow), rescale otherwise."""

    block = 256
    kwargs = {"lazy_tau": 8.0}


class LazyRescaleFloat32(LazyRescale):
    """The same in float32."""

    fmt = np.float32


class TorchSDPA:
    """torch.nn.functional.scaled_dot_product_attention (CPU), in the case's dtype (float32 or float64)."""

    capabilities = {"dtypes": {"float64", "float32"}}

    def attention(self, q, k, v, *, scale):
        import torch

        t = [torch.from_numpy(np.array(x, copy=True, order="C"))[None, None] for x in (q, k, v)]
        out = torch.nn.functional.scaled_dot_product_attention(*t, scale=float(scale))
        return out[0, 0].numpy()


CORRECT = [
    *(_online(b, f) for f in (np.float64, np.float32) for b in (64, 128, 256, 512, 1024, 2048, 4096)),
    LazyRescale, LazyRescaleFloat32, TorchSDPA,
]
