"""The float32 tolerance is tight on the quick profile: correct implementations (numpy, torch, a tiled
online softmax) reach a median certified error/tolerance ≥ 0.01 (slack ≤ 100×), and no case exceeds 1.

The ratios come from ``attnspec bench tolerance`` (``attnspec.bench.tolerance.slack``): each case's
worst certified error bound over its tolerance, against the fast float64 enclosure (its radius is ~10⁻⁹
of a float32 τ). Deterministic: fixed cases, fixed inputs, single-threaded BLAS in the reference.
"""

from attnspec.bench.tolerance import OnlineSoftmax, sensitivity, slack


def test_float32_median_error_over_tolerance_is_at_least_one_percent():
    result = slack("quick", ("float32",))
    assert {"numpy", "online-128"} <= set(result)
    for name, by_dtype in result.items():
        stats = by_dtype["float32"]
        assert stats["cases"] >= 80, name
        assert stats["median_ratio"] >= 0.01, (name, stats["median_ratio"])
        assert stats["max_ratio"] <= 1.0, (name, stats["max_ratio"])


def test_online_softmax_helper_is_a_softmax():
    import numpy as np

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((300, 8)) for _ in range(3))
    s = q @ k.T / 4
    p = np.exp(s - s.max(axis=1, keepdims=True))
    expected = (p / p.sum(axis=1, keepdims=True)) @ v
    assert np.allclose(OnlineSoftmax().attention(q, k, v, scale=0.25), expected, rtol=1e-12, atol=1e-12)


def test_relative_tolerance_grows_with_n_and_shrinks_with_precision():
    rows = sensitivity([64, 512], formats=("float32", "float64"))
    for entry in rows:
        assert 0 < entry["float64"]["min_rel_tolerance"] < entry["float32"]["min_rel_tolerance"] < 1e-2
    assert rows[0]["float32"]["min_rel_tolerance"] < rows[1]["float32"]["min_rel_tolerance"]


def test_bench_tolerance_command_runs(capsys):
    import json

    from attnspec.conformance.frontends.cli import main

    assert main(["bench", "tolerance", "--n", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["command"].startswith("attnspec bench tolerance")
    numpy_stats = out["a_slack"]["by_backend"]["numpy"]
    assert 0 < numpy_stats["float32"]["median_ratio"] <= numpy_stats["float32"]["max_ratio"] <= 1.0
    (row,) = out["b_sensitivity"]
    assert row["n"] == 64 and row["float32@128"]["min_rel_tolerance"] <= row["float32"]["min_rel_tolerance"]
