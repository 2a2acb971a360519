"""Replayable case files: exact inputs as ``.npz`` (never pickled) plus a JSON manifest.

The manifest records the problem, the case id, family, dtype and seed, the exact parameters (rationals
as "p/q" strings), the SHA-256 of every array, the output ``rows`` a row-subset case certifies (absent:
every row; ``attnspec replay`` certifies the same rows), the backend and the verdict with its evidence. Loading
trusts nothing, and every refusal is a :class:`CaseFileError` naming the file and the field:

- only regular files are read: the manifest path may be a symbolic link (the user named it), but its
  target must be a regular file; the ``.npz`` must be a plain name beside the manifest, and is opened
  with ``O_NOFOLLOW`` (a symbolic link is refused) and ``O_NONBLOCK`` (a FIFO cannot hang the open);
  the type is checked on the open descriptor, so a FIFO, a device such as ``/dev/zero`` or a directory
  is refused before one byte is read;
- byte limits apply to what is read (at most limit + 1 bytes, whatever the file claims) and to what is
  decompressed: every ``.npz`` member must be ``<name>.npy`` with a declared size within the limit, its
  ``.npy`` header (dtype, shape, no pickles) must match the manifest before its data is read, and its
  data is read with a bounded read;
- the JSON is strict: no NaN/Infinity literals, no non-finite numbers (``1e400``), no integers of more
  than ``_MAX_INT_DIGITS`` digits, no duplicate keys, bounded nesting, and it must follow
  ``schemas/case.schema.json`` before the semantic checks (known problem, array names, hashes, dtypes)
  and the full re-validation of the instance by the problem's spec.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import struct
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.lib.format as npy_format

from attnspec.conformance.harness.atomic import atomic_open
from attnspec.conformance.harness.schemas import schema_error
from attnspec.conformance.judging.problems import get_problem
from attnspec.spec.validation import is_low_precision

MANIFEST_SCHEMA = "attnspec.case/1"
_MAX_MANIFEST_BYTES = 16 * 2**20
_MAX_ARRAY_BYTES = 1 * 2**30  # on the .npz file, and on the total decompressed from it
_MAX_JSON_DEPTH = 32
_MAX_INT_DIGITS = 40
_MAX_NPZ_MEMBERS = 64
_MAX_NPY_HEADER = 10_000
_NPY_MEMBER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\.npy")
_ARRAY_DTYPES = {"float64": np.dtype("<f8"), "float32": np.dtype("<f4"), "float16": np.dtype("<f2")}


class CaseFileError(ValueError):
    """A case or instance file is malformed, tampered with or unsafe to load."""


def _sha256(a: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str(a.dtype).encode())
    h.update(repr(a.shape).encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def safe_name(case_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", case_id)


# --------------------------------------------------------------------------- saving


def save_case(directory: str | os.PathLike, case: Any, extra: dict[str, Any] | None = None) -> Path:
    """Write ``case`` as ``<id>.npz`` + ``<id>.json`` in ``directory``; returns the JSON path.

    Each file is written atomically (temporary file + ``os.replace``), the ``.npz`` first: a run killed
    in between leaves an old manifest whose hashes refuse the new arrays, never a half-written file.
    """
    mod = get_problem(case.problem)
    arrays = mod.instance_arrays(case.instance)
    for name, arr in arrays.items():
        if arr.dtype == object:
            raise CaseFileError(f"array {name!r} holds exact rationals; store them as float arrays or in params")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = safe_name(case.case_id)
    members: dict[str, Any] = dict(arrays)  # (numpy's stubs type **kwds like allow_pickle)
    with atomic_open(directory / f"{stem}.npz") as f:
        np.savez(f, **members)
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "problem": case.problem,
        "case_id": case.case_id,
        "family": case.family,
        "dtype": case.dtype,
        "seed": int(case.seed),
        "params": mod.instance_params(case.instance),
        "arrays": {name: {"sha256": _sha256(arr), "dtype": str(arr.dtype), "shape": list(arr.shape)} for name, arr in arrays.items()},
        "npz": f"{stem}.npz",
    }
    rows = getattr(case, "rows", None)
    if rows is not None:  # a row-subset case: a replay certifies the same rows
        manifest["rows"] = [int(r) for r in rows]
    manifest.update(extra or {})
    path = directory / f"{stem}.json"
    with atomic_open(path) as f:
        f.write(json.dumps(manifest, indent=2, default=_json_default).encode("utf-8"))
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, set):
        return sorted(o)
    return str(o)


# --------------------------------------------------------------------------- reading files


def _open_regular(path: Path, *, follow_symlinks: bool) -> IO[bytes]:
    """``path`` opened for binary reading, refused unless it is a regular file (checked on the descriptor)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise CaseFileError(f"case file {path} does not exist") from None
    except OSError as exc:
        if not follow_symlinks and os.path.islink(path):
            raise CaseFileError(f"{path} is a symbolic link; case files are read only from regular files") from None
        raise CaseFileError(f"{path} cannot be opened: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else \
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"
            raise CaseFileError(f"{path} is {kind}; case files are read only from regular files")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_bounded(f: IO[bytes], limit: int, what: Path) -> bytes:
    """At most ``limit`` bytes, in chunks (``read(limit + 1)`` would allocate the whole limit up front)."""
    chunks, total = [], 0
    while total <= limit:
        chunk = f.read(min(2**16, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > limit:
        raise CaseFileError(f"{what} is larger than {limit} bytes")
    return b"".join(chunks)


# --------------------------------------------------------------------------- strict JSON


class _JSONLimit(ValueError):
    pass


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise _JSONLimit(f"an integer of {len(text.lstrip('-'))} digits (more than {_MAX_INT_DIGITS})")
    return int(text)


def _parse_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise _JSONLimit(f"the number {text[:40]!r} is not finite in float64")
    return x


def _parse_constant(name: str) -> float:
    raise _JSONLimit(f"the literal {name} (NaN and Infinity are not JSON)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _JSONLimit(f"the key {key[:60]!r} appears twice in one object")
        out[key] = value
    return out


def _depth(obj: Any) -> int:
    """Nesting depth of a parsed JSON value (an explicit stack: no recursion)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, level)
            if deepest > _MAX_JSON_DEPTH:
                return deepest
            stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _parse_manifest(data: bytes, path: Path) -> Any:
    try:
        text = data.decode("utf-8")
        obj = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant,
                         object_pairs_hook=_unique_keys)
    except _JSONLimit as exc:
        raise CaseFileError(f"{path} is not an acceptable JSON manifest: it contains {exc}") from None
    except RecursionError:
        raise CaseFileError(f"{path} is not an acceptable JSON manifest: nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise CaseFileError(f"{path} is not a readable JSON manifest: {exc}") from None
    if _depth(obj) > _MAX_JSON_DEPTH:
        raise CaseFileError(f"{path} is not an acceptable JSON manifest: nested deeper than {_MAX_JSON_DEPTH} levels")
    return obj


# --------------------------------------------------------------------------- the npz


def _central_directory(f: IO[bytes], path: Path) -> None:
    """Refuse an archive whose central directory is large before ``zipfile`` parses it (memory)."""
    size = f.seek(0, os.SEEK_END)
    tail_len = min(size, 22 + 65535)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        raise CaseFileError(f"{path} cannot be loaded safely: not a zip archive (no end-of-directory record)")
    entries, cd_size = struct.unpack("<HI", tail[at + 10: at + 16])
    if entries > _MAX_NPZ_MEMBERS or cd_size > _MAX_NPZ_MEMBERS * 1024:
        raise CaseFileError(f"{path} cannot be loaded safely: its directory lists {entries} members "
                            f"({cd_size} bytes); at most {_MAX_NPZ_MEMBERS} are accepted")
    f.seek(0)


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, meta: dict[str, Any], budget: int, where: str) -> np.ndarray:
    """One ``.npy`` member: header checked against the manifest's ``meta`` before the data is read."""
    with zf.open(info) as fp:
        try:
            version = npy_format.read_magic(fp)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(fp, max_header_size=_MAX_NPY_HEADER)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = npy_format.read_array_header_2_0(fp, max_header_size=_MAX_NPY_HEADER)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except ValueError as exc:
            raise CaseFileError(f"{where}: not a valid .npy header: {exc}") from None
        expected_dtype = _ARRAY_DTYPES[meta["dtype"]]
        if dtype != expected_dtype or dtype.hasobject:
            raise CaseFileError(f"{where}: stored dtype {dtype.str!r} is not the manifest's {meta['dtype']!r} "
                                f"(little-endian floats only, never objects)")
        if list(shape) != list(meta["shape"]):
            raise CaseFileError(f"{where}: stored shape {list(shape)} is not the manifest's {meta['shape']}")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > budget:
            raise CaseFileError(f"{where}: {nbytes} bytes of data exceed the remaining limit of {budget} bytes")
        buf = bytearray(nbytes)
        got = fp.readinto(buf) if nbytes else 0  # type: ignore[attr-defined]  # a ZipExtFile (BufferedIOBase)
        if got != nbytes:
            raise CaseFileError(f"{where}: truncated data ({got} of {nbytes} bytes)")
        if fp.read(1):  # also reaches the end, where zipfile checks the CRC
            raise CaseFileError(f"{where}: trailing bytes after the array data")
    arr = np.frombuffer(buf, dtype=dtype)
    return arr.reshape(shape, order="F" if fortran else "C")


def _load_npz(npz_path: Path, expected: dict[str, Any]) -> dict[str, np.ndarray]:
    with _open_regular(npz_path, follow_symlinks=False) as f:
        if os.fstat(f.fileno()).st_size > _MAX_ARRAY_BYTES:
            raise CaseFileError(f"{npz_path} is larger than {_MAX_ARRAY_BYTES} bytes")
        _central_directory(f, npz_path)
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise CaseFileError(f"{npz_path} cannot be loaded safely: {type(exc).__name__}: {exc}") from None
        with zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            for name in names:
                if not _NPY_MEMBER.fullmatch(name):
                    raise CaseFileError(f"{npz_path}: member {name[:80]!r} is not '<name>.npy'; nothing else is accepted")
            if len(set(names)) != len(names):
                raise CaseFileError(f"{npz_path}: a member name appears twice")
            stored = sorted(n[:-4] for n in names)
            if stored != sorted(expected):
                raise CaseFileError(f"{npz_path}: arrays {stored} do not match the manifest's {sorted(expected)}")
            for info in infos:
                if info.file_size > _MAX_ARRAY_BYTES:
                    raise CaseFileError(f"{npz_path}: member {info.filename!r} would decompress to {info.file_size} bytes, "
                                        f"more than the limit of {_MAX_ARRAY_BYTES} bytes")
            declared = sum(i.file_size for i in infos)
            if declared > _MAX_ARRAY_BYTES:
                raise CaseFileError(f"{npz_path}: its members would decompress to {declared} bytes in all, "
                                    f"more than the limit of {_MAX_ARRAY_BYTES} bytes")
            arrays: dict[str, np.ndarray] = {}
            budget = _MAX_ARRAY_BYTES
            for info in infos:
                name = info.filename[:-4]
                try:
                    arrays[name] = _read_member(zf, info, expected[name], budget, f"{npz_path}: array {name!r}")
                except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
                    raise CaseFileError(f"{npz_path} cannot be loaded safely: {type(exc).__name__}: {exc}") from None
                budget -= arrays[name].nbytes
    return arrays


# --------------------------------------------------------------------------- loading


def load_case(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """Load and fully validate a case file; returns (case, manifest).

    Raises :class:`CaseFileError` and nothing else (an unexpected failure is wrapped, so one bad file
    among saved failures can always be skipped).
    """
    path = Path(path)
    if path.suffix == ".npz":
        path = path.with_suffix(".json")
    try:
        return _load_case(path)
    except CaseFileError:
        raise
    except Exception as exc:
        raise CaseFileError(f"{path} cannot be loaded: unexpected {type(exc).__name__}: {str(exc)[:300]}") from None


def _load_case(path: Path) -> tuple[Any, dict[str, Any]]:
    with _open_regular(path, follow_symlinks=True) as f:
        manifest = _parse_manifest(_read_bounded(f, _MAX_MANIFEST_BYTES, path), path)
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
        raise CaseFileError(f"{path} is not an attnspec case manifest (schema {MANIFEST_SCHEMA!r} expected)")
    problem = schema_error("case", manifest)
    if problem is not None:
        raise CaseFileError(f"{path}: {problem}")
    if not isinstance(manifest["seed"], int):  # the schema's "integer" also admits 1.0
        raise CaseFileError(f"{path}: field 'seed': {manifest['seed']!r} is not an integer")
    try:
        mod = get_problem(manifest["problem"])
    except ValueError as exc:
        raise CaseFileError(f"{path}: field 'problem': {exc}") from None
    npz_name = manifest["npz"]
    if "/" in npz_name or "\\" in npz_name or npz_name in (".", "..") or not npz_name.endswith(".npz"):
        raise CaseFileError(f"{path}: npz reference {npz_name!r} must name a .npz file beside the manifest")
    here = path.resolve().parent
    npz_path = here / npz_name
    if npz_path.resolve().parent != here:
        raise CaseFileError(f"{path}: npz reference {npz_name!r} must name a .npz file beside the manifest")
    expected = manifest["arrays"]
    low = is_low_precision(manifest["dtype"])  # bf16 / fp8 cases hold their (exact) values as float32
    for name, meta in expected.items():  # the case's dtype picks its tolerance: it must be the data's
        if meta["dtype"] != manifest["dtype"] and not (low and meta["dtype"] == "float32"):
            raise CaseFileError(f"{path}: field 'arrays.{name}.dtype' is {meta['dtype']!r}, but the case declares dtype {manifest['dtype']!r}")
    arrays = _load_npz(npz_path, expected)
    for name, arr in arrays.items():
        if expected[name]["sha256"] != _sha256(arr):
            raise CaseFileError(f"{npz_path}: array {name!r} does not match its SHA-256 in the manifest")
        if low and not np.array_equal(arr.astype(manifest["dtype"]).astype(np.float32), arr):
            raise CaseFileError(f"{npz_path}: array {name!r} holds values that are not {manifest['dtype']} values")
    try:
        inst = mod.instance_from_files(arrays, manifest["params"])
    except Exception as exc:
        why = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        raise CaseFileError(f"{path}: instance is invalid: {why[:300]}") from None
    case = mod.case_type(manifest["case_id"], manifest["family"], manifest["dtype"], manifest["seed"], inst)
    if manifest.get("rows") is not None:
        case.rows = _manifest_rows(manifest["rows"], inst, path)
    return case, manifest


def _manifest_rows(rows: Any, inst: Any, path: Path) -> tuple[int, ...]:
    """The manifest's ``rows`` (the output rows a row-subset case certifies), checked: sorted, unique,
    integers inside the instance's output rows."""
    from attnspec.conformance.judging.case_common import normalize_rows

    shape = getattr(inst, "output_shape", None)
    if shape is None:
        raise CaseFileError(f"{path}: field 'rows': this problem's cases have no output rows to subset")
    if not isinstance(rows, list) or not all(isinstance(r, int) and not isinstance(r, bool) for r in rows):
        raise CaseFileError(f"{path}: field 'rows': must be a list of integers")
    try:
        out = normalize_rows(rows, int(shape[0]))
    except ValueError as exc:
        raise CaseFileError(f"{path}: field 'rows': {exc}") from None
    assert out is not None
    return out
