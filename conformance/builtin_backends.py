"""Backends shipped with attnspec: ``reference``, ``numpy``, ``cupy``, ``torch``.

Each factory returns an object with ``attention(q, k, v, *, scale)`` and a ``capabilities`` dict. Heavy
libraries are imported by the factory, so listing backends never requires them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .precision_model import PrecisionModel


class ReferenceBackend:
    """The certified reference, rounded once to float64 (its enclosure midpoint at 128 bits)."""

    capabilities = {
        "problems": {"softmax_attention"},
        "dtypes": {"float64", "float32"},
        "devices": {"cpu"},
        "max_n": 2048,
        "deterministic": True,
        "precision": {
            "float64": PrecisionModel("float64", exact_rounded=True),
            "float32": PrecisionModel("float64", exact_rounded=True),
        },
    }

    def attention(self, q, k, v, *, scale):
        from ..reference.softmax_attention import enclose
        from ..spec.softmax_attention import make_instance

        inst = make_instance(q, k, v, scale=scale)
        return enclose(inst, 128).mid()


class AcceleratedBackend:
    """attnspec's own blocked online-softmax attention on an array library (numpy or CuPy)."""

    def __init__(self, device: str = "cpu", block_size: int | None = None):
        from ..accelerated import softmax_attention as impl
        from ..accelerated.array_namespace import namespace_for

        self._impl = impl
        self._xp = namespace_for(device)
        self._device = device
        self._block_size = block_size
        self.capabilities = {
            "problems": {"softmax_attention"},
            "dtypes": {"float64", "float32"},
            "devices": {device},
            "deterministic": True,
        }

    def attention(self, q, k, v, *, scale):
        xp = self._xp
        args = [xp.asarray(x) for x in (q, k, v)]
        out = self._impl.softmax_attention(*args, scale=scale, block_size=self._block_size)
        if xp is not np:
            out = out.get()
        return np.asarray(out)


def reference_backend() -> ReferenceBackend:
    return ReferenceBackend()


def numpy_backend() -> AcceleratedBackend:
    return AcceleratedBackend("cpu")


def cupy_backend() -> AcceleratedBackend:
    """The accelerated implementation on a CUDA GPU (fails to load cleanly without CuPy or a GPU)."""
    return AcceleratedBackend("cuda")


class TorchSDPABackend:
    """Adapter to ``torch.nn.functional.scaled_dot_product_attention`` with its ``scale=`` argument."""

    def __init__(self, device: str = "cpu"):
        import torch

        self._torch = torch
        self._device = device
        self.version = torch.__version__
        self.capabilities = {
            "problems": {"softmax_attention"},
            "dtypes": {"float64", "float32"},
            "devices": {device},
        }

    def attention(self, q, k, v, *, scale):
        torch = self._torch
        tq, tk, tv = (torch.from_numpy(np.ascontiguousarray(x)).to(self._device)[None, None] for x in (q, k, v))
        # Passed as-is: the adapter must not paper over torch's own behaviour (scale=0 included).
        out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, scale=float(scale))
        return out[0, 0].cpu().numpy()


def torch_backend() -> Any:
    return TorchSDPABackend("cpu")
