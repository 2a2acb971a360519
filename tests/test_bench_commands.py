"""`attnspec bench …` runs end to end at toy sizes and reports method and baseline side by side.

Functional checks only (the JSON's structure and the arithmetic of its ratios): no timing is asserted
here; figures live in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import math

import pytest

from attnspec.conformance.frontends.cli import main


def _bench(capsys, *argv):
    assert main(["bench", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_bench_softmax_reports_ratios_against_torch_and_mpmath(capsys):
    pytest.importorskip("torch")
    out = _bench(capsys, "softmax", "--n", "64", "--d", "8", "--ref-n", "16", "--repeats", "1", "--quick")
    a = out["a_cpu_vs_torch"]["float64"]
    assert math.isclose(a["ratio_best"], a["ours_best_s"] / a["torch_best_s"])
    assert a["max_abs_diff_vs_torch"] < 1e-12
    assert out["b_reference"]["enclose_128"]["max_relative_radius"] < 1e-30
    assert all(row["enclosures_intersect"] for row in out["b_reference"]["arb_vs_mpmath"])
    assert "skipped" in out["c_gpu_vs_torch"] or "float64" in out["c_gpu_vs_torch"]


def test_bench_attention_reports_speedup_exponents_and_refusals(capsys):
    out = _bench(capsys, "attention", "--n", "128", "256", "512", "--headline-n", "512", "--exact-max-n", "512",
                 "--fit-min-n", "128", "--poly-fit-min-n", "128", "--b-sweep", "0.5", "3.5", "--b-sweep-n", "256",
                 "--repeats", "1")
    head = out["headline"]
    assert math.isclose(head["speedup"], head["exact_s"] / head["poly_s"])
    assert head["rank"] == math.comb(4 + head["degree"], head["degree"])
    assert all("exact_s" in r and "poly_s" in r for r in out["n_sweep"]["rows"])
    assert math.isfinite(out["n_sweep"]["poly_exponent"]) and math.isfinite(out["n_sweep"]["exact_exponent"])
    small, large = out["b_sweep"]["rows"]
    assert "rank" in small and "refused" in large  # B = 3.5 is beyond what float64 can serve


def test_bench_tensor_reports_speedup_and_b_sweep(capsys):
    out = _bench(capsys, "tensor", "--n", "8", "16", "--d", "2", "--repeats", "1", "--poly-n", "64", "128",
                 "--b-sweep", "0.5", "2.5")
    for row in out["rows"]:
        assert math.isclose(row["speedup"], row["exact_s"] / row["poly_s"])
        assert row["max_abs_diff"] < 1e-6  # within the contract ε_a of the run
    assert [r.get("refused") is None for r in out["b_sweep"]["rows"]] == [True, False]


def test_bench_dynamic_reports_all_structures_side_by_side(capsys):
    out = _bench(capsys, "dynamic", "--n", "32", "64", "--d", "8", "--tau", "0.5", "--repeats", "1",
                 "--mixed-n", "64", "--mixed-d", "16", "--mixed-ops", "60", "--mixed-tau", "0.5")
    results = out["mixed"]["results"]
    assert {"eager", "lazy_recompute", "lazy tau=0.5"} <= set(results)
    for name, r in results.items():
        if name != "eager":
            assert math.isclose(r["speedup_vs_eager"], results["eager"]["total_s"] / r["total_s"])
            assert r["max_abs_diff_vs_eager"] < 1e-12  # every structure answered the same queries alike
    assert {f["method"] for f in out["fits"]} >= {"eager", "lazy_recompute", "lazy tau=0.5"}
