"""What a backend declares it can do, read strictly.

A backend's ``capabilities`` (a dict, an object with the same attributes, or a zero-argument callable
returning either) decides which cases run and which tolerance judges them, so a malformed declaration
must never be guessed at: every value is checked and a :class:`CapabilityError` names the field and what
was wrong. Unknown keys are errors too: a typo such as ``dtype`` for ``dtypes`` would otherwise silently
fall back to the default and change what is checked.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from typing import Any

from attnspec.conformance.judging.precision_model import UNIT_ROUNDOFF, PrecisionModel
from attnspec.conformance.judging.stage_precision import STAGE_MODEL_FIELDS, StagePrecisionModel, stage_model_from_mapping

KNOWN_DTYPES = ("float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")


class CapabilityError(ValueError):
    """A backend's declared capabilities are malformed (the message names the field)."""


@dataclass
class Capabilities:
    """What a backend promises.

    ``problems``     problem names it implements (default: those whose method it has);
    ``dtypes``       input dtypes it accepts ("float64", "float32", "float16", "bfloat16",
                     "float8_e4m3fn", "float8_e5m2");
    ``devices``      where it computes ("cpu", "cuda");
    ``max_n``        largest sequence length it accepts (None: any);
    ``max_d``        largest head dimension d it accepts (None: any; the polynomial method's rank
                     binom(d+g, g) limits it to small d);
    ``precision``    per dtype, the :class:`PrecisionModel` (one format) or the
                     :class:`StagePrecisionModel` (one format per stage: a dict with ``"model": "stage"``)
                     its error is judged by;
    ``contract_eps`` for approximation algorithms: the additive ε_a it claims (contract tolerance);
    ``bound``        the entry bound B under which ``contract_eps`` is claimed;
    ``max_logit_radius`` the largest logit radius R = |s|·d·B^k (k = 2 for softmax attention) for which
                     ``contract_eps`` is claimed (None: B^k, i.e. the papers' normalisation |s| ≤ 1/d);
    ``deterministic`` whether repeated calls on the same input return identical bits;
    ``heavy_slack``  for heavy_entries / universal_set: the slack s ≥ 0 up to which extra answers are
                     allowed (each reported one must reach ε/(1+s); 0: exactly the ε-heavy ones).
    ``variants``     per problem, the problem's own declaration (e.g. ``{"sdpa": {"supports": [...],
                     "fully_masked": "zero"}}``), checked by that problem's ``validate_variants``.
    """

    problems: set[str] = field(default_factory=lambda: {"softmax_attention"})
    dtypes: set[str] = field(default_factory=lambda: {"float64"})
    devices: set[str] = field(default_factory=lambda: {"cpu"})
    max_n: int | None = None
    max_d: int | None = None
    precision: dict[str, PrecisionModel | StagePrecisionModel] = field(default_factory=dict)
    contract_eps: float | None = None
    bound: float | None = None
    max_logit_radius: float | None = None
    deterministic: bool = False
    heavy_slack: float | Fraction = 0.0  # an int or Fraction stays exact
    variants: dict[str, Any] = field(default_factory=dict)  # problem -> its own declaration (problem.validate_variants)

    def precision_for(self, dtype: str) -> PrecisionModel | StagePrecisionModel:
        return self.precision.get(dtype, PrecisionModel(fmt=dtype))

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("problems", "dtypes", "devices"):
            out[key] = sorted(out[key])
        out["precision"] = {k: {**asdict(v), "model": "stage"} if isinstance(v, StagePrecisionModel) else asdict(v)
                            for k, v in self.precision.items()}
        return out

    @classmethod
    def from_json(cls, data: Any, *, known_problems: Iterable[str] | None = None) -> "Capabilities":
        """Inverse of :meth:`to_json` (as sent by a worker process), validated like a declaration."""
        if not isinstance(data, Mapping):
            raise CapabilityError(f"capabilities must be a dict, got {type(data).__name__}")
        return validate_capabilities(data, default_problems=set(), known_problems=known_problems)


CAPABILITY_FIELDS = tuple(f.name for f in fields(Capabilities))
_MODEL_FIELDS = tuple(f.name for f in fields(PrecisionModel))


def _name_set(key: str, value: Any, *, allowed: Iterable[str] | None = None, what: str = "names") -> set[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set, frozenset)):
        raise CapabilityError(f"capability {key!r} must be a list or set of {what}, got {_show(value)}")
    out = set()
    for item in value:
        if not isinstance(item, str):
            raise CapabilityError(f"capability {key!r} must hold strings, got {_show(item)}")
        if allowed is not None and item not in allowed:
            raise CapabilityError(f"capability {key!r} names unknown {what[:-1]} {item!r}; known: {', '.join(sorted(allowed))}")
        out.add(item)
    return out


def _positive_int(key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise CapabilityError(f"capability {key!r} must be a positive integer or None, got {_show(value)}")
    return int(value)


def _positive_real(key: str, value: Any) -> float | Fraction | int | None:
    """A finite positive real, kept exact when it is an int or a Fraction (they feed exact comparisons)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise CapabilityError(f"capability {key!r} must be a finite positive number or None, got {_show(value)}")
    if isinstance(value, (int, Fraction)):
        ok = bool(value > 0)
    else:
        value = float(value)
        ok = math.isfinite(value) and value > 0
    if not ok:
        raise CapabilityError(f"capability {key!r} must be a finite positive number or None, got {_show(value)}")
    return value


def _stage_model(key: str, value: Any) -> StagePrecisionModel:
    """A :class:`StagePrecisionModel` (or a dict of its fields with ``"model": "stage"``), every field
    checked by the model itself; its message names the field."""
    if isinstance(value, StagePrecisionModel):
        value = {name: getattr(value, name) for name in STAGE_MODEL_FIELDS}
    try:
        return stage_model_from_mapping(value)
    except (TypeError, ValueError) as exc:
        raise CapabilityError(f"capability {key}: {exc}") from None


def _model(key: str, value: Any) -> PrecisionModel | StagePrecisionModel:
    """A :class:`PrecisionModel` (or a dict of its fields) with every field checked; a
    :class:`StagePrecisionModel` or a dict with ``"model": "stage"`` is a stage model."""
    if isinstance(value, StagePrecisionModel) or (isinstance(value, Mapping) and value.get("model") == "stage"):
        return _stage_model(key, value)
    if isinstance(value, Mapping) and "model" in value and value["model"] != "single":
        raise CapabilityError(f"capability {key}.model must be 'stage' or 'single', got {_show(value['model'])}")
    if isinstance(value, PrecisionModel):
        spec = {name: getattr(value, name) for name in _MODEL_FIELDS}
    elif isinstance(value, Mapping):
        value = {k: v for k, v in value.items() if k != "model"}
        unknown = sorted(str(k) for k in value if k not in _MODEL_FIELDS)
        if unknown:
            raise CapabilityError(f"capability {key} has unknown field(s) {unknown}; known: {', '.join(_MODEL_FIELDS)}")
        spec = {**{f.name: f.default for f in fields(PrecisionModel)}, **value}
    else:
        raise CapabilityError(f"capability {key} must be a PrecisionModel or a dict of its fields, got {_show(value)}")
    fmt, exp_ulps, rescales, exact = spec["fmt"], spec["exp_ulps"], spec["max_rescales"], spec["exact_rounded"]
    if fmt not in UNIT_ROUNDOFF:
        raise CapabilityError(f"capability {key}.fmt must be one of {', '.join(UNIT_ROUNDOFF)}, got {_show(fmt)}")
    if isinstance(exp_ulps, bool) or not isinstance(exp_ulps, numbers.Real) or not (math.isfinite(exp_ulps) and float(exp_ulps) >= 0):
        raise CapabilityError(f"capability {key}.exp_ulps must be a finite number >= 0, got {_show(exp_ulps)}")
    if rescales is not None and (isinstance(rescales, bool) or not isinstance(rescales, numbers.Integral) or rescales < 0):
        raise CapabilityError(f"capability {key}.max_rescales must be an integer >= 0 or None, got {_show(rescales)}")
    if not isinstance(exact, bool):
        raise CapabilityError(f"capability {key}.exact_rounded must be True or False, got {_show(exact)}")
    return PrecisionModel(fmt=fmt, exp_ulps=float(exp_ulps), max_rescales=None if rescales is None else int(rescales),
                          exact_rounded=exact)


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:77] + '...'}"


def validate_capabilities(declared: Mapping[str, Any], *, default_problems: set[str],
                          known_problems: Iterable[str] | None = None) -> Capabilities:
    """:class:`Capabilities` from a mapping of declared values, each checked (:class:`CapabilityError`).

    ``default_problems`` applies when ``problems`` is absent or empty; ``known_problems`` (the problem
    registry's names), when given, is the set ``problems`` must come from.
    """
    unknown = sorted(str(k) for k in declared if k not in CAPABILITY_FIELDS)
    if unknown:
        raise CapabilityError(f"unknown capability key(s) {unknown}; known: {', '.join(CAPABILITY_FIELDS)}")
    caps = Capabilities()
    problems = declared.get("problems")
    known = None if known_problems is None else set(known_problems)
    caps.problems = _name_set("problems", problems, allowed=known, what="problems") if problems else set(default_problems)
    if "dtypes" in declared:
        caps.dtypes = _name_set("dtypes", declared["dtypes"], allowed=KNOWN_DTYPES, what="dtypes")
        if not caps.dtypes:
            raise CapabilityError("capability 'dtypes' is empty: the backend would accept no case")
    if "devices" in declared:
        caps.devices = _name_set("devices", declared["devices"], what="devices")
    caps.max_n = _positive_int("max_n", declared.get("max_n"))
    caps.max_d = _positive_int("max_d", declared.get("max_d"))
    for key in ("contract_eps", "bound", "max_logit_radius"):
        setattr(caps, key, _positive_real(key, declared.get(key)))
    deterministic = declared.get("deterministic", False)
    if not isinstance(deterministic, bool):
        raise CapabilityError(f"capability 'deterministic' must be True or False, got {_show(deterministic)}")
    caps.deterministic = deterministic
    slack = declared.get("heavy_slack", 0.0)
    if isinstance(slack, bool) or not isinstance(slack, numbers.Real) or not (math.isfinite(float(slack)) and float(slack) >= 0):
        raise CapabilityError(f"capability 'heavy_slack' must be a finite number >= 0, got {_show(slack)}")
    caps.heavy_slack = slack if isinstance(slack, (int, Fraction)) else float(slack)
    variants = declared.get("variants")
    if variants is not None:
        caps.variants = _variants(variants)
    precision = declared.get("precision")
    if precision is not None:
        if not isinstance(precision, Mapping):
            raise CapabilityError(f"capability 'precision' must be a dict of dtype -> PrecisionModel, got {_show(precision)}")
        for dtype, model in precision.items():
            if dtype not in KNOWN_DTYPES:
                raise CapabilityError(f"capability 'precision' has unknown dtype key {_show(dtype)}; known: {', '.join(KNOWN_DTYPES)}")
            caps.precision[dtype] = _model(f"precision[{dtype!r}]", model)
    return caps


def _variants(value: Any) -> dict[str, Any]:
    """``variants``: problem name -> that problem's declaration, checked by its ``validate_variants``."""
    from attnspec.conformance.judging.problems import get_problem

    if not isinstance(value, Mapping):
        raise CapabilityError(f"capability 'variants' must be a dict of problem -> declaration, got {_show(value)}")
    out: dict[str, Any] = {}
    for name, entry in value.items():
        try:
            check = getattr(get_problem(name), "validate_variants", None)
            if check is None:
                raise ValueError(f"problem {name!r} takes no variants declaration")
            out[str(name)] = check(entry)
        except ValueError as exc:
            raise CapabilityError(f"capability 'variants': {exc}") from None
    return out


def declared_mapping(declared: Any) -> Mapping[str, Any]:
    """The declaration as a mapping: a dict as is, an object by its public attributes."""
    if declared is None:
        return {}
    if isinstance(declared, Mapping):
        return declared
    if isinstance(declared, Capabilities):
        return {name: getattr(declared, name) for name in CAPABILITY_FIELDS}
    if isinstance(declared, (str, bytes, numbers.Number, list, tuple, set, frozenset)):
        raise CapabilityError("capabilities must be a dict, an object with capability attributes or a callable "
                              f"returning one, got {_show(declared)}")
    names = [n for n in vars(declared) if not n.startswith("_")] if hasattr(declared, "__dict__") else []
    names += [n for n in CAPABILITY_FIELDS if n not in names and hasattr(declared, n)]
    return {n: getattr(declared, n) for n in names if not callable(getattr(declared, n))}


def read_capabilities(backend: Any, *, known_problems: Iterable[str] | None = None) -> Capabilities:
    """A backend's declared capabilities (dict, object, zero-argument callable or nothing), validated.

    Raises :class:`CapabilityError`, naming the field, for any malformed value, for unknown keys, for a
    problem name the registry does not know (``known_problems`` defaults to every registered problem) and
    when reading the declaration itself raises.
    """
    from attnspec.conformance.judging.problems import backend_methods, problem_names

    try:
        declared = getattr(backend, "capabilities", None)
        if callable(declared) and not isinstance(declared, (Mapping, Capabilities)):
            declared = declared()
        mapping = dict(declared_mapping(declared))
    except CapabilityError:
        raise
    except (Exception, SystemExit) as exc:  # a backend's code: any failure is a bad declaration
        raise CapabilityError(f"reading the backend's capabilities raised {type(exc).__name__}: {exc}") from exc
    inferred = {p for p, m in backend_methods().items() if callable(getattr(backend, m, None))}
    known = problem_names() if known_problems is None else known_problems  # a misspelt problem is an error
    return validate_capabilities(mapping, default_problems=inferred, known_problems=known)
