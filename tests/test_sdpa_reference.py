"""sdpa reference: the Arb enclosure contains the answer (cross-checked against the softmax_attention
reference on each row's visible keys, exact rationals included in that engine), fully masked rows are
the exact 0, row subsets equal the matching rows of the full enclosure."""

from fractions import Fraction

import numpy as np
import pytest

from attnspec.reference import softmax_attention as sm_ref
from attnspec.reference.sdpa import dense_reference_float, enclose
from attnspec.spec.sdpa import fully_masked_rows, make_instance
from attnspec.spec.softmax_attention import make_instance as make_softmax


def _random(rng, b, hq, hkv, m, n, d=4, dv=3):
    return rng.uniform(-1.5, 1.5, (b, hq, m, d)), rng.uniform(-1.5, 1.5, (b, hkv, n, d)), rng.uniform(-1.5, 1.5, (b, hkv, n, dv))


def _variants(rng):
    q, k, v = _random(rng, 2, 4, 2, 5, 7)
    bias = rng.uniform(-3, 3, (1, 4, 5, 7))
    bias[0, 2, 1] = -np.inf
    bias[0, 0, 0, :3] = -np.inf
    mask = rng.random((2, 1, 5, 7)) < 0.7
    yield make_instance(q, k, v)
    yield make_instance(q, k, v, causal="top_left")
    yield make_instance(q, k, v, causal="bottom_right", bias=bias)
    yield make_instance(q, k, v, window=(1, 1), attn_mask=mask)
    yield make_instance(q[:, :, :1], k, v, causal="bottom_right")  # decode
    yield make_instance(*_random(rng, 1, 3, 1, 8, 3), causal="bottom_right")  # m > n, fully masked rows


@pytest.mark.parametrize("index", range(6))
def test_enclosure_matches_softmax_reference_on_visible_keys(index):
    inst = list(_variants(np.random.default_rng(3)))[index]
    enc = enclose(inst, 128)
    empty = set(fully_masked_rows(inst).tolist())
    dense = dense_reference_float(inst).reshape(-1, inst.dv)
    assert np.allclose(enc.mid(), dense, rtol=1e-12, atol=1e-14)
    for r in range(inst.num_rows):
        b, h, i = inst.row_coords(r)
        row = enc.balls[r * inst.dv:(r + 1) * inst.dv]
        if r in empty:
            assert all(x.is_exact() and x == 0 for x in row)
            continue
        vis = inst.visible(b, h, i)
        # the same row by the softmax_attention engine: the bias as one extra exact key column
        # (q' = [q, 1], k'_j = [k_j, β_j / s] exactly as Fractions)
        kvh = inst.kv_head(h)
        q = [Fraction(float(x)) for x in inst.q[b, h, i]]
        keys = [[Fraction(float(x)) for x in inst.k[b, kvh, j]] for j in vis]
        if inst.bias is not None:
            beta = inst.bias_block(b, h, i, i + 1, 0, inst.n)[0]
            q = q + [Fraction(1)]
            keys = [row_k + [Fraction(float(beta[j])) / inst.scale] for row_k, j in zip(keys, vis)]
        qs = np.array([q] * len(vis), dtype=object)
        vals = np.array([[Fraction(float(x)) for x in inst.v[b, kvh, j]] for j in vis], dtype=object)
        other = sm_ref.enclose(make_softmax(qs, np.array(keys, dtype=object), vals, scale=inst.scale), 128)
        for l in range(inst.dv):
            assert row[l].overlaps(other.balls[l]), (r, l)


def test_row_subset_equals_full_rows():
    inst = list(_variants(np.random.default_rng(4)))[2]
    full = enclose(inst, 128)
    rows = np.array([37, 0, 5, 39])
    sub = enclose(inst, 128, rows)
    assert sub.shape == (4, inst.dv)
    for pos, r in enumerate(rows):
        for l in range(inst.dv):
            assert sub.balls[pos * inst.dv + l].overlaps(full.balls[r * inst.dv + l])
    with pytest.raises(ValueError, match="rows must lie"):
        enclose(inst, 128, np.array([inst.num_rows]))


def test_huge_logits_are_ordinary():
    rng = np.random.default_rng(5)
    q, k, v = _random(rng, 1, 1, 1, 3, 6)
    inst = make_instance(q * 1e6, k, v, causal="bottom_right", scale=1)
    enc = enclose(inst, 128)
    assert enc.max_relative_radius() < 1e-20
    # the visible arg-max key's value row, within the (tiny) softmax spread
    for i in range(3):
        vis = inst.visible(0, 0, i)
        j = vis[np.argmax((k[0, 0, vis] @ q[0, 0, i]))]
        assert np.allclose(enc.mid()[i], v[0, 0, j])


def test_precision_shrinks_radius():
    inst = list(_variants(np.random.default_rng(6)))[3]
    assert enclose(inst, 256).max_relative_radius() < enclose(inst, 64).max_relative_radius()
