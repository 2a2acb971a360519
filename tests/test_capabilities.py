"""harness/capabilities.py: every declared value is checked, and a malformed one is a CapabilityError
naming the field (never a silent default, never a traceback from deep inside the runner)."""

from __future__ import annotations

from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest

from attnspec.conformance.harness.backends import Capabilities, CapabilityError, load_backend, read_capabilities
from attnspec.conformance.harness.capabilities import KNOWN_DTYPES
from attnspec.conformance.judging.precision_model import PrecisionModel


class Declares:
    """A softmax backend declaring ``capabilities``."""

    def __init__(self, capabilities):
        self.capabilities = capabilities

    def attention(self, q, k, v, *, scale):
        raise AssertionError("never called")


def _read(**declared):
    return read_capabilities(Declares(declared))


# --------------------------------------------------------------------------- what is accepted


def test_a_full_valid_declaration_is_read_exactly():
    caps = _read(problems=["softmax_attention"], dtypes=("float32", "float16", "bfloat16"), devices={"cuda"},
                 max_n=np.int64(4096), max_d=128, contract_eps=1e-3, bound=Fraction(5, 2), max_logit_radius=np.float32(8),
                 deterministic=True,
                 precision={"float32": {"fmt": "float32", "exp_ulps": 1, "max_rescales": 4},
                            "float16": PrecisionModel("float32", exact_rounded=True)})
    assert caps.problems == {"softmax_attention"} and caps.dtypes == {"float32", "float16", "bfloat16"}
    assert caps.devices == {"cuda"} and caps.max_n == 4096 and type(caps.max_n) is int and caps.max_d == 128
    assert caps.contract_eps == 1e-3 and caps.bound == Fraction(5, 2) and caps.max_logit_radius == 8.0
    assert type(caps.max_logit_radius) is float and caps.deterministic is True
    assert caps.precision["float32"] == PrecisionModel("float32", exp_ulps=1.0, max_rescales=4)
    assert caps.precision["float16"] == PrecisionModel("float32", exact_rounded=True)


def test_nothing_declared_gives_the_defaults_and_the_problems_of_the_methods():
    caps = read_capabilities(Declares(None))
    assert caps.problems == {"softmax_attention"} and caps.dtypes == {"float64"} and caps.devices == {"cpu"}
    assert (caps.max_n, caps.max_d, caps.contract_eps, caps.deterministic, caps.precision) == (None, None, None, False, {})


def test_capabilities_may_be_an_object_or_a_callable():
    obj = SimpleNamespace(dtypes={"float32"}, max_n=7)
    assert read_capabilities(Declares(obj)).dtypes == {"float32"}
    assert read_capabilities(Declares(lambda: {"dtypes": ["float16"]})).dtypes == {"float16"}
    assert read_capabilities(Declares(Capabilities(dtypes={"float32"}, max_d=3))).max_d == 3


@pytest.mark.parametrize("name", ["reference", "numpy", "poly"])
def test_the_builtin_backends_declare_valid_capabilities(name):
    caps = read_capabilities(load_backend(name))
    assert caps.dtypes <= set(KNOWN_DTYPES) and caps.problems


def test_to_json_and_from_json_round_trip():
    caps = _read(dtypes={"float32"}, max_n=10, precision={"float32": {"fmt": "float64", "exp_ulps": 0.5}}, deterministic=True)
    assert Capabilities.from_json(caps.to_json()) == caps


def test_known_problems_restricts_the_declared_problems():
    assert _read(problems={"tensor_attention"}).problems == {"tensor_attention"}
    with pytest.raises(CapabilityError, match=r"capability 'problems' names unknown problem 'softmax'; known: softmax_attention, tensor_attention"):
        read_capabilities(Declares({"problems": ["softmax"]}), known_problems=["softmax_attention", "tensor_attention"])


# --------------------------------------------------------------------------- what is refused


@pytest.mark.parametrize("declared,message", [
    ({"dtype": {"float32"}}, r"unknown capability key\(s\) \['dtype'\]; known: problems, dtypes,"),
    ({"dtypes": {"float32"}, "max_N": 3}, r"unknown capability key\(s\) \['max_N'\]"),
    ({"dtypes": "float32"}, r"capability 'dtypes' must be a list or set of dtypes, got str 'float32'"),
    ({"dtypes": {"float32": 1}}, r"capability 'dtypes' must be a list or set of dtypes, got dict"),
    ({"dtypes": ["float128"]}, r"capability 'dtypes' names unknown dtype 'float128'; known: bfloat16, float16, float32, float64"),
    ({"dtypes": [np.float32]}, r"capability 'dtypes' must hold strings, got type"),
    ({"dtypes": []}, r"capability 'dtypes' is empty"),
    ({"problems": "softmax_attention"}, r"capability 'problems' must be a list or set of problems, got str"),
    ({"problems": [1]}, r"capability 'problems' must hold strings, got int 1"),
    ({"devices": "cpu"}, r"capability 'devices' must be a list or set of devices, got str"),
    ({"devices": [None]}, r"capability 'devices' must hold strings, got NoneType"),
    ({"max_n": 0}, r"capability 'max_n' must be a positive integer or None, got int 0"),
    ({"max_n": -5}, r"capability 'max_n' must be a positive integer or None, got int -5"),
    ({"max_n": True}, r"capability 'max_n' must be a positive integer or None, got bool True"),
    ({"max_n": 10.0}, r"capability 'max_n' must be a positive integer or None, got float 10.0"),
    ({"max_d": "8"}, r"capability 'max_d' must be a positive integer or None, got str '8'"),
    ({"contract_eps": 0.0}, r"capability 'contract_eps' must be a finite positive number or None, got float 0.0"),
    ({"contract_eps": float("nan")}, r"capability 'contract_eps' must be a finite positive number or None, got float nan"),
    ({"bound": float("inf")}, r"capability 'bound' must be a finite positive number or None, got float inf"),
    ({"bound": -1}, r"capability 'bound' must be a finite positive number or None, got int -1"),
    ({"bound": "2"}, r"capability 'bound' must be a finite positive number or None, got str '2'"),
    ({"bound": True}, r"capability 'bound' must be a finite positive number or None, got bool True"),
    ({"max_logit_radius": 1j}, r"capability 'max_logit_radius' must be a finite positive number or None, got complex"),
    ({"deterministic": "yes"}, r"capability 'deterministic' must be True or False, got str 'yes'"),
    ({"deterministic": 1}, r"capability 'deterministic' must be True or False, got int 1"),
    ({"precision": ["float32"]}, r"capability 'precision' must be a dict of dtype -> PrecisionModel, got list"),
    ({"precision": {"fp32": {}}}, r"capability 'precision' has unknown dtype key str 'fp32'"),
    ({"precision": {"float32": "float32"}}, r"capability precision\['float32'\] must be a PrecisionModel or a dict of its fields, got str"),
    ({"precision": {"float32": {"format": "float32"}}}, r"capability precision\['float32'\] has unknown field\(s\) \['format'\]; known: fmt, exp_ulps,"),
    ({"precision": {"float32": {"fmt": "float8"}}}, r"capability precision\['float32'\].fmt must be one of float64, float32, float16, bfloat16, got str 'float8'"),
    ({"precision": {"float32": {"exp_ulps": -1}}}, r"precision\['float32'\].exp_ulps must be a finite number >= 0, got int -1"),
    ({"precision": {"float32": {"exp_ulps": float("inf")}}}, r"exp_ulps must be a finite number >= 0, got float inf"),
    ({"precision": {"float32": {"exp_ulps": "2"}}}, r"exp_ulps must be a finite number >= 0, got str '2'"),
    ({"precision": {"float32": {"max_rescales": -1}}}, r"max_rescales must be an integer >= 0 or None, got int -1"),
    ({"precision": {"float32": {"max_rescales": 2.5}}}, r"max_rescales must be an integer >= 0 or None, got float 2.5"),
    ({"precision": {"float32": {"max_rescales": False}}}, r"max_rescales must be an integer >= 0 or None, got bool False"),
    ({"precision": {"float32": {"exact_rounded": "no"}}}, r"exact_rounded must be True or False, got str 'no'"),
    ({"precision": {"float32": PrecisionModel("float8")}}, r"fmt must be one of .*, got str 'float8'"),
])
def test_malformed_values_are_refused_naming_the_field(declared, message):
    with pytest.raises(CapabilityError, match=message):
        read_capabilities(Declares(declared))


def test_a_typo_on_an_object_declaration_is_refused():
    with pytest.raises(CapabilityError, match=r"unknown capability key\(s\) \['dtype'\]"):
        read_capabilities(Declares(SimpleNamespace(dtype={"float32"})))


class Raising:
    @property
    def capabilities(self):
        raise RuntimeError("driver not initialised")

    def attention(self, q, k, v, *, scale):
        raise AssertionError("never called")


@pytest.mark.parametrize("backend,message", [
    (Raising(), r"reading the backend's capabilities raised RuntimeError: driver not initialised"),
    (Declares(lambda: 1 / 0), r"reading the backend's capabilities raised ZeroDivisionError"),
    (Declares(lambda: exec("raise SystemExit(3)")), r"reading the backend's capabilities raised SystemExit: 3"),
    (Declares(42), r"capabilities must be a dict, an object with capability attributes or a callable returning one, got int 42"),
    (Declares(lambda: ["float32"]), r"capabilities must be a dict, .* got list"),
])
def test_capabilities_that_raise_or_are_no_declaration_are_a_capability_error(backend, message):
    with pytest.raises(CapabilityError, match=message):
        read_capabilities(backend)


def test_capability_error_is_a_value_error():
    assert issubclass(CapabilityError, ValueError)


def test_from_json_refuses_what_a_declaration_refuses():
    data = _read(dtypes={"float32"}).to_json()
    data["max_n"] = -1
    with pytest.raises(CapabilityError, match="capability 'max_n' must be a positive integer"):
        Capabilities.from_json(data)
    with pytest.raises(CapabilityError, match="capabilities must be a dict"):
        Capabilities.from_json(["float32"])


def test_a_misspelt_problem_name_is_refused_by_default():
    """Declaring ``softmax`` (not a registered problem) would silently check nothing: it is an error."""
    class Misspelt:
        capabilities = {"problems": {"softmax"}}

        def attention(self, q, k, v, *, scale):
            return v

    with pytest.raises(CapabilityError, match="softmax"):
        read_capabilities(Misspelt())
