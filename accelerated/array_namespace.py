"""Which array library an accelerated computation runs on (numpy on CPU, CuPy on GPU, torch).

Accelerated modules are written once against the array API standard. This module is the one place
that knows about concrete libraries:

- :func:`array_namespace` — the array-API namespace of some input arrays (array-api-compat's wrapper:
  ``array_api_compat.numpy`` for numpy arrays, ``array_api_compat.cupy`` for CuPy arrays, …). Mixing
  libraries raises :class:`~attnspec.spec.validation.SpecError`.
- :func:`namespace_for` — the *native* library for a device name, to create inputs there:
  ``"cpu"`` → :mod:`numpy`, ``"cuda"`` (or ``"gpu"``) → :mod:`cupy`, with a clear error when CuPy or a
  CUDA device is missing.
- :func:`to_numpy` — bring any result back to a host ``numpy.ndarray`` (``.get()`` for CuPy,
  ``.cpu().numpy()`` for torch).
- :func:`native_module` — numpy or cupy when the array is one of theirs (their ufuncs accept ``out=``,
  which lets hot loops work in place), else None.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

from attnspec.spec.validation import SpecError

DEVICE_ALIASES = {"cpu": "cpu", "numpy": "cpu", "cuda": "cuda", "gpu": "cuda", "cupy": "cuda"}


def array_namespace(*arrays: Any) -> ModuleType:
    """The array-API namespace shared by ``arrays`` (Python scalars and None are ignored)."""
    try:
        return array_api_compat.array_namespace(*arrays)
    except TypeError as exc:
        raise SpecError(f"inputs must be arrays of one array library (numpy, CuPy, torch): {exc}") from None


def namespace_for(device: str) -> ModuleType:
    """The native array library for ``device``: ``"cpu"`` → numpy, ``"cuda"`` → cupy.

    Raises :class:`SpecError` for an unknown device name, and :class:`RuntimeError` naming the cause
    when ``"cuda"`` is asked for but CuPy is not installed or sees no CUDA device.
    """
    kind = DEVICE_ALIASES.get(str(device).lower())
    if kind is None:
        raise SpecError(f"unknown device {device!r}; use one of {sorted(DEVICE_ALIASES)}")
    if kind == "cpu":
        return np
    try:
        import cupy
    except ImportError:
        raise RuntimeError("device 'cuda' needs CuPy (pip install cupy-cuda12x), which is not installed") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver missing or broken
        raise RuntimeError(f"device 'cuda': CuPy is installed but CUDA is unusable: {exc}") from None
    if count < 1:
        raise RuntimeError("device 'cuda': CuPy is installed but no CUDA GPU is visible")
    return cupy


def native_module(x: Any) -> ModuleType | None:
    """numpy or cupy when ``x`` is one of their arrays (ufuncs with ``out=``), else None."""
    if array_api_compat.is_numpy_array(x):
        return np
    if array_api_compat.is_cupy_array(x):
        import cupy

        return cupy
    return None


def to_numpy(x: Any) -> np.ndarray:
    """``x`` as a host numpy array (copying from a GPU when needed)."""
    if isinstance(x, np.ndarray):
        return x
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


__all__ = ["array_namespace", "namespace_for", "native_module", "to_numpy", "DEVICE_ALIASES"]
