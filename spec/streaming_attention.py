"""One-pass streaming attention (Addanki–Li–Song–Yang; docs/streaming-attention.md): the model, precisely.

Problem
-------
Inputs Q, K, V ∈ ℝ^{n×d} (self-attention: Q and K both n×d, V n×d_v), an exact scale s, a sparsity k.
The exact output is T = D⁻¹AV, A = exp(s·QKᵀ), D = diag(A·1); its column c is y_c = T[:, c] ∈ ℝⁿ
(a vector over tokens).

Arrival order (:data:`ORDERS`)
------------------------------
- ``"kv_first"``: all (k_j, v_j) chunks in token order, then all q_i chunks in token order (the order the
  digest's reconstruction B4 steps 1–2 assumes [R]);
- ``"interleaved"``: chunks of whole tokens (q_i, k_i, v_i), in token order. The digest's open point
  (B4 step 3, [N]): here the normaliser φ(q_i)ᵀs of row i depends on keys that have not arrived, so a
  sketch of D⁻¹U₁ cannot be accumulated linearly; a backend that cannot handle this order does not
  declare it (``orders``) and its interleaved cases are not applicable.

One pass
--------
The stream is a :class:`OnePassStream`: an iterator of :class:`Chunk` that can be consumed once. A
second ``iter()`` raises :class:`SecondPassError` *and* records the attempt (``second_pass_attempted``), so
a backend that catches the exception is still caught. Chunk arrays are fresh copies: a backend that keeps
them keeps O(n) state, which the state measurement counts.

Persistent state
----------------
The bytes the backend keeps between chunks. Two numbers: the backend's own ``state_bytes()``, and
:func:`reachable_bytes` of the backend object, measured by the harness: ``sys.getsizeof`` of every object
reachable from it (attributes, containers, numpy arrays by ``nbytes`` of their base buffer, each counted
once), so a hidden table of size n (a dict, a list, an array) is counted whatever the backend reports.

Output
------
d_v columns of k (index, value) pairs: ``indices`` (d_v×k, distinct integers in [0, n) per column) and
``values`` (d_v×k, finite floats); x̂_c is the n-vector with those k entries and zeros elsewhere.

Guarantee (declared per structure: ε₁ ≥ 0, ε₂ ≥ 0, δ ∈ [0, 1))
----------------------------------------------------------------
For a stream drawn by the backend's seed, with probability ≥ 1 − δ over the seed, **every** column meets

    ‖y_c − x̂_c‖₂ ≤ (1 + ε₁)·Err_k(y_c) + ε₂,    Err_k(y) = min_{k-sparse z} ‖y − z‖₂ = ‖y − H_k(y)‖₂,

(H_k keeps the k largest |entries|). We test the joint event over columns (the paper's "for every column
… with probability 0.99" [R]; the per-column reading is weaker, so a pass here implies it).

Causal variant (defined, not implemented here)
----------------------------------------------
Order ``interleaved``; after the chunk holding token i the backend emits row i of the causal output
T^c_i = Σ_{j≤i} e^{s⟨q_i,k_j⟩} v_j / Σ_{j≤i} e^{s⟨q_i,k_j⟩} (prefix sums of the polynomial statistics give
it exactly for the polynomial kernel, digest C1 [R]); the guarantee applies to each emitted row
(ℓ∞ per entry, since a row is emitted once and not stored).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterator

import numpy as np

from attnspec.spec.softmax_attention import SoftmaxAttentionInstance, make_instance
from attnspec.spec.validation import SpecError, to_float64

PROBLEM = "streaming_attention"
ORDERS = ("kv_first", "interleaved")


class SecondPassError(SpecError):
    """The stream was iterated a second time (the model allows one pass)."""


@dataclass(frozen=True)
class Guarantee:
    """The declared for-each ℓ₂/ℓ₂ guarantee (ε₁, ε₂, δ)."""

    eps1: float
    eps2: float
    delta: float

    def __post_init__(self) -> None:
        for name in ("eps1", "eps2"):
            x = getattr(self, name)
            if not (isinstance(x, (int, float)) and np.isfinite(x) and x >= 0):
                raise SpecError(f"{name} must be a finite number ≥ 0, got {x!r}")
        if not (isinstance(self.delta, (int, float)) and 0 <= self.delta < 1):
            raise SpecError(f"delta must lie in [0, 1), got {self.delta!r}")


@dataclass(frozen=True)
class StreamingInstance:
    """A validated streaming instance: the attention instance, the sparsity k, the order and chunk size."""

    attention: SoftmaxAttentionInstance
    k: int
    order: str
    chunk: int

    @property
    def n(self) -> int:
        return self.attention.n

    @property
    def d(self) -> int:
        return self.attention.d

    @property
    def dv(self) -> int:
        return int(self.attention.v.shape[1])


def make_streaming_instance(q: Any, k: Any, v: Any, *, scale: Any, sparsity: int, order: str = "kv_first",
                            chunk: int = 32, bound: Any = None) -> StreamingInstance:
    """Validate and build a :class:`StreamingInstance` (float64 inputs; 1 ≤ sparsity ≤ n; chunk ≥ 1)."""
    inst = make_instance(q, k, v, scale=scale, bound=bound)
    if inst.q.dtype != np.float64:
        raise SpecError(f"streaming instances are float64, got {inst.q.dtype}")
    if order not in ORDERS:
        raise SpecError(f"unknown order {order!r}; known: {ORDERS}")
    if not (isinstance(sparsity, (int, np.integer)) and 1 <= int(sparsity) <= inst.n):
        raise SpecError(f"sparsity k must be an integer in [1, n = {inst.n}], got {sparsity!r}")
    if not (isinstance(chunk, (int, np.integer)) and int(chunk) >= 1):
        raise SpecError(f"chunk must be a positive integer, got {chunk!r}")
    return StreamingInstance(inst, int(sparsity), order, int(chunk))


@dataclass(frozen=True)
class Chunk:
    """Tokens [start, start + len) of one kind: ``"kv"`` (k, v set), ``"q"`` (q set) or ``"token"`` (all)."""

    kind: str
    start: int
    q: np.ndarray | None = None
    k: np.ndarray | None = None
    v: np.ndarray | None = None

    @property
    def size(self) -> int:
        arr = self.q if self.q is not None else self.k
        assert arr is not None
        return int(arr.shape[0])


def chunks_of(q: np.ndarray, k: np.ndarray, v: np.ndarray, order: str, chunk: int) -> Iterator[Chunk]:
    """The chunks of the stream in arrival order (fresh float64 copies)."""
    n = q.shape[0]
    if order == "kv_first":
        for a in range(0, n, chunk):
            yield Chunk("kv", a, k=np.array(k[a:a + chunk], dtype=np.float64), v=np.array(v[a:a + chunk], dtype=np.float64))
        for a in range(0, n, chunk):
            yield Chunk("q", a, q=np.array(q[a:a + chunk], dtype=np.float64))
    elif order == "interleaved":
        for a in range(0, n, chunk):
            yield Chunk("token", a, q=np.array(q[a:a + chunk], dtype=np.float64),
                        k=np.array(k[a:a + chunk], dtype=np.float64), v=np.array(v[a:a + chunk], dtype=np.float64))
    else:
        raise SpecError(f"unknown order {order!r}; known: {ORDERS}")


class OnePassStream:
    """An iterator over the chunks that can be consumed once.

    ``observer`` (optional) is called before each chunk after the first is handed out, i.e. between
    chunks: that is where the harness measures persistent state."""

    def __init__(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, order: str, chunk: int, observer: Any = None):
        self._source = chunks_of(q, k, v, order, chunk)
        self._started = False
        self.second_pass_attempted = False
        self.observer = observer
        self.chunks_served = 0

    def __iter__(self) -> Iterator[Chunk]:
        if self._started:
            self.second_pass_attempted = True
            raise SecondPassError("the stream was already iterated: one pass only")
        self._started = True
        return self._serve()

    def _serve(self) -> Iterator[Chunk]:
        for c in self._source:
            if self.chunks_served and self.observer is not None:
                self.observer()
            self.chunks_served += 1
            yield c
        if self.observer is not None:
            self.observer()


def reachable_bytes(root: Any) -> int:
    """Bytes of every object reachable from ``root``: ``sys.getsizeof`` of each Python object and the
    ``nbytes`` of each numpy buffer (views count their base once). Modules, classes and functions are not
    state (code, not data) and are not entered."""
    import types

    seen: set[int] = set()
    total = 0
    stack = [root]
    skip = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            base = obj
            while isinstance(base.base, np.ndarray):
                base = base.base
            if id(base) in seen and base is not obj:
                continue
            seen.add(id(base))
            total += sys.getsizeof(obj) + (base.nbytes if obj.base is not None else 0)
            if obj.dtype == object:
                stack.extend(obj.ravel().tolist())
            continue
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, (str, bytes, int, float, complex, bool, type(None), Fraction, np.generic)):
            pass
        else:
            d = getattr(obj, "__dict__", None)
            if d is not None:
                stack.append(d)
            for slot in getattr(type(obj), "__slots__", ()):
                if hasattr(obj, slot):
                    stack.append(getattr(obj, slot))
    return total


def validate_columns(indices: Any, values: Any, n: int, dv: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The output as (int64 d_v×k indices, float64 d_v×k values); :class:`SpecError` otherwise."""
    idx = np.asarray(indices)
    val = np.asarray(values)
    if idx.shape != (dv, k) or val.shape != (dv, k):
        raise SpecError(f"output must be d_v×k = {dv}×{k} indices and values, got {idx.shape} and {val.shape}")
    if idx.dtype.kind not in "iu":
        raise SpecError(f"indices must be integers, got {idx.dtype}")
    if val.dtype.kind != "f":
        raise SpecError(f"values must be floats, got {val.dtype}")
    idx = idx.astype(np.int64)
    val = to_float64(val) if val.dtype != np.float64 else val.astype(np.float64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise SpecError(f"indices must lie in [0, {n})")
    if not np.isfinite(val).all():
        raise SpecError("values must be finite")
    for c in range(dv):
        if len(set(idx[c].tolist())) != k:
            raise SpecError(f"column {c} repeats an index")
    return idx, val


def dense_columns(indices: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """The n×d_v matrix whose column c is x̂_c."""
    out = np.zeros((n, indices.shape[0]))
    for c in range(indices.shape[0]):
        out[indices[c], c] = values[c]
    return out


__all__ = ["PROBLEM", "ORDERS", "Guarantee", "StreamingInstance", "make_streaming_instance", "Chunk", "chunks_of",
           "OnePassStream", "SecondPassError", "reachable_bytes", "validate_columns", "dense_columns"]
