"""Input validation shared by every problem.

An input matrix is *exact*: a binary floating-point entry means the dyadic rational it encodes, an
integer or :class:`fractions.Fraction` entry means itself. Validation turns whatever the caller gave
into one of two canonical forms and rejects everything else with a :class:`SpecError` naming the
problem:

- a floating ``numpy.ndarray`` (float16, float32 or float64), kept in its own dtype, or
- an ``object`` array of :class:`fractions.Fraction` (exact rationals).

Low-precision inputs (the ml_dtypes formats ``bfloat16``, ``float8_e4m3fn``, ``float8_e5m2``) are
accepted exactly: every value of these formats is a float32 (8 exponent bits at most, ≤ 8 significand
bits), so they are held as float32 arrays with the same values. The case's dtype, not the array's,
records the format the backend receives (``LOW_PRECISION_DTYPES``).
"""

from __future__ import annotations

import math
from fractions import Fraction
from numbers import Rational, Real
from typing import Any

import ml_dtypes
import numpy as np

SUPPORTED_FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
# Formats numpy lacks (ml_dtypes); each value is exactly a float32.
LOW_PRECISION_DTYPES = {
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
}


def is_low_precision(dtype: Any) -> bool:
    """True for the ml_dtypes formats of :data:`LOW_PRECISION_DTYPES` (a dtype or its name)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        return False
    return any(dt == x for x in LOW_PRECISION_DTYPES.values())


class SpecError(ValueError):
    """An input violates a problem's definition (shape, dtype, finiteness, declared bound)."""


def exact_scalar(x: Any, name: str) -> Fraction:
    """Return the exact rational value of a scalar (float taken exactly, Fraction as is)."""
    if isinstance(x, (bool, np.bool_)):
        raise SpecError(f"{name} must be a number, got a boolean")
    if isinstance(x, Rational):
        return Fraction(x)
    if isinstance(x, (float, np.floating)):
        if not np.isfinite(x):
            raise SpecError(f"{name} must be finite, got {x!r}")
        return Fraction(float(x))
    if isinstance(x, (int, np.integer)):
        return Fraction(int(x))
    raise SpecError(f"{name} must be a real number (float, int or Fraction), got {type(x).__name__}")


def frozen_copy(arr: np.ndarray) -> np.ndarray:
    """A private, immutable copy of ``arr``: a view of a ``bytes`` object, so nothing (not even
    ``flags.writeable = True``) can change what an instance holds once it is validated."""
    return np.frombuffer(np.ascontiguousarray(arr).tobytes(), dtype=arr.dtype).reshape(arr.shape)


def as_exact_matrix(x: Any, name: str) -> np.ndarray:
    """Validate ``x`` as a 2-D matrix of exact finite values.

    Returns a float16/32/64 ndarray (entries are dyadic rationals) or an object ndarray of Fractions.
    Raises :class:`SpecError` for wrong dimensionality, empty dimensions, unsupported dtypes
    (complex, bool, strings, datetimes) and non-finite entries, naming the first offending index.
    """
    if isinstance(x, np.ndarray):
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:  # ragged lists and the like
            raise SpecError(f"{name} is not a rectangular array: {exc}") from None
    if arr.ndim != 2:
        raise SpecError(f"{name} must be 2-D (n x d), got {arr.ndim}-D with shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise SpecError(f"{name} must have at least one row and one column, got shape {arr.shape}")
    if arr.dtype.kind in "iu":
        return np.array([[Fraction(int(v)) for v in row] for row in arr.tolist()], dtype=object)
    if is_low_precision(arr.dtype):  # bf16 / fp8: finite values held exactly as float32
        wide = arr.astype(np.float32)
        bad = ~np.isfinite(wide)
        if bad.any():
            i, j = map(int, np.argwhere(bad)[0])
            raise SpecError(f"{name} has a non-finite {arr.dtype} entry {wide[i, j]!r} at [{i}, {j}]")
        return frozen_copy(wide)
    if arr.dtype.kind == "f":
        if arr.dtype not in SUPPORTED_FLOAT_DTYPES:
            raise SpecError(f"{name} has unsupported dtype {arr.dtype}; use float16, float32, float64 or one of "
                            f"{', '.join(LOW_PRECISION_DTYPES)}")
        bad = ~np.isfinite(arr)
        if bad.any():
            i, j = map(int, np.argwhere(bad)[0])
            raise SpecError(f"{name} has a non-finite entry {arr[i, j]!r} at [{i}, {j}]")
        return frozen_copy(arr)
    if arr.dtype == object:
        out = np.empty(arr.shape, dtype=object)
        for (i, j), v in np.ndenumerate(arr):
            out[i, j] = exact_scalar(v, f"{name}[{i}, {j}]")
        return out
    raise SpecError(f"{name} has unsupported dtype {arr.dtype}; use a float dtype or exact Fractions")


def require_same_shape(a: np.ndarray, b: np.ndarray, names: str) -> None:
    """Raise unless ``a`` and ``b`` have identical shapes."""
    if a.shape != b.shape:
        raise SpecError(f"shape mismatch between {names}: {a.shape} vs {b.shape}")


def max_abs_exact(x: np.ndarray) -> Fraction:
    """‖x‖∞ = max |x_ij| as an exact rational."""
    if x.dtype == object:
        return max(abs(v) for v in x.flat)
    return Fraction(float(np.max(np.abs(x.astype(np.float64)))))


def check_bound(x: np.ndarray, name: str, bound: Fraction | None) -> None:
    """Raise unless every entry of ``x`` lies in [-B, B] (the declared entry bound)."""
    if bound is None:
        return
    m = max_abs_exact(x)
    if m > bound:
        flat = np.abs(x.astype(np.float64)) if x.dtype != object else np.vectorize(abs)(x)
        i, j = map(int, np.unravel_index(int(np.argmax(flat)), x.shape))
        raise SpecError(
            f"{name} violates the declared entry bound B = {float(bound)!r}: "
            f"|{name}[{i}, {j}]| = {float(m)!r}"
        )


def as_positive_bound(bound: Any, name: str = "bound") -> Fraction | None:
    """Validate an optional positive entry bound B."""
    if bound is None:
        return None
    b = exact_scalar(bound, name)
    if b <= 0:
        raise SpecError(f"{name} must be positive, got {float(b)!r}")
    return b


def as_tolerance(eps: Any, name: str = "eps") -> Fraction | None:
    """Validate an optional positive error tolerance ε."""
    if eps is None:
        return None
    e = exact_scalar(eps, name)
    if e <= 0:
        raise SpecError(f"{name} must be positive, got {float(e)!r}")
    return e


def to_float64(x: np.ndarray) -> np.ndarray:
    """The matrix as float64 (exact for float inputs; rounded to nearest for Fractions)."""
    if x.dtype == object:
        return np.array([[float(v) for v in row] for row in x], dtype=np.float64)
    return x.astype(np.float64, copy=False)


def finite_real(x: Any, name: str) -> float:
    """``x`` as a finite Python float, for real scalars: Python/NumPy reals and 0-d real arrays (numpy,
    CuPy, torch). Booleans, complex numbers, strings and non-finite values raise :class:`SpecError`
    naming ``name``."""
    if isinstance(x, (bool, np.bool_)) or not (isinstance(x, Real) or _is_real_0d(x)):
        raise SpecError(f"{name} must be a real number, got {type(x).__name__}")
    try:
        f = float(x)
    except (OverflowError, TypeError, ValueError):
        raise SpecError(f"{name} must be a finite real number, got {x!r}") from None
    if not math.isfinite(f):
        raise SpecError(f"{name} must be finite, got {f!r}")
    return f


def _is_real_0d(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    if getattr(x, "ndim", None) != 0 or dtype is None:
        return False
    kind = str(dtype)
    return ("float" in kind or "int" in kind) and "complex" not in kind
