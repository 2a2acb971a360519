"""FlashAttention-2 forward pass emulated on the CPU, tile by tile, in the kernel's own formats.

numpy + ml_dtypes reproduce what the GPU kernel does with each tile (Dao, "FlashAttention-2", Alg. 1):
for a block of B_r query rows and each block of B_c keys,

    S   = fl32(fl32(Q_b K_cᵀ) · s)                 (bf16/fp16 inputs, products and sums in float32)
    m'  = max(m, rowmax S)                          (running max, exact)
    P̃   = fl32(exp(fl32(S − m')))                   (∈ (0, 1]; exp correctly rounded from float64)
    P   = fl_p(fl32(σ·P̃))                            (stored P: bf16/fp16, or fp8 with per-tensor scale σ)
    c   = fl32(exp(fl32(m − m')))                   (rescale factor for what was accumulated)
    ℓ   = fl32(c·ℓ + rowsum(P̃))                     (FA2: ℓ from the unrounded P̃; ``row_sum="rounded"``
                                                      uses P/σ, the other legitimate choice)
    O   = fl32(c·O + fl32(P·V_c))                   (float32 accumulator, in σ units)

and at the end O = fl_out(fl32(fl32(O · fl32(1/σ)) · fl32(1/ℓ))). Every step is a method, so a test
can replace one step by a broken one (``tests/lowprec_catalogue.py``). The precision model these
kernels declare, and the bound it implies, are in ``attnspec.conformance.judging.stage_precision``
and ``docs/mixed-precision.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes  # noqa: F401  (registers bfloat16 and the fp8 dtypes with numpy)
import numpy as np

F32 = np.float32


@dataclass(frozen=True)
class FlashConfig:
    """The formats and tiling of one emulated kernel.

    ``inputs``/``p_format``/``output``: numpy dtype names (``"bfloat16"``, ``"float16"``,
    ``"float8_e4m3fn"``, ``"float8_e5m2"``, ``"float32"``); ``p_scale``: σ for the stored P;
    ``block_rows`` B_r, ``block_keys`` B_c; ``row_sum``: ``"unrounded"`` (FA2: ℓ from P̃ in float32)
    or ``"rounded"`` (ℓ from the stored P)."""

    inputs: str = "bfloat16"
    p_format: str = "bfloat16"
    p_scale: float = 1.0
    output: str = "bfloat16"
    block_rows: int = 64
    block_keys: int = 64
    row_sum: str = "unrounded"

    def __post_init__(self) -> None:
        for name in ("inputs", "p_format", "output"):
            np.dtype(getattr(self, name))  # raises TypeError for an unknown dtype name
        if self.row_sum not in ("unrounded", "rounded"):
            raise ValueError(f"row_sum must be 'unrounded' or 'rounded', got {self.row_sum!r}")
        if not (self.block_rows >= 1 and self.block_keys >= 1):
            raise ValueError("block sizes must be positive")
        if not self.p_scale > 0:
            raise ValueError("p_scale must be positive")


def _exp32(x: np.ndarray) -> np.ndarray:
    """exp in float32, correctly rounded up to float64's exp error (≤ 1 float32 ulp: the declared
    ``exp_ulps = 1``); numpy's own float32 exp is only documented to a few ulps."""
    return np.exp(x.astype(np.float64)).astype(F32)


class FlashEmulator:
    """FA2's forward pass (see the module docstring); :meth:`forward` returns the output-format array."""

    def __init__(self, config: FlashConfig):
        self.config = config

    # --- the steps of one tile (a broken kernel overrides one of them) -------------------------------
    def cast_inputs(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x).astype(self.config.inputs)

    def scores(self, qb: np.ndarray, kb: np.ndarray, scale32: np.float32) -> np.ndarray:
        """S = fl32(fl32(Q_b K_cᵀ)·s): float32 products (exact for bf16/fp16 inputs) and sums."""
        return (qb.astype(F32) @ kb.astype(F32).T) * scale32

    def shifted_exp(self, s: np.ndarray, m_new: np.ndarray) -> np.ndarray:
        return _exp32((s - m_new[:, None]).astype(F32))

    def store_p(self, p: np.ndarray) -> np.ndarray:
        """The stored P: fl_p(fl32(σ·P̃)), kept as float32 values for the float32 GEMM."""
        cfg = self.config
        scaled = p * F32(cfg.p_scale) if cfg.p_scale != 1 else p
        return scaled.astype(cfg.p_format).astype(F32)

    def rescale_factor(self, m_old: np.ndarray, m_new: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            diff = (m_old - m_new).astype(F32)
        return np.where(np.isfinite(m_old), _exp32(np.where(np.isfinite(diff), diff, 0)), F32(0)).astype(F32)

    def row_sum(self, p: np.ndarray, p_stored: np.ndarray) -> np.ndarray:
        if self.config.row_sum == "rounded":
            return (p_stored * F32(1 / self.config.p_scale)).sum(axis=1, dtype=F32) if self.config.p_scale != 1 \
                else p_stored.sum(axis=1, dtype=F32)
        return p.sum(axis=1, dtype=F32)

    def accumulate(self, o: np.ndarray, c: np.ndarray, p_stored: np.ndarray, vb: np.ndarray) -> np.ndarray:
        return (c[:, None] * o + p_stored @ vb.astype(F32)).astype(F32)

    def finalise(self, o: np.ndarray, ell: np.ndarray) -> np.ndarray:
        cfg = self.config
        if cfg.p_scale != 1:
            o = o * F32(1 / cfg.p_scale)
        inv = (F32(1) / ell).astype(F32)
        return (o * inv[:, None]).astype(F32).astype(cfg.output)

    # --- the loop ---------------------------------------------------------------------------------
    def forward(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, *, scale: float) -> np.ndarray:
        """softmax(s·QKᵀ)V computed as FA2 does; returns an array of the output dtype, shape (m, d_v)."""
        cfg = self.config
        q, k, v = (self.cast_inputs(x) for x in (q, k, v))
        m_rows, n = q.shape[0], k.shape[0]
        scale32 = F32(scale)
        out = np.empty((m_rows, v.shape[1]), dtype=cfg.output)
        for r0 in range(0, m_rows, cfg.block_rows):
            qb = q[r0:r0 + cfg.block_rows]
            rows = qb.shape[0]
            m = np.full(rows, -np.inf, dtype=F32)
            ell = np.zeros(rows, dtype=F32)
            o = np.zeros((rows, v.shape[1]), dtype=F32)
            for c0 in range(0, n, cfg.block_keys):
                s = self.scores(qb, k[c0:c0 + cfg.block_keys], scale32)
                m_new = np.maximum(m, s.max(axis=1))
                p = self.shifted_exp(s, m_new)
                p_stored = self.store_p(p)
                c = self.rescale_factor(m, m_new)
                ell = (c * ell + self.row_sum(p, p_stored)).astype(F32)
                o = self.accumulate(o, c, p_stored, v[c0:c0 + cfg.block_keys])
                m = m_new
            out[r0:r0 + rows] = self.finalise(o, ell)
        return out


def flash_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, *, scale: float,
                    config: FlashConfig | None = None) -> np.ndarray:
    """FA2's forward pass under ``config`` (default: bf16 in/P/out, B_r = B_c = 64)."""
    return FlashEmulator(config or FlashConfig()).forward(q, k, v, scale=scale)


# The emulated kernels shipped as built-in backends (fa2-emulation-*), with their formats.
CONFIGS = {
    "bf16": FlashConfig("bfloat16", "bfloat16", 1.0, "bfloat16"),
    "fp16": FlashConfig("float16", "float16", 1.0, "float16"),
    # FP8 (e4m3) P with a per-tensor scale σ = 256 (σ·P̃ ≤ 256 < 448 = e4m3's largest value; a power
    # of two, so the scaling itself is exact, and P̃ down to 2^-14 stays normal): bf16 inputs and output.
    "fp8": FlashConfig("bfloat16", "float8_e4m3fn", 256.0, "bfloat16"),
}
