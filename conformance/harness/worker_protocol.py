"""The wire format between the harness and a backend worker, and the strict reading of backend outputs.

A payload is a tree of JSON values (lists, dicts, strings, numbers, booleans, None) in which numpy arrays
stand as ``{"__array__": i}``. It travels as one JSON header ``{"tree": …, "arrays": [{"dtype", "shape",
"order"}, …]}`` followed by each array's raw bytes (the ``.npy`` body without its header: no zip, no
pickle). Over a pipe every array is its own message, sent straight from the array's memory and received
into one buffer, so an output of ``b`` bytes costs about ``b`` on each side rather than the ~5× of an
``.npz`` round trip. The receiver caps the header and the total array bytes *before* reading them.

Only plain dtypes are accepted (bool, integers, floats, complex, fixed-width strings, and the ml_dtypes
formats bfloat16 / float8_e4m3fn / float8_e5m2, which travel as raw bytes under their dtype *name*): an
object or structured dtype is refused on both sides, so nothing is ever unpickled. A backend output in
one of the ml_dtypes formats is read as float32 (exact: each of their values is a float32).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from attnspec.spec.validation import is_low_precision

# dtype kinds that may cross the pipe at all (inputs and generic payloads)
PAYLOAD_KINDS = frozenset("biufcSU")
# dtype kinds a backend output may have: a real number per entry
OUTPUT_KINDS = frozenset("iuf")

HEADER_LIMIT_REQUEST = 64 << 20  # a request's JSON (the parent is trusted; the bound is a sanity check)
HEADER_LIMIT_REPLY = 1 << 20  # a reply's JSON: errors and captured output are truncated well below it
ARRAY_BYTES_SLACK = 64 << 10  # added to 16 · max_output_elements when capping a reply's array bytes
MESSAGE_TEXT_LIMIT = 8 << 10  # exception messages in a reply are truncated to this many characters


class PayloadError(ValueError):
    """A payload that is malformed, too large, or would need pickle."""


class BadOutput(Exception):
    """A backend output that is not a real numeric array (or is larger than the request allows)."""


# --------------------------------------------------------------------------- encoding


def split_payload(obj: Any) -> tuple[bytes, list[np.ndarray]]:
    """``obj`` as its JSON header and the list of arrays whose raw bytes follow it.

    Each returned array is C-contiguous (a Fortran-ordered array is sent as its transpose, with
    ``order: "F"``), so its bytes can be sent without a copy."""
    arrays: list[np.ndarray] = []
    meta: list[dict[str, Any]] = []

    def walk(x: Any) -> Any:
        if isinstance(x, (np.floating, np.integer, np.bool_)):
            return x.item()
        if isinstance(x, np.ndarray) or (hasattr(x, "__array__") and not isinstance(x, (int, float, str, bytes))):
            arr = np.asarray(x)
            _check_dtype(arr.dtype, TypeError)
            order = "C"
            if not arr.flags.c_contiguous:
                if arr.ndim > 1 and arr.flags.f_contiguous:
                    arr, order = arr.T, "F"
                else:
                    arr = np.ascontiguousarray(arr)
            meta.append({"dtype": arr.dtype.name if is_low_precision(arr.dtype) else arr.dtype.str, "shape": list(arr.shape if order == "C" else arr.shape[::-1]), "order": order})
            arrays.append(arr)
            return {"__array__": len(arrays) - 1}
        if isinstance(x, (list, tuple)):
            return [walk(v) for v in x]
        if isinstance(x, dict):
            return {str(k): walk(v) for k, v in x.items()}
        return x

    tree = walk(obj)
    header = json.dumps({"tree": tree, "arrays": meta}).encode()
    return header, arrays


def raw_bytes(arr: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array, without copying them."""
    return memoryview(arr.reshape(-1).view(np.uint8))  # type: ignore[arg-type]


def encode_payload(obj: Any) -> bytes:
    """``obj`` as one byte string: 8-byte little-endian header length, JSON header, raw array bytes."""
    header, arrays = split_payload(obj)
    return len(header).to_bytes(8, "little") + header + b"".join(raw_bytes(a).tobytes() for a in arrays)


def send_payload(conn: Any, obj: Any) -> None:
    """Send ``obj`` over a :mod:`multiprocessing` connection: the header, then one message per array."""
    send_split(conn, *split_payload(obj))


def send_split(conn: Any, header: bytes, arrays: list[np.ndarray]) -> None:
    """Send what :func:`split_payload` returned."""
    conn.send_bytes(header)
    for arr in arrays:
        conn.send_bytes(raw_bytes(arr))


# --------------------------------------------------------------------------- decoding


def _check_dtype(dtype: np.dtype, error: type[Exception]) -> None:
    if is_low_precision(dtype):  # bf16 / fp8: plain 1- or 2-byte numbers (ml_dtypes), no pickle
        return
    if dtype.hasobject:
        raise error(f"cannot send an object array ({dtype}) without pickle")
    if dtype.kind not in PAYLOAD_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise error(f"cannot send an array of dtype {dtype}: only plain numbers and strings travel")


def parse_header(data: bytes) -> tuple[Any, list[tuple[np.dtype, tuple[int, ...], str]]]:
    """Validate a JSON header; returns the tree and each array's (dtype, shape as sent, order)."""
    try:
        header = json.loads(data.decode())
        tree, meta = header["tree"], header["arrays"]
        specs = []
        for m in meta:
            dtype = np.dtype(str(m["dtype"]))
            shape = tuple(int(s) for s in m["shape"])
            order = m["order"]
            if any(s < 0 for s in shape) or order not in ("C", "F") or len(shape) > 32:
                raise PayloadError(f"bad array description {m!r}")
            _check_dtype(dtype, PayloadError)
            specs.append((dtype, shape, order))
    except PayloadError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError, RecursionError) as exc:
        raise PayloadError(f"malformed payload header: {type(exc).__name__}: {exc}") from None
    return tree, specs


def array_nbytes(dtype: np.dtype, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * dtype.itemsize


def _array_from(buffer: Any, dtype: np.dtype, shape: tuple[int, ...], order: str, writeable: bool) -> np.ndarray:
    arr = np.frombuffer(buffer, dtype=dtype).reshape(shape if order == "C" else shape[::-1])
    if writeable:
        arr = arr.copy()
    return arr.T if order == "F" else arr  # ``shape`` is the logical shape; F order was sent transposed


def _graft(tree: Any, arrays: list[np.ndarray]) -> Any:
    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            if set(x) == {"__array__"}:
                index = x["__array__"]
                if not isinstance(index, int) or not 0 <= index < len(arrays):
                    raise PayloadError(f"payload names a missing array {index!r}")
                return arrays[index]
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    try:
        return walk(tree)
    except RecursionError:
        raise PayloadError("payload nested too deeply") from None


def decode_payload(data: bytes, *, max_array_bytes: int | None = None) -> Any:
    """Inverse of :func:`encode_payload` (never unpickles; arrays are writeable copies)."""
    if len(data) < 8:
        raise PayloadError("payload shorter than its length prefix")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise PayloadError("payload header runs past the end")
    tree, specs = parse_header(data[8:8 + size])
    total = sum(array_nbytes(dt, sh) for dt, sh, _ in specs)
    if max_array_bytes is not None and total > max_array_bytes:
        raise PayloadError(f"payload arrays hold {total} bytes, more than the {max_array_bytes} allowed")
    if total != len(data) - 8 - size:
        raise PayloadError(f"payload has {len(data) - 8 - size} array bytes, its header describes {total}")
    view, offset, arrays = memoryview(data), 8 + size, []
    for dtype, shape, order in specs:
        n = array_nbytes(dtype, shape)
        arrays.append(_array_from(view[offset:offset + n], dtype, shape, order, writeable=True))
        offset += n
    return _graft(tree, arrays)


def _recv_at_most(conn: Any, limit: int, too_long: str) -> bytes:
    """One message of at most ``limit`` bytes (a longer one is a :class:`PayloadError` saying ``too_long``;
    the connection refuses it before reading it)."""
    try:
        return conn.recv_bytes(limit)
    except OSError as exc:
        if "bad message length" in str(exc):
            raise PayloadError(too_long) from None
        raise


def recv_payload(conn: Any, *, header_limit: int, max_array_bytes: int | None, wait: Any = None,
                 writeable: bool = False) -> Any:
    """Receive what :func:`send_payload` sent, refusing a header over ``header_limit`` bytes or arrays
    over ``max_array_bytes`` in all before reading them. ``wait()`` is called before each message after
    the header and must return False if the sender is too late (then ``TimeoutError``).

    Arrays are read-only views of the received bytes unless ``writeable`` (then copies)."""
    header = _recv_at_most(conn, header_limit, f"payload header larger than {header_limit} bytes")
    tree, specs = parse_header(header)
    total = sum(array_nbytes(dt, sh) for dt, sh, _ in specs)
    if max_array_bytes is not None and total > max_array_bytes:
        raise PayloadError(f"payload arrays hold {total} bytes, more than the {max_array_bytes} allowed")
    arrays = []
    for dtype, shape, order in specs:
        n = array_nbytes(dtype, shape)
        if wait is not None and not wait():
            raise TimeoutError("the rest of the payload did not arrive in time")
        data = _recv_at_most(conn, n, f"array message larger than the {n} bytes its header describes")
        if len(data) != n:
            raise PayloadError(f"array message has {len(data)} bytes, its header describes {n}")
        arrays.append(_array_from(data, dtype, shape, order, writeable))
    return _graft(tree, arrays)


# --------------------------------------------------------------------------- backend outputs


def _element_count(output: Any) -> int | None:
    for attr in ("size", "numel"):
        value = getattr(output, attr, None)
        if callable(value):
            try:
                value = value()
            except Exception:
                return None
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return int(value)
    return None


def _refuse_large(count: int | None, max_elements: int | None) -> None:
    if max_elements is not None and count is not None and count > max_elements:
        raise BadOutput(f"output has {count} elements, expected at most {max_elements}")


def coerce_output(output: Any, max_elements: int | None = None) -> Any:
    """A backend output as a Python ``float``/``int`` or a real numeric numpy array; ``BadOutput``
    otherwise (``bool``, strings, complex, objects, ragged lists, dicts, ``None``), or when it has more
    than ``max_elements`` entries. cupy and torch arrays are moved to numpy, after the size check."""
    if isinstance(output, (bool, np.bool_)):
        raise BadOutput(f"output is a boolean ({output!r}), not a number")
    if isinstance(output, float):
        return float(output)
    if isinstance(output, int):
        if not -(2**63) <= output < 2**64:
            raise BadOutput("output is an integer too large for any numeric dtype")
        return output
    if isinstance(output, (str, bytes, complex, dict, type(None))):
        raise BadOutput(f"output is a {type(output).__name__}, not a numeric array")
    _refuse_large(_element_count(output), max_elements)
    if hasattr(output, "get") and type(output).__module__.startswith("cupy"):
        output = output.get()
    if hasattr(output, "detach") and hasattr(output, "cpu"):
        output = output.detach().cpu().numpy()
    try:
        arr = np.asarray(output)
    except MemoryError:
        raise
    except Exception as exc:  # ragged lists and the like
        raise BadOutput(f"output cannot be read as a numeric array: {type(exc).__name__}: {exc}") from None
    if is_low_precision(arr.dtype):
        arr = arr.astype(np.float32)  # exact
    if arr.dtype.hasobject:
        raise BadOutput(f"output is an object array ({type(output).__name__}), not a numeric array")
    if arr.dtype.kind not in OUTPUT_KINDS or arr.dtype.fields is not None:
        raise BadOutput(f"output has dtype {arr.dtype}: only real numbers (floats or integers) are answers")
    _refuse_large(arr.size, max_elements)
    return arr


def same_bits(a: Any, b: Any) -> str | None:
    """``None`` when two outputs are identical bit for bit (same type, dtype and shape; NaN equals any
    NaN), else a sentence saying where they differ."""
    a_arr, b_arr = np.asarray(a), np.asarray(b)
    if type(a) is not type(b) and not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        return f"the outputs have different types ({type(a).__name__} and {type(b).__name__})"
    if a_arr.dtype != b_arr.dtype or a_arr.shape != b_arr.shape:
        return f"the outputs differ in dtype or shape ({a_arr.dtype} {a_arr.shape} and {b_arr.dtype} {b_arr.shape})"
    if a_arr.dtype.kind not in OUTPUT_KINDS:
        return f"the outputs have non-numeric dtype {a_arr.dtype}"
    width = np.dtype(f"u{a_arr.dtype.itemsize}") if a_arr.dtype.itemsize in (1, 2, 4, 8) else None
    if width is not None:
        differ = np.ascontiguousarray(a_arr).view(width) != np.ascontiguousarray(b_arr).view(width)
    else:  # long double: compare the raw bytes entry by entry
        ab = np.ascontiguousarray(a_arr).reshape(-1).view(np.uint8).reshape(-1, a_arr.dtype.itemsize)
        bb = np.ascontiguousarray(b_arr).reshape(-1).view(np.uint8).reshape(-1, a_arr.dtype.itemsize)
        differ = (ab != bb).any(axis=1).reshape(a_arr.shape)
    if a_arr.dtype.kind == "f":
        differ &= ~(np.isnan(a_arr) & np.isnan(b_arr))
    count = int(np.count_nonzero(differ))
    if count == 0:
        return None
    first = tuple(int(i) for i in np.argwhere(np.asarray(differ))[0]) if a_arr.ndim else ()
    return (f"two identical calls gave different bits in {count} of {a_arr.size} entries "
            f"(first at index {list(first)}: {a_arr[first]!r} then {b_arr[first]!r})")


def truncate_text(text: str, limit: int = MESSAGE_TEXT_LIMIT) -> str:
    """``text`` cut to about ``limit`` characters (head and tail kept, the cut noted)."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[… {len(text) - 2 * half} characters omitted of {len(text)} …]\n{text[-half:]}"


def copy_arrays(obj: Any) -> Any:
    """``obj`` with every numpy array replaced by a writeable copy (lists, tuples and dicts walked)."""
    if isinstance(obj, np.ndarray):
        return np.array(obj, copy=True, order="K")
    if isinstance(obj, (list, tuple)):
        return type(obj)(copy_arrays(v) for v in obj) if type(obj) in (list, tuple) else obj
    if isinstance(obj, dict):
        return {k: copy_arrays(v) for k, v in obj.items()}
    return obj


__all__ = (
    "PayloadError", "BadOutput", "encode_payload", "decode_payload", "send_payload", "recv_payload",
    "coerce_output", "same_bits", "truncate_text", "copy_arrays",
)
