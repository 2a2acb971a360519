"""Tensor-attention conformance: broken backends are caught, correct ones pass, tolerances are sound."""

from collections import Counter

import numpy as np
import pytest

from attnspec.accelerated.tensor_attention import polynomial_tensor_attention
from attnspec.conformance.harness import builtin_backends as builtin
from attnspec.conformance.judging import problems
from attnspec.conformance.judging import tensor_attention as tc
from attnspec.conformance.harness.backends import read_capabilities
from attnspec.conformance.harness.isolation import InProcessRunner
from attnspec.conformance.judging.precision_model import PrecisionModel, softmax_tolerance, tensor_tolerance
from attnspec.conformance.harness.runner import judge_one
from attnspec.spec.softmax_attention import make_instance as make_softmax
from attnspec.spec.tensor_attention import make_instance

import tensor_broken_backends as cat

CASES = tc.problem.generate_cases("quick", ("float64", "float32"))


def test_tensor_problem_is_registered():
    assert problems.get_problem("tensor_attention") is tc.problem


def _records(backend):
    runner = InProcessRunner(backend)
    caps = read_capabilities(backend)
    return [judge_one(c, runner, caps) for c in CASES]


def test_quick_list_is_deterministic_and_covers_the_brief():
    again = tc.problem.generate_cases("quick", ("float64", "float32"))
    assert [c.case_id for c in again] == [c.case_id for c in CASES]
    # Bit-identical, the derandomized hypothesis family included (its draws ignore what was imported).
    for a, b in zip(CASES, again):
        for x, y in zip((a.instance.q, *a.instance.keys, *a.instance.values),
                        (b.instance.q, *b.instance.keys, *b.instance.values)):
            assert np.array_equal(x, y)
    orders = Counter(c.instance.order for c in CASES)
    assert orders[3] > 0 and orders[4] > 0 and orders[2] > 0
    assert any(c.instance.n in (13, 17, 23, 31) for c in CASES)  # prime n: no block size divides n^{k−1}
    assert max(tc.conditioning(c.instance)["max_abs_logit"] for c in CASES) >= 999.0


@pytest.mark.parametrize("backend_cls", cat.BROKEN, ids=lambda c: c.__name__)
def test_broken_backend_is_caught(backend_cls):
    records = _records(backend_cls())
    caught = [r for r in records if r["status"] in ("fail", "error")]
    assert caught, f"{backend_cls.__name__} ({backend_cls.__doc__.strip()}) passed every case"
    for r in caught:
        if r["status"] == "fail":
            assert r["evidence"]["error_interval"][0] > r["evidence"]["tolerance"]


def _assert_all_pass(backend, minimum):
    records = _records(backend)
    applicable = [r for r in records if r["status"] != "not_applicable"]
    assert len(applicable) >= minimum
    bad = [(r["case_id"], r["status"], r["message"]) for r in applicable if r["status"] != "pass"]
    assert not bad, bad
    assert max(r["evidence"]["ratio"] for r in applicable) <= 1.0
    return applicable


@pytest.mark.parametrize("backend_cls", cat.CORRECT, ids=lambda c: c.__name__)
def test_correct_variant_passes(backend_cls):
    _assert_all_pass(backend_cls(), 30)


@pytest.mark.parametrize("factory", [builtin.numpy_backend, builtin.reference_backend, builtin.torch_backend],
                         ids=["numpy", "reference", "torch-einsum"])
def test_builtin_exact_backends_pass(factory):
    applicable = _assert_all_pass(factory(), 60)  # float64 and float32 cases
    assert {r["dtype"] for r in applicable} == {"float64", "float32"}


def test_polynomial_backend_passes_within_its_contract():
    applicable = _assert_all_pass(builtin.PolynomialBackend(1e-6, 1.0), 15)
    assert {r["evidence"]["tolerance_source"]["kind"] for r in applicable} == {"contract"}
    assert any(r["shape"] and r["case_id"].split("/")[2] == "order4" for r in applicable)
    records = _records(builtin.PolynomialBackend(1e-6, 1.0))
    skipped = [r for r in records if r["status"] == "not_applicable"]
    assert any("declared bound" in r["message"] for r in skipped)


class _SwappedHadamardPolynomial(builtin.PolynomialBackend):
    """Polynomial method pairing U₂ with V₂ and U₃ with V₁ in identity (I1)."""

    def tensor_attention(self, q, keys, values, *, scale):
        return super().tensor_attention(q, keys, values[::-1], scale=scale)


class _OverclaimingPolynomial(builtin.PolynomialBackend):
    """Claims ε_a = 1e-9 while computing with a polynomial for ε_a = 1e-3."""

    def __init__(self):
        super().__init__(1e-9, 1.0)

    def tensor_attention(self, q, keys, values, *, scale):
        return polynomial_tensor_attention(q, keys, values, scale=scale, bound=1.0, eps=1e-3)


@pytest.mark.parametrize("backend_cls", [_SwappedHadamardPolynomial, _OverclaimingPolynomial], ids=lambda c: c.__name__)
def test_broken_polynomial_backends_are_caught(backend_cls):
    backend = backend_cls() if backend_cls is _OverclaimingPolynomial else backend_cls(1e-6, 1.0)
    records = _records(backend)
    assert any(r["status"] == "fail" for r in records)


def test_order_two_tolerance_equals_softmax_precision_model():
    """For k = 2 the tensor precision model must reduce to the (independently written) softmax one."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.uniform(-2, 2, (9, 4)) for _ in range(3))
    for model in (PrecisionModel("float64"), PrecisionModel("float32", max_rescales=3), PrecisionModel("float64", exact_rounded=True)):
        a = tensor_tolerance(make_instance(q, [k], [v], scale=0.3), model)
        b = softmax_tolerance(make_softmax(q, k, v, scale=0.3), model)
        assert np.allclose(a, b, rtol=1e-12, atol=0)


def test_tolerance_grows_with_tuples_and_logits():
    rng = np.random.default_rng(1)
    q, k1, k2, v1, v2 = (rng.uniform(-1, 1, (6, 3)) for _ in range(5))
    m = PrecisionModel("float64")
    small = tensor_tolerance(make_instance(q, [k1, k2], [v1, v2], scale=0.1), m)
    sharp = tensor_tolerance(make_instance(q, [k1, k2], [v1, v2], scale=100.0), m)
    order4 = tensor_tolerance(make_instance(q, [k1, k2, k1], [v1, v2, v1], scale=0.1), m)
    assert (sharp > small).all() and (small > 0).all()
    assert order4.max() > small.max() * 2  # 216 tuples instead of 36


def test_vacuous_precision_model_is_not_applicable():
    rng = np.random.default_rng(2)
    q, k1, k2, v1, v2 = (rng.uniform(-1, 1, (5, 2)) for _ in range(5))
    inst = make_instance(100 * q, [k1, k2], [v1, v2], scale=200.0)  # logits ~1e4: float16 promises nothing
    case = tc.Case("x", "manual", "float16", 0, inst)
    caps = read_capabilities(type("B", (), {"capabilities": {"problems": {"tensor_attention"}, "dtypes": {"float16"}},
                                           "tensor_attention": lambda self, *a, **k: None})())
    assert "vacuous" in tc.problem.applicable(case, caps)


def test_replay_round_trip():
    for case in CASES[:: max(1, len(CASES) // 10)]:
        inst = case.instance
        back = tc.problem.instance_from_files(tc.problem.instance_arrays(inst), tc.problem.instance_params(inst))
        assert back.order == inst.order and back.scale == inst.scale and back.bound == inst.bound
        for a, b in zip((inst.q, *inst.keys, *inst.values), (back.q, *back.keys, *back.values)):
            assert np.array_equal(a, b)
