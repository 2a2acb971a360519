"""The per-stage precision model: its validation, its bound (non-vacuous where it should be, vacuous
and reported where it must be), and the low-precision dtypes through validation, capabilities, the
worker protocol and case files."""

from __future__ import annotations

from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

from attnspec.conformance.harness.capabilities import Capabilities, CapabilityError, validate_capabilities
from attnspec.conformance.harness.case_files import load_case, save_case
from attnspec.conformance.harness.worker_protocol import coerce_output, decode_payload, encode_payload
from attnspec.conformance.judging.problems import get_problem
from attnspec.conformance.judging.softmax_attention import Case
from attnspec.conformance.judging.stage_precision import (StagePrecisionModel, format_info, representable, row_quantities,
                                                          scale_error, stage_overflow_reason, stage_softmax_tolerance)
from attnspec.spec.softmax_attention import make_instance
from attnspec.spec.validation import SpecError, as_exact_matrix

BF16 = StagePrecisionModel(block_keys=64)


def _inst(n, d, seed=0, dtype="bfloat16", bound=1.0, scale=Fraction(1, 8)):
    rng = np.random.default_rng(seed)
    return make_instance(*(rng.uniform(-bound, bound, (n, d)).astype(dtype) for _ in range(3)), scale=scale)


def test_formats_from_ml_dtypes():
    assert format_info("bfloat16").u == 2.0**-8 and format_info("float16").u == 2.0**-11
    e4m3 = format_info("float8_e4m3fn")
    assert (e4m3.u, e4m3.max, e4m3.smallest_normal, e4m3.smallest_subnormal) == (2.0**-4, 448.0, 2.0**-6, 2.0**-9)
    assert format_info("float8_e5m2").u == 2.0**-3 and format_info("float32").u == 2.0**-24
    with pytest.raises(ValueError, match="unknown format"):
        format_info("float4")


@pytest.mark.parametrize("field, value", [("p_format", "int8"), ("logits", "bfloat16"), ("p_scale", 0.0),
                                          ("p_scale", float("inf")), ("exp_ulps", -1.0), ("block_keys", 0),
                                          ("p_subnormals", 1), ("output", "float4")])
def test_model_rejects_malformed_fields_naming_them(field, value):
    with pytest.raises(ValueError, match=field):
        StagePrecisionModel(**{field: value})
    with pytest.raises(CapabilityError, match=field):
        validate_capabilities({"dtypes": {"bfloat16"}, "precision": {"bfloat16": {"model": "stage", field: value}}},
                              default_problems={"softmax_attention"})


def test_capabilities_read_and_round_trip_a_stage_model():
    declared = {"dtypes": {"bfloat16"}, "precision": {"bfloat16": {"model": "stage", "p_format": "float8_e4m3fn",
                                                                   "p_scale": 256.0, "block_keys": 128}}}
    caps = validate_capabilities(declared, default_problems={"softmax_attention"})
    model = caps.precision_for("bfloat16")
    assert isinstance(model, StagePrecisionModel) and model.p_scale == 256.0 and model.block_keys == 128
    again = Capabilities.from_json(caps.to_json())
    assert again.precision_for("bfloat16") == model
    with pytest.raises(CapabilityError, match="unknown stage model field"):
        validate_capabilities({"precision": {"bfloat16": {"model": "stage", "p_fromat": "bfloat16"}}},
                              default_problems={"softmax_attention"})
    with pytest.raises(CapabilityError, match="model must be"):
        validate_capabilities({"precision": {"bfloat16": {"model": "staged"}}}, default_problems={"softmax_attention"})


def test_bf16_bound_is_non_vacuous_and_far_below_the_single_format_one():
    from attnspec.conformance.judging.precision_model import PrecisionModel, softmax_tolerance

    inst = _inst(1024, 32)
    v = np.abs(inst.v.astype(np.float64)).max(axis=0)
    stage = stage_softmax_tolerance(inst, BF16, rows=np.arange(16))
    assert stage.shape == (16, 32) and (stage <= 0.02 * v).all()
    # the rounding of P alone costs ≥ 2u_bf16 relative: the bound cannot be below it
    assert (stage >= 2 * 2.0**-8 * v).all()
    single = softmax_tolerance(inst, PrecisionModel("bfloat16"))
    assert not np.isfinite(single).all() or (single[:16] > 10 * stage).all()


def test_rows_agree_with_the_full_tolerance():
    inst = _inst(200, 8, seed=3)
    full = stage_softmax_tolerance(inst, BF16)
    rows = np.array([0, 17, 199])
    assert np.array_equal(stage_softmax_tolerance(inst, BF16, rows=rows), full[rows])


def test_rescale_count_and_p_format_tighten_or_loosen_the_bound():
    inst = _inst(512, 16, seed=1)
    blocked = stage_softmax_tolerance(inst, BF16)
    unknown = stage_softmax_tolerance(inst, StagePrecisionModel())  # R = n
    fp8 = stage_softmax_tolerance(inst, StagePrecisionModel(p_format="float8_e4m3fn", p_scale=256.0, block_keys=64))
    fp16 = stage_softmax_tolerance(inst, StagePrecisionModel(p_format="float16", block_keys=64))
    assert (blocked < unknown).all() and (fp8 > 8 * blocked).all() and (fp16 < blocked).all()


def test_fp8_absolute_terms_need_the_scale_on_concentrated_rows():
    """Without σ, fp8 weights below 2⁻⁶ are subnormal (absolute error 2⁻¹⁰ each); with a row whose weight
    mass sits on one key (D ≈ 1) and n tiny weights the unscaled model's absolute term dominates."""
    n = 1024
    k = np.zeros((n, 1))
    k[0, 0] = 8.0  # one dominant key: the other n − 1 weights are e^-8 ≈ 3e-4, subnormal in e4m3
    inst = make_instance(np.ones((n, 1)), k, np.ones((n, 1)), scale=Fraction(1))
    plain = StagePrecisionModel("float64", p_format="float8_e4m3fn", block_keys=64)
    scaled = StagePrecisionModel("float64", p_format="float8_e4m3fn", p_scale=256.0, block_keys=64)
    flushed = StagePrecisionModel("float64", p_format="float8_e4m3fn", p_subnormals=False, block_keys=64)
    t_plain, t_scaled = stage_softmax_tolerance(inst, plain), stage_softmax_tolerance(inst, scaled)
    assert (t_scaled < t_plain).all()
    assert not np.isfinite(stage_softmax_tolerance(inst, flushed)).any()  # n·2⁻⁶ ≥ D/2: vacuous, reported


def test_vacuous_bound_is_infinite_and_not_applicable():
    # fp8 e5m2 P at logits that make D small and n large with flushing: β ≥ 1/2
    inst = _inst(64, 4)
    model = StagePrecisionModel(p_format="float8_e5m2", p_subnormals=False, block_keys=16)
    tol = stage_softmax_tolerance(inst, model)
    problem = get_problem("softmax_attention")
    caps = validate_capabilities({"dtypes": {"bfloat16"}, "precision": {"bfloat16": model}},
                                 default_problems={"softmax_attention"})
    case = Case("softmax_attention/bfloat16/x/000", "x", "bfloat16", 0, inst)
    reasons = problem.not_applicable_reasons(case, caps)
    assert np.isfinite(tol).all() == (reasons == [])
    if reasons:
        assert "vacuous" in reasons[0]


def test_inputs_not_exact_in_the_input_format_are_charged():
    inst32 = _inst(128, 8, dtype="float32", seed=5)
    inst16 = _inst(128, 8, dtype="bfloat16", seed=5)
    rounded = stage_softmax_tolerance(inst32, BF16)
    exact = stage_softmax_tolerance(inst16, BF16)
    v = np.abs(inst32.v.astype(np.float64)).max(axis=0)
    assert (rounded - exact > 0.5 * 2.0**-8 * v).all()  # at least the rounding of V


def test_d_lower_bound_is_below_the_true_sum():
    rng = np.random.default_rng(2)
    q, k = rng.standard_normal((6, 5)), rng.standard_normal((40, 5))
    rq = row_quantities(q, k, Fraction(1, 3))
    logits = [[sum(Fraction(a) * Fraction(b) for a, b in zip(qi, kj)) / 3 for kj in k] for qi in q]
    for i, row in enumerate(logits):
        top = max(row)
        true_d = sum(np.exp(float(x - top)) for x in row)
        assert rq.d_lo[i] <= true_d and rq.d_lo[i] > 0.999 * true_d


def test_scale_error_and_overflow_reasons():
    assert scale_error(Fraction(1, 8), BF16) == 0.0
    assert 0 < scale_error(Fraction(1, 3), BF16) <= 2.0**-8 / 3  # the kernel may round s to bf16
    assert 0 < scale_error(Fraction(1, 3), StagePrecisionModel("float32")) <= 2.0**-24 / 3
    big = make_instance(np.full((2, 2), 3e38).astype("bfloat16"), np.ones((2, 2)).astype("bfloat16"),
                        np.ones((2, 2)).astype("bfloat16"), scale=Fraction(1))
    assert "float32 max" in stage_overflow_reason(big, BF16)
    assert stage_overflow_reason(_inst(8, 2), BF16) is None
    assert "stored σ·P̃" in stage_overflow_reason(_inst(8, 2), StagePrecisionModel(p_format="float8_e4m3fn", p_scale=512.0))


def test_low_precision_inputs_are_validated_exactly():
    x = np.array([[1.5, 0.3, -2.7]])
    for dt in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        held = as_exact_matrix(x.astype(dt), "q")
        assert held.dtype == np.float32 and representable(held.astype(np.float64), dt)
        assert np.array_equal(held, x.astype(dt).astype(np.float32))
    with pytest.raises(SpecError, match="non-finite"):
        as_exact_matrix(np.array([[1e3]]).astype("float8_e4m3fn"), "q")


def test_worker_protocol_carries_bf16_and_fp8_by_name():
    a = np.arange(6, dtype=np.float64).reshape(2, 3).astype(ml_dtypes.bfloat16)
    b = np.array([0.5, -3.0]).astype(ml_dtypes.float8_e4m3fn)
    back = decode_payload(encode_payload({"a": a, "b": [b]}))
    assert back["a"].dtype == a.dtype and np.array_equal(back["a"], a)
    assert back["b"][0].dtype == b.dtype and np.array_equal(back["b"][0], b)
    out = coerce_output(a)
    assert out.dtype == np.float32 and np.array_equal(out, a.astype(np.float32))


def test_bf16_case_file_round_trip(tmp_path):
    inst = _inst(9, 3)
    case = Case("softmax_attention/bfloat16/uniform/000", "uniform", "bfloat16", 0, inst)
    path = save_case(tmp_path, case)
    back, manifest = load_case(path)
    assert back.dtype == "bfloat16" and manifest["dtype"] == "bfloat16"
    assert all(np.array_equal(getattr(back.instance, n), getattr(inst, n)) for n in "qkv")


def test_generated_bf16_cases_hold_bf16_values_and_call_with_bf16():
    problem = get_problem("softmax_attention")
    cases = [c for c in problem.generate_cases("quick", ("bfloat16",), 0) if c.family in ("uniform", "hypothesis")]
    assert cases and all(representable(c.instance.q.astype(np.float64), "bfloat16") for c in cases)
    args, _ = problem.call_args(cases[0])
    assert all(a.dtype == np.dtype(ml_dtypes.bfloat16) for a in args)
