"""The public ``assert_conforms`` helper and the names exported by ``attnspec.conformance``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

import attnspec.conformance as conformance
from attnspec.conformance import assert_conforms, softmax_instances, tensor_instances
from attnspec.conformance.harness.builtin_backends import numpy_backend
from attnspec.conformance.judging.softmax_attention import problem as softmax_problem
from attnspec.spec.softmax_attention import make_instance

import helper_backends as hb


def correct(q, k, v, *, scale):
    return hb.correct_attention(q, k, v, scale)


def off_by_a_millionth(q, k, v, *, scale):
    return hb.correct_attention(q, k, v, scale) + 1e-6


def _instance(dtype="float64"):
    rng = np.random.default_rng(7)
    return make_instance(*(rng.uniform(-1, 1, (6, 3)).astype(dtype) for _ in range(3)), scale=0.5)


def test_the_public_names():
    assert set(conformance.__all__) >= {"assert_conforms", "run_conformance", "softmax_instances", "tensor_instances",
                                        "dynamic_state_machine"}
    for name in conformance.__all__:
        assert callable(getattr(conformance, name))
    with pytest.raises(AttributeError):
        conformance.no_such_name  # noqa: B018


def test_a_correct_function_passes():
    record = assert_conforms(correct, _instance())
    assert record["status"] == "pass" and record["evidence"]["ratio"] <= 1


def test_a_broken_function_raises_with_the_evidence():
    with pytest.raises(AssertionError, match="certainly above tolerance") as info:
        assert_conforms(off_by_a_millionth, _instance())
    assert '"worst_index"' in str(info.value)


def test_not_applicable_raises_unless_allowed():
    inst = _instance("float32")  # a bare function declares float64 only
    with pytest.raises(AssertionError, match="dtype float32 not declared"):
        assert_conforms(correct, inst)
    assert assert_conforms(correct, inst, allow_not_applicable=True)["status"] == "not_applicable"
    assert assert_conforms(correct, inst, caps={"dtypes": {"float32"}})["status"] == "pass"


def test_a_case_and_a_spec_string_in_a_worker():
    case = softmax_problem.generate_cases("quick", ("float64",))[0]
    assert assert_conforms(hb.SPEC_PREFIX + "Correct", case, isolation="process")["status"] == "pass"
    with pytest.raises(ValueError, match="spec string"):
        assert_conforms(correct, case, isolation="process")


def test_an_object_that_is_no_instance_is_refused():
    with pytest.raises(TypeError, match="no instance of a registered problem"):
        assert_conforms(correct, np.zeros((2, 2)))


@settings(max_examples=5, deadline=None)
@given(softmax_instances(max_n=6, max_d=3, bound=1.0))
def test_property_softmax(inst):
    assert_conforms(numpy_backend(), inst)


@settings(max_examples=5, deadline=None)
@given(tensor_instances(max_n=3, max_d=2, orders=(3,)))
def test_property_tensor(inst):
    assert_conforms(numpy_backend(), inst)
