"""``attnspec conform --backend X --instances DIR``: correct backends pass generated sets; dynamic,
tensor and softmax backends that are wrong only on reduction-shaped inputs are caught (exit 1); a
tampered, hostile or misused set exits 2 before the backend runs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from attnspec.conformance.frontends.cli import main

import reduction_broken_backends as rb

HERE = str(Path(__file__).resolve())
MAXIP_BROKEN = str(Path(__file__).resolve().parent / "maxip_broken_backends.py") + ":"
SETS = {  # (reduction, n, extra --param values)
    "hmv": ("hmv_to_odamv", 6, ["tau=0.9"]),
    "tensor": ("maxip_to_tensor", 4, []),
    "softmax": ("maxip_to_softmax", 6, []),
    "softmax_zero": ("maxip_to_softmax", 6, ["dummy=\"zero\""]),
}


def stale_query_column_backend():
    """A backend whose dynamic structure caches the column of a key row's first update (ODAMV-shaped bug)."""
    return rb.backend_for(rb.StaleQueryColumnPerRow)


def float32_weights_backend():
    """Answers rounded to float32 under a float64 declaration: decodes right, the judgement catches it."""
    return rb.backend_for(rb.Float32Weights)


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sets")
    out = {}
    for key, (reduction, n, params) in SETS.items():
        out[key] = root / key
        argv = ["instances", "generate", reduction, "--n", str(n), "--count", "6", "--seed", "2", "--out", str(out[key]),
                "--no-reference"] + [x for p in params for x in ("--param", p)]
        assert main(argv) == 0
    return out


def _conform(directory: Path, backend: str, *extra: str) -> list[str]:
    return ["conform", "--backend", backend, "--instances", str(directory), *extra]


@pytest.mark.parametrize("key", sorted(SETS))
def test_a_correct_backend_passes_every_set(sets, key, capsys):
    assert main(_conform(sets[key], "numpy", "--isolation", "none", "--json")) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["by_status"] == {"agree": 6} and out["summary"]["caught"] == []
    assert 0 < out["summary"]["worst_error_over_margin"] < 1e-6  # certified error far inside every margin
    for r in out["results"]:
        assert r["decoded"]["decision"] == r["truth"]["decision"] and r["calls"][0]["status"] == "pass"


def test_process_isolation_passes_a_correct_backend_and_catches_a_broken_one(sets, capsys, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(HERE).parent), os.environ.get("PYTHONPATH", "")]))
    assert main(_conform(sets["hmv"], "numpy")) == 0
    assert "6 instances (6 agree); 0 caught" in capsys.readouterr().out
    assert main(_conform(sets["hmv"], rb.SPEC_PREFIX + "UniformInitShortcutBackend")) == 1
    assert "wrong" in capsys.readouterr().out


@pytest.mark.parametrize("key,spec,expected", [
    ("hmv", rb.SPEC_PREFIX + "UniformInitShortcutBackend", "wrong"),
    ("hmv", HERE + ":stale_query_column_backend", None),
    ("hmv", HERE + ":float32_weights_backend", "judged_fail"),
    ("tensor", MAXIP_BROKEN + "ReversesKroneckerOnBinaryValues", None),
    ("tensor", MAXIP_BROKEN + "DropsLastTupleWhenPadded", "judged_fail"),
    ("softmax", MAXIP_BROKEN + "DedupesRepeatedKeys", "error"),
    ("softmax_zero", MAXIP_BROKEN + "MasksZeroKeys", "error"),
    ("softmax", MAXIP_BROKEN + "LiesAboutFloat16", "judged_fail"),
], ids=lambda x: x.rsplit(":", 1)[-1] if isinstance(x, str) else None)
def test_backends_wrong_only_on_reduction_shaped_inputs_are_caught(sets, key, spec, expected, capsys):
    assert main(_conform(sets[key], spec, "--isolation", "none", "--json")) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["caught"]
    if expected is not None:
        assert expected in out["summary"]["by_status"]


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def _edit_manifest(d: Path, edit) -> None:
    m = json.loads((d / "manifest.json").read_text())
    edit(m)
    (d / "manifest.json").write_text(json.dumps(m))


def _flip_decision(m):
    m["instances"][1]["answer"]["decision"] = not m["instances"][1]["answer"]["decision"]


def _move_witness(m):
    w = m["instances"][0]["answer"]["witness"]
    w[-1] = (w[-1] + 1) % 4


def _tamper_array(d: Path) -> None:
    with np.load(d / "000002.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["source_a"] = 1.0 - arrays["source_a"]
    np.savez(d / "000002.npz", **arrays)


@pytest.mark.parametrize("tamper,named", [
    (lambda d: _edit_manifest(d, _flip_decision), "answer.decision"),
    (lambda d: _edit_manifest(d, _move_witness), "answer.witness"),
    (_tamper_array, "arrays.source_a"),
    (lambda d: _edit_manifest(d, lambda m: m.update(count=7)), "count"),
    (lambda d: (d / "000003.npz").write_bytes(b"\x80\x04K\x01."), "000003"),  # a pickle, not an npz
], ids=["decision", "witness", "array", "count", "pickle"])
def test_a_tampered_or_hostile_set_exits_2_before_the_backend_runs(sets, tmp_path, tamper, named, capsys, monkeypatch):
    d = _copy(sets["tensor"], tmp_path)
    tamper(d)
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "BACKEND_RAN"
    monkeypatch.setenv("ATTNSPEC_TEST_MARKER", str(marker))
    assert main(_conform(d, HERE + ":marking_backend", "--isolation", "none")) == 2
    err = capsys.readouterr().err
    assert "refused instance set" in err and named in err
    assert not marker.exists()


def marking_backend():
    """A correct backend whose loading leaves a marker file: it must never load for a refused set."""
    Path(os.environ["ATTNSPEC_TEST_MARKER"]).touch()
    from attnspec.conformance.harness.builtin_backends import numpy_backend

    return numpy_backend()


def test_suite_selection_flags_are_usage_errors_with_instances(sets, capsys):
    assert main(_conform(sets["tensor"], "numpy", "--problem", "tensor_attention")) == 2
    assert "--problem select suite cases" in capsys.readouterr().err
    assert main(_conform(sets["tensor"].parent / "missing", "numpy")) == 2
