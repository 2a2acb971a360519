"""The JAX adapter: ``jax.nn.dot_product_attention`` on the CPU (or a JAX GPU when one is present).

JAX's layout is (batch, length, heads, head_dim) and it needs the value head dimension to equal the
query's; the adapter transposes from attnspec's (batch, heads, length, dim) and, when d_v ≠ d, pads the
shorter side with zero columns (an exact zero adds nothing to a logit, and padded value columns are
sliced off), so the computation judged is JAX's own. float64 needs ``jax_enable_x64``, which the
factory turns on in the process that runs the backend.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attnspec.conformance.harness.builtin_backends import SDPA, SDPA_ALL_VARIANTS, SOFTMAX


class JaxBackend:
    """``jax.nn.dot_product_attention`` (XLA's implementation) for softmax attention and sdpa."""

    def __init__(self, device: str = "cpu"):
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        self._jax, self._jnp = jax, jnp
        self.version = jax.__version__
        self._device = jax.devices(device)[0]
        self.capabilities = {
            "problems": {SOFTMAX, SDPA},
            "dtypes": {"float64", "float32"},
            "devices": {device},
            # A row with no visible key: XLA's masked softmax averages V (about uniformly), not 0.
            "variants": {SDPA: {**SDPA_ALL_VARIANTS[SDPA], "fully_masked": "uniform"}},
        }

    def _a(self, x: np.ndarray) -> Any:
        return self._jax.device_put(self._jnp.asarray(np.array(x, copy=True)), self._device)

    def _call(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, **kw: Any) -> np.ndarray:
        """q (B, T, N, H), k/v (B, S, K, H|Hv) numpy → numpy (B, T, N, Hv), padding H/Hv to one width."""
        h, hv = q.shape[-1], v.shape[-1]
        width = max(h, hv)

        def pad(x: np.ndarray) -> np.ndarray:
            if x.shape[-1] == width:
                return x
            return np.concatenate([x, np.zeros((*x.shape[:-1], width - x.shape[-1]), dtype=x.dtype)], axis=-1)

        out = self._jax.nn.dot_product_attention(self._a(pad(q)), self._a(pad(k)), self._a(pad(v)), scale=float(scale),
                                                 implementation="xla", **kw)
        return np.asarray(out)[..., :hv]

    def attention(self, q, k, v, *, scale):
        out = self._call(q[None, :, None, :], k[None, :, None, :], v[None, :, None, :], scale)
        return out[0, :, 0, :]

    def sdpa(self, q, k, v, *, scale, causal=None, window=None, window_alignment=None, attn_mask=None, bias=None):
        """Top-left causal alone goes in as ``is_causal``; every other mask (bottom-right causal, windows,
        the boolean mask) as JAX's boolean ``mask``, the bias as its additive ``bias`` (case dtype)."""
        from attnspec.accelerated.sdpa import structural_mask

        jnp = self._jnp
        m, n = q.shape[2], k.shape[2]
        tq, tk, tv = (np.swapaxes(x, 1, 2) for x in (q, k, v))  # (B, H, L, D) → (B, L, H, D)
        kw: dict[str, Any] = {}
        if causal == "top_left" and window is None and attn_mask is None:
            kw["is_causal"] = True
        else:
            mask = None
            if causal is not None or window is not None:
                mask = structural_mask(m, n, causal=causal, window=window, window_alignment=window_alignment)
            if attn_mask is not None:
                am = np.array(attn_mask, dtype=bool)
                mask = am if mask is None else mask & am
            if mask is not None:
                kw["mask"] = jnp.asarray(np.broadcast_to(mask, (q.shape[0], q.shape[1], m, n)))
        if bias is not None:
            kw["bias"] = jnp.asarray(np.broadcast_to(np.asarray(bias, dtype=q.dtype), (q.shape[0], q.shape[1], m, n)))
        out = self._call(tq, tk, tv, scale, **kw)
        return np.swapaxes(out, 1, 2)


def jax_backend() -> JaxBackend:
    return JaxBackend("cpu")


__all__ = ["JaxBackend", "jax_backend"]
