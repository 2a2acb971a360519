"""sdpa spec: visibility of each mask (the documented flash-attn/torch examples), GQA head mapping,
validation errors that name the problem."""

import numpy as np
import pytest

from attnspec.spec.sdpa import SpecError, fully_masked_rows, make_instance, variant_tags


def _inst(m, n, hq=1, hkv=1, b=1, **kw):
    rng = np.random.default_rng(0)
    return make_instance(rng.standard_normal((b, hq, m, 3)), rng.standard_normal((b, hkv, n, 3)),
                         rng.standard_normal((b, hkv, n, 2)), **kw)


def _vis(inst, b=0, h=0):
    return inst.visible_block(b, h, 0, inst.m, 0, inst.n).astype(int)


def test_causal_bottom_right_matches_flash_attn_docs():
    # flash-attn ≥ 2.1 README / flash_attn_func docstring: seqlen_q = 2, seqlen_k = 5 and 5, 2
    assert _vis(_inst(2, 5, causal="causal_bottom_right")).tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert _vis(_inst(5, 2, causal="bottom_right")).tolist() == [[0, 0], [0, 0], [0, 0], [1, 0], [1, 1]]


def test_causal_top_left_is_lower_triangle():
    assert _vis(_inst(2, 5, causal="top_left")).tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0]]
    assert _vis(_inst(5, 2, causal="causal_top_left")).tolist() == [[1, 0], [1, 1], [1, 1], [1, 1], [1, 1]]


def test_alignments_agree_when_square():
    assert _vis(_inst(4, 4, causal="top_left")).tolist() == _vis(_inst(4, 4, causal="bottom_right")).tolist()


def test_window_bottom_right_matches_flash_attn_formula():
    # keys in [i + n − m − left, i + n − m + right]
    inst = _inst(3, 6, window=(1, 0))
    for i in range(3):
        expect = [1 if i + 3 - 1 <= j <= i + 3 else 0 for j in range(6)]
        assert _vis(inst)[i].tolist() == expect
    top = _inst(3, 6, window=(0, 2), window_alignment="top_left")
    assert _vis(top).tolist() == [[1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0]]


def test_combined_masks_intersect_and_fully_masked_rows_are_found():
    mask = np.ones((4, 4), dtype=bool)
    mask[2] = False
    bias = np.zeros((4, 4))
    bias[0, 0] = -np.inf
    inst = _inst(4, 4, causal="top_left", attn_mask=mask, bias=bias)
    assert _vis(inst).tolist() == [[0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]]
    assert fully_masked_rows(inst).tolist() == [0, 2]
    assert variant_tags(inst) == {"causal_top_left", "bool_mask", "bias"}


def test_structural_block_skip_is_exact():
    for kw in ({"causal": "top_left"}, {"causal": "bottom_right"}, {"window": (2, 1)},
               {"window": (None, 0), "window_alignment": "top_left"}, {"window": (3, None)}):
        inst = _inst(9, 13, **kw)
        for r0 in range(0, 9, 4):
            for c0 in range(0, 13, 3):
                r1, c1 = min(9, r0 + 4), min(13, c0 + 3)
                empty = not inst.visible_block(0, 0, r0, r1, c0, c1).any()
                if inst.structural_block_empty(r0, r1, c0, c1):
                    assert empty, (kw, r0, c0)  # a skipped block must really be empty


def test_gqa_head_mapping_and_tags():
    inst = _inst(2, 3, hq=6, hkv=2, b=2)
    assert [inst.kv_head(h) for h in range(6)] == [0, 0, 0, 1, 1, 1]
    assert variant_tags(inst) == {"gqa", "cross", "batch"}
    assert variant_tags(_inst(3, 3, hq=4, hkv=1)) == {"mqa"}
    assert inst.row_coords(2 * 6 * 2 - 1) == (1, 5, 1)


@pytest.mark.parametrize("kwargs, message", [
    ({"hq": 3, "hkv": 2}, "multiple of the KV heads"),
    ({"causal": "diagonal"}, "causal must be one of"),
    ({"window": (-1, 0)}, "window left must be an integer"),
    ({"window": (1, 2, 3)}, "window must be a pair"),
    ({"window": (1.5, 0)}, "window left must be an integer"),
    ({"attn_mask": np.ones((4, 5))}, "attn_mask must be boolean"),
    ({"attn_mask": np.ones((3, 4), dtype=bool)}, "not broadcastable"),
    ({"attn_mask": np.ones((1, 1, 1, 4, 5), dtype=bool)}, "at most 4 dimensions"),
    ({"bias": np.full((4, 5), np.nan)}, "NaN entry"),
    ({"bias": np.full((4, 5), np.inf)}, r"\+inf entry"),
    ({"bias": np.zeros((4, 5), dtype=np.int64)}, "bias has unsupported dtype"),
    ({"scale": float("nan")}, "must be finite"),
    ({"causal": "top_left", "window": (1, 1), "window_alignment": "bottom_right"}, "one alignment per instance"),
])
def test_validation_errors_name_the_problem(kwargs, message):
    hq, hkv = kwargs.pop("hq", 2), kwargs.pop("hkv", 2)
    with pytest.raises(SpecError, match=message) as info:
        _inst(4, 5, hq=hq, hkv=hkv, **kwargs)
    assert "sdpa" in str(info.value)


def test_shape_validation():
    rng = np.random.default_rng(1)
    q, k, v = rng.standard_normal((1, 2, 3, 4)), rng.standard_normal((1, 2, 5, 4)), rng.standard_normal((1, 2, 5, 2))
    with pytest.raises(SpecError, match="4-D"):
        make_instance(q[0], k, v)
    with pytest.raises(SpecError, match="head dimension d"):
        make_instance(q[..., :3], k, v)
    with pytest.raises(SpecError, match="KV heads and length"):
        make_instance(q, k, v[:, :, :4])
    with pytest.raises(SpecError, match="batch size"):
        make_instance(np.concatenate([q, q]), k, v)
    with pytest.raises(SpecError, match="share one dtype"):
        make_instance(q.astype(np.float32), k, v)
    with pytest.raises(SpecError, match="non-finite"):
        make_instance(np.full_like(q, np.inf), k, v)
    with pytest.raises(SpecError, match="every dimension"):
        make_instance(q[:, :, :0], k, v)


def test_instance_is_immutable_and_default_scale():
    inst = _inst(2, 3, attn_mask=np.ones((2, 3), dtype=bool))
    with pytest.raises(ValueError):
        inst.q.flags.writeable = True
    assert inst.attn_mask is not None and inst.attn_mask.shape == (1, 1, 2, 3)
    assert float(inst.scale) == 1 / np.sqrt(3)
