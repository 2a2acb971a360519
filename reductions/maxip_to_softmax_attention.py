"""Gap-MaxIP (2-way) → softmax attention: the Alman–Song lower bound for bounded-entry attention
(AAttC with d = Θ(log n), B = Θ(√log n)) as a program.

One attention call on a 2n×d' instance in the papers' normalisation (scale fl(1/d'), entries
s = √(β·d')) answers the decision and the witness pair; the gadget, its margins and the refusal are in
:mod:`attnspec.reductions.maxip_gadget` and docs/reductions.md ("Gap-MaxIP → softmax attention").

Build parameters: ``lam`` (λ, the safety factor in β·Δ ≥ ln(λ·n), default 100), ``dummy`` (``tuned``:
dummy mass at the odds midpoint, default; ``zero``: zero keys; ``max``: all-ones keys at the largest
logit, the paper's variant), ``beta`` (override β; entries grow as √(β·d')).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attnspec.conformance.judging.softmax_attention import Case
from attnspec.reductions import maxip, maxip_gadget as gadget
from attnspec.reductions.base import Built, SourceAnswer
from attnspec.reductions.registry import register
from attnspec.spec.softmax_attention import PROBLEM, make_instance

SOURCE_KEYS = ("d", "w", "tau_hi", "tau_lo", "gap")


class MaxIPToSoftmaxAttention(gadget.GadgetReduction):
    """Gap-MaxIP (k = 2) → softmax attention ``attention(q, k, v, *, scale)``."""

    name = "maxip_to_softmax"
    source_kind = maxip.KIND
    target_problem = PROBLEM
    families = maxip.FAMILIES
    generator_version = maxip.GENERATOR_VERSION
    order = 2

    def build(self, source: maxip.MaxIPInstance, params: dict[str, Any] | None = None) -> Built:
        if source.order != self.order:
            raise ValueError(f"{self.name} takes 2-way Gap-MaxIP instances, got order {source.order}")
        opts = gadget.build_options(params)
        arrays, decoder, meta = gadget.build_gadget(source, opts)
        inst = make_instance(arrays["q"], arrays["keys"][0], arrays["values"][0], scale=arrays["scale"])
        case = Case(f"{self.name}/n{source.n}/d{inst.d}/{opts['dummy']}", "reduction", "float64", 0, inst,
                    tags={"n": source.n, "dummy": opts["dummy"]})
        return Built(self.name, source, dict(params or {}), [case], decoder, meta)

    def decode(self, built: Built, answers: list[np.ndarray]) -> SourceAnswer:
        return gadget.decode_gadget(built.source, built.decoder, answers[0])

    def agrees(self, source: Any, decoded: SourceAnswer, truth: SourceAnswer) -> bool:
        return gadget.agrees(source, decoded, truth)

    def brute_force(self, source: maxip.MaxIPInstance) -> SourceAnswer:
        return maxip.solve(source)

    def generate(self, family: str, n: int, rng: np.random.Generator, **params: Any) -> tuple[Any, dict[str, Any]]:
        """A source instance and ``{"generator": record}``; the record carries the build options (``build``)."""
        unknown = set(params) - set(SOURCE_KEYS) - set(gadget.BUILD_KEYS) - {"order"}
        if unknown:
            raise ValueError(f"unknown {self.name} parameters {sorted(unknown)}; known: "
                             f"{', '.join(SOURCE_KEYS + gadget.BUILD_KEYS)}")
        order = int(params.get("order", self.order))
        if order != self.order and self.order == 2:
            raise ValueError(f"{self.name} takes order 2, got {order}")
        inst, record = maxip.generate(family, n, rng, order=order, **{k: params[k] for k in SOURCE_KEYS if k in params})
        record["build"] = gadget.build_options(params)
        return inst, {"generator": record}

    def source_arrays(self, source: maxip.MaxIPInstance) -> dict[str, np.ndarray]:
        return maxip.instance_arrays(source)

    def source_params(self, source: maxip.MaxIPInstance) -> dict[str, Any]:
        return maxip.instance_params(source)

    def source_from_files(self, arrays: dict[str, np.ndarray], params: dict[str, Any]) -> maxip.MaxIPInstance:
        inst = maxip.instance_from_files(arrays, params)
        if inst.order != self.order:
            raise ValueError(f"{self.name} takes 2-way Gap-MaxIP instances, got order {inst.order}")
        return inst


MAXIP_TO_SOFTMAX = register(MaxIPToSoftmaxAttention())

__all__ = ["MaxIPToSoftmaxAttention", "MAXIP_TO_SOFTMAX"]
