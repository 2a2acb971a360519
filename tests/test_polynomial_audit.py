"""The audit catches backends that violate their ε_a claim; the `attnspec audit` command's exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attnspec.accelerated.polynomial_attention import PolynomialAttentionBackend
from attnspec.accelerated.softmax_attention import softmax_attention
from attnspec.conformance.frontends.cli import main
from attnspec.conformance.audits.polynomial_audit import audit_backend, certified_error, generate_instances
from attnspec.spec.softmax_attention import make_instance

EPS = 1e-6


class HonestExact:
    """Exact float64 softmax: error ~1e-16, well within any ε_a ≥ 1e-12."""

    def attention(self, q, k, v, *, scale):
        return softmax_attention(q, k, v, scale=scale)


class ViolatesOnExtremes:
    """Correct on typical inputs, off by 3ε_a when some query entry reaches the bound (the edge of the
    logit interval, where polynomial methods are weakest): caught only by instances that reach ±B."""

    def attention(self, q, k, v, *, scale):
        out = softmax_attention(q, k, v, scale=scale)
        if np.max(np.abs(q)) >= 0.999:
            out = out + 3 * EPS
        return out


class TooLowDegree:
    """A polynomial method that claims ε_a but uses the polynomial for a 10⁴× looser accuracy."""

    def attention(self, q, k, v, *, scale):
        from attnspec.accelerated.polynomial_attention import polynomial_attention

        return polynomial_attention(q, k, v, scale=scale, bound=1.0, eps=1e4 * EPS)


class Crashes:
    def attention(self, q, k, v, *, scale):
        raise RuntimeError("boom")


def test_generated_instances_respect_the_bound_and_reach_it():
    for name, q, k, v in generate_instances(16, 3, 1.5, seed=2, count=4):
        for m in (q, k, v):
            assert np.max(np.abs(m)) <= 1.5
        if name == "extreme":
            logits = (q @ k.T)
            assert np.max(np.abs(logits)) == 1.5**2 * 3  # the logit radius R/|s| is attained


def test_poly_backend_claim_holds():
    rep = audit_backend(PolynomialAttentionBackend(EPS, 1.0), eps=EPS, bound=1.0, n=32, d=4, count=3, adversarial_examples=8)
    assert rep.status == "holds"
    assert all(c.error_interval[1] <= EPS for c in rep.cases)


def test_honest_backend_holds_and_violators_are_caught():
    assert audit_backend(HonestExact(), eps=EPS, bound=1.0, n=24, d=3, count=2, adversarial_examples=0).status == "holds"
    rep = audit_backend(ViolatesOnExtremes(), eps=EPS, bound=1.0, n=24, d=3, count=3, adversarial_examples=0)
    assert rep.status == "violated"
    failed = [c for c in rep.cases if c.status == "fail"]
    assert failed and all(c.error_interval[0] > EPS for c in failed)


def test_low_degree_polynomial_claiming_too_much_is_caught():
    rep = audit_backend(TooLowDegree(), eps=EPS, bound=1.0, n=32, d=4, count=3, adversarial_examples=0)
    assert rep.status == "violated"


def test_adversarial_search_alone_catches_a_violation():
    """Uniform instances miss it (|q| < 0.999 almost surely with count=1); the targeted search finds it."""
    rep = audit_backend(ViolatesOnExtremes(), eps=EPS, bound=1.0, n=8, d=2, count=1, adversarial_examples=20)
    uniform, adversarial = rep.cases[0], rep.cases[-1]
    assert adversarial.name == "adversarial" and adversarial.status == "fail"
    assert rep.status == "violated"
    assert uniform.status == "pass" or np.isfinite(uniform.error_interval[0])


def test_crashing_backend_is_an_error_not_a_pass():
    rep = audit_backend(Crashes(), eps=EPS, bound=1.0, n=8, d=2, count=1, adversarial_examples=0)
    assert rep.status == "violated" and rep.cases[0].status == "error"


def test_certified_error_interval_contains_the_true_error():
    _, q, k, v = generate_instances(10, 2, 1.0, seed=1, count=1)[0]
    inst = make_instance(q, k, v, scale=0.5)
    exact = softmax_attention(q, k, v, scale=0.5)
    e = certified_error(exact + 1e-9, inst)
    assert e.lower <= 1e-9 + 1e-15 and e.upper >= 1e-9 - 1e-15 and e.upper - e.lower < 1e-14


# ------------------------------------------------------------------ CLI

def _run_cli(argv):
    return main(argv)  # the real `attnspec` entry point


def test_cli_poly_reports_and_exits_zero(capsys):
    rc = _run_cli(["audit", "poly", "--d", "4", "--bound", "1", "--eps", "1e-6", "--n", "24", "--instances", "2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["status"] == "holds"
    c = out["certified_bound"]
    assert c["degree"] >= 1 and c["rank"] > 1 and c["end_to_end_bound"] <= 1e-6
    assert all(i["certified_error"][1] <= 1e-6 for i in out["instances"])


def test_cli_backend_violation_exits_one(capsys):
    rc = _run_cli(["audit", f"{__name__}:ViolatesOnExtremes", "--eps", "1e-6", "--bound", "1", "--d", "3", "--n", "16",
                   "--adversarial", "0"])
    assert rc == 1
    assert "claim violated" in capsys.readouterr().out


def test_cli_builtin_backend_holds(capsys):
    rc = _run_cli(["audit", "numpy", "--eps", "1e-9", "--bound", "1", "--d", "3", "--n", "16", "--adversarial", "0",
                   "--instances", "2"])
    assert rc == 0


@pytest.mark.parametrize("argv", [
    ["audit", "poly", "--d", "4", "--bound", "4", "--eps", "1e-6", "--scale", "1"],  # beyond float64: refused
    ["audit", "poly", "--d", "4", "--bound", "-1", "--eps", "1e-6"],
    ["audit", "no_such_module_xyz:thing", "--bound", "1", "--eps", "1e-6"],
    ["audit", "poly", "--d", "0", "--bound", "1", "--eps", "1e-6"],
])
def test_cli_bad_usage_exits_two(argv, capsys):
    assert _run_cli(argv) == 2
    assert capsys.readouterr().err.strip()
