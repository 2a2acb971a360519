"""Hard-instance sets on disk: a versioned JSON manifest (``attnspec.instances/1``) plus one ``.npz`` per
instance (never pickled), for any registered reduction. The format is documented in docs/reductions.md
("Instance sets on disk").

Layout of a set directory::

    DIR/manifest.json        the manifest: reduction chain, parameters, generator version, seed and
                             provenance, and per instance its arrays' SHA-256, the source answer with its
                             certificate, the decoding margin and the reference's decision margin
    DIR/<instance id>.npz    arrays ``source_<name>`` (the source instance) and ``target<c>_<name>``
                             (case c of the target problem, as its case files store it)

:func:`generate_set` writes a set; :func:`verify_set` re-derives every instance from its seed, checks
every hash, array and field, re-solves the source by brute force and re-runs the reference backend,
and names what differs; :func:`run_set` judges a backend on a set. Loading reuses the hardened readers
of :mod:`attnspec.conformance.harness.case_files` (regular files only, bounded reads, strict JSON,
``.npy`` headers checked before data, no pickles): any file they refuse is an :class:`InstanceSetError`
(a hostile or malformed set, CLI exit 2), while a well-formed set that does not re-derive is a list of
:class:`Mismatch` (exit 1).
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

from attnspec.conformance.harness.atomic import atomic_open
from attnspec.conformance.harness.case_files import (
    _MAX_MANIFEST_BYTES,
    CaseFileError,
    _load_npz,
    _open_regular,
    _parse_manifest,
    _read_bounded,
    _sha256,
)
from attnspec.conformance.judging.problems import get_problem
from attnspec.reductions.base import Reduction, SourceAnswer, run_reduction
from attnspec.reductions.registry import get_reduction

SET_FORMAT = "attnspec.instances/1"
MANIFEST_NAME = "manifest.json"
MAX_INSTANCES = 100_000

_ARRAY_META = {"type": "object", "required": ["sha256", "dtype", "shape"], "additionalProperties": False,
               "properties": {"sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                              "dtype": {"enum": ["float64"]},
                              "shape": {"type": "array", "maxItems": 8, "items": {"type": "integer", "minimum": 0}}}}
_ANSWER = {"type": "object", "required": ["decision", "witness", "certificate"], "additionalProperties": False,
           "properties": {"decision": {"type": "boolean"},
                          "witness": {"type": ["array", "null"], "items": {"type": "integer"}},
                          "certificate": {"type": "object"}}}
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["format", "reduction", "chain", "family", "parameters", "n", "count", "seed", "generator_version",
                 "provenance", "instances"],
    "additionalProperties": False,
    "properties": {
        "format": {"const": SET_FORMAT},
        "reduction": {"type": "string", "maxLength": 100},
        "chain": {"type": "array", "minItems": 2, "items": {"type": "string", "maxLength": 100}},
        "family": {"type": "string", "maxLength": 100},
        "parameters": {"type": "object"},
        "n": {"type": "integer", "minimum": 1},
        "count": {"type": "integer", "minimum": 0, "maximum": MAX_INSTANCES},
        "seed": {"type": "integer", "minimum": 0},
        "generator_version": {"type": "string"},
        "provenance": {"type": "object", "required": ["command", "attnspec", "numpy"],
                       "properties": {"command": {"type": "string"}, "attnspec": {"type": "string"},
                                      "numpy": {"type": "string"}, "python": {"type": "string"}}},
        "meta": {"type": "object"},
        "instances": {"type": "array", "maxItems": MAX_INSTANCES, "items": {
            "type": "object",
            "required": ["id", "family", "seed", "npz", "source", "arrays", "answer", "margin", "target", "reference"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,80}$"},
                "family": {"type": "string"},
                "seed": {"type": "integer", "minimum": 0},
                "npz": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,80}\\.npz$"},
                "source": {"type": "object", "required": ["kind", "params", "generator"],
                           "properties": {"kind": {"type": "string"}, "params": {"type": "object"},
                                          "generator": {"type": "object"}}},
                "arrays": {"type": "object", "maxProperties": 64, "additionalProperties": _ARRAY_META},
                "answer": _ANSWER,
                "margin": {"type": "number"},
                "target": {"type": "object", "required": ["problem", "cases"],
                           "properties": {"problem": {"type": "string"},
                                          "cases": {"type": "array", "items": {
                                              "type": "object", "required": ["case_id", "params"],
                                              "properties": {"case_id": {"type": "string"},
                                                             "params": {"type": "object"}}}}}},
                "meta": {"type": "object"},
                "reference": {"type": "object", "required": ["backend", "status", "decoded"],
                              "properties": {"backend": {"type": "string"}, "status": {"type": "string"},
                                             "decoded": {"type": ["object", "null"]}}},
            }}},
    },
}


class InstanceSetError(CaseFileError):
    """The set is malformed, hostile or unsafe to load (CLI exit 2)."""


@dataclass(frozen=True)
class Mismatch:
    """A field or array of a well-formed set that does not re-derive (CLI exit 1)."""

    instance: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.instance}: {self.field}: {self.message}"


# --------------------------------------------------------------------------- deriving one instance


def instance_seed(seed: int, index: int) -> int:
    """The seed of instance ``index`` of a set seeded ``seed`` (stable, no ``hash()``)."""
    return (int(seed) * 1_000_003 + 7919 * int(index) + 1) % 2**32


def _families(reduction: Reduction, family: str) -> list[str]:
    if family in ("all", "*"):
        return list(reduction.families)
    if family not in reduction.families and family not in getattr(reduction, "input_families", ()):  # inputs: not in "all"
        raise ValueError(f"reduction {reduction.name!r} has no family {family!r}; known: {', '.join(reduction.families)}, all")
    return [family]


def _json_clean(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists, numpy scalars Python numbers)."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))


def derive(reduction: Reduction, family: str, n: int, seed: int, parameters: dict[str, Any], *,
           with_reference: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One instance's manifest record (without ``id``/``npz``) and its arrays, derived from its seed."""
    rng = np.random.default_rng(seed)
    source, build_params = reduction.generate(family, n, rng, **parameters)
    built = reduction.build(source, build_params)
    truth = reduction.brute_force(source)
    problem = get_problem(reduction.target_problem)
    arrays = {f"source_{k}": np.asarray(v, dtype=np.float64) for k, v in reduction.source_arrays(source).items()}
    cases = []
    for c, case in enumerate(built.cases):
        for k, v in problem.instance_arrays(case.instance).items():
            arrays[f"target{c}_{k}"] = np.asarray(v, dtype=np.float64)
        cases.append({"case_id": case.case_id, "params": problem.instance_params(case.instance)})
    record = {
        "family": family,
        "seed": int(seed),
        "source": {"kind": reduction.source_kind, "params": reduction.source_params(source),
                   "generator": build_params.get("generator", {})},
        "arrays": {k: {"sha256": _sha256(a), "dtype": str(a.dtype), "shape": list(a.shape)} for k, a in arrays.items()},
        "answer": truth.to_json(),
        "margin": float(reduction.required_accuracy(built)),
        "target": {"problem": reduction.target_problem, "cases": cases},
        "meta": built.meta,
        "reference": reference_decoding(reduction, source, build_params) if with_reference else
        {"backend": "reference", "status": "skipped", "decoded": None},
    }
    return _json_clean(record), arrays


def reference_decoding(reduction: Reduction, source: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The reference backend's answers (exact, rounded once) decoded: the certified attention answer's
    decision and how far each decoded value lies from the threshold (the reduction's certificate)."""
    from attnspec.conformance.harness.builtin_backends import reference_backend
    from attnspec.conformance.harness.isolation import InProcessRunner

    outcome = run_reduction(reduction, source, params, InProcessRunner(reference_backend()))
    return {"backend": "reference", "status": outcome.status,
            "decoded": None if outcome.decoded is None else outcome.decoded.to_json()}


# --------------------------------------------------------------------------- writing


def generate_set(reduction_name: str, family: str, n: int, count: int, seed: int, out: str | Path, *,
                 parameters: dict[str, Any] | None = None, command: str = "", with_reference: bool = True,
                 derive_many: Any = None) -> Path:
    """Write ``count`` instances of ``family`` (``all``: the families in turn) to ``out``; returns the
    manifest path. Arrays are written first, the manifest last (atomically), so an interrupted run never
    leaves a manifest naming missing arrays. ``derive_many(reduction, n, [(family, seed), …], parameters,
    with_reference)``, when given, yields the :func:`derive` results in order (e.g. computed on a Dask
    cluster: :func:`attnspec.conformance.harness.distributed.derive_on`)."""
    from attnspec import __version__

    reduction = get_reduction(reduction_name)
    families = _families(reduction, family)
    if not 0 <= count <= MAX_INSTANCES:
        raise ValueError(f"count must be in [0, {MAX_INSTANCES}], got {count}")
    if seed < 0:
        raise ValueError("seed must be ≥ 0")
    parameters = dict(parameters or {})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    instances = []
    jobs = [(families[index % len(families)], instance_seed(seed, index)) for index in range(count)]
    derived = (derive_many(reduction.name, n, jobs, parameters, with_reference) if derive_many is not None else
               (derive(reduction, fam, n, fam_seed, parameters, with_reference=with_reference) for fam, fam_seed in jobs))
    for index, (record, arrays) in enumerate(derived):
        iid = f"{index:06d}"
        members: dict[str, Any] = dict(arrays)  # (numpy's stubs type **kwds like allow_pickle)
        with atomic_open(out / f"{iid}.npz") as f:
            np.savez(f, **members)
        instances.append({"id": iid, "npz": f"{iid}.npz", **record})
    manifest = {
        "format": SET_FORMAT,
        "reduction": reduction.name,
        "chain": [reduction.source_kind, reduction.name, reduction.target_problem],
        "family": family,
        "parameters": _json_clean(parameters),
        "n": int(n),
        "count": int(count),
        "seed": int(seed),
        "generator_version": reduction.generator_version,
        "provenance": {"command": command, "attnspec": __version__, "numpy": np.__version__,
                       "python": platform.python_version()},
        "instances": instances,
    }
    path = out / MANIFEST_NAME
    with atomic_open(path) as f:
        f.write(json.dumps(manifest, indent=1).encode("utf-8"))
    return path


# --------------------------------------------------------------------------- reading


def load_manifest(directory: str | Path) -> dict[str, Any]:
    """The set's manifest, read through the hardened readers and checked against :data:`SCHEMA`
    (:class:`InstanceSetError` naming the field otherwise)."""
    path = Path(directory) / MANIFEST_NAME
    try:
        with _open_regular(path, follow_symlinks=False) as f:
            manifest = _parse_manifest(_read_bounded(f, _MAX_MANIFEST_BYTES, path), path)
    except InstanceSetError:
        raise
    except CaseFileError as exc:
        raise InstanceSetError(str(exc)) from None
    if not isinstance(manifest, dict) or manifest.get("format") != SET_FORMAT:
        raise InstanceSetError(f"{path} is not an attnspec instance set (format {SET_FORMAT!r} expected)")
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(SCHEMA).iter_errors(manifest))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise InstanceSetError(f"{path}: field {where!r}: {error.message[:300]}")
    if manifest["count"] != len(manifest["instances"]):
        raise InstanceSetError(f"{path}: field 'count' is {manifest['count']} but {len(manifest['instances'])} instances are listed")
    ids = [inst["id"] for inst in manifest["instances"]]
    if len(set(ids)) != len(ids):
        raise InstanceSetError(f"{path}: field 'instances': an instance id appears twice")
    try:
        get_reduction(manifest["reduction"])
    except ValueError as exc:
        raise InstanceSetError(f"{path}: field 'reduction': {exc}") from None
    return manifest


def load_arrays(directory: str | Path, record: dict[str, Any]) -> dict[str, np.ndarray]:
    """One instance's arrays: the ``.npz`` beside the manifest, members and headers checked against the
    record before any data is read (never unpickled). Hashes are checked by :func:`verify_set`."""
    directory = Path(directory)
    npz = directory / record["npz"]
    if npz.resolve().parent != directory.resolve():
        raise InstanceSetError(f"instance {record['id']}: npz {record['npz']!r} must lie beside the manifest")
    try:
        return _load_npz(npz, record["arrays"])
    except CaseFileError as exc:
        raise InstanceSetError(f"instance {record['id']}: {exc}") from None


def _compare(prefix: str, stored: Any, derived: Any, out: list[tuple[str, str]]) -> None:
    """Every leaf where ``stored`` and ``derived`` (JSON values) differ, as (field path, message)."""
    if isinstance(stored, dict) and isinstance(derived, dict):
        for key in sorted(set(stored) | set(derived), key=str):
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in stored:
                out.append((where, "missing from the manifest"))
            elif key not in derived:
                out.append((where, "not in the re-derived instance (added)"))
            else:
                _compare(where, stored[key], derived[key], out)
    elif isinstance(stored, list) and isinstance(derived, list) and len(stored) == len(derived):
        for k, (a, b) in enumerate(zip(stored, derived)):
            _compare(f"{prefix}[{k}]", a, b, out)
    elif stored != derived or type(stored) is not type(derived):
        out.append((prefix, f"stored {json.dumps(stored)[:80]} but re-derived {json.dumps(derived)[:80]}"))


def verify_set(directory: str | Path, *, with_reference: bool = True) -> list[Mismatch]:
    """Re-derive every instance of the set and compare: each array's hash and bits, every manifest field
    (source parameters, answer and certificate, margin, target parameters, reference decoding). Returns
    the mismatches (empty: the set verifies). Raises :class:`InstanceSetError` on a hostile or malformed
    set."""
    manifest = load_manifest(directory)
    reduction = get_reduction(manifest["reduction"])
    mismatches: list[Mismatch] = []
    expected_chain = [reduction.source_kind, reduction.name, reduction.target_problem]
    if manifest["chain"] != expected_chain:
        mismatches.append(Mismatch("(set)", "chain", f"stored {manifest['chain']} but the reduction is {expected_chain}"))
    if manifest["generator_version"] != reduction.generator_version:
        mismatches.append(Mismatch("(set)", "generator_version", f"stored {manifest['generator_version']!r} but this "
                                   f"attnspec generates {reduction.generator_version!r}"))
    try:
        families = set(_families(reduction, manifest["family"]))
    except ValueError as exc:
        raise InstanceSetError(f"field 'family': {exc}") from None
    for index, record in enumerate(manifest["instances"]):
        iid = record["id"]
        arrays = load_arrays(directory, record)
        for name, arr in arrays.items():
            if _sha256(arr) != record["arrays"][name]["sha256"]:
                mismatches.append(Mismatch(iid, f"arrays.{name}", "the array does not match its SHA-256 in the manifest"))
        if record["family"] not in families:
            mismatches.append(Mismatch(iid, "family", f"{record['family']!r} is not a family of set family {manifest['family']!r}"))
            continue
        if record["seed"] != instance_seed(manifest["seed"], index):
            mismatches.append(Mismatch(iid, "seed", f"stored {record['seed']} but instance {index} of seed "
                                       f"{manifest['seed']} has seed {instance_seed(manifest['seed'], index)}"))
        try:
            stored_source = reduction.source_from_files({k[7:]: v for k, v in arrays.items() if k.startswith("source_")},
                                                        record["source"]["params"])
        except (ValueError, TypeError) as exc:
            mismatches.append(Mismatch(iid, "source", f"the stored source instance is invalid: {str(exc)[:200]}"))
            stored_source = None
        derived, derived_arrays = derive(reduction, record["family"], manifest["n"], record["seed"], manifest["parameters"],
                                         with_reference=with_reference)
        for name in sorted(set(arrays) | set(derived_arrays)):
            if name not in arrays or name not in derived_arrays:
                mismatches.append(Mismatch(iid, f"arrays.{name}", "present on one side only"))
            elif arrays[name].shape != derived_arrays[name].shape or not np.array_equal(arrays[name], derived_arrays[name]):
                mismatches.append(Mismatch(iid, f"arrays.{name}", "differs from the array re-derived from the seed"))
        if stored_source is not None:  # the answer must be right for what is stored, not only for the seed
            answer = reduction.brute_force(stored_source).to_json()
            diffs: list[tuple[str, str]] = []
            _compare("answer", record["answer"], _json_clean(answer), diffs)
            mismatches.extend(Mismatch(iid, f, m + " (brute force on the stored instance)") for f, m in diffs)
        skip = {"arrays", "id", "npz"} | ({"reference"} if not with_reference else set())
        diffs = []
        _compare("", {k: v for k, v in record.items() if k not in skip},
                 {k: v for k, v in derived.items() if k not in skip}, diffs)
        reported = {m.field for m in mismatches if m.instance == iid}
        mismatches.extend(Mismatch(iid, f, m) for f, m in diffs if f not in reported)
    return mismatches


# --------------------------------------------------------------------------- judging a backend


def run_set(directory: str | Path, runner: Any, caps: Any = None, *, judge: bool = True) -> list[dict[str, Any]]:
    """Judge a backend on every instance of a set: whether its answers decode to the stored source answer,
    and each target output's certified error against the margin. The instances are rebuilt from the
    stored (hash-checked) source arrays."""
    manifest = load_manifest(directory)
    reduction = get_reduction(manifest["reduction"])
    results = []
    for record in manifest["instances"]:
        arrays = load_arrays(directory, record)
        for name, arr in arrays.items():
            if _sha256(arr) != record["arrays"][name]["sha256"]:
                raise InstanceSetError(f"instance {record['id']}: array {name!r} does not match its SHA-256")
        try:
            source = reduction.source_from_files({k[7:]: v for k, v in arrays.items() if k.startswith("source_")},
                                                 record["source"]["params"])
            truth = SourceAnswer.from_json(record["answer"])
        except (ValueError, TypeError) as exc:
            raise InstanceSetError(f"instance {record['id']}: {exc}") from None
        outcome = run_reduction(reduction, source, {"generator": record["source"]["generator"]}, runner, caps,
                                judge=judge, truth=truth)
        results.append({"id": record["id"], "family": record["family"], **outcome.to_json()})
    return results


__all__ = ["SET_FORMAT", "SCHEMA", "InstanceSetError", "Mismatch", "generate_set", "verify_set", "run_set",
           "load_manifest", "load_arrays", "derive", "instance_seed"]
