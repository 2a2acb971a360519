"""Built-in backends ``fa2-emulation-bf16``, ``fa2-emulation-fp16`` and ``fa2-emulation-fp8``: the
FlashAttention-2 CPU emulation (:mod:`attnspec.accelerated.flash_emulation`), each declaring the
:class:`~attnspec.conformance.judging.stage_precision.StagePrecisionModel` it computes by, so that every
low-precision verdict path runs without a GPU."""

from __future__ import annotations

from typing import Any

import numpy as np

from attnspec.accelerated.flash_emulation import CONFIGS, FlashConfig, FlashEmulator
from attnspec.conformance.judging.stage_precision import StagePrecisionModel


def stage_model_for(config: FlashConfig) -> StagePrecisionModel:
    """The stage model an emulated kernel with ``config`` computes by: float32 logits and accumulator,
    exp within 1 ulp (float64 exp rounded to float32), ``block_keys`` keys per block."""
    return StagePrecisionModel(inputs=config.inputs, logits="float32", exp_ulps=1.0, p_format=config.p_format,
                               p_scale=float(config.p_scale), p_subnormals=True, accumulate="float32",
                               output=config.output, block_keys=config.block_keys)


class FlashEmulationBackend:
    """``attention(q, k, v, *, scale)`` by the emulated FA2 kernel; the output-format result is returned
    as float32 (every bf16/fp16/fp8 value is one, exactly)."""

    def __init__(self, config: FlashConfig, name: str = "fa2-emulation"):
        self.config = config
        self.name = name
        self.version = f"{name} (B_r={config.block_rows}, B_c={config.block_keys}, row sum {config.row_sum})"
        self._kernel = FlashEmulator(config)
        self.capabilities: dict[str, Any] = {
            "problems": {"softmax_attention"},
            "dtypes": {config.inputs},
            "devices": {"cpu"},
            "deterministic": True,
            "precision": {config.inputs: stage_model_for(config)},
        }

    def attention(self, q, k, v, *, scale):
        return np.asarray(self._kernel.forward(q, k, v, scale=scale)).astype(np.float32)


def fa2_emulation_bf16() -> FlashEmulationBackend:
    return FlashEmulationBackend(CONFIGS["bf16"], "fa2-emulation-bf16")


def fa2_emulation_fp16() -> FlashEmulationBackend:
    return FlashEmulationBackend(CONFIGS["fp16"], "fa2-emulation-fp16")


def fa2_emulation_fp8() -> FlashEmulationBackend:
    return FlashEmulationBackend(CONFIGS["fp8"], "fa2-emulation-fp8")
