"""Smoke test of ``attnspec bench reductions-maxip`` at a tiny size (no timing is asserted): both methods
side by side, the decoding threshold and the polynomial method's refusal boundary reported."""

from __future__ import annotations

import json
import math

from attnspec.bench.reductions_maxip import eps_floor, polynomial_plan
from attnspec.conformance.frontends.cli import main
from attnspec.spec.validation import SpecError


def test_bench_reductions_maxip_smoke(capsys):
    rc = main(["bench", "reductions-maxip", "--n-tensor", "4", "--n-softmax", "4", "--cb", "1.5", "2.25", "3",
               "--max-rank", "60000", "--no-eps-floor", "--json"])
    assert rc == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{"):])
    tensor, softmax = result["reductions"]["tensor"], result["reductions"]["softmax"]
    assert (tensor["k"], softmax["k"]) == (3, 2)
    for part in (tensor, softmax):
        statuses = [r["status"] for r in part["rows"]]
        assert statuses[0] == "no_margin" and part["rows"][0]["eps_a_needed"] == 0  # below β·Δ = ln n^(k−1)
        assert "refused" in statuses  # past the entry bound the polynomial method cannot meet ε_a
        for r in part["rows"]:
            assert math.isclose(r["B"], r["C_b"] * math.log(4) ** (1 / part["k"]))
            if r["status"] != "no_margin":  # exact pipeline and brute force side by side, with their ratio
                assert r["numpy_status"] == "agree"
                assert r["numpy_ratio"] == r["numpy_pipeline_s"] / r["brute_force_s"]
            if r["status"] == "refused":
                assert r["reason"] and r["poly_eps"] < r["eps_a_needed"]
        (b,) = part["boundary"]
        assert b["decoding_from_C_b"] is not None and b["refused_from_C_b"] is not None
    # softmax at n = 4: C_b = 2.25 is decodable and the polynomial method is accepted and run (r ≤ max rank)
    accepted = [r for r in softmax["rows"] if r["status"] == "accepted"]
    assert accepted and all(r["poly_status"] == "agree" and r["poly_ratio"] == r["poly_pipeline_s"] / r["brute_force_s"]
                            for r in accepted)
    assert softmax["boundary"][0]["accepted_C_b"][1] < softmax["boundary"][0]["refused_from_C_b"]


def test_polynomial_plan_refuses_a_large_logit_radius():
    assert polynomial_plan(3, 8, 9, 1.0, 1 / 9, 1e-3)["degree"] >= 1
    try:
        polynomial_plan(3, 8, 9, 3.5, 1 / 9, 1e-2)  # R = B³ ≈ 43: float64 cannot deliver
    except SpecError as exc:
        assert "relative error" in str(exc)
    else:
        raise AssertionError("the polynomial method planned R ≈ 43")


def test_eps_floor_falls_as_the_entry_bound_shrinks():
    """The smallest ε_a the tensor polynomial method plans (decades) rises with B, and vanishes past R ≈ 20."""
    floors = [eps_floor(3, 8, 9, b, 1 / 9) for b in (1.0, 1.5, 2.0, 3.5)]
    assert floors[0] is not None and floors[0] <= floors[1] < floors[2] and floors[3] is None
