"""Smoke test of ``attnspec bench reductions-hmv`` at a tiny size (no timing is asserted)."""

from __future__ import annotations

import json

from attnspec.conformance.frontends.cli import main


def test_bench_reductions_hmv_smoke(capsys):
    rc = main(["bench", "reductions-hmv", "--n", "6", "9", "--tau", "0.5", "--repeats", "1", "--omega-n", "--json"])
    assert rc == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{"):])
    assert [r["n"] for r in result["rows"]] == [6, 9] and all(r["decoded_ok"] for r in result["rows"])
    (fit,) = result["fits"]
    assert fit["theory_phase3"] == 1.5 and fit["theory_phase2"] == 2.5  # ω̂ assumed 3 without --omega-n sizes
    assert "query_accounting" in result["caveats"]
