"""The chain's combinatorial steps, exhaustively on small cases: Williams' split (orthogonal tuples are
exactly the satisfying assignments), the equal-weight complement map (every vector of weight k·m, k-way
inner product m − ⟨u⟩, so an additive gap of exactly 1), the sizes reported and the memory refusal."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from attnspec.reductions import cnf, maxip
from attnspec.reductions.ov_to_maxip import block_width, map_group, ov_to_maxip
from attnspec.reductions.sat_to_attention import SAT_TO_SOFTMAX, SAT_TO_TENSOR, build_chain, chain_sizes
from attnspec.reductions.sat_to_ov import ChainTooLarge, OVInstance, assignment, k_inner_products, sat_to_ov, solve_ov


def _small_formulas(count, seed):
    rng = np.random.default_rng(seed)
    for index in range(count):
        n = int(rng.integers(1, 8))
        m = int(rng.integers(1, 4 * n + 2))
        yield cnf.random_kcnf(n, m, min(3, n), rng) if index % 2 else cnf.random_kcnf(n, m, min(2, n), rng)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_split_orthogonal_tuples_are_exactly_the_satisfying_assignments(k):
    for formula in _small_formulas(25, seed=k):
        ov = sat_to_ov(formula, k)
        assert ov.order == k and ov.dim == formula.num_clauses
        assert ov.vectors == 2 ** max(1, -(-formula.num_vars // k))
        ips = k_inner_products(ov.sets)
        satisfying = set()
        for tup in itertools.product(range(ov.vectors), repeat=k):
            values = assignment(ov, tup)
            assert (ips[tup] == 0) == (formula.satisfies(values) is None)
            if ips[tup] == 0:
                satisfying.add(values)
        # every satisfying assignment appears (each once per choice of the free padding variables)
        expected = {a for a in itertools.product(*[(v, -v) for v in range(1, formula.num_vars + 1)])
                    if formula.satisfies(a) is None}
        assert satisfying == expected
        assert (solve_ov(ov) is None) == (cnf.brute_force(formula) is None)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_complement_map_weights_and_inner_products_on_every_bit_tuple(k):
    bits = np.array([[0], [1]], dtype=np.uint8)
    mapped = [map_group(bits, g, k) for g in range(1, k + 1)]
    for x in mapped:
        assert x.shape == (2, block_width(k)) and (x.sum(axis=1) == k).all()
    ips = maxip.inner_products(mapped[0], mapped[1:])
    for tup in itertools.product((0, 1), repeat=k):
        assert ips[tup] == 1 - int(all(tup))  # one per coordinate unless every group has a 1 there


@pytest.mark.parametrize("k", [2, 3])
def test_complement_map_gives_an_additive_gap_of_one(k):
    rng = np.random.default_rng(10 + k)
    for _ in range(30):
        vectors, m = int(rng.integers(1, 5)), int(rng.integers(1, 6))
        sets = tuple(rng.integers(0, 2, size=(vectors, m), dtype=np.uint8) for _ in range(k))
        ov = OVInstance(sets, 1, 1)
        inst = ov_to_maxip(ov)
        assert inst.weight == k * m and inst.d == m * block_width(k) and (inst.tau_hi, inst.tau_lo) == (m, m - 1)
        ips = maxip.inner_products(inst.a, inst.sets)
        np.testing.assert_array_equal(ips, m - k_inner_products(sets))
        orthogonal = k_inner_products(sets) == 0
        assert (ips[orthogonal] == m).all() and (ips[~orthogonal] <= m - 1).all()
        answer = maxip.solve(inst)  # the promise holds for every input (no PromiseError)
        assert answer.decision == bool(orthogonal.any())


def test_free_variables_pad_the_groups_and_are_dropped_when_decoding():
    formula = cnf.make_cnf(5, [[1, -5], [2, 3], [-4]])
    ov = sat_to_ov(formula, 2)
    assert ov.group_size == 3 and ov.vectors == 8  # 6 = 2·⌈5/2⌉ variables: variable 6 is free
    assert assignment(ov, (0b101, 0b110)) == (1, -2, 3, -4, 5)
    with pytest.raises(ValueError, match="one index in"):
        assignment(ov, (8, 0))


def test_sizes_reported_and_refused_beyond_the_memory_limit():
    formula = cnf.generate("random_3cnf", 10, np.random.default_rng(0))[0]
    chain, sizes = build_chain(formula, 2)
    assert sizes == chain_sizes(10, formula.num_clauses, 2)
    assert sizes["vectors_per_group"] == 32 and sizes["maxip_dimension"] == 4 * formula.num_clauses
    assert chain.maxip.n == 32 and chain.maxip.d == sizes["maxip_dimension"]
    built = SAT_TO_SOFTMAX.build(formula, {})
    meta = built.meta["chain"]
    assert meta["ov"]["vectors_per_group"] == 32 and meta["ov"]["dimension"] == formula.num_clauses
    assert meta["attention"]["N"] == built.cases[0].instance.n == 64
    assert meta["attention"]["d"] == built.cases[0].instance.d >= meta["maxip"]["d"]
    with pytest.raises(ChainTooLarge) as info:
        SAT_TO_SOFTMAX.build(formula, {"memory_limit": 10_000})
    message = str(info.value)
    assert f"2 × 2^5 = 64 OV vectors of dimension {formula.num_clauses}" in message
    assert f"{sizes['total_bytes']} bytes" in message and "> memory limit 10000 bytes" in message
    big = cnf.make_cnf(60, [[1, 2]])
    with pytest.raises(ChainTooLarge, match=r"2\^30 vectors per group; the limit is 2\^20"):
        sat_to_ov(big, 2)
    with pytest.raises(ChainTooLarge, match="memory limit"):
        SAT_TO_TENSOR.build(cnf.make_cnf(48, [[1, 2]]), {})  # 3 × 2^16 vectors: the N^3 scores alone are 2^53 bytes


def test_formulas_the_chain_cannot_take():
    with pytest.raises(ValueError, match="needs m ≥ 1 clauses"):
        sat_to_ov(cnf.make_cnf(3, []), 2)
    with pytest.raises(ValueError, match="k ≥ 2"):
        sat_to_ov(cnf.make_cnf(3, [[1]]), 1)
