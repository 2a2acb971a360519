"""Gap-MaxIP (3-way and k-way) → tensor attention: the Alman–Song lower bound for k-th order attention
(ATAttC with d = Θ(log n), B = Θ((log n)^{1/k})) as a program.

One tensor-attention call (order k = the source's order) on 2n×d' matrices with scale fl(1/d') and
entries s = (β·d')^{1/k} answers the decision and the witness tuple; the gadget, its margins and the
refusal are in :mod:`attnspec.reductions.maxip_gadget` and docs/reductions.md ("Gap-MaxIP → tensor
attention"). Build parameters: ``lam``, ``dummy`` (``tuned`` or ``zero``; the max-logit dummy of the
2-way gadget does not lift, see the docs), ``beta``; source parameter ``order`` (default 3).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attnspec.conformance.judging.tensor_attention import Case
from attnspec.reductions import maxip, maxip_gadget as gadget
from attnspec.reductions.base import Built
from attnspec.reductions.maxip_to_softmax_attention import MaxIPToSoftmaxAttention
from attnspec.reductions.registry import register
from attnspec.spec.tensor_attention import PROBLEM, make_instance


class MaxIPToTensorAttention(MaxIPToSoftmaxAttention):
    """Gap-MaxIP (any order k ≥ 2) → tensor attention ``tensor_attention(q, keys, values, *, scale)``."""

    name = "maxip_to_tensor"
    target_problem = PROBLEM
    order = 3  # the default source order; build takes any k ≥ 2

    def build(self, source: maxip.MaxIPInstance, params: dict[str, Any] | None = None) -> Built:
        opts = gadget.build_options(params)
        arrays, decoder, meta = gadget.build_gadget(source, opts)
        inst = make_instance(arrays["q"], arrays["keys"], arrays["values"], scale=arrays["scale"])
        case = Case(f"{self.name}/k{source.order}/n{source.n}/d{inst.d}/{opts['dummy']}", "reduction", "float64", 0,
                    inst, tags={"n": source.n, "order": source.order, "dummy": opts["dummy"]})
        return Built(self.name, source, dict(params or {}), [case], decoder, meta)

    def source_from_files(self, arrays: dict[str, np.ndarray], params: dict[str, Any]) -> maxip.MaxIPInstance:
        return maxip.instance_from_files(arrays, params)


MAXIP_TO_TENSOR = register(MaxIPToTensorAttention())

__all__ = ["MaxIPToTensorAttention", "MAXIP_TO_TENSOR"]
