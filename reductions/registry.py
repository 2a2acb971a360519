"""Reductions by name: the CLI, the instance sets and the benchmarks find a reduction here.

Each reduction module ends with ``register(MyReduction())``; :data:`BUILTIN_REDUCTION_MODULES` lists the
modules (the one line a new built-in reduction adds here). Several reductions may come from one module
(e.g. the OAMV and ODAMV versions of HMV).
"""

from __future__ import annotations

import importlib

from attnspec.reductions.base import Reduction

BUILTIN_REDUCTION_MODULES = [
    "attnspec.reductions.hmv_to_dynamic_attention",
    "attnspec.reductions.maxip_to_softmax_attention",
    "attnspec.reductions.maxip_to_tensor_attention",
    "attnspec.reductions.sat_to_attention",
]

_REGISTRY: dict[str, Reduction] = {}
_loaded = False


def register(reduction: Reduction) -> Reduction:
    """Add ``reduction`` (a second, different reduction of the same name is an error)."""
    existing = _REGISTRY.get(reduction.name)
    if existing is not None and type(existing) is not type(reduction):
        raise ValueError(f"reduction {reduction.name!r} is already registered by {type(existing).__qualname__}")
    _REGISTRY[reduction.name] = reduction
    return reduction


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_REDUCTION_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:  # a module still being written must not hide the others
            if exc.name != module:
                raise


def reductions() -> dict[str, Reduction]:
    """Every registered reduction by name."""
    _load()
    return dict(_REGISTRY)


def get_reduction(name: str) -> Reduction:
    """The reduction called ``name``; ``ValueError`` naming the known ones otherwise."""
    known = reductions()
    try:
        return known[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown reduction {name!r}; known: {', '.join(sorted(known)) or 'none'}") from None


__all__ = ["register", "reductions", "get_reduction", "BUILTIN_REDUCTION_MODULES"]
