"""conformance/case_files.py: exact round trips, and hostile files refused with a clear CaseFileError."""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from attnspec.conformance.harness import case_files
from attnspec.conformance.harness.backends import read_capabilities
from attnspec.conformance.harness.case_files import MANIFEST_SCHEMA, CaseFileError, load_case, save_case
from attnspec.conformance.judging.softmax_attention import Case, judge_case
from attnspec.spec.softmax_attention import make_instance

import helper_backends as hb


def _case(dtype="float64", scale=Fraction(1, 3), bound=Fraction(5, 2), eps=None, case_id="softmax_attention/x/fam/007"):
    rng = np.random.default_rng(42)
    q, k, v = (rng.uniform(-2, 2, (6, 3)).astype(dtype) for _ in range(3))
    inst = make_instance(q, k, v, scale=scale, bound=bound, eps=eps)
    return Case(case_id, "fam", dtype, 1234, inst)


@pytest.fixture
def saved(tmp_path):
    case = _case()
    path = save_case(tmp_path, case, {"backend": "x.py:Y", "status": "fail"})
    return case, path


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
@pytest.mark.parametrize("eps", [None, Fraction(1, 10)])
def test_round_trip_is_exact(tmp_path, dtype, eps):
    case = _case(dtype=dtype, eps=eps)
    path = save_case(tmp_path, case)
    assert path.suffix == ".json" and path.with_suffix(".npz").is_file()
    loaded, manifest = load_case(path)
    a, b = case.instance, loaded.instance
    for name in ("q", "k", "v"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)
    assert (b.scale, b.bound, b.eps) == (a.scale, a.bound, a.eps)  # 1/3 survives exactly
    assert (loaded.case_id, loaded.family, loaded.dtype, loaded.seed, loaded.problem) == (
        case.case_id, case.family, case.dtype, case.seed, case.problem)
    assert manifest["schema"] == MANIFEST_SCHEMA
    assert set(manifest["arrays"]) == {"q", "k", "v"}


def test_round_trip_gives_the_same_verdict(saved):
    case, path = saved
    loaded, _ = load_case(path)
    caps = read_capabilities(hb.Correct())
    for delta in (0.0, 1e-6):
        y = hb.correct_attention(case.instance.q, case.instance.k, case.instance.v, float(case.instance.scale))
        y[2, 1] += delta
        v1, v2 = judge_case(case, y, caps), judge_case(loaded, y, caps)
        assert v1.status == v2.status
        assert v1.evidence["worst_index"] == v2.evidence["worst_index"]
        assert v1.evidence["error_interval"] == v2.evidence["error_interval"]
    assert v2.status == "fail"


def test_loading_through_the_npz_path(saved):
    case, path = saved
    loaded, _ = load_case(path.with_suffix(".npz"))
    assert loaded.case_id == case.case_id


def test_extra_manifest_fields_are_kept(saved):
    _, path = saved
    _, manifest = load_case(path)
    assert manifest["backend"] == "x.py:Y" and manifest["status"] == "fail"


def test_case_id_becomes_a_safe_file_name(tmp_path):
    path = save_case(tmp_path, _case(case_id="../../evil/..\\id with spaces"))
    assert path.parent == tmp_path
    assert load_case(path)[0].case_id == "../../evil/..\\id with spaces"


def test_exact_rational_arrays_are_refused_on_save(tmp_path):
    inst = make_instance([[Fraction(1, 3)]], [[Fraction(1)]], [[Fraction(2)]], scale=1)
    with pytest.raises(CaseFileError, match="exact rationals"):
        save_case(tmp_path, Case("id", "fam", "float64", 0, inst))


# --------------------------------------------------------------------------- hostile files


def _manifest(path: Path) -> dict:
    return json.loads(path.read_text())


def _write(path: Path, manifest) -> None:
    path.write_text(json.dumps(manifest))


def _arrays(path: Path) -> dict:
    with np.load(path.with_suffix(".npz")) as z:
        return {k: z[k] for k in z.files}


def _rehash(path: Path, arrays: dict) -> None:
    """Rewrite the npz and make the manifest's hashes match (a consistent but hostile file)."""
    np.savez(path.with_suffix(".npz"), **arrays)
    m = _manifest(path)
    m["arrays"] = {k: {"sha256": case_files._sha256(a), "dtype": str(a.dtype), "shape": list(a.shape)} for k, a in arrays.items()}
    _write(path, m)


def test_tampered_array_is_detected(saved):
    _, path = saved
    arrays = _arrays(path)
    arrays["v"][0, 0] = np.nextafter(arrays["v"][0, 0], np.inf)  # one ulp
    np.savez(path.with_suffix(".npz"), **arrays)
    with pytest.raises(CaseFileError, match=r"array 'v' does not match its SHA-256"):
        load_case(path)


class _Bomb:
    """Unpickling this creates a marker file: proof that a loader executed pickled code."""

    marker: str = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_object_array_is_never_unpickled(saved, tmp_path):
    _, path = saved
    marker = tmp_path / "unpickled.marker"
    _Bomb.marker = str(marker)
    arrays = _arrays(path)
    arrays["q"] = np.array([_Bomb()], dtype=object)
    np.savez(path.with_suffix(".npz"), **arrays)  # np.savez pickles object arrays
    with pytest.raises(CaseFileError, match="cannot be loaded safely"):
        load_case(path)
    assert not marker.exists()


@pytest.mark.parametrize("ref", ["../x.npz", "../../x.npz", "/tmp/x.npz", "sub/x.npz", "x.json", "x.npz/.."])
def test_npz_reference_must_stay_beside_the_manifest(tmp_path, ref):
    d = tmp_path / "cases"
    path = save_case(d, _case())
    # Put a perfectly valid npz at the escaping location, so only the path check can refuse it.
    for target in (tmp_path / "x.npz", d / "sub" / "x.npz"):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.with_suffix(".npz").read_bytes())
    m = _manifest(path)
    m["npz"] = ref
    _write(path, m)
    with pytest.raises(CaseFileError, match="must name a .npz file beside the manifest"):
        load_case(path)


def test_symlink_escaping_the_directory_is_refused(tmp_path):
    d = tmp_path / "cases"
    path = save_case(d, _case())
    outside = tmp_path / "outside.npz"
    path.with_suffix(".npz").rename(outside)
    os.symlink(outside, path.with_suffix(".npz"))
    with pytest.raises(CaseFileError, match="beside the manifest"):
        load_case(path)


@pytest.mark.parametrize("text", ["not json at all", '{"schema": "attnspec.case/1", "problem": ', "", "\xff\xfe"])
def test_non_json_or_truncated_manifest(tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(CaseFileError, match="not a readable JSON manifest"):
        load_case(path)


def test_truncated_copy_of_a_real_manifest(saved):
    _, path = saved
    path.write_text(path.read_text()[: len(path.read_text()) // 2])
    with pytest.raises(CaseFileError, match="not a readable JSON manifest"):
        load_case(path)


@pytest.mark.parametrize("content", [[], "string", 3, None, {"schema": "attnspec.case/0"}, {"schema": "other"}, {}])
def test_wrong_schema(tmp_path, content):
    path = tmp_path / "c.json"
    _write(path, content)
    with pytest.raises(CaseFileError, match="schema"):
        load_case(path)


@pytest.mark.parametrize("field", ["problem", "case_id", "family", "dtype", "params", "arrays", "npz"])
def test_missing_field(saved, field):
    _, path = saved
    m = _manifest(path)
    del m[field]
    _write(path, m)
    with pytest.raises(CaseFileError, match=rf"field '{field}' missing or not a"):
        load_case(path)


@pytest.mark.parametrize("field,value", [("params", []), ("arrays", "q,k,v"), ("npz", 7), ("case_id", None), ("problem", ["softmax_attention"])])
def test_wrong_field_type(saved, field, value):
    _, path = saved
    m = _manifest(path)
    m[field] = value
    _write(path, m)
    with pytest.raises(CaseFileError, match=rf"field '{field}' missing or not a"):
        load_case(path)


def test_unknown_problem(saved):
    _, path = saved
    m = _manifest(path)
    m["problem"] = "quantum_attention"
    _write(path, m)
    with pytest.raises(CaseFileError, match="unknown problem 'quantum_attention'"):
        load_case(path)


def test_array_metadata_must_be_a_dict(saved):
    _, path = saved
    m = _manifest(path)
    m["arrays"]["k"] = "deadbeef"
    _write(path, m)
    with pytest.raises(CaseFileError, match="array 'k' does not match"):
        load_case(path)


@pytest.mark.parametrize("change", ["extra", "missing"])
def test_array_names_must_match_the_manifest(saved, change):
    _, path = saved
    arrays = _arrays(path)
    if change == "extra":
        arrays["w"] = np.zeros(2)
    else:
        del arrays["v"]
    np.savez(path.with_suffix(".npz"), **arrays)
    with pytest.raises(CaseFileError, match="do not match the manifest"):
        load_case(path)


def test_declared_dtype_must_match_the_arrays(saved):
    # A float64 case relabelled float32 would be judged by the (2^29 times looser) float32 tolerance.
    _, path = saved
    m = _manifest(path)
    m["dtype"] = "float32"
    _write(path, m)
    with pytest.raises(CaseFileError, match="case declares dtype 'float32'"):
        load_case(path)


def test_nan_inside_the_npz_is_refused_by_the_spec(saved):
    _, path = saved
    arrays = _arrays(path)
    arrays["k"][1, 2] = np.nan
    _rehash(path, arrays)
    with pytest.raises(CaseFileError, match=r"instance is invalid: K has a non-finite entry .*\[1, 2\]"):
        load_case(path)


def test_mismatched_shapes_inside_the_npz_are_refused(saved):
    _, path = saved
    arrays = _arrays(path)
    arrays["v"] = arrays["v"][:-1]
    _rehash(path, arrays)
    with pytest.raises(CaseFileError, match="instance is invalid: K and V must have the same number of rows"):
        load_case(path)


@pytest.mark.parametrize("params", [{"scale": "nan"}, {"scale": "1/0"}, {"scale": "abc"}, {}, {"scale": "1", "bound": "0.1"}])
def test_bad_params_are_refused(saved, params):
    _, path = saved
    m = _manifest(path)
    m["params"] = params
    _write(path, m)
    with pytest.raises(CaseFileError, match="instance is invalid"):
        load_case(path)


def test_missing_files(tmp_path, saved):
    with pytest.raises(CaseFileError, match="does not exist"):
        load_case(tmp_path / "nowhere.json")
    _, path = saved
    path.with_suffix(".npz").unlink()
    with pytest.raises(CaseFileError, match="cannot be loaded safely"):
        load_case(path)


def test_corrupt_npz(saved):
    _, path = saved
    path.with_suffix(".npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(CaseFileError, match="cannot be loaded safely"):
        load_case(path)


def test_manifest_size_limit(saved, monkeypatch):
    _, path = saved
    monkeypatch.setattr(case_files, "_MAX_MANIFEST_BYTES", 64)
    with pytest.raises(CaseFileError, match="larger than 64 bytes"):
        load_case(path)


def test_array_size_limit(saved, monkeypatch):
    _, path = saved
    monkeypatch.setattr(case_files, "_MAX_ARRAY_BYTES", 100)
    with pytest.raises(CaseFileError, match="larger than 100 bytes"):
        load_case(path)
