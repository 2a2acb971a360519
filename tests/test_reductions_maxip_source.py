"""Gap-MaxIP as a source problem: validation, brute force, generators with known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from attnspec.reductions import maxip


def _loop_max(inst):
    best = -1
    for tup in itertools.product(range(inst.n), repeat=inst.order):
        best = max(best, maxip.tuple_inner_product(inst, tup))
    return best


@pytest.mark.parametrize("order,n", [(2, 7), (3, 5), (4, 3)])
@pytest.mark.parametrize("family", maxip.FAMILIES)
def test_families_keep_their_promise(order, n, family):
    rng = np.random.default_rng(order * 100 + n)
    for _ in range(3):
        inst, record = maxip.generate(family, n, rng, order=order)
        answer = maxip.solve(inst)
        ips = maxip.inner_products(inst.a, inst.sets)
        assert answer.decision == maxip.expected_decision(family)
        assert answer.certificate["max_ip"] == _loop_max(inst) == ips.max()
        assert len({int(x.sum()) for m in (inst.a, *inst.sets) for x in m}) == 1  # equal weights
        if family in ("planted_yes", "adversarial_yes"):
            planted = tuple(record["planted"])
            assert ips[planted] == inst.tau_hi and answer.witness == planted
            others = np.delete(ips.ravel(), np.ravel_multi_index(planted, ips.shape))
            assert others.max() <= inst.tau_lo
        if family.startswith("adversarial"):  # every other tuple sits exactly on τ_lo
            flat = np.sort(ips.ravel())
            assert (flat[: flat.size - (family == "adversarial_yes")] == inst.tau_lo).all()
        if family.endswith("_no"):
            assert ips.max() <= inst.tau_lo and answer.witness is None


def test_random_families_set_thresholds_from_the_brute_force_maximum():
    rng = np.random.default_rng(5)
    yes, _ = maxip.generate("random_yes", 8, rng, order=2)
    no, _ = maxip.generate("random_no", 8, rng, order=2)
    assert maxip.solve(yes).certificate["max_ip"] == yes.tau_hi
    assert maxip.solve(no).certificate["max_ip"] == no.tau_lo


def test_promise_violation_is_named():
    a = np.array([[1, 1, 0, 0], [0, 0, 1, 1]])
    b = np.array([[1, 1, 0, 0], [1, 0, 1, 0]])
    inst = maxip.make_instance(a, [b], tau_hi=2, tau_lo=1)
    assert maxip.solve(inst).decision is True
    inst = maxip.make_instance(a, [np.array([[1, 0, 1, 0], [0, 1, 0, 1]])], tau_hi=2, tau_lo=0)
    with pytest.raises(maxip.PromiseError, match="strictly between"):
        maxip.solve(inst)


@pytest.mark.parametrize("a,sets,hi,lo,match", [
    ([[1, 1, 0], [1, 0, 0]], [[[1, 1, 0], [0, 1, 1]]], 2, 1, "one weight"),
    ([[1, 1, 0]], [[[1, 1, 0]]], 3, 1, "thresholds"),
    ([[1, 1, 0]], [[[1, 1, 0]]], 1, 1, "thresholds"),
    ([[1, 2, 0]], [[[1, 1, 0]]], 2, 1, "only 0 and 1"),
    ([[1, 1, 0]], [], 2, 1, "at least one set"),
    ([[1, 1, 0]], [[[1, 1, 0, 0]]], 2, 1, "shape"),
    ([[1, 1, 0]], [[[1, 1, 0]]], 1.5, 0, "integer"),
])
def test_invalid_instances_are_named(a, sets, hi, lo, match):
    with pytest.raises(ValueError, match=match):
        maxip.make_instance(np.array(a), [np.array(s) for s in sets], hi, lo)


def test_files_round_trip_and_mismatched_parameters_are_refused():
    inst, _ = maxip.generate("planted_yes", 5, np.random.default_rng(1), order=3)
    arrays, params = maxip.instance_arrays(inst), maxip.instance_params(inst)
    back = maxip.instance_from_files(arrays, params)
    assert all(np.array_equal(x, y) for x, y in zip((back.a, *back.sets), (inst.a, *inst.sets)))
    with pytest.raises(ValueError, match="'w'"):
        maxip.instance_from_files(arrays, {**params, "w": params["w"] + 1})
    with pytest.raises(ValueError, match="exactly"):
        maxip.instance_from_files({**arrays, "b3": arrays["b1"]}, params)


def test_generators_refuse_impossible_sizes():
    with pytest.raises(ValueError, match="adversarial Gap-MaxIP needs d"):
        maxip.generate("adversarial_no", 4, np.random.default_rng(0), order=2, d=7)
    with pytest.raises(ValueError, match="n ≥ 2"):
        maxip.generate("planted_no", 1, np.random.default_rng(0))
