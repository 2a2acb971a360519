"""conformance/pytest_plugin.py: the suite as pytest items inside someone else's test run."""

from __future__ import annotations

import textwrap

import pytest

from attnspec.conformance.judging.problems import problem_names
from attnspec.conformance.judging.softmax_attention import problem as softmax_problem

# Every problem module imported here, before any in-process pytester run: pytester drops the modules a
# run imported, and a re-imported problem module would register a second, different problem class.
problem_names()

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
    outcomes = result.parseoutcomes()  # skipped: edge instances the float64 model declares not applicable
    assert outcomes["passed"] + outcomes.get("skipped", 0) == N_F64 and outcomes["passed"] > N_F64 // 2
    assert result.ret == 0


def test_broken_backend_fails_with_evidence(pytester):
    spec = _backend(pytester, BROKEN, "Bad")
    result = pytester.runpytest("--attnspec-backend", spec, "--attnspec-dtype", "float64", "-q")
    outcomes = result.parseoutcomes()
    # 1e-6 is far above the float64 tolerance of every ordinary case (edge cases with huge values aside)
    assert sum(outcomes.get(k, 0) for k in ("failed", "passed", "skipped")) == N_F64 and outcomes["failed"] > N_F64 // 2
    assert result.ret == 1
    text = result.stdout.str()
    assert "evidence:" in text and '"worst_index"' in text and '"error_interval"' in text
    assert "certainly above tolerance" in text


def test_undeclared_dtype_cases_are_skipped(pytester):
    spec = _backend(pytester, CORRECT, "Good")
    n32 = len(generate_cases("quick", ("float32",)))
    result = pytester.runpytest("--attnspec-backend", spec, "--attnspec-dtype", "float64", "--attnspec-dtype", "float32", "-q")
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] + outcomes["skipped"] == N_F64 + n32 and outcomes["skipped"] >= n32


def test_environment_variable_selects_the_backend(pytester, monkeypatch):
    monkeypatch.setenv("ATTNSPEC_BACKEND", _backend(pytester, BROKEN, "Bad"))
    result = pytester.runpytest("--attnspec-dtype", "float64", "-q")
    outcomes = result.parseoutcomes()
    assert sum(outcomes.get(k, 0) for k in ("failed", "passed", "skipped")) == N_F64 and outcomes["failed"] > N_F64 // 2


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


FLOAT16_ONLY = textwrap.dedent(
    '''
    import numpy as np

    class Half:
        """Computes in float64 and rounds the answer to float16 once (inside the float16 model)."""

        capabilities = {"problems": {"softmax_attention"}, "dtypes": {"float16"}}

        def attention(self, q, k, v, *, scale):
            q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
            logits = scale * (q @ k.T)
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            return ((e / e.sum(axis=1, keepdims=True)) @ v).astype(np.float16)
    '''
)


def _groups(dtypes):
    return {(c.dtype, c.family) for c in generate_cases("quick", dtypes)}


def test_the_dtype_default_is_the_declared_dtypes(pytester):
    # A float16-only backend gets float16 cases run (not every float64/float32 case skipped).
    spec = _backend(pytester, FLOAT16_ONLY, "Half")
    result = pytester.runpytest("--attnspec-backend", spec, "--attnspec-max-examples", "1", "-q")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) > 0 and "failed" not in outcomes
    assert outcomes.get("passed", 0) + outcomes.get("skipped", 0) == len(_groups(("float16",)))
    assert "nothing was checked" not in result.stdout.str()


def test_max_examples_keeps_the_first_cases_of_each_family(pytester):
    spec = _backend(pytester, CORRECT, "Good")
    result = pytester.runpytest("--attnspec-backend", spec, "--attnspec-max-examples", "1", "--attnspec-isolation", "none",
                                "--collect-only", "-q")
    collected = [line for line in result.stdout.lines if "test_conformance[" in line]
    assert len(collected) == len(_groups(("float64",)))
    assert all(line.endswith("/000]") for line in collected)


def test_a_failure_is_saved_and_its_replay_command_printed(pytester):
    from attnspec.conformance.frontends.cli import main

    spec = _backend(pytester, BROKEN, "Bad")
    failures = pytester.path / "saved"
    result = pytester.runpytest("--attnspec-backend", spec, "--attnspec-dtype", "float64", "--attnspec-failures", str(failures),
                                "-k", "degenerate/000", "-q")
    result.assert_outcomes(failed=1)
    (saved,) = failures.glob("*.json")
    assert f"attnspec replay {saved} --backend {spec}" in result.stdout.str()
    assert main(["replay", str(saved), "--backend", spec]) == 1
    assert main(["replay", str(saved), "--backend", "reference"]) == 0


def test_failures_are_saved_in_the_rootdir_by_default(pytester):
    spec = _backend(pytester, BROKEN, "Bad")
    pytester.runpytest("--attnspec-backend", spec, "--attnspec-dtype", "float64", "-k", "degenerate/000", "-q").assert_outcomes(failed=1)
    assert len(list((pytester.path / ".attnspec-failures").glob("*.json"))) == 1


def test_known_failures_are_xfail_and_a_passing_one_fails(pytester):
    import json

    (pytester.path / "attnspec-known-failures.json").write_text(json.dumps(
        [{"case": "softmax_attention/float64/degenerate/00[01]", "reason": "off by 1e-6"}]))
    bad = _backend(pytester, BROKEN, "Bad")
    result = pytester.runpytest("--attnspec-backend", bad, "--attnspec-dtype", "float64", "-k", "degenerate/00", "-q")
    n_degenerate = sum(1 for c in generate_cases("quick", ("float64",)) if c.family == "degenerate" and "/00" in c.case_id)
    result.assert_outcomes(xfailed=2, failed=n_degenerate - 2)
    good = _backend(pytester, CORRECT, "Good")
    result = pytester.runpytest("--attnspec-backend", good, "--attnspec-dtype", "float64", "-k", "degenerate/000", "-q")
    result.assert_outcomes(failed=1)
    assert "known failure now passes: remove it from" in result.stdout.str()


def test_a_malformed_known_failures_file_is_a_usage_error(pytester):
    (pytester.path / "attnspec-known-failures.json").write_text('[{"case": 3}]')
    result = pytester.runpytest("--attnspec-backend", _backend(pytester, CORRECT, "Good"), "-q")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "known-failures file" in result.stderr.str()


@pytest.mark.parametrize("strict", [False, True])
def test_a_run_that_checks_nothing_says_so(pytester, strict):
    spec = _backend(pytester, CORRECT, "Good")
    args = ["--attnspec-backend", spec, "--attnspec-dtype", "float32", "--attnspec-max-examples", "1", "-q"]
    result = pytester.runpytest(*args, *(["--attnspec-strict"] if strict else []))
    assert result.parseoutcomes().get("skipped", 0) > 0 and "passed" not in result.parseoutcomes()
    assert "nothing was checked" in result.stdout.str()
    assert result.ret == (pytest.ExitCode.TESTS_FAILED if strict else pytest.ExitCode.OK)
