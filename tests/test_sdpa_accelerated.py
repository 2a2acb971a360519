"""sdpa accelerated kernel: every mask, GQA/MQA and m ≠ n against the dense float64 evaluation, at
several key-block sizes (skipped blocks included); torch's SDPA agrees where it expresses the case."""

import numpy as np
import pytest

from attnspec.accelerated.sdpa import rescale_count, sdpa, structural_mask
from attnspec.reference.sdpa import dense_reference_float
from attnspec.spec.sdpa import SpecError, make_instance

SHAPES = [(2, 4, 2, 3, 7), (1, 3, 1, 7, 3), (1, 2, 2, 1, 9), (2, 2, 1, 6, 6)]


def _options(rng, m, n, hq):
    bias = rng.uniform(-2, 2, (1, hq, m, n))
    bias[0, 0, 0] = -np.inf  # a fully masked row
    yield {}
    yield {"causal": "top_left"}
    yield {"causal": "bottom_right"}
    yield {"window": (1, 0)}
    yield {"window": (0, 2), "window_alignment": "top_left"}
    yield {"window": (2, 0), "causal": "bottom_right"}
    yield {"attn_mask": rng.random((m, n)) < 0.6}
    yield {"bias": bias, "causal": "top_left"}
    yield {"bias": bias[:, :, :, :1].copy()}  # broadcast over keys


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("block", [1, 2, 5, None])
def test_matches_dense_evaluation(shape, block):
    rng = np.random.default_rng(sum(shape))
    b, hq, hkv, m, n = shape
    q, k, v = rng.standard_normal((b, hq, m, 4)), rng.standard_normal((b, hkv, n, 4)), rng.standard_normal((b, hkv, n, 3))
    for opts in _options(rng, m, n, hq):
        inst = make_instance(q, k, v, **opts)
        out = sdpa(q, k, v, scale=float(inst.scale), causal=inst.causal, window=inst.window,
                   window_alignment=inst.window_alignment, attn_mask=opts.get("attn_mask"), bias=opts.get("bias"),
                   block_size=block)
        assert out.shape == inst.output_shape and out.dtype == np.float64
        assert np.abs(out - dense_reference_float(inst)).max() < 1e-13, opts


def test_float32_stays_float32_and_fully_masked_rows_are_zero():
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((1, 2, 5, 4), (1, 2, 2, 4), (1, 2, 2, 3)))
    out = sdpa(q, k, v, scale=0.5, causal="bottom_right", block_size=1)
    assert out.dtype == np.float32
    assert np.all(out[:, :, :3] == 0) and np.all(np.isfinite(out))


def test_torch_agrees_where_it_expresses_the_case():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    q, k, v = rng.standard_normal((1, 4, 3, 8)), rng.standard_normal((1, 2, 7, 8)), rng.standard_normal((1, 2, 7, 5))
    ours = sdpa(q, k, v, scale=0.25, causal="top_left")
    theirs = torch.nn.functional.scaled_dot_product_attention(torch.tensor(q), torch.tensor(k), torch.tensor(v), scale=0.25,
                                                              is_causal=True, enable_gqa=True).numpy()
    assert np.abs(ours - theirs).max() < 1e-13  # torch's is_causal is the top-left alignment
    vis = structural_mask(3, 7, causal="bottom_right")
    ours = sdpa(q, k, v, scale=0.25, causal="bottom_right")
    theirs = torch.nn.functional.scaled_dot_product_attention(torch.tensor(q), torch.tensor(k), torch.tensor(v), scale=0.25,
                                                              attn_mask=torch.tensor(vis), enable_gqa=True).numpy()
    assert np.abs(ours - theirs).max() < 1e-13


def test_errors_and_rescales():
    q = np.zeros((1, 3, 2, 4))
    k = np.zeros((1, 2, 5, 4))
    with pytest.raises(SpecError, match="incompatible shapes"):
        sdpa(q, k, k, scale=1.0)
    with pytest.raises(SpecError, match="causal must be"):
        sdpa(q[:, :2], k, k, scale=1.0, causal="left")
    with pytest.raises(SpecError, match="not broadcastable"):
        sdpa(q[:, :2], k, k, scale=1.0, attn_mask=np.ones((3, 5), dtype=bool))
    with pytest.raises(SpecError, match="finite"):
        sdpa(q[:, :2], k, k, scale=float("inf"))
    assert rescale_count(1000, 256) == 3 and rescale_count(10) == 0


@pytest.mark.gpu
def test_cupy_matches_numpy():
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception:
        pytest.skip("CUDA unusable")
    rng = np.random.default_rng(3)
    q, k, v = rng.standard_normal((2, 4, 5, 8)), rng.standard_normal((2, 2, 9, 8)), rng.standard_normal((2, 2, 9, 4))
    mask = rng.random((5, 9)) < 0.6
    host = sdpa(q, k, v, scale=0.3, causal="bottom_right", attn_mask=mask, block_size=4)
    dev = sdpa(cupy.asarray(q), cupy.asarray(k), cupy.asarray(v), scale=0.3, causal="bottom_right",
               attn_mask=cupy.asarray(mask), block_size=4)
    assert np.abs(cupy.asnumpy(dev) - host).max() < 1e-12
