"""Smoke test of ``attnspec bench streaming`` at tiny sizes: flat state for the sketch and the statistics,
growing state for the baseline, exact algorithms at the best k-sparse error."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from attnspec.conformance.frontends.cli import main


def test_bench_streaming_runs_and_shows_flat_and_growing_state(capsys, tmp_path):
    assert main(["bench", "streaming", "--n", "512", "2048", "--chunk", "256", "--k", "4", "--json", "--plot", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = ["streaming_state.png", "streaming_time.png"] if importlib.util.find_spec("matplotlib") else []
    assert sorted(p.name for p in tmp_path.glob("*.png")) == expected == sorted(Path(p).name for p in out["plots"])
    st = out["state_and_time"]
    assert abs(st["sketch"][-1]["state_ratio_to_first_n"] - 1) < 0.1
    assert abs(st["statistics"][-1]["state_ratio_to_first_n"] - 1) < 0.1
    assert st["online_softmax"][-1]["state_ratio_to_first_n"] > 3
    for row in out["error_against_n"]:
        assert row["statistics"]["max_err_over_best_k"] < 1 + 1e-6
        assert row["online_softmax"]["max_err_over_best_k"] < 1 + 1e-6
