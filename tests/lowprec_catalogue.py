"""Broken (and correct) low-precision FlashAttention-2 kernels, each one step of
:class:`attnspec.accelerated.flash_emulation.FlashEmulator` replaced, judged against the stage model the
correct kernel declares (``tests/test_flash_emulation.py``).

Broken: P rounded to fp8 while bf16 is declared; logits accumulated in bf16 while float32 is declared;
O not rescaled when the running max grows; the fp8 scale not divided out (or the wrong one). Correct
variants that must pass: FA2 itself (ℓ from the unrounded P̃), ℓ from the rounded P (a legitimate
variant: the bound covers both, docs/mixed-precision.md step 5), other tilings.
"""

from __future__ import annotations

import numpy as np

from attnspec.accelerated.flash_emulation import F32, FlashConfig, FlashEmulator, _exp32
from attnspec.conformance.harness.flash_backends import FlashEmulationBackend


class PInFp8(FlashEmulator):
    """Stores P in fp8 e4m3 (no scale) although bf16 is declared."""

    def store_p(self, p):
        return p.astype("float8_e4m3fn").astype(F32)


class LogitsInBf16(FlashEmulator):
    """Accumulates QKᵀ in bf16 (every partial sum rounded) although float32 is declared."""

    def scores(self, qb, kb, scale32):
        acc = np.zeros((qb.shape[0], kb.shape[0]), dtype=F32)
        for t in range(qb.shape[1]):
            acc = (acc + np.outer(qb[:, t].astype(F32), kb[:, t].astype(F32))).astype("bfloat16").astype(F32)
        return acc * scale32


class NoRescaleO(FlashEmulator):
    """Forgets to rescale O when the running max grows (ℓ is still rescaled)."""

    def accumulate(self, o, c, p_stored, vb):
        return (o + p_stored @ vb.astype(F32)).astype(F32)


class Fp8ScaleNotDividedOut(FlashEmulator):
    """Stores σ·P̃ in fp8 but divides O by a different scale (σ/2 instead of σ)."""

    def finalise(self, o, ell):
        o = o * F32(2 / self.config.p_scale)
        return (o * (F32(1) / ell)[:, None]).astype(F32).astype(self.config.output)


class ExpOfUnshifted(FlashEmulator):
    """Rescales with exp(m_new − m_old) (the sign flipped)."""

    def rescale_factor(self, m_old, m_new):
        diff = np.where(np.isfinite(m_old), (m_new - m_old).astype(F32), 0).astype(F32)
        return np.where(np.isfinite(m_old), _exp32(diff), F32(0)).astype(F32)


BF16 = FlashConfig("bfloat16", "bfloat16", 1.0, "bfloat16", 64, 64)
FP8 = FlashConfig("bfloat16", "float8_e4m3fn", 256.0, "bfloat16", 64, 64)


def backend(kernel_cls: type, config: FlashConfig, name: str) -> FlashEmulationBackend:
    """A backend declaring ``config``'s stage model but computing with ``kernel_cls``."""
    b = FlashEmulationBackend(config, name)
    b._kernel = kernel_cls(config)
    return b


# name -> (backend factory, must it pass?)
CATALOGUE = {
    "fa2-bf16": (lambda: backend(FlashEmulator, BF16, "fa2-bf16"), True),
    "fa2-bf16-rowsum-rounded": (lambda: backend(FlashEmulator, FlashConfig(row_sum="rounded"), "rowsum-rounded"), True),
    "fa2-bf16-tiles-128x32": (lambda: backend(FlashEmulator, FlashConfig(block_rows=128, block_keys=32), "tiles"), True),
    "fa2-fp8": (lambda: backend(FlashEmulator, FP8, "fa2-fp8"), True),
    "fa2-fp16": (lambda: backend(FlashEmulator, FlashConfig("float16", "float16", 1.0, "float16"), "fa2-fp16"), True),
    "p-in-fp8-declared-bf16": (lambda: backend(PInFp8, BF16, "p-fp8"), False),
    "logits-in-bf16": (lambda: backend(LogitsInBf16, BF16, "logits-bf16"), False),
    "no-rescale-of-o": (lambda: backend(NoRescaleO, BF16, "no-rescale"), False),
    "fp8-wrong-descale": (lambda: backend(Fp8ScaleNotDividedOut, FP8, "fp8-descale"), False),
    "rescale-sign-flipped": (lambda: backend(ExpOfUnshifted, BF16, "sign"), False),
}


def fa3_comparison() -> list[dict]:
    """For each correct kernel and catalogue instance: the certified worst ratio error/τ of the judged
    rows beside what FA3's tuned 2× rule says on the whole output (torch's math SDPA in the low-precision
    format as its "PyTorch reference", torch float32 on the same inputs as its float32 reference).
    Run ``python3 -m tests.lowprec_catalogue`` for the table (docs/mixed-precision.md §6)."""
    import torch

    from attnspec.conformance.judging.stage_precision import fa3_rule
    from tests.test_flash_emulation import _cases, _judge

    rows = []
    for name, (factory, must_pass) in sorted(CATALOGUE.items(), key=lambda item: (not item[1][1], item[0])):
        b = factory()
        dtype = b.config.inputs
        torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        for label, inst in _cases(dtype).items():
            verdict, _, out = _judge(b, inst, dtype)
            t = [torch.from_numpy(x.astype(np.float32))[None, None] for x in (inst.q, inst.k, inst.v)]
            s = float(inst.scale)
            ref32 = torch.nn.functional.scaled_dot_product_attention(*t, scale=s)[0, 0].numpy()
            low = torch.nn.functional.scaled_dot_product_attention(*(x.to(torch_dtype) for x in t), scale=s)
            rule = fa3_rule(out, ref32, low[0, 0].float().numpy(), b.config.output)
            rows.append({"kernel": name, "correct": must_pass, "case": label, "verdict": verdict.status,
                         "ratio_error_over_tau": float(verdict.evidence["ratio"]), **rule})
    return rows


if __name__ == "__main__":
    print("| kernel | correct | case | verdict | err/τ | FA3 err | FA3 limit 2·err_pt + atol | FA3 passes |")
    print("|---|---|---|---|---|---|---|---|")
    for r in fa3_comparison():
        print(f"| {r['kernel']} | {r['correct']} | {r['case']} | {r['verdict']} | {r['ratio_error_over_tau']:.3g} | "
              f"{r['error']:.3g} | {r['limit']:.3g} | {r['passes']} |")
