"""Case selection: which generated cases a run judges (``--case``, ``--family``, ``-k``).

A case is selected when it passes every given filter:

- ``case_patterns``: its id equals one of them or matches one as a shell glob (``fnmatch``, case
  sensitive; ``softmax_attention/float32/*``); a replayed case (``replay/<id>``) is matched on ``<id>``;
- ``families``: its family is one of them;
- ``keyword``: a pytest-like ``-k`` expression over the case id: words are case-insensitive substrings
  of the id, combined with ``and``, ``or``, ``not`` and parentheses (``near_ties and not float16``).

Selection happens before anything runs; :class:`SelectionError` (a usage error) names what is wrong.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

REPLAY_PREFIX = "replay/"


class SelectionError(ValueError):
    """A malformed ``-k`` expression or an unknown family (the message says which)."""


def plain_id(case_id: str) -> str:
    """The id of the generated case a saved-failure replay came from."""
    return case_id[len(REPLAY_PREFIX):] if case_id.startswith(REPLAY_PREFIX) else case_id


def id_matches(case_id: str, pattern: str) -> bool:
    """Exact id or shell glob, on the id with any ``replay/`` prefix removed (or as given)."""
    return any(cid == pattern or fnmatch.fnmatchcase(cid, pattern) for cid in {case_id, plain_id(case_id)})


# --------------------------------------------------------------------------- -k expressions

_TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")
Predicate = Callable[[str], bool]


def compile_keyword(expression: str) -> Predicate:
    """A predicate on case ids for a ``-k`` expression (grammar: ``or`` of ``and`` of ``[not] atom``,
    an atom a word or a parenthesised expression; a word matches when it is a case-insensitive
    substring of the id)."""
    tokens = [m.group(1) for m in _TOKEN.finditer(expression)]
    if not tokens:
        raise SelectionError("-k: empty expression")
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise SelectionError(f"-k {expression!r}: unexpected end of expression")
        pos += 1
        return tokens[pos - 1]

    def disjunction() -> Predicate:
        parts = [conjunction()]
        while peek() == "or":
            take()
            parts.append(conjunction())
        return parts[0] if len(parts) == 1 else (lambda s: any(p(s) for p in parts))

    def conjunction() -> Predicate:
        parts = [negation()]
        while peek() == "and":
            take()
            parts.append(negation())
        return parts[0] if len(parts) == 1 else (lambda s: all(p(s) for p in parts))

    def negation() -> Predicate:
        if peek() == "not":
            take()
            inner = negation()
            return lambda s: not inner(s)
        return atom()

    def atom() -> Predicate:
        token = take()
        if token == "(":
            inner = disjunction()
            if peek() != ")":
                raise SelectionError(f"-k {expression!r}: missing ')'")
            take()
            return inner
        if token in (")", "and", "or", "not"):
            raise SelectionError(f"-k {expression!r}: unexpected {token!r}")
        word = token.lower()
        return lambda s: word in s.lower()

    predicate = disjunction()
    if pos != len(tokens):
        raise SelectionError(f"-k {expression!r}: unexpected {tokens[pos]!r}")
    return predicate


# --------------------------------------------------------------------------- the selection


@dataclass
class CaseSelection:
    """The filters of one run (empty: every case)."""

    case_patterns: Sequence[str] = ()
    families: Sequence[str] = ()
    keyword: str | None = None
    _keyword: Predicate | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.case_patterns = tuple(self.case_patterns or ())
        self.families = tuple(self.families or ())
        self._keyword = compile_keyword(self.keyword) if self.keyword is not None else None

    @property
    def active(self) -> bool:
        return bool(self.case_patterns or self.families or self._keyword is not None)

    def check_families(self, known: Iterable[str]) -> None:
        """:class:`SelectionError` naming the known families when a requested one is none of them."""
        known = sorted(set(known))
        unknown = [f for f in self.families if f not in known]
        if unknown:
            raise SelectionError(f"unknown family {', '.join(map(repr, unknown))}; known: {', '.join(known)}")

    def matches(self, case: Any) -> bool:
        if self.case_patterns and not any(id_matches(case.case_id, p) for p in self.case_patterns):
            return False
        if self.families and case.family not in self.families:
            return False
        return self._keyword is None or self._keyword(case.case_id)

    def apply(self, cases: Iterable[Any]) -> list[Any]:
        return [c for c in cases if self.matches(c)]

    def describe(self) -> str:
        parts = [f"--case {p}" for p in self.case_patterns] + [f"--family {f}" for f in self.families]
        if self.keyword is not None:
            parts.append(f"-k {self.keyword!r}")
        return " ".join(parts) or "(no filter)"


def cap_per_family(cases: Iterable[Any], max_examples: int | None) -> list[Any]:
    """The first ``max_examples`` cases of each (problem, dtype, family), in the given order (None: all).
    The cases kept are a prefix of each family's deterministic list, so their ids do not change."""
    if max_examples is None:
        return list(cases)
    seen: dict[tuple[str, str, str], int] = {}
    kept = []
    for case in cases:
        key = (case.problem, case.dtype, case.family)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= max_examples:
            kept.append(case)
    return kept
