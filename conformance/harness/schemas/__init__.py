"""JSON Schemas (draft 2020-12) of attnspec's files, and their validation with ``jsonschema``.

``case.schema.json``    a case file's manifest (``attnspec.case/1``);
``report.schema.json``  a conformance report (``attnspec.report/1``).

The schemas are package data, read with :mod:`importlib.resources`, so they travel with an installed
wheel and any other tool can validate the same files.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from typing import Any

import jsonschema

SCHEMA_FILES = {"case": "case.schema.json", "report": "report.schema.json"}
_MAX_MESSAGE = 300


class SchemaValidationError(ValueError):
    """A document does not follow its JSON Schema; the message names the field and the rule."""


@functools.lru_cache(maxsize=None)
def load_schema(name: str) -> dict[str, Any]:
    """The parsed schema ``name`` (``"case"`` or ``"report"``)."""
    text = importlib.resources.files(__package__).joinpath(SCHEMA_FILES[name]).read_text(encoding="utf-8")
    return json.loads(text)


@functools.lru_cache(maxsize=None)
def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = load_schema(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _field(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [k for k in error.validator_value if k not in error.instance]
        return ".".join(filter(None, [path, str(missing[0]) if missing else ""]))
    return path or "(top level)"


def describe(error: jsonschema.ValidationError) -> str:
    """``field 'a.b': what is wrong`` for one error (long offending values are cut)."""
    if error.validator == "required":
        return f"field {_field(error)!r} missing"
    message = error.message
    if len(message) > _MAX_MESSAGE:  # keep both ends: the value's start and the rule it broke
        message = message[: _MAX_MESSAGE - 100] + " … " + message[-100:]
    return f"field {_field(error)!r}: {message}"


def schema_error(name: str, obj: Any) -> str | None:
    """The most relevant violation of schema ``name`` by ``obj``, described; None when ``obj`` is valid."""
    error = jsonschema.exceptions.best_match(_validator(name).iter_errors(obj))
    return None if error is None else describe(error)


def validate_case_manifest(obj: Any) -> None:
    """Raise :class:`SchemaValidationError` unless ``obj`` follows ``case.schema.json``."""
    problem = schema_error("case", obj)
    if problem is not None:
        raise SchemaValidationError(f"case manifest: {problem}")


def validate_report(obj: Any) -> None:
    """Raise :class:`SchemaValidationError` unless ``obj`` follows ``report.schema.json``."""
    problem = schema_error("report", obj)
    if problem is not None:
        raise SchemaValidationError(f"report: {problem}")
