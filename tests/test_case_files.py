"""conformance/case_files.py: exact round trips, and hostile files refused with a clear CaseFileError."""

from __future__ import annotations

import json
import os
import signal
import tracemalloc
import zipfile
from fractions import Fraction
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from attnspec.conformance.harness import case_files
from attnspec.conformance.harness.backends import read_capabilities
from attnspec.conformance.harness.case_files import MANIFEST_SCHEMA, CaseFileError, load_case, save_case
from attnspec.conformance.judging.problems import get_problem
from attnspec.conformance.judging.softmax_attention import Case, problem as softmax_problem
from attnspec.spec.softmax_attention import make_instance

import helper_backends as hb
import hostile_case_files as hf


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
        v1, v2 = softmax_problem.judge(case, y, caps), softmax_problem.judge(loaded, y, caps)
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


_manifest, _write, _arrays, _rehash = hf.manifest, hf.write_manifest, hf.arrays, hf.rehash  # shared with the catalogue


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
    with pytest.raises(CaseFileError, match=r"array 'q': stored dtype '\|O' is not the manifest's 'float64'"):
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
    with pytest.raises(CaseFileError, match=rf"field '{field}' missing"):
        load_case(path)


@pytest.mark.parametrize("field,value", [("params", []), ("arrays", "q,k,v"), ("npz", 7), ("case_id", None), ("problem", ["softmax_attention"])])
def test_wrong_field_type(saved, field, value):
    _, path = saved
    m = _manifest(path)
    m[field] = value
    _write(path, m)
    with pytest.raises(CaseFileError, match=rf"field '{field}': .* is not of type"):
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
    with pytest.raises(CaseFileError, match="field 'arrays.k': 'deadbeef' is not of type 'object'"):
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
    with pytest.raises(CaseFileError, match=r"\.npz does not exist"):
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


# --------------------------------------------------------------------------- non-regular files


@pytest.fixture
def deadline():
    """Turn a hang into a test failure: SIGALRM after 10 s raises inside the blocked call."""
    def expire(signum, frame):
        raise TimeoutError("load_case hung")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_dev_zero_as_the_manifest_is_refused(tmp_path, deadline):
    link = tmp_path / "case.json"
    os.symlink("/dev/zero", link)
    with pytest.raises(CaseFileError, match="is a device; case files are read only from regular files"):
        load_case(link)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_dev_zero_as_the_npz_is_refused(saved, deadline):
    _, path = saved
    npz = path.with_suffix(".npz")
    npz.unlink()
    os.symlink("/dev/zero", npz)
    with pytest.raises(CaseFileError, match="beside the manifest"):
        load_case(path)


def test_symlink_to_a_valid_npz_beside_the_manifest_is_refused(saved):
    _, path = saved
    npz = path.with_suffix(".npz")
    npz.rename(path.parent / "real.npz")
    os.symlink(path.parent / "real.npz", npz)
    with pytest.raises(CaseFileError, match="is a symbolic link"):
        load_case(path)


def test_symlinked_manifest_is_followed(saved, tmp_path):
    # The user named the manifest; its npz is looked up beside the target, not beside the link.
    case, path = saved
    elsewhere = tmp_path / "links"
    elsewhere.mkdir()
    os.symlink(path, elsewhere / "alias.json")
    assert load_case(elsewhere / "alias.json")[0].case_id == case.case_id


@pytest.mark.parametrize("which", ["json", "npz"])
def test_fifo_is_refused_without_hanging(saved, deadline, which):
    _, path = saved
    target = path.with_suffix(f".{which}")
    target.unlink()
    os.mkfifo(target)
    with pytest.raises(CaseFileError, match="is a FIFO"):
        load_case(path)


@pytest.mark.parametrize("which", ["json", "npz"])
def test_directory_is_refused(saved, which):
    _, path = saved
    target = path.with_suffix(f".{which}")
    target.unlink()
    target.mkdir()
    with pytest.raises(CaseFileError, match="is a directory"):
        load_case(path)


# --------------------------------------------------------------------------- hostile archives


@pytest.mark.parametrize("member", ["evil.txt", "../x.npy", "sub/q.npy", "q.npy.gz", "w"])
def test_npz_member_that_is_not_a_plain_npy_is_refused(saved, member):
    _, path = saved
    hf.npz_with_extra_member(path, member)
    with pytest.raises(CaseFileError, match=r"is not '<name>\.npy'"):
        load_case(path)


def test_npz_member_claiming_10_gb_is_refused_before_reading(saved):
    _, path = saved
    hf.npz_claiming_size(path, "v.npy", 10 * 2**30)
    with pytest.raises(CaseFileError, match=r"member 'v.npy' would decompress to 10737418240 bytes"):
        load_case(path)


@pytest.fixture
def bomb(saved):
    _, path = saved
    shape = hf.zip_bomb(path)
    assert path.with_suffix(".npz").stat().st_size < 2**20  # 50 MB of zeros, deflated
    return path, shape


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_zip_bomb_with_the_wrong_shape_is_refused_from_its_header(bomb):
    path, shape = bomb

    def load():
        with pytest.raises(CaseFileError, match=rf"array 'q': stored shape \[{shape[0]}\] is not the manifest's \[6, 3\]"):
            load_case(path)

    assert _peak_bytes(load) < 4 * 2**20  # the 50 MB were never decompressed


def test_zip_bomb_declared_in_the_manifest_is_refused_by_the_decompression_limit(bomb, monkeypatch):
    path, shape = bomb
    m = hf.manifest(path)
    m["arrays"]["q"]["shape"] = list(shape)
    hf.write_manifest(path, m)
    monkeypatch.setattr(case_files, "_MAX_ARRAY_BYTES", 10 * 2**20)

    def load():
        with pytest.raises(CaseFileError, match=r"member 'q.npy' would decompress to 52428928 bytes, more than the limit of 10485760 bytes"):
            load_case(path)

    assert _peak_bytes(load) < 4 * 2**20


def test_too_many_members_are_refused_from_the_directory_record(saved):
    _, path = saved
    with zipfile.ZipFile(path.with_suffix(".npz"), "a") as zf:
        for i in range(70):
            zf.writestr(f"a{i}.npy", b"")
    with pytest.raises(CaseFileError, match="directory lists 73 members"):
        load_case(path)


def test_truncated_member_data_is_refused(saved):
    _, path = saved
    full = hf.npy_bytes(hf.arrays(path)["k"])
    hf.npz_with_raw_member(path, "k.npy", full[:-8])
    with pytest.raises(CaseFileError, match=r"array 'k': truncated data \(136 of 144 bytes\)"):
        load_case(path)


def test_trailing_bytes_after_member_data_are_refused(saved):
    _, path = saved
    full = hf.npy_bytes(hf.arrays(path)["k"])
    hf.npz_with_raw_member(path, "k.npy", full + b"\0" * 8)
    with pytest.raises(CaseFileError, match="array 'k': trailing bytes"):
        load_case(path)


def test_member_that_is_not_npy_is_refused(saved):
    _, path = saved
    hf.npz_with_raw_member(path, "k.npy", b"\x93NUMPX" + b"\0" * 200)
    with pytest.raises(CaseFileError, match="array 'k': not a valid .npy header"):
        load_case(path)


def test_big_endian_data_is_refused_even_with_matching_values(saved):
    _, path = saved
    k = hf.arrays(path)["k"]
    hf.npz_with_raw_member(path, "k.npy", hf.npy_bytes(k.astype(">f8")))
    with pytest.raises(CaseFileError, match=r"array 'k': stored dtype '>f8' is not the manifest's 'float64'"):
        load_case(path)


def test_fortran_ordered_arrays_load_exactly(tmp_path):
    case = _case()
    path = save_case(tmp_path, case)
    a = hf.arrays(path)
    hf.npz_with_raw_member(path, "q.npy", hf.npy_bytes(np.asfortranarray(a["q"])))
    assert np.array_equal(load_case(path)[0].instance.q, case.instance.q)


# --------------------------------------------------------------------------- hostile JSON


@pytest.mark.parametrize("depth,message", [(100_000, "nested too deeply"), (100, "nested deeper than 32 levels")])
def test_deeply_nested_manifest_is_refused(saved, depth, message):
    _, path = saved
    hf.manifest_with_raw_field(path, "backend", hf.nested_json(depth))
    with pytest.raises(CaseFileError, match=message):
        load_case(path)


@pytest.mark.parametrize("field,raw,message", [
    ("seed", "1" * 10_000, "an integer of 10000 digits"),
    ("seed", "-" + "9" * 41, "an integer of 41 digits"),
    ("backend", "1e400", r"the number '1e400' is not finite"),
    ("backend", "-1e400", r"the number '-1e400' is not finite"),
    ("backend", "NaN", "the literal NaN"),
    ("backend", "Infinity", "the literal Infinity"),
    ("backend", "-Infinity", "the literal -Infinity"),
])
def test_numbers_json_cannot_hold_are_refused(saved, field, raw, message):
    _, path = saved
    hf.manifest_with_raw_field(path, field, raw)
    with pytest.raises(CaseFileError, match=f"not an acceptable JSON manifest: it contains {message}"):
        load_case(path)


def test_non_finite_number_inside_params_is_refused(saved):
    _, path = saved
    text = path.read_text().replace('"scale": "1/3"', '"scale": 1e999')
    path.write_text(text)
    with pytest.raises(CaseFileError, match="'1e999' is not finite"):
        load_case(path)


def test_duplicate_keys_are_refused(saved):
    _, path = saved
    text = path.read_text()
    path.write_text(text.replace('"dtype": "float64",', '"dtype": "float64", "dtype": "float16",', 1))
    with pytest.raises(CaseFileError, match="the key 'dtype' appears twice"):
        load_case(path)


@pytest.mark.parametrize("field,value,message", [
    ("seed", "7", r"field 'seed': '7' is not of type 'integer'"),
    ("seed", 1.5, r"field 'seed': 1.5 is not of type 'integer'"),
    ("seed", 1.0, r"field 'seed': 1.0 is not an integer"),
    ("seed", True, r"field 'seed': True is not of type 'integer'"),
    ("seed", -1, r"field 'seed': -1 is less than the minimum"),
    ("seed", 2**64, r"field 'seed': 18446744073709551616 is greater than the maximum"),
    ("seed", None, r"field 'seed': None is not of type 'integer'"),
    ("dtype", "float128", r"field 'dtype': 'float128' is not one of"),
    ("dtype", 64, r"field 'dtype': 64 is not one of"),
    ("family", 3, r"field 'family': 3 is not of type 'string'"),
    ("case_id", "", r"field 'case_id': '' should be non-empty"),
    ("case_id", "x" * 2000, r"field 'case_id': 'xxx.* … x+' is too long"),
    ("problem", "softmax attention", r"field 'problem': 'softmax attention' does not match"),
    ("params", {"scale": [1]}, r"field 'params.scale': \[1\] is not valid under any of the given schemas"),
    ("params", {"scale": {"p": 1, "q": 3}}, r"field 'params.scale'"),
    ("npz", "", r"field 'npz': '' should be non-empty"),
    ("arrays", {}, r"field 'arrays': \{\} should be non-empty"),
])
def test_wrong_types_are_refused_naming_the_field(saved, field, value, message):
    _, path = saved
    m = _manifest(path)
    m[field] = value
    _write(path, m)
    with pytest.raises(CaseFileError, match=message):
        load_case(path)


@pytest.mark.parametrize("key,value,message", [
    ("sha256", "DEADBEEF", r"field 'arrays.q.sha256': 'DEADBEEF' does not match"),
    ("sha256", None, r"field 'arrays.q.sha256': None is not of type 'string'"),
    ("dtype", "int64", r"field 'arrays.q.dtype': 'int64' is not one of"),
    ("dtype", "object", r"field 'arrays.q.dtype': 'object' is not one of"),
    ("shape", [-1, 3], r"field 'arrays.q.shape.0': -1 is less than the minimum"),
    ("shape", "6,3", r"field 'arrays.q.shape': '6,3' is not of type 'array'"),
    ("shape", [1] * 9, r"field 'arrays.q.shape': .* is too long"),
    ("extra", 1, r"field 'arrays.q': Additional properties are not allowed \('extra' was unexpected\)"),
])
def test_wrong_array_metadata_is_refused_naming_the_field(saved, key, value, message):
    _, path = saved
    m = _manifest(path)
    m["arrays"]["q"][key] = value
    _write(path, m)
    with pytest.raises(CaseFileError, match=message):
        load_case(path)


def test_bad_array_name_is_refused(saved):
    _, path = saved
    m = _manifest(path)
    m["arrays"]["../q"] = m["arrays"].pop("q")
    _write(path, m)
    with pytest.raises(CaseFileError, match=r"field 'arrays'.*'\.\./q' does not match"):
        load_case(path)


# --------------------------------------------------------------------------- nothing but CaseFileError


def test_an_unexpected_exception_in_the_problem_becomes_a_case_file_error(saved, monkeypatch):
    case, path = saved
    problem = get_problem(case.problem)

    def explode(arrays, params):
        raise KeyError("boom")

    monkeypatch.setattr(problem, "instance_from_files", explode)
    with pytest.raises(CaseFileError, match="instance is invalid: KeyError: 'boom'"):
        load_case(path)


def test_an_unexpected_exception_anywhere_becomes_a_case_file_error(saved, monkeypatch):
    _, path = saved

    def out_of_memory(*args, **kwargs):
        raise MemoryError("simulated")

    monkeypatch.setattr(case_files, "_parse_manifest", out_of_memory)
    with pytest.raises(CaseFileError, match="unexpected MemoryError: simulated"):
        load_case(path)


def _hostile_directory(root: Path) -> tuple[Path, str]:
    """A failures/ directory with one good case and one of each kind of hostile file."""
    good = save_case(root, _case(case_id="good"))
    for i, text in enumerate(["{", hf.nested_json(100_000), '{"schema": "attnspec.case/1", "seed": ' + "9" * 5000 + "}",
                              '{"schema": "attnspec.case/1", "x": 1e400}', "NaN"]):
        (root / f"bad{i}.json").write_text(text)
    os.mkfifo(root / "fifo.json")
    (root / "dir.json").mkdir()
    wrong = save_case(root, _case(case_id="wrong"))
    m = _manifest(wrong)
    m["seed"] = "x"
    _write(wrong, m)
    return good, "good"


def test_a_directory_of_hostile_files_yields_only_case_file_errors(tmp_path, deadline):
    good, good_id = _hostile_directory(tmp_path)
    loaded, refused = [], []
    for path in sorted(tmp_path.glob("*.json")):
        try:
            loaded.append(load_case(path)[0].case_id)
        except CaseFileError as exc:
            refused.append(str(exc))
    assert loaded == [good_id]
    assert len(refused) == 8 and all(str(tmp_path) in msg for msg in refused)


def test_saved_failures_skip_hostile_files(tmp_path, deadline, capsys):
    from attnspec.conformance.harness.runner import _saved_failures

    _hostile_directory(tmp_path)
    cases = _saved_failures(tmp_path)
    assert [c.case_id for c in cases] == ["replay/good"]
    assert capsys.readouterr().err.count("skipping saved case") == 8


# --------------------------------------------------------------------------- atomic saves and the schema


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    path = save_case(tmp_path, _case())
    save_case(tmp_path, _case())  # overwriting replaces the files whole
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, path.with_suffix(".npz").name])


def test_a_failed_save_keeps_the_previous_files(tmp_path, monkeypatch):
    path = save_case(tmp_path, _case())
    before = path.read_bytes(), path.with_suffix(".npz").read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(case_files.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_case(tmp_path, _case())
    assert (path.read_bytes(), path.with_suffix(".npz").read_bytes()) == before
    assert len(list(tmp_path.iterdir())) == 2


def test_saved_manifests_follow_the_case_schema(tmp_path):
    from attnspec.conformance.harness.schemas import validate_case_manifest

    for dtype in ("float64", "float32", "float16"):
        path = save_case(tmp_path, _case(dtype=dtype, eps=Fraction(1, 10), case_id=dtype), {"backend": "b", "status": "fail", "message": "|x|"})
        validate_case_manifest(json.loads(path.read_text()))


def test_the_case_schema_is_valid_draft_2020_12():
    from attnspec.conformance.harness.schemas import load_schema

    schema = load_schema("case")
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
