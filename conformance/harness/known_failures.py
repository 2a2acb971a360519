"""Known failures: a file kept in the backend's repository listing cases that are expected not to pass.

Format (JSON, ``attnspec-known-failures.json`` by default)::

    [
      {"case": "softmax_attention/float16/large_logits/*", "reason": "fp16 exp overflows, issue #12"},
      {"case": "tensor_attention/float64/odd_sizes/003", "reason": "last block dropped, fix pending"}
    ]

``case`` is an exact case id or a shell glob (see :mod:`~attnspec.conformance.harness.selection`; a
replayed ``replay/<id>`` matches as ``<id>``), ``reason`` says why. Applied to a judged record:

- a matching ``fail``, ``error`` or ``undecided`` becomes ``xfail``: counted apart, it does not fail the
  run, and it keeps its evidence, its message and its original status (``original_status``);
- a matching ``pass`` becomes ``xpass``, which **fails the run** ("known failure now passes: remove it
  from FILE"): a stale entry would otherwise hide the next regression of that case;
- a matching ``not_applicable`` stays not applicable (nothing was checked either way).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from attnspec.conformance.harness.selection import id_matches

DEFAULT_FILE = "attnspec-known-failures.json"
XFAIL, XPASS = "xfail", "xpass"
EXPECTED_NOT_TO_PASS = ("fail", "error", "undecided")
MAX_BYTES = 1 << 20

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "array",
    "maxItems": 10000,
    "items": {
        "type": "object",
        "required": ["case", "reason"],
        "additionalProperties": False,
        "properties": {
            "case": {"type": "string", "minLength": 1, "maxLength": 1000},
            "reason": {"type": "string", "minLength": 1, "maxLength": 10000},
        },
    },
}


class KnownFailuresError(ValueError):
    """The known-failures file cannot be read or does not follow the format (a usage error)."""


@dataclass(frozen=True)
class KnownFailure:
    case: str
    reason: str


class KnownFailures:
    """The entries of one known-failures file (``path``: where they came from, for messages)."""

    def __init__(self, entries: list[KnownFailure], path: str = DEFAULT_FILE):
        self.entries = entries
        self.path = path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "KnownFailures":
        """Read and validate ``path`` (a regular file of at most 1 MiB)."""
        path = Path(path)
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                raise KnownFailuresError(f"known-failures file {str(path)!r} is not a regular file")
            with open(path, "rb") as f:
                data = f.read(MAX_BYTES + 1)
        except OSError as exc:
            raise KnownFailuresError(f"cannot read known-failures file {str(path)!r}: {exc.strerror or exc}") from None
        if len(data) > MAX_BYTES:
            raise KnownFailuresError(f"known-failures file {str(path)!r} is larger than {MAX_BYTES} bytes")
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise KnownFailuresError(f"known-failures file {str(path)!r} is not valid JSON: {exc}") from None
        error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(SCHEMA).iter_errors(obj))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
            raise KnownFailuresError(f"known-failures file {str(path)!r}: at {where}: {error.message[:300]}; expected a "
                                     'list of {"case": "<case id or glob>", "reason": "..."}')
        return cls([KnownFailure(e["case"], e["reason"]) for e in obj], str(path))

    def match(self, case_id: str) -> KnownFailure | None:
        """The first entry whose pattern matches ``case_id`` (None: not a known failure)."""
        return next((e for e in self.entries if id_matches(case_id, e.case)), None)

    def apply(self, record: dict[str, Any]) -> dict[str, Any]:
        """``record`` with its status turned into ``xfail``/``xpass`` when it is a known failure (in place)."""
        entry = self.match(record["case_id"])
        if entry is None or record["status"] not in (*EXPECTED_NOT_TO_PASS, "pass"):
            return record
        record["original_status"] = record["status"]
        record["known_failure"] = {"case": entry.case, "reason": entry.reason, "file": self.path}
        if record["status"] == "pass":
            record["status"] = XPASS
            record["message"] = f"known failure now passes: remove it from {self.path} ({entry.case!r})"
        else:
            record["status"] = XFAIL
        return record


def load_known_failures(path: str | os.PathLike | None, *, default_dir: str | os.PathLike = ".") -> KnownFailures | None:
    """The known failures of ``path``, or of ``default_dir/attnspec-known-failures.json`` when ``path``
    is None and that file exists (None when there is none)."""
    if path is None:
        candidate = Path(default_dir) / DEFAULT_FILE
        if not candidate.exists():
            return None
        path = candidate
    return KnownFailures.load(path)
