"""The strict DIMACS parser: well-formed files (comments anywhere, SATLIB's % marker, clauses across lines)
parse to what PySAT reads; every malformed file gets an error naming its line and column; files that are
too large, binary, not UTF-8 or not regular are refused before parsing; the CLI exits 2 with the message."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from attnspec.conformance.frontends.cli import main
from attnspec.reductions import cnf
from attnspec.reductions.cnf import DimacsError, parse_dimacs, read_dimacs

DATA = Path(__file__).parent / "data" / "cnf"
pysat_formula = pytest.importorskip("pysat.formula")

GOOD = {
    "sat_small.cnf": (4, [[1, -2, 3], [-1, 2], [2, 3, -4], [1, 4, -3], [-2, -3, -4]]),
    "unsat_xor.cnf": (2, [[1, 2], [-1, -2], [1, -2], [-1, 2]]),
    "satlib_end.cnf": (3, [[1, -3], [2, 3, -1]]),
}

# file → (line, column, words of the message)
BAD = {
    "bad_clause_count.cnf": (1, 1, "declares 3 clauses but the file has 2"),
    "bad_stray_token.cnf": (3, 4, "stray token 'x'"),
    "bad_double_zero.cnf": (2, 7, "empty clause"),
    "bad_out_of_range.cnf": (3, 4, "literal 4 is out of range: the header declares 3 variables"),
    "bad_huge_header.cnf": (1, 7, "99999999999999999999 variables exceed the limit of 1000000"),
    "bad_unterminated.cnf": (3, 1, "not terminated by 0"),
    "bad_clause_before_header.cnf": (1, 1, "'1' before the 'p cnf V C' header"),
    "bad_no_header.cnf": (2, 1, "before the 'p cnf V C' header"),
    "bad_two_headers.cnf": (2, 1, "a second 'p cnf' header (the first is on line 1)"),
    "bad_binary.cnf": (2, 3, "not UTF-8"),
    "bad_header_fields.cnf": (1, 7, "4 fields"),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_fixtures_parse_as_pysat_reads_them(name):
    formula = read_dimacs(DATA / name)
    num_vars, clauses = GOOD[name]
    assert formula.num_vars == num_vars and [list(c) for c in formula.clauses] == clauses
    if name == "unsat_xor.cnf":  # PySAT's reader takes neither clauses across lines nor SATLIB's '%' line
        theirs = pysat_formula.CNF(from_file=str(DATA / name))
        assert theirs.clauses == clauses and theirs.nv == num_vars


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_fixtures_are_named_by_line_and_column(name):
    line, column, words = BAD[name]
    with pytest.raises(DimacsError) as info:
        read_dimacs(DATA / name)
    assert (info.value.line, info.value.column) == (line, column)
    assert words in str(info.value) and str(info.value).startswith(f"{DATA / name}:{line}:{column}: ")


@pytest.mark.parametrize("text,line,column,words", [
    ("p cnf 2 1\n1 -0 0\n", 2, 3, "stray token '-0'"),
    ("p cnf 2 1\n+1 0\n", 2, 1, "stray token '+1'"),
    ("p cnf 2 1\n0\n", 2, 1, "empty clause"),
    ("p cnf 2 2\n1 0 0 2 0\n", 2, 5, "empty clause"),
    ("p cnf 2 1\n1 2 0 -1 0\n", 2, 7, "more clauses than the 1 declared on line 1"),
    ("p cnf 2 1\n1 1" + "0" * 5000 + " 0\n", 2, 3, "out of range"),
    ("p cnf -2 1\n1 0\n", 1, 7, "not a non-negative decimal integer"),
    ("p cnf 2 +1\n1 0\n", 1, 9, "not a non-negative decimal integer"),
    ("p cnf 2 99999999\n1 0\n", 1, 9, "clauses exceed the limit of 10000000"),
    ("p dnf 2 1\n1 0\n", 1, 1, "must read 'p cnf V C'"),
    ("p cnf 2 1 7\n1 0\n", 1, 11, "got 5 fields"),
    ("p cnf 2 1\n1 2 0 c trailing\n", 2, 7, "stray token 'c'"),
    ("p cnf 2 1\n1 \x00 0\n", 2, 3, "NUL byte"),
    ("1 0\n", 1, 1, "before the 'p cnf V C' header"),
])
def test_malformed_text_names_line_and_column(text, line, column, words):
    with pytest.raises(DimacsError) as info:
        parse_dimacs(text.encode("utf-8"), "f.cnf")
    assert (info.value.line, info.value.column) == (line, column), str(info.value)
    assert words in str(info.value)


def test_comments_anywhere_and_clauses_across_lines():
    text = "c first\nc\np cnf 3 3\nc inside\n1\nc a comment inside a clause\n -2 0 2 3 0\n\n  c indented\n-3 0\n%\nanything\n"
    assert parse_dimacs(text).clauses == ((1, -2), (2, 3), (-3,))
    assert parse_dimacs("c only the header\np cnf 0 0\n").num_clauses == 0
    assert parse_dimacs("p cnf 5 1\n1 0\n").num_vars == 5  # declared but unused variables are free


def test_missing_header_and_empty_input():
    for text in ("", "c just a comment\n", "\n\n"):
        with pytest.raises(DimacsError, match="no 'p cnf V C' header"):
            parse_dimacs(text)


def test_size_limit_and_non_regular_files(tmp_path, monkeypatch):
    big = tmp_path / "big.cnf"
    big.write_text("p cnf 1 1\n" + "c padding\n" * 20 + "1 0\n")
    monkeypatch.setattr(cnf, "MAX_DIMACS_BYTES", 64)
    with pytest.raises(DimacsError, match="larger than 64 bytes"):
        read_dimacs(big)
    with pytest.raises(DimacsError, match="larger than 64 bytes"):
        parse_dimacs(big.read_bytes())
    monkeypatch.undo()
    with pytest.raises(DimacsError, match="is a directory"):
        read_dimacs(tmp_path)
    with pytest.raises(DimacsError, match="does not exist"):
        read_dimacs(tmp_path / "missing.cnf")
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "pipe.cnf"
        os.mkfifo(fifo)
        with pytest.raises(DimacsError, match="is a FIFO; DIMACS files are read only from regular files"):
            read_dimacs(fifo)


formulas = st.integers(1, 6).flatmap(lambda n: st.tuples(st.just(n), st.lists(
    st.lists(st.integers(1, n).flatmap(lambda v: st.sampled_from([v, -v])), min_size=1, max_size=4),
    min_size=0, max_size=8)))


@given(formulas)
def test_canonical_text_round_trips_and_matches_pysat(formula):
    n, clauses = formula
    original = cnf.make_cnf(n, clauses)
    text = original.to_dimacs()
    assert parse_dimacs(text) == original and parse_dimacs(text).sha256 == original.sha256
    assert pysat_formula.CNF(from_string=text).clauses == [list(c) for c in clauses]
    assert cnf.cnf_from_matrix(original.literal_matrix(), n) == original


def test_make_cnf_refuses_what_the_parser_refuses():
    with pytest.raises(ValueError, match="clause 1 is empty"):
        cnf.make_cnf(2, [[]])
    with pytest.raises(ValueError, match="outside ±1..±2"):
        cnf.make_cnf(2, [[3]])
    with pytest.raises(ValueError, match="integer in"):
        cnf.make_cnf(cnf.MAX_VARIABLES + 1, [[1]])


@pytest.mark.parametrize("name", ["bad_stray_token.cnf", "bad_double_zero.cnf", "bad_huge_header.cnf", "bad_binary.cnf",
                                  "bad_clause_count.cnf", "bad_out_of_range.cnf"])
def test_cli_exits_2_with_the_message(name, tmp_path, capsys):
    rc = main(["instances", "generate", "sat_to_softmax", "--cnf", str(DATA / name), "--out", str(tmp_path / "set")])
    err = capsys.readouterr().err
    line, column, words = BAD[name]
    assert rc == 2 and f"{name}:{line}:{column}: " in err and words in err
    assert not (tmp_path / "set").exists()
