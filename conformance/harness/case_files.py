"""Replayable case files: exact inputs as ``.npz`` (never pickled) plus a JSON manifest.

The manifest records the problem, the case id, family, dtype and seed, the exact parameters (rationals
as "p/q" strings), the SHA-256 of every array, the backend and the verdict with its evidence. Loading
checks everything before use: JSON only, ``allow_pickle=False``, known problem, expected array names,
matching hashes, and full re-validation of the instance by the problem's spec.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from attnspec.conformance.judging.problems import problem_module

MANIFEST_SCHEMA = "attnspec.case/1"
_MAX_MANIFEST_BYTES = 16 * 2**20
_MAX_ARRAY_BYTES = 1 * 2**30


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


def save_case(directory: str | os.PathLike, case: Any, extra: dict[str, Any] | None = None) -> Path:
    """Write ``case`` as ``<id>.npz`` + ``<id>.json`` in ``directory``; returns the JSON path."""
    mod = problem_module(case.problem)
    arrays = mod.instance_arrays(case.instance)
    for name, arr in arrays.items():
        if arr.dtype == object:
            raise CaseFileError(f"array {name!r} holds exact rationals; store them as float arrays or in params")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = safe_name(case.case_id)
    np.savez(directory / f"{stem}.npz", **arrays)
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "problem": case.problem,
        "case_id": case.case_id,
        "family": case.family,
        "dtype": case.dtype,
        "seed": case.seed,
        "params": mod.instance_params(case.instance),
        "arrays": {name: {"sha256": _sha256(arr), "dtype": str(arr.dtype), "shape": list(arr.shape)} for name, arr in arrays.items()},
        "npz": f"{stem}.npz",
    }
    manifest.update(extra or {})
    path = directory / f"{stem}.json"
    path.write_text(json.dumps(manifest, indent=2, default=_json_default))
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, set):
        return sorted(o)
    return str(o)


def load_case(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """Load and fully validate a case file; returns (case, manifest). Raises :class:`CaseFileError`."""
    path = Path(path)
    if path.suffix == ".npz":
        path = path.with_suffix(".json")
    try:
        if path.stat().st_size > _MAX_MANIFEST_BYTES:
            raise CaseFileError(f"{path} is larger than {_MAX_MANIFEST_BYTES} bytes")
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise CaseFileError(f"case file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CaseFileError(f"{path} is not a readable JSON manifest: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
        raise CaseFileError(f"{path} is not an attnspec case manifest (schema {MANIFEST_SCHEMA!r} expected)")
    for key, typ in (("problem", str), ("case_id", str), ("family", str), ("dtype", str), ("params", dict), ("arrays", dict), ("npz", str)):
        if not isinstance(manifest.get(key), typ):
            raise CaseFileError(f"{path}: field {key!r} missing or not a {typ.__name__}")
    try:
        mod = problem_module(manifest["problem"])
    except ValueError as exc:
        raise CaseFileError(f"{path}: {exc}") from None
    npz_path = (path.parent / manifest["npz"]).resolve()
    if npz_path.parent != path.parent.resolve() or npz_path.suffix != ".npz":
        raise CaseFileError(f"{path}: npz reference {manifest['npz']!r} must name a .npz file beside the manifest")
    try:
        if npz_path.stat().st_size > _MAX_ARRAY_BYTES:
            raise CaseFileError(f"{npz_path} is larger than {_MAX_ARRAY_BYTES} bytes")
        with np.load(npz_path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except CaseFileError:
        raise
    except Exception as exc:  # ValueError for pickled object arrays, zip errors, missing file
        raise CaseFileError(f"{npz_path} cannot be loaded safely: {type(exc).__name__}: {exc}") from None
    expected = manifest["arrays"]
    if set(arrays) != set(expected):
        raise CaseFileError(f"{npz_path}: arrays {sorted(arrays)} do not match the manifest's {sorted(expected)}")
    for name, arr in arrays.items():
        meta = expected[name]
        if not isinstance(meta, dict) or meta.get("sha256") != _sha256(arr):
            raise CaseFileError(f"{npz_path}: array {name!r} does not match its SHA-256 in the manifest")
    for name, arr in arrays.items():  # the case's dtype picks its tolerance: it must be the data's
        if arr.dtype.kind == "f" and str(arr.dtype) != manifest["dtype"]:
            raise CaseFileError(f"{npz_path}: array {name!r} has dtype {arr.dtype}, but the case declares dtype {manifest['dtype']!r}")
    try:
        inst = mod.instance_from_files(arrays, manifest["params"])
    except Exception as exc:
        raise CaseFileError(f"{path}: instance is invalid: {exc}") from None
    seed = manifest.get("seed")
    case = mod.Case(manifest["case_id"], manifest["family"], manifest["dtype"], int(seed) if isinstance(seed, int) else 0, inst)
    return case, manifest
