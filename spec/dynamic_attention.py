"""Dynamic attention maintenance: ODAMV and OAMV (van den Brand–Song–Zhou) as an exact state machine.

Definition
----------
State: Q ∈ ℝ^{m×d} (fixed after Init), K ∈ ℝ^{n×d}, V ∈ ℝ^{n×d_v}, a real scale s (default 1; the
paper has no 1/d factor, and a temperature could be folded into Q since Q never changes), and a flag
``normalised``.

    A = exp(s · Q Kᵀ)   (entrywise, m×n)        D = diag(A · 1_n)
    ODAMV (normalised):    Query(i, j) = (D⁻¹ A V)_{ij}
    OAMV  (unnormalised):  Query(i, j) = (A V)_{ij}

Operations (indices are 0-based Python ints):

- ``Init(Q, K, V, scale)``: exactly once, first;
- ``UpdateK(i, j, δ)``: K_ij ← K_ij + δ, **exactly** (the rational sum, never a float rounding of it);
- ``UpdateV(i, j, δ)``: V_ij ← V_ij + δ, exactly;
- ``Query(i, j)``: the real number above for the *current* exact state.

"Add δ" rather than "overwrite" is the meaning we fix; the two are interchangeable (δ = new − old) [I].
Every value is exact: a float means the dyadic rational it encodes, a Fraction is itself. After many
float updates K holds the exact rational sum, which a float64 backend cannot represent: the rounding of
its running sums is part of the error the conformance tolerance allows (docs/dynamic-attention.md).

Validity: matrices finite, 2-D, non-empty, Q and K with the same d, K and V with the same n; δ and s
finite; indices in range; no operation before Init, no second Init. Violations raise
:class:`SpecError` naming the problem.

Traces
------
A :class:`Trace` is the list of operations with the ``normalised`` flag. It serialises to JSON with exact
values: a float as its hex string (``float.hex``), a non-dyadic or integer value as ``"p/q"``; a matrix
carries its dtype (``float64`` or ``exact``) so a replay hands a backend the very same arrays.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Union

import numpy as np

from attnspec.spec.validation import SpecError, as_exact_matrix, exact_scalar

PROBLEM = "dynamic_attention"
VARIANTS = {True: "odamv", False: "oamv"}
TRACE_FORMAT = "attnspec.dynamic_attention.trace/1"


# ---------------------------------------------------------------------------------------------
# Operations


@dataclass(frozen=True, eq=False)
class Init:
    """Init(Q, K, V, scale). Matrices are float64 arrays or object arrays of Fractions (exact)."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    scale: Fraction | float = 1

    kind = "init"


@dataclass(frozen=True)
class UpdateK:
    """K_ij ← K_ij + δ (exact)."""

    i: int
    j: int
    delta: Fraction | float

    kind = "update_k"


@dataclass(frozen=True)
class UpdateV:
    """V_ij ← V_ij + δ (exact)."""

    i: int
    j: int
    delta: Fraction | float

    kind = "update_v"


@dataclass(frozen=True)
class Query:
    """Query(i, j): (D⁻¹AV)_ij (ODAMV) or (AV)_ij (OAMV)."""

    i: int
    j: int

    kind = "query"


Op = Union[Init, UpdateK, UpdateV, Query]


# ---------------------------------------------------------------------------------------------
# Exact state machine


def _index(x: Any, size: int, what: str) -> int:
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
        raise SpecError(f"{what} must be an integer index, got {x!r}")
    x = int(x)
    if not 0 <= x < size:
        raise SpecError(f"{what} = {x} is out of range [0, {size})")
    return x


def _as_fractions(x: np.ndarray) -> np.ndarray:
    if x.dtype == object:
        return x.copy()
    out = np.empty(x.shape, dtype=object)
    for idx, v in np.ndenumerate(x):
        out[idx] = Fraction(float(v))
    return out


def validate_init(q: Any, k: Any, v: Any, scale: Any = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, Fraction]:
    """Validate Init's inputs; returns (Q, K, V) in canonical exact form and the exact scale."""
    q = as_exact_matrix(q, "Q")
    k = as_exact_matrix(k, "K")
    v = as_exact_matrix(v, "V")
    if q.shape[1] != k.shape[1]:
        raise SpecError(f"Q and K must have the same number of columns d: {q.shape} vs {k.shape}")
    if k.shape[0] != v.shape[0]:
        raise SpecError(f"K and V must have the same number of rows n: {k.shape} vs {v.shape}")
    return q, k, v, exact_scalar(scale, "scale")


class DynamicState:
    """The exact state of an ODAMV/OAMV structure: applies operations, validates them, and holds
    Q, K, V as exact rationals (object arrays of Fractions) after every update.

    Queries are not evaluated here (exp is transcendental): :meth:`apply` validates a Query and
    returns it; the certified value is the reference's job (``attnspec.reference.dynamic_attention``).
    """

    def __init__(self, normalised: bool = True):
        self.normalised = bool(normalised)
        self.q: np.ndarray | None = None
        self.k: np.ndarray | None = None
        self.v: np.ndarray | None = None
        self.scale: Fraction | None = None
        self.updates = 0  # UpdateK + UpdateV applied since Init

    @property
    def initialised(self) -> bool:
        return self.q is not None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(m, n, d, d_v): query rows, keys, key width, value width."""
        q, k, v, _ = self.require_init("shape")
        return q.shape[0], k.shape[0], k.shape[1], v.shape[1]

    def require_init(self, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, Fraction]:
        """(Q, K, V, s) of an initialised state; SpecError before Init."""
        if self.q is None or self.k is None or self.v is None or self.scale is None:
            raise SpecError(f"{what} before Init: the structure holds no Q, K, V yet")
        return self.q, self.k, self.v, self.scale

    def apply(self, op: Op) -> Op:
        """Apply one operation (validated); returns the operation with canonical exact values."""
        if isinstance(op, Init):
            if self.q is not None:
                raise SpecError("Init called twice: a trace has exactly one Init, first")
            q, k, v, s = validate_init(op.q, op.k, op.v, op.scale)
            self.q, self.k, self.v, self.scale = _as_fractions(q), _as_fractions(k), _as_fractions(v), s
            return Init(q, k, v, s)
        if isinstance(op, (UpdateK, UpdateV)):
            _, k, v, _ = self.require_init(type(op).__name__)
            mat, name = (k, "K") if isinstance(op, UpdateK) else (v, "V")
            i = _index(op.i, mat.shape[0], f"{type(op).__name__} row i")
            j = _index(op.j, mat.shape[1], f"{type(op).__name__} column j")
            delta = exact_scalar(op.delta, f"{type(op).__name__} delta")
            mat[i, j] += delta
            self.updates += 1
            return type(op)(i, j, op.delta)
        if isinstance(op, Query):
            q, _, v, _ = self.require_init("Query")
            i = _index(op.i, q.shape[0], "Query row i")
            j = _index(op.j, v.shape[1], "Query column j")
            return Query(i, j)
        raise SpecError(f"unknown operation {op!r}")

    def logits_row(self, i: int) -> list[Fraction]:
        """The exact logits s·⟨q_i, k_l⟩ of row i for every key l (O(n·d) rational operations)."""
        q, k, _, scale = self.require_init("logits_row")
        qi = q[i]
        return [scale * sum((a * b for a, b in zip(qi, kl)), Fraction(0)) for kl in k]


# ---------------------------------------------------------------------------------------------
# Traces and their exact JSON form


def encode_exact(x: Any) -> str:
    """Exact text of a scalar: a float as ``float.hex`` (e.g. ``0x1.8p-1``), a rational as ``p/q``."""
    if isinstance(x, (float, np.floating)):
        f = float(x)
        if not np.isfinite(f):
            raise SpecError(f"cannot encode non-finite value {f!r}")
        return f.hex()
    r = exact_scalar(x, "value")
    return f"{r.numerator}/{r.denominator}"


def decode_exact(s: str) -> Fraction | float:
    """Inverse of :func:`encode_exact`: ``p/q`` gives a Fraction, a hex float gives that float."""
    if not isinstance(s, str):
        raise SpecError(f"exact values are stored as strings, got {type(s).__name__}")
    try:
        if "/" in s:
            return Fraction(s)
        if "0x" not in s.lower():  # plain decimals are ambiguous (float.fromhex reads "0.1" as 1/16)
            raise ValueError("expected a hex float (float.hex) or p/q")
        return float.fromhex(s)
    except (ValueError, ZeroDivisionError) as exc:
        raise SpecError(f"not an exact value: {s!r} ({exc})") from None


def _encode_matrix(x: np.ndarray) -> dict[str, Any]:
    if x.dtype == object:
        return {"dtype": "exact", "shape": list(x.shape), "values": [encode_exact(v) for v in x.flat]}
    x64 = x.astype(np.float64)
    return {"dtype": "float64", "source_dtype": str(x.dtype), "shape": list(x.shape),
            "values": [float(v).hex() for v in x64.flat]}


def _decode_matrix(obj: dict[str, Any]) -> np.ndarray:
    shape = tuple(obj["shape"])
    vals = [decode_exact(s) for s in obj["values"]]
    if obj["dtype"] == "exact":
        return np.array([Fraction(v) for v in vals], dtype=object).reshape(shape)
    arr = np.array(vals, dtype=np.float64).reshape(shape)
    return arr.astype(obj.get("source_dtype", "float64"))


@dataclass
class Trace:
    """An operation trace: ``ops`` (Init first) for an ODAMV (``normalised``) or OAMV structure."""

    normalised: bool = True
    ops: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def validate(self) -> DynamicState:
        """Replay the trace through the exact state machine (raises SpecError on the first bad op)."""
        state = DynamicState(self.normalised)
        for op in self.ops:
            state.apply(op)
        return state

    def to_json(self) -> dict[str, Any]:
        out: list[dict[str, Any]] = []
        for op in self.ops:
            if isinstance(op, Init):
                out.append({"op": "init", "q": _encode_matrix(np.asarray(op.q)), "k": _encode_matrix(np.asarray(op.k)),
                            "v": _encode_matrix(np.asarray(op.v)), "scale": encode_exact(op.scale)})
            elif isinstance(op, (UpdateK, UpdateV)):
                out.append({"op": op.kind, "i": int(op.i), "j": int(op.j), "delta": encode_exact(op.delta)})
            elif isinstance(op, Query):
                out.append({"op": "query", "i": int(op.i), "j": int(op.j)})
            else:
                raise SpecError(f"unknown operation {op!r}")
        return {"format": TRACE_FORMAT, "problem": PROBLEM, "variant": VARIANTS[self.normalised],
                "normalised": self.normalised, "meta": self.meta, "ops": out}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Trace":
        if obj.get("format") != TRACE_FORMAT:
            raise SpecError(f"not a dynamic-attention trace (format {obj.get('format')!r}, expected {TRACE_FORMAT!r})")
        ops: list = []
        for k, rec in enumerate(obj["ops"]):
            kind = rec.get("op")
            if kind == "init":
                ops.append(Init(_decode_matrix(rec["q"]), _decode_matrix(rec["k"]), _decode_matrix(rec["v"]),
                                decode_exact(rec["scale"])))
            elif kind == "update_k":
                ops.append(UpdateK(int(rec["i"]), int(rec["j"]), decode_exact(rec["delta"])))
            elif kind == "update_v":
                ops.append(UpdateV(int(rec["i"]), int(rec["j"]), decode_exact(rec["delta"])))
            elif kind == "query":
                ops.append(Query(int(rec["i"]), int(rec["j"])))
            else:
                raise SpecError(f"trace op #{k} has unknown kind {kind!r}")
        return cls(normalised=bool(obj["normalised"]), ops=ops, meta=dict(obj.get("meta", {})))

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.dumps())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Trace":
        return cls.from_json(json.loads(Path(path).read_text()))


__all__ = ["PROBLEM", "VARIANTS", "Init", "UpdateK", "UpdateV", "Query", "Op", "DynamicState", "Trace",
           "encode_exact", "decode_exact", "validate_init"]
