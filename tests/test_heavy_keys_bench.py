"""Smoke test of ``attnspec bench heavy`` at tiny sizes (no timing is asserted)."""

from __future__ import annotations

import json

from attnspec.conformance.frontends.cli import main


def test_bench_heavy_smoke(capsys):
    rc = main(["bench", "heavy", "--n", "256", "512", "--d", "4", "--per-direction", "4", "--exact-max-n", "256",
               "--stream-n", "256", "1024", "--chunk", "64", "--sketch-n", "256", "--sketch-rows", "128",
               "--repeats", "1", "--json"])
    assert rc == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{"):])
    a = result["a_enumeration"]
    assert [r["n"] for r in a["rows"]] == [256, 512]
    first, second = a["rows"]
    assert first["same_pairs"] and first["certified"] and "dense_s" not in second
    assert first["ratio_dense_over_fast"] == first["dense_s"] / first["fast_s"]
    assert all(r["universal_set"] == 16 for r in a["rows"]) and a["fast_exponent"] is not None
    b = result["b_universal_size"]
    assert all(r["size"] <= r["bound_D_over_eps"] for r in b["rows"]) and b["flat_within"] == 0
    c = result["c_streaming_state"]
    assert all(r["equals_offline"] and r["equals_distributed"] for r in c["rows"]) and c["state_spread"] == 0
    d = result["d_sketched"]
    assert d["min_recall"] == 1.0 and d["rows"][0]["sketch_size"] >= d["rows"][0]["exact_size"]
