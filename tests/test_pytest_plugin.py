"""conformance/pytest_plugin.py: the suite as pytest items inside someone else's test run."""

from __future__ import annotations

import textwrap

import pytest

from attnspec.conformance.judging.softmax_attention import problem as softmax_problem

generate_cases = softmax_problem.generate_cases

pytest_plugins = ["pytester"]

CORRECT = textwrap.dedent(
    '''
    import numpy as np

    class Good:
        capabilities = {"problems": {"softmax_attention"}, "dtypes": {"float64"}}

        def attention(self, q, k, v, *, scale):
            logits = scale * (q @ k.T)
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            return (e / e.sum(axis=1, keepdims=True)) @ v
    '''
)

BROKEN = textwrap.dedent(
    '''
    import numpy as np

    class Bad:
        """Off by a constant: every entry is 1e-6 too large."""

        capabilities = {"problems": {"softmax_attention"}, "dtypes": {"float64"}}

        def attention(self, q, k, v, *, scale):
            logits = scale * (q @ k.T)
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            return (e / e.sum(axis=1, keepdims=True)) @ v + 1e-6
    '''
)

N_F64 = len(generate_cases("quick", ("float64",)))


@pytest.fixture(autouse=True)
def _no_backend_in_env(monkeypatch):
    monkeypatch.delenv("ATTNSPEC_BACKEND", raising=False)


def _backend(pytester, source, attr):
    path = pytester.path / "user_backend.py"
    path.write_text(source)
    return f"{path}:{attr}"


def test_correct_backend_all_pass(pytester):
    spec = _backend(pytester, CORRECT, "Good")
    result = pytester.runpytest("--attnspec-backend", spec, "--attnspec-dtype", "float64", "-q")
    result.assert_outcomes(passed=N_F64)
    assert result.ret == 0


def test_broken_backend_fails_with_evidence(pytester):
    spec = _backend(pytester, BROKEN, "Bad")
    result = pytester.runpytest("--attnspec-backend", spec, "--attnspec-dtype", "float64", "-q")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == N_F64  # 1e-6 is far above every float64 tolerance here
    assert result.ret == 1
    text = result.stdout.str()
    assert "evidence:" in text and '"worst_index"' in text and '"error_interval"' in text
    assert "certainly above tolerance" in text


def test_undeclared_dtype_cases_are_skipped(pytester):
    spec = _backend(pytester, CORRECT, "Good")
    n32 = len(generate_cases("quick", ("float32",)))
    result = pytester.runpytest("--attnspec-backend", spec, "--attnspec-dtype", "float64", "--attnspec-dtype", "float32", "-q")
    result.assert_outcomes(passed=N_F64, skipped=n32)


def test_environment_variable_selects_the_backend(pytester, monkeypatch):
    monkeypatch.setenv("ATTNSPEC_BACKEND", _backend(pytester, BROKEN, "Bad"))
    result = pytester.runpytest("--attnspec-dtype", "float64", "-q")
    assert result.parseoutcomes().get("failed", 0) == N_F64


def test_without_a_backend_the_plugin_adds_nothing(pytester):
    pytester.makepyfile(test_mine="def test_one():\n    assert 1 + 1 == 2\n")
    result = pytester.runpytest("-q")
    result.assert_outcomes(passed=1)
    assert "test_conformance" not in result.stdout.str()
    assert "attnspec: backend" not in result.stdout.str()


def test_unloadable_backend_is_an_error_not_a_pass(pytester):
    path = pytester.path / "explodes.py"
    path.write_text("raise ImportError('missing compiled extension')\n")
    result = pytester.runpytest("--attnspec-backend", f"{path}:X", "--attnspec-dtype", "float64", "-q")
    assert result.ret != 0
    assert "passed" not in result.parseoutcomes()
    assert "missing compiled extension" in result.stdout.str()


DYNAMIC_BROKEN = textwrap.dedent(
    '''
    from attnspec.accelerated.dynamic_attention import EagerDynamicAttention, LazyDynamicAttention

    class Stale(EagerDynamicAttention):
        """Forgets value updates entirely."""

        def update_v(self, i, j, delta):
            self._check_update("V", i, j, delta)

    class Backend:
        capabilities = {"problems": {"dynamic_attention"}, "dtypes": {"float64"}}

        def __init__(self, broken=True):
            self.broken = broken

        def dynamic_attention(self, normalised=True):
            return (Stale if self.broken else LazyDynamicAttention)(normalised=normalised)

    def correct():
        return Backend(broken=False)
    '''
)


def test_dynamic_traces_are_items_for_a_dynamic_backend(pytester):
    from attnspec.conformance.judging.dynamic_attention import problem as dynamic_problem

    dynamic_cases = dynamic_problem.generate_cases

    n_traces = len(dynamic_cases("quick"))
    good = _backend(pytester, DYNAMIC_BROKEN, "correct")
    # In a subprocess: an in-process pytester run would re-import numpy's extensions for the user module.
    pytester.runpytest_subprocess("--attnspec-backend", good, "-q").assert_outcomes(passed=n_traces)
    bad = _backend(pytester, DYNAMIC_BROKEN, "Backend")
    result = pytester.runpytest_subprocess("--attnspec-backend", bad, "-q")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) >= 1 and outcomes.get("passed", 0) + outcomes["failed"] == n_traces
    result.stdout.fnmatch_lines(["*AssertionError: fail: query #*"])  # failed on a query, not by an error
