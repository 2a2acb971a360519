"""Conformance checking: judging (verdicts, tolerances, problems), the harness (backends, isolation,
runner, reports, case files), the front ends (CLI, pytest plugin, strategies, assertions) and audits.

The public API, for property tests and scripts::

    from attnspec.conformance import assert_conforms, run_conformance
    from attnspec.conformance import softmax_instances, tensor_instances, dynamic_state_machine

Names are imported on first use, so importing a submodule stays cheap and cycle-free.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "assert_conforms": "attnspec.conformance.frontends.assertions",
    "run_conformance": "attnspec.conformance.harness.runner",
    "softmax_instances": "attnspec.conformance.frontends.strategies",
    "tensor_instances": "attnspec.conformance.frontends.strategies",
    "dynamic_state_machine": "attnspec.conformance.frontends.strategies",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
