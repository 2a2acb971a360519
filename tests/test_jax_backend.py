"""The JAX adapter (``attnspec conform --backend jax``): float32 softmax attention and sdpa (causal in both
alignments, cross attention m ≠ n, GQA, masks, bias) pass; float64 is caught as float32-accurate, which
is what ``jax.nn.dot_product_attention`` does by design (its softmax always runs in float32)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("jax")

from attnspec.conformance.harness.backends import load_backend, read_capabilities  # noqa: E402
from attnspec.conformance.harness.isolation import InProcessRunner  # noqa: E402
from attnspec.conformance.harness.runner import judge_one  # noqa: E402
from attnspec.conformance.judging.sdpa import problem as sdpa_problem  # noqa: E402
from attnspec.conformance.judging.softmax_attention import problem as softmax_problem  # noqa: E402


@pytest.fixture(scope="module")
def jax_backend():
    return load_backend("jax")


def _records(backend, cases):
    runner, caps = InProcessRunner(backend), read_capabilities(backend)
    return [judge_one(c, runner, caps) for c in cases]


def test_float32_sdpa_variants_pass(jax_backend):
    cases = sdpa_problem.generate_cases("quick", ("float32",))
    records = _records(jax_backend, cases)
    judged = [r for r in records if r["status"] != "not_applicable"]
    families = {r["family"] for r in judged}
    assert {"causal_top_left", "causal_bottom_right", "cross", "gqa", "bool_mask", "bias"} <= families
    assert all(r["status"] == "pass" for r in judged), [(r["case_id"], r["message"]) for r in judged if r["status"] != "pass"]


def test_float32_softmax_passes(jax_backend):
    cases = [c for c in softmax_problem.generate_cases("quick", ("float32",)) if c.family in ("uniform", "edge", "exp_probe")]
    records = _records(jax_backend, cases)
    judged = [r for r in records if r["status"] != "not_applicable"]
    assert len(judged) >= 20 and all(r["status"] == "pass" for r in judged)


def test_float64_is_float32_accurate_and_caught(jax_backend):
    cases = [c for c in softmax_problem.generate_cases("quick", ("float64",)) if c.family == "uniform"]
    records = _records(jax_backend, cases)
    fails = [r for r in records if r["status"] == "fail"]
    assert fails
    for r in fails:
        lo, hi = r["evidence"]["error_interval"]
        assert lo > r["evidence"]["tolerance"]
        assert hi < 1e-5  # a float32-sized error (softmax in float32), not garbage


def test_fully_masked_rows_are_declared_not_zero(jax_backend):
    caps = read_capabilities(jax_backend)
    q = np.random.default_rng(0).standard_normal((1, 2, 3, 4))
    mask = np.ones((3, 5), dtype=bool)
    mask[1] = False
    out = jax_backend.sdpa(q, q[:, :, :1].repeat(5, axis=2), np.ones((1, 2, 5, 2)), scale=0.5, attn_mask=mask)
    assert np.allclose(out[0, 0, 1], 1.0)  # the mean of V, not 0
    assert "sdpa" in caps.problems
