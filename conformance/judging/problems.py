"""Registry of problems the conformance suite knows, by name → conformance module.

A problem module provides: ``PROBLEM``, ``METHOD`` (the backend method it calls), ``Case``,
``generate_cases(profile, dtypes, seed)``, ``applicable(case, caps)``, ``call_args(case)``,
``judge_case(case, output, caps)``, ``instance_arrays(inst)``, ``instance_params(inst)`` and
``instance_from_files(arrays, params)``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

PROBLEM_MODULES = {
    "softmax_attention": "attnspec.conformance.judging.softmax_attention",
    "tensor_attention": "attnspec.conformance.judging.tensor_attention",
    "dynamic_attention": "attnspec.conformance.judging.dynamic_attention",
}


def problem_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(PROBLEM_MODULES[name])
    except KeyError:
        raise ValueError(f"unknown problem {name!r}; known: {sorted(PROBLEM_MODULES)}") from None
