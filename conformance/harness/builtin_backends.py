"""Backends shipped with attnspec: ``reference``, ``numpy``, ``cupy``, ``torch``, ``poly``.

Each factory returns an object with one method per problem it declares (``attention`` for softmax
attention, ``tensor_attention`` for k-th order tensor attention, ``dynamic_attention(normalised=…)`` for
the ODAMV/OAMV structure) and a ``capabilities`` dict. Heavy libraries are imported by the factory, so
listing backends never requires them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attnspec.conformance.judging.precision_model import PrecisionModel

SOFTMAX, TENSOR, DYNAMIC = "softmax_attention", "tensor_attention", "dynamic_attention"
SDPA = "sdpa"
# Every sdpa variant; fully masked rows give 0 (numpy: the online softmax's l = 0 rows; torch 2.5+'s
# math kernel: verified in docs/sdpa.md).
SDPA_ALL_VARIANTS = {SDPA: {"supports": ["cross", "gqa", "mqa", "causal_top_left", "causal_bottom_right", "window",
                                         "bool_mask", "bias"], "fully_masked": "zero"}}
HEAVY_ENTRIES, UNIVERSAL_SET = "heavy_entries", "universal_set"


class ReferenceBackend:
    """The certified references, rounded once to float64 (enclosure midpoints at 128 bits)."""

    capabilities = {
        "problems": {SOFTMAX, TENSOR, DYNAMIC, HEAVY_ENTRIES, UNIVERSAL_SET},
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
        from attnspec.reference.softmax_attention import enclose
        from attnspec.spec.softmax_attention import make_instance

        return enclose(make_instance(q, k, v, scale=scale), 128).mid()

    def tensor_attention(self, q, keys, values, *, scale):
        from attnspec.reference.tensor_attention import enclose
        from attnspec.spec.tensor_attention import make_instance

        return enclose(make_instance(q, keys, values, scale=scale), 128).mid()

    def dynamic_attention(self, normalised: bool = True) -> "ReferenceDynamicStructure":
        return ReferenceDynamicStructure(normalised)

    def heavy_entries(self, q, k, *, eps, p):
        """Exactly {(i, j) : A_ij ≥ ε} (integer arithmetic, attnspec.reference.heavy_keys)."""
        from attnspec.reference.heavy_keys import heavy_reference
        from attnspec.spec.heavy_keys import make_heavy_instance

        return heavy_reference(make_heavy_instance(q, k, eps=eps, p=p)).heavy()

    def universal_set(self, k, *, eps, p):
        """Exactly {j : τ_j ≥ ε} (rational leverage scores of K, or of its lift for p = 4)."""
        from attnspec.reference.heavy_keys import universal_reference
        from attnspec.spec.heavy_keys import make_universal_instance

        return np.array(universal_reference(make_universal_instance(k, eps=eps, p=p)).at_least(eps), dtype=np.int64)


class ReferenceDynamicStructure:
    """The exact ODAMV/OAMV state machine; Query answers the 128-bit enclosure's midpoint."""

    def __init__(self, normalised: bool = True):
        from attnspec.reference.dynamic_attention import DynamicReference
        from attnspec.spec.dynamic_attention import Init, Query, UpdateK, UpdateV

        self.normalised = bool(normalised)
        self._ref = DynamicReference(self.normalised)
        self._ops = (Init, UpdateK, UpdateV, Query)

    def init(self, q, k, v, scale=1.0):
        self._ref.apply(self._ops[0](np.asarray(q), np.asarray(k), np.asarray(v), scale))

    def update_k(self, i, j, delta):
        self._ref.apply(self._ops[1](i, j, delta))

    def update_v(self, i, j, delta):
        self._ref.apply(self._ops[2](i, j, delta))

    def query(self, i, j) -> float:
        enclose = self._ref.apply(self._ops[3](i, j))
        assert enclose is not None  # a Query always has an enclosure
        return float(enclose(128).mid()[0, 0])


# Extra keys/entries the accelerated heavy-key methods may report: thresholds ε/(1+η) and ε − α with the
# certified float64 bounds η, α, which are ~1e-11 (p = 2) to ~1e-6 (p = 4, ill-conditioned lifts).
HEAVY_SLACK = 1e-4


class AcceleratedBackend:
    """attnspec's own implementations on an array library (numpy or CuPy): blocked online-softmax
    attention, blocked tensor attention, the lazy-update dynamic structure (τ = 1/2), and heavy keys
    (certified float64 leverage scores and heavy-entry enumeration, exact fallback when the a-posteriori
    bound does not fit ``heavy_slack``: :mod:`attnspec.accelerated.heavy_keys`)."""

    def __init__(self, device: str = "cpu", block_size: int | None = None, tensor_block: int | None = 61):
        from attnspec.accelerated import softmax_attention as impl
        from attnspec.accelerated.array_namespace import namespace_for

        self._impl = impl
        self._xp = namespace_for(device)
        self._device = device
        self._block_size = block_size
        self._tensor_block = tensor_block  # prime: the small conformance cases still span several blocks
        self.capabilities = {
            "problems": {SOFTMAX, TENSOR, DYNAMIC, HEAVY_ENTRIES, UNIVERSAL_SET, SDPA},
            "dtypes": {"float64", "float32"},
            "devices": {device},
            "deterministic": True,
            "heavy_slack": HEAVY_SLACK,
            "variants": SDPA_ALL_VARIANTS,
        }
        self.heavy_fallbacks = 0  # calls answered by the exact reference (bound too loose for the slack)

    def heavy_entries(self, q, k, *, eps, p):
        from attnspec.accelerated import heavy_keys as hk

        if hk.in_safe_range(q) and hk.in_safe_range(k):
            res = hk.heavy_entries(self._to_device(q), self._to_device(k), eps=eps, p=p)
            if res.certified and res.slack(float(eps)) <= HEAVY_SLACK:
                return res.pairs
        self.heavy_fallbacks += 1
        return hk.exact_fallback_heavy_entries(q, k, eps=eps, p=p)

    def universal_set(self, k, *, eps, p):
        from attnspec.accelerated import heavy_keys as hk

        if hk.in_safe_range(k):
            keys, lev = hk.universal_set(self._to_device(k), eps=eps, p=p)
            if lev.certified and hk.slack_needed(lev.rel_error) <= HEAVY_SLACK:
                return np.asarray(self._to_host(keys), dtype=np.int64)
        self.heavy_fallbacks += 1
        return hk.exact_fallback_universal_set(k, eps=eps, p=p)

    def _to_device(self, x):
        return self._xp.asarray(x)

    def _to_host(self, out) -> np.ndarray:
        return np.asarray(out.get() if self._xp is not np else out)

    def attention(self, q, k, v, *, scale):
        args = [self._to_device(x) for x in (q, k, v)]
        return self._to_host(self._impl.softmax_attention(*args, scale=scale, block_size=self._block_size))

    def sdpa(self, q, k, v, *, scale, causal=None, window=None, window_alignment=None, attn_mask=None, bias=None):
        from attnspec.accelerated.sdpa import sdpa

        extra = {name: self._to_device(x) for name, x in (("attn_mask", attn_mask), ("bias", bias)) if x is not None}
        out = sdpa(*(self._to_device(x) for x in (q, k, v)), scale=scale, causal=causal, window=window,
                   window_alignment=window_alignment, **extra)
        return self._to_host(out)

    def tensor_attention(self, q, keys, values, *, scale):
        from attnspec.accelerated.tensor_attention import tensor_attention

        out = tensor_attention(self._to_device(q), [self._to_device(x) for x in keys], [self._to_device(x) for x in values],
                               scale=scale, block_size=self._tensor_block)
        return self._to_host(out)

    def dynamic_attention(self, normalised: bool = True) -> Any:
        from attnspec.accelerated.dynamic_attention import LazyDynamicAttention

        # the suite hands numpy arrays; the structure moves them to this backend's device at Init
        return LazyDynamicAttention(normalised=normalised, tau=0.5, device=self._device)


class PolynomialBackend:
    """The Alman–Song polynomial method for softmax and tensor attention, judged by its contract: every
    output entry within ``eps`` (ε_a) of the exact one when all entries lie in [−``bound``, ``bound``]."""

    def __init__(self, eps: float = 1e-6, bound: float = 1.0):
        from attnspec.accelerated.polynomial_attention import PolynomialAttentionBackend

        self._softmax = PolynomialAttentionBackend(eps=eps, bound=bound)
        self.eps, self.bound = float(eps), float(bound)
        self.capabilities = {
            "problems": {SOFTMAX, TENSOR},
            "dtypes": {"float64"},
            "devices": {"cpu"},
            "contract_eps": self.eps,
            "bound": self.bound,
            "max_d": 6,  # rank binom(d+g, g) grows like d^g: the method is for small d (d = O(log n))
            "deterministic": True,
        }

    def attention(self, q, k, v, *, scale):
        return self._softmax.attention(q, k, v, scale=scale)

    def tensor_attention(self, q, keys, values, *, scale):
        from attnspec.accelerated.tensor_attention import polynomial_tensor_attention

        return polynomial_tensor_attention(q, keys, values, scale=scale, bound=self.bound, eps=self.eps)


class TorchBackend:
    """Adapters to PyTorch: ``scaled_dot_product_attention`` with its ``scale=`` argument for softmax
    attention; for tensor attention, logits by one ``torch.einsum`` over all key tuples, ``torch.softmax``
    over the flattened tuples and a second einsum with the values (O(n^k) memory: ``max_n`` 128)."""

    def __init__(self, device: str = "cpu"):
        import torch

        self._torch = torch
        self._device = device
        self.version = torch.__version__
        self.capabilities = {
            "problems": {SOFTMAX, TENSOR, SDPA},
            "dtypes": {"float64", "float32"},
            "devices": {device},
            "variants": SDPA_ALL_VARIANTS,
        }

    def _t(self, x):
        # A copy: torch tensors must be writeable, and the inputs may be read-only.
        return self._torch.from_numpy(np.array(x, copy=True, order="C")).to(self._device)

    def attention(self, q, k, v, *, scale):
        tq, tk, tv = (self._t(x)[None, None] for x in (q, k, v))
        # Passed as-is: the adapter must not paper over torch's own behaviour (scale=0 included).
        out = self._torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, scale=float(scale))
        return out[0, 0].cpu().numpy()

    def sdpa(self, q, k, v, *, scale, causal=None, window=None, window_alignment=None, attn_mask=None, bias=None):
        """``torch.nn.functional.scaled_dot_product_attention`` with ``enable_gqa`` for Hkv < Hq. Its
        ``is_causal`` is top-left aligned, so it is used for ``causal="top_left"`` alone; every other mask
        (bottom-right causal, windows, the boolean mask, the bias) goes in as one additive float
        ``attn_mask`` (0 where visible, −inf where not, plus the bias), built exactly in the case dtype."""
        from attnspec.accelerated.sdpa import structural_mask

        torch = self._torch
        tq, tk, tv = self._t(q), self._t(k), self._t(v)
        m, n = q.shape[2], k.shape[2]
        gqa = q.shape[1] != k.shape[1]
        if causal == "top_left" and window is None and attn_mask is None and bias is None:
            out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, scale=float(scale), is_causal=True,
                                                                   enable_gqa=gqa)
            return out.cpu().numpy()
        mask = None
        if causal is not None or window is not None:
            mask = torch.from_numpy(structural_mask(m, n, causal=causal, window=window, window_alignment=window_alignment))
        if attn_mask is not None:
            am = torch.from_numpy(np.array(attn_mask, dtype=bool))
            mask = am if mask is None else mask & am
        additive = None
        if bias is not None:
            additive = self._t(np.asarray(bias, dtype=q.dtype))
        if mask is not None:
            neg = torch.zeros(mask.shape, dtype=tq.dtype).masked_fill(~mask, float("-inf"))
            additive = neg if additive is None else additive + neg
        out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=additive, scale=float(scale),
                                                               enable_gqa=gqa)
        return out.cpu().numpy()

    def tensor_attention(self, q, keys, values, *, scale):
        torch = self._torch
        if q.shape[0] > 128:
            raise ValueError("the einsum tensor adapter holds all n^(k-1) logits: n ≤ 128")
        letters = "abcefgh"[:len(keys)]  # never i (queries), t (features) or l (values)
        tq, tk, tv = self._t(q), [self._t(x) for x in keys], [self._t(x) for x in values]
        logits = torch.einsum(",".join(["it"] + [f"{c}t" for c in letters]) + "->i" + letters, tq, *tk) * float(scale)
        n = tq.shape[0]
        p = torch.softmax(logits.reshape(n, -1), dim=1).reshape(logits.shape)
        out = torch.einsum(",".join(["i" + letters] + [f"{c}l" for c in letters]) + "->il", p, *tv)
        return out.cpu().numpy()


def reference_backend() -> ReferenceBackend:
    return ReferenceBackend()


def numpy_backend() -> AcceleratedBackend:
    return AcceleratedBackend("cpu")


def cupy_backend() -> AcceleratedBackend:
    """The accelerated implementation on a CUDA GPU (fails to load cleanly without CuPy or a GPU)."""
    return AcceleratedBackend("cuda")


def torch_backend() -> TorchBackend:
    return TorchBackend("cpu")


def poly_backend() -> PolynomialBackend:
    """The polynomial method with ε_a = 1e-6 for entries bounded by B = 1."""
    return PolynomialBackend()
