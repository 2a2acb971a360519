"""Instance sets: generate → verify round trips; tampered arrays and fields are named (exit 1); hostile
files are refused (exit 2) and never unpickled; a broken backend is caught on a set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from attnspec.conformance.frontends.cli import main
from attnspec.conformance.harness.case_files import _sha256
from attnspec.reductions.instance_sets import InstanceSetError, load_manifest, verify_set

import reduction_broken_backends as rb


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("set") / "hmv"
    rc = main(["instances", "generate", "hmv_to_odamv", "--n", "6", "--count", "5", "--seed", "3", "--out", str(out),
               "--param", "tau=0.9"])
    assert rc == 0
    return out


@pytest.fixture
def work(pristine, tmp_path) -> Path:
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(pristine, dst)
    return dst


def _manifest(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text())


def _write(d: Path, m: dict) -> None:
    (d / "manifest.json").write_text(json.dumps(m))


def _arrays(d: Path, iid: str) -> dict:
    with np.load(d / f"{iid}.npz") as z:
        return {k: z[k] for k in z.files}


def test_generate_then_verify_round_trips(pristine, capsys):
    assert main(["instances", "verify", str(pristine)]) == 0
    m = load_manifest(pristine)
    assert m["chain"] == ["hmv", "hmv_to_odamv", "dynamic_attention"] and m["count"] == 5
    assert "--seed 3" in m["provenance"]["command"] and m["provenance"]["numpy"] == np.__version__
    fams = [i["family"] for i in m["instances"]]
    assert fams == ["planted_yes", "planted_no", "random", "adversarial_yes", "adversarial_no"]
    for inst in m["instances"]:
        assert inst["reference"]["status"] == "agree" and inst["margin"] > 0
        assert inst["reference"]["decoded"]["witness"] == inst["answer"]["witness"]
        assert "conjecture_status" in inst["meta"]["caveats"]


def test_tampered_array_is_named_by_its_hash(work, capsys):
    a = _arrays(work, "000002")
    a["source_m"][0, 0] = 1 - a["source_m"][0, 0]
    np.savez(work / "000002.npz", **a)
    assert main(["instances", "verify", str(work), "--no-reference"]) == 1
    out = capsys.readouterr().out
    assert "000002: arrays.source_m: the array does not match its SHA-256" in out


def test_consistently_rehashed_array_is_named_against_the_seed(work):
    a = _arrays(work, "000001")
    a["target0_ops"][0, 3] *= 2  # a δ doubled, hash rewritten to match
    np.savez(work / "000001.npz", **a)
    m = _manifest(work)
    m["instances"][1]["arrays"]["target0_ops"]["sha256"] = _sha256(a["target0_ops"])
    _write(work, m)
    fields = {(x.instance, x.field) for x in verify_set(work, with_reference=False)}
    assert ("000001", "arrays.target0_ops") in fields


@pytest.mark.parametrize("path, value, expected", [
    (["margin"], 1.0, "margin"),
    (["answer", "decision"], None, "answer.decision"),
    (["source", "params", "index"], 0, "source.params.index"),
    (["target", "cases", 0, "params", "scale"], "1/3", "target.cases[0].params.scale"),
    (["seed"], 12345, "seed"),
])
def test_tampered_field_is_named(work, path, value, expected):
    m = _manifest(work)
    node = m["instances"][3]
    for key in path[:-1]:
        node = node[key]
    old = node[path[-1]]
    node[path[-1]] = (not old) if value is None else (value if value != old else value + 1)
    _write(work, m)
    fields = [x.field for x in verify_set(work, with_reference=False) if x.instance == "000003"]
    assert any(f.startswith(expected) for f in fields), fields


def test_set_level_fields_are_checked(work):
    m = _manifest(work)
    m["generator_version"] = "hmv-gen/0"
    _write(work, m)
    assert [x.field for x in verify_set(work, with_reference=False)] == ["generator_version"]


class Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def _hostile_pickle(d: Path) -> None:
    arr = np.empty(1, dtype=object)
    arr[0] = Boom()
    a = _arrays(d, "000000")
    a["source_m"] = arr
    np.savez(d / "000000.npz", **a)


def _hostile_symlink(d: Path) -> None:
    (d / "real.json").write_text((d / "manifest.json").read_text())
    (d / "manifest.json").unlink()
    (d / "manifest.json").symlink_to(d / "real.json")


def _hostile_fifo(d: Path) -> None:
    (d / "000000.npz").unlink()
    os.mkfifo(d / "000000.npz")


def _hostile_traversal(d: Path) -> None:
    m = _manifest(d)
    m["instances"][0]["npz"] = "../../000000.npz"
    _write(d, m)


def _hostile_nan(d: Path) -> None:
    (d / "manifest.json").write_text((d / "manifest.json").read_text().replace('"n": 6', '"n": NaN', 1))


def _hostile_extra_key(d: Path) -> None:
    m = _manifest(d)
    m["instances"][0]["pickle"] = True
    _write(d, m)


def _hostile_not_zip(d: Path) -> None:
    (d / "000000.npz").write_bytes(b"\x80\x04K\x01.")  # a pickle, not an npz


@pytest.mark.parametrize("make", [_hostile_pickle, _hostile_symlink, _hostile_fifo, _hostile_traversal, _hostile_nan,
                                  _hostile_extra_key, _hostile_not_zip], ids=lambda f: f.__name__[9:])
def test_hostile_sets_exit_2_and_are_never_unpickled(work, make, capsys, monkeypatch):
    monkeypatch.chdir(work)
    make(work)
    assert main(["instances", "verify", str(work), "--no-reference"]) == 2
    assert "refused" in capsys.readouterr().err
    assert not (work / "PWNED_BY_PICKLE").exists()
    with pytest.raises(InstanceSetError):
        verify_set(work, with_reference=False)


def test_unknown_family_and_reduction_are_usage_errors(tmp_path, capsys):
    assert main(["instances", "generate", "hmv_to_oamv/nope", "--n", "4", "--count", "1", "--out", str(tmp_path)]) == 2
    assert main(["instances", "generate", "nope", "--n", "4", "--count", "1", "--out", str(tmp_path)]) == 2
    assert "known" in capsys.readouterr().err


def test_run_on_a_set_catches_a_broken_backend_and_passes_a_correct_one(pristine, capsys):
    assert main(["instances", "run", str(pristine), "--backend", "numpy", "--isolation", "none"]) == 0
    assert "5 instances, 0 caught" in capsys.readouterr().out
    spec = rb.SPEC_PREFIX + "UniformInitShortcutBackend"
    assert main(["instances", "run", str(pristine), "--backend", spec, "--isolation", "none", "--json"]) == 1
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{"):])
    assert report["caught"] >= 1
    from attnspec.conformance.harness.isolation import InProcessRunner
    from attnspec.reductions.instance_sets import run_set

    results = run_set(pristine, InProcessRunner(rb.UniformInitShortcutBackend()))
    assert any(r["status"] == "wrong" for r in results)
