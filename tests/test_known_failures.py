"""Known-failures files and case selection (unit level; the CLI and plugin tests run them end to end)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from attnspec.conformance.harness.known_failures import KnownFailures, KnownFailuresError, load_known_failures
from attnspec.conformance.harness.selection import CaseSelection, SelectionError, cap_per_family, compile_keyword


def _known(tmp_path, entries):
    path = tmp_path / "known.json"
    path.write_text(json.dumps(entries))
    return KnownFailures.load(path)


def test_apply_turns_fail_into_xfail_and_pass_into_xpass(tmp_path):
    known = _known(tmp_path, [{"case": "p/float16/*", "reason": "fp16"}])
    failed = known.apply({"case_id": "p/float16/a/000", "status": "undecided", "evidence": {"ratio": 2}})
    assert failed["status"] == "xfail" and failed["original_status"] == "undecided" and failed["evidence"] == {"ratio": 2}
    passed = known.apply({"case_id": "replay/p/float16/a/001", "status": "pass"})
    assert passed["status"] == "xpass" and "remove it from" in passed["message"]
    assert known.apply({"case_id": "p/float16/a/002", "status": "not_applicable"})["status"] == "not_applicable"
    assert known.apply({"case_id": "p/float64/a/000", "status": "fail"})["status"] == "fail"


def test_the_default_file_is_used_only_when_present(tmp_path):
    assert load_known_failures(None, default_dir=tmp_path) is None
    (tmp_path / "attnspec-known-failures.json").write_text("[]")
    assert load_known_failures(None, default_dir=tmp_path).entries == []


@pytest.mark.parametrize("content", ["", "[", '{"case": "a", "reason": "b"}', '[{"case": "", "reason": "b"}]', '[["a"]]'])
def test_malformed_files_are_refused_with_the_format(tmp_path, content):
    path = tmp_path / "known.json"
    path.write_text(content)
    with pytest.raises(KnownFailuresError, match="known-failures file"):
        KnownFailures.load(path)


def test_a_directory_is_not_a_known_failures_file(tmp_path):
    with pytest.raises(KnownFailuresError, match="not a regular file"):
        KnownFailures.load(tmp_path)


@pytest.mark.parametrize("expression, hits", [
    ("tie", {"a/near_ties/0", "b/near_ties/1"}),
    ("TIE and not b/", {"a/near_ties/0"}),
    ("(odd or tie) and 1", {"b/near_ties/1", "a/odd/1"}),
    ("not (odd or tie)", {"a/edge/0"}),
])
def test_keyword_expressions(expression, hits):
    ids = ["a/near_ties/0", "b/near_ties/1", "a/odd/1", "a/edge/0"]
    predicate = compile_keyword(expression)
    assert {i for i in ids if predicate(i)} == hits


@pytest.mark.parametrize("expression", ["", "a and", "not", "(a", "a)", "a b"])
def test_malformed_keyword_expressions(expression):
    with pytest.raises(SelectionError):
        compile_keyword(expression)


def _case(problem, dtype, family, index):
    return SimpleNamespace(problem=problem, dtype=dtype, family=family, case_id=f"{problem}/{dtype}/{family}/{index:03d}")


def test_selection_and_the_family_cap():
    cases = [_case("p", d, f, i) for d in ("float64", "float32") for f in ("x", "y") for i in range(3)]
    chosen = CaseSelection(["p/float64/*"], ["y"]).apply(cases)
    assert [c.case_id for c in chosen] == ["p/float64/y/000", "p/float64/y/001", "p/float64/y/002"]
    with pytest.raises(SelectionError, match="known: x, y"):
        CaseSelection(families=["z"]).check_families(["x", "y"])
    capped = cap_per_family(cases, 2)
    assert len(capped) == 8 and all(not c.case_id.endswith("002") for c in capped)
    assert cap_per_family(cases, None) == cases
