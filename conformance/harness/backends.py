"""Finding backends and reading what they declare.

A backend is any object with ``attention(q, k, v, *, scale)`` (numpy arrays in, array-like out). It is
named by:

- a built-in or entry-point name (group ``attnspec.backends``): ``reference``, ``numpy``, ``torch``, …;
- ``module:attr`` or ``path/to/file.py:attr``, where ``attr`` is the object or a zero-argument factory.

Richer backends declare ``capabilities`` (a dict or an object with the same attributes), in the manner of
xformers' operator declarations; see :class:`Capabilities` (in ``capabilities.py``, which validates every
value strictly). The suite runs only the cases a backend declares and reports the rest as not applicable.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
from typing import Any

from attnspec.conformance.harness.capabilities import (  # noqa: F401  (re-exported: the public names)
    Capabilities,
    CapabilityError,
    read_capabilities,
)
from attnspec.conformance.judging.problems import backend_methods

ENTRY_POINT_GROUP = "attnspec.backends"

# Built-ins are also listed here so that they work without installed entry-point metadata
# (running from a source checkout).
BUILTIN_BACKENDS = {
    "reference": "attnspec.conformance.harness.builtin_backends:reference_backend",
    "numpy": "attnspec.conformance.harness.builtin_backends:numpy_backend",
    "cupy": "attnspec.conformance.harness.builtin_backends:cupy_backend",
    "torch": "attnspec.conformance.harness.builtin_backends:torch_backend",
    "jax": "attnspec.conformance.harness.jax_backend:jax_backend",
    "poly": "attnspec.conformance.harness.builtin_backends:poly_backend",
    "fa2-emulation-bf16": "attnspec.conformance.harness.flash_backends:fa2_emulation_bf16",
    "fa2-emulation-fp16": "attnspec.conformance.harness.flash_backends:fa2_emulation_fp16",
    "fa2-emulation-fp8": "attnspec.conformance.harness.flash_backends:fa2_emulation_fp8",
}



class BackendLoadError(RuntimeError):
    """A backend name or ``module:attr`` spec could not be turned into a usable backend."""


def _entry_points() -> dict[str, str]:
    try:
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception:
        return {}
    return {ep.name: ep.value for ep in eps}


def available_backends() -> dict[str, str]:
    """Every named backend: built-ins plus the ``attnspec.backends`` entry points."""
    names = dict(BUILTIN_BACKENDS)
    names.update(_entry_points())
    return names


def _import_target(target: str) -> Any:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise BackendLoadError(f"backend spec {target!r} is not of the form module:attr or file.py:attr")
    if module_name.endswith(".py") or os.sep in module_name:
        path = os.path.abspath(module_name)
        if not os.path.isfile(path):
            raise BackendLoadError(f"backend file {module_name!r} does not exist")
        name = "attnspec_user_backend_" + os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise BackendLoadError(f"backend file {module_name!r} cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:  # a backend's import code: sys.exit there is a load error
            raise BackendLoadError(f"importing {module_name!r} raised {type(exc).__name__}: {exc}") from exc
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())  # like `python -m`: modules next to the caller import
        try:
            module = importlib.import_module(module_name)
        except (Exception, SystemExit) as exc:
            raise BackendLoadError(f"importing module {module_name!r} raised {type(exc).__name__}: {exc}") from exc
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise BackendLoadError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def load_backend(spec: str) -> Any:
    """Resolve a backend name or ``module:attr`` spec to a backend object.

    A class or zero-argument function is called to produce the object; a function taking arguments is
    itself the ``attention`` method of a minimal backend; anything else is the backend.
    """
    target = available_backends().get(spec, spec)
    obj = _import_target(target)
    if callable(obj) and not inspect.isclass(obj) and _has_required_params(obj) and not hasattr(obj, "attention"):
        return FunctionBackend(obj)  # a bare attention(q, k, v, *, scale) function
    if inspect.isclass(obj) or (inspect.isfunction(obj) and not _has_required_params(obj)):
        try:
            obj = obj()
        except Exception as exc:
            raise BackendLoadError(f"backend factory {spec!r} raised {type(exc).__name__}: {exc}") from exc
    methods = sorted(backend_methods().values())
    if not any(callable(getattr(obj, m, None)) for m in methods) and not callable(getattr(obj, "init", None)):
        raise BackendLoadError(f"backend {spec!r} has none of the methods {methods}")
    return obj


class FunctionBackend:
    """Wraps a bare ``attention(q, k, v, *, scale)`` function as a minimal backend."""

    def __init__(self, fn: Any):
        self.attention = fn
        self.name = getattr(fn, "__qualname__", repr(fn))

    def __repr__(self) -> str:
        return f"FunctionBackend({self.name})"


def _has_required_params(fn: Any) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return any(
        p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        for p in sig.parameters.values()
    )


def backend_identity(spec: str, backend: Any) -> dict[str, Any]:
    """Name, class and versions of a backend, for reports."""
    ident = {"spec": spec, "class": f"{type(backend).__module__}.{type(backend).__qualname__}"}
    version = getattr(backend, "version", None)
    if version is not None:
        ident["version"] = str(version)
    return ident
