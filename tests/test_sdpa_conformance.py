"""sdpa conformance: the broken catalogue is caught, correct kernels (the catalogue's, numpy, torch) pass
with zero false alarms, undeclared variants and other fully-masked conventions are not applicable with
the reason, declarations are validated, case files round-trip, the per-row tolerance is the softmax
model of the visible keys."""

import numpy as np
import pytest

import sdpa_catalogue as cat
from attnspec.conformance.harness.backends import read_capabilities
from attnspec.conformance.harness.builtin_backends import numpy_backend
from attnspec.conformance.harness.capabilities import CapabilityError, validate_capabilities
from attnspec.conformance.harness.case_files import load_case, save_case
from attnspec.conformance.harness.isolation import InProcessRunner
from attnspec.conformance.harness.runner import judge_one
from attnspec.conformance.judging.precision_model import PrecisionModel, softmax_tolerance
from attnspec.conformance.judging.problems import get_problem
from attnspec.conformance.judging.sdpa import FULL_ROWS_WORK, ROW_BUDGET, bias_view_perturbation, certified_rows, problem, row_view
from attnspec.spec.sdpa import make_instance
from attnspec.spec.softmax_attention import make_instance as make_softmax

CASES = problem.generate_cases("quick", ("float64", "float32"))


def _records(backend, cases=CASES):
    runner = InProcessRunner(backend)
    caps = read_capabilities(backend)
    return [judge_one(c, runner, caps) for c in cases]


def test_registered_and_families_cover_the_issue():
    assert get_problem("sdpa") is problem
    fams = {c.family for c in CASES}
    assert fams == set(problem.families())
    for needed in ("decode", "cross", "gqa", "mqa", "causal_top_left", "causal_bottom_right", "window", "bool_mask",
                   "bias", "fully_masked", "batch", "long_rows"):
        assert needed in fams
    shapes = {(c.instance.m < c.instance.n, c.instance.m > c.instance.n) for c in CASES
              if c.family in ("causal_top_left", "causal_bottom_right")}
    assert (True, False) in shapes and (False, True) in shapes  # both alignments at m < n and m > n
    assert any(c.instance.bias is not None and np.isneginf(c.instance.bias).any() for c in CASES)
    assert any(c.instance.batch > 1 for c in CASES)


@pytest.mark.parametrize("backend_cls", cat.BROKEN, ids=lambda c: c.__name__)
def test_broken_kernel_is_caught(backend_cls):
    records = _records(backend_cls())
    caught = [r for r in records if r["status"] in ("fail", "error")]
    assert caught, f"{backend_cls.__name__} ({backend_cls.__doc__.strip()}) passed every case"
    for r in caught:
        if r["status"] == "fail":
            assert r["evidence"]["error_interval"][0] > r["evidence"]["tolerance"]
            assert len(r["evidence"]["worst_index"]) == 4  # [b, h, i, l]


@pytest.mark.parametrize("backend_cls", cat.CORRECT, ids=lambda c: c.__name__)
def test_correct_kernel_passes(backend_cls):
    records = _records(backend_cls())
    applicable = [r for r in records if r["status"] != "not_applicable"]
    assert len(applicable) >= 60
    bad = [(r["case_id"], r["status"], r["message"]) for r in applicable if r["status"] != "pass"]
    assert not bad, bad
    skipped = [r for r in records if r["status"] == "not_applicable"]
    if backend_cls.fully_masked != "zero":
        assert skipped and all("fully masked row" in r["message"] and backend_cls.fully_masked in r["message"] for r in skipped)
    else:
        assert not skipped


def test_builtin_numpy_passes_every_case():
    records = _records(numpy_backend())
    bad = [(r["case_id"], r["status"], r["message"]) for r in records if r["status"] != "pass"]
    assert not bad, bad
    long = [r for r in records if r["family"] == "long_rows"]
    assert long and all(r["evidence"]["certified_rows"] <= ROW_BUDGET < r["shape"][1] * r["shape"][3] for r in long)


def test_builtin_torch_passes_every_case():
    pytest.importorskip("torch")
    from attnspec.conformance.harness.builtin_backends import torch_backend

    records = _records(torch_backend())
    bad = [(r["case_id"], r["status"], r["message"]) for r in records if r["status"] != "pass"]
    assert not bad, bad


class _PlainOnly(cat.DenseCorrect):
    """Declares sdpa without any optional variant."""

    capabilities = {"problems": {"sdpa"}, "dtypes": {"float64"}}


def test_undeclared_variants_are_not_applicable_with_the_reason():
    records = _records(_PlainOnly(), [c for c in CASES if c.dtype == "float64"])
    by_status = {}
    for r in records:
        by_status.setdefault(r["status"], []).append(r)
    assert set(by_status) == {"pass", "not_applicable"}
    for r in by_status["not_applicable"]:
        assert "does not declare" in r["message"]
    causal = [r for r in records if r["family"] == "causal_bottom_right"]
    assert all("causal_bottom_right" in r["message"] for r in causal)
    # an applicable case: no mask, square, equal heads
    for r in by_status["pass"]:
        case = next(c for c in CASES if c.case_id == r["case_id"])
        assert not case.instance.has_mask and case.instance.m == case.instance.n and case.instance.group == 1


def test_variants_declaration_is_validated():
    ok = validate_capabilities({"problems": ["sdpa"], "variants": {"sdpa": {"supports": ["gqa"], "fully_masked": "nan"}}},
                               default_problems=set())
    assert ok.variants == {"sdpa": {"supports": ["gqa"], "fully_masked": "nan"}}
    for bad, message in [({"sdpa": {"supports": ["gqa", "alibi"]}}, "unknown variant"),
                         ({"sdpa": {"fully_masked": "one"}}, "fully_masked"),
                         ({"sdpa": {"support": ["gqa"]}}, "unknown key"),
                         ({"sdpa": ["gqa"]}, "must be a dict"),
                         ({"softmax_attention": {}}, "takes no variants"),
                         ({"nope": {}}, "unknown problem")]:
        with pytest.raises(CapabilityError, match=message):
            validate_capabilities({"variants": bad}, default_problems=set())


def test_case_file_round_trip(tmp_path):
    for family in ("bool_mask", "bias", "window"):
        case = next(c for c in CASES if c.family == family and c.dtype == "float32")
        path = save_case(tmp_path, case)
        loaded, _ = load_case(path)
        a, b = case.instance, loaded.instance
        assert loaded.case_id == case.case_id and a.scale == b.scale and a.causal == b.causal
        assert a.window == b.window and a.window_alignment == b.window_alignment
        for name in ("q", "k", "v", "attn_mask", "bias"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None)
            if x is not None:
                assert np.array_equal(x, y) and x.dtype == y.dtype


def test_row_tolerance_is_the_softmax_model_of_the_visible_keys():
    rng = np.random.default_rng(7)
    q, k, v = rng.uniform(-1, 1, (1, 2, 4, 3)), rng.uniform(-1, 1, (1, 1, 9, 3)), rng.uniform(-1, 1, (1, 1, 9, 2))
    inst = make_instance(q, k, v, causal="bottom_right")
    model = PrecisionModel("float32")
    for r in range(inst.num_rows):
        b, h, i = inst.row_coords(r)
        vis = inst.visible(b, h, i)
        alone = make_softmax(np.repeat(q[b, h, i][None], len(vis), axis=0), k[0, 0, vis], v[0, 0, vis], scale=inst.scale)
        assert np.array_equal(softmax_tolerance(row_view(inst, r), model)[0], softmax_tolerance(alone, model)[0])
    # a zero bias leaves the logits as they are and the view's tolerance can only grow (one more term)
    zero_bias = make_instance(q, k, v, causal="bottom_right", bias=np.zeros((4, 9)))
    for r in range(inst.num_rows):
        assert (softmax_tolerance(row_view(zero_bias, r), model)[0] >= softmax_tolerance(row_view(inst, r), model)[0]).all()
    # the view's logits are the instance's (up to the bounded perturbation of the β/s column)
    bias = rng.uniform(-3, 3, (4, 9))
    biased = make_instance(q, k, v, causal="bottom_right", bias=bias, scale=1 / 3)
    for r in range(biased.num_rows):
        b, h, i = biased.row_coords(r)
        vis = biased.visible(b, h, i)
        view = row_view(biased, r)
        exact = [float(biased.scale) * float(q[b, h, i] @ k[0, 0, j]) + bias[i, j] for j in vis]
        got = (view.q[0] @ view.k.T) * float(view.scale)
        assert np.allclose(got, exact, rtol=0, atol=1e-14)
        assert 0 < bias_view_perturbation(biased, r) <= 3 * 2.0**-50


def test_certified_rows_rule():
    rng = np.random.default_rng(8)
    small = make_instance(rng.standard_normal((1, 2, 3, 2)), rng.standard_normal((1, 2, 5, 2)), rng.standard_normal((1, 2, 5, 2)))
    assert certified_rows(small).tolist() == list(range(6))
    n = FULL_ROWS_WORK // 4 + 1
    big = make_instance(rng.standard_normal((1, 2, 2, 2)), rng.standard_normal((1, 1, n, 2)), rng.standard_normal((1, 1, n, 2)),
                        causal="bottom_right")
    rows = certified_rows(big)
    assert len(rows) <= ROW_BUDGET and rows[0] == 0 and rows[-1] == big.num_rows - 1
    assert np.array_equal(rows, certified_rows(big))  # deterministic: replays judge the same rows
