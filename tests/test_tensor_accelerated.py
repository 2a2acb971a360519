"""Accelerated exact tensor attention: certified verdicts against the reference, blocking, namespaces."""

import numpy as np
import pytest

from attnspec.accelerated.tensor_attention import default_block, tensor_attention
from attnspec.conformance.judging.precision_model import PrecisionModel
from attnspec.conformance.judging.precision_model import tensor_tolerance
from attnspec.conformance.judging.verdict import judge
from attnspec.reference.tensor_attention import enclose
from attnspec.spec.tensor_attention import make_instance


def _arrays(seed, n, d, k, big=1.0, dv=None):
    rng = np.random.default_rng(seed)
    q = rng.uniform(-big, big, (n, d))
    keys = [rng.uniform(-1, 1, (n, d)) for _ in range(k - 1)]
    values = [rng.uniform(-1, 1, (n, dv or d)) for _ in range(k - 1)]
    return q, keys, values


def _verdict(q, keys, values, scale, out, model=PrecisionModel("float64")):
    inst = make_instance(q, keys, values, scale=scale)
    return judge(out, lambda prec: enclose(inst, prec), tensor_tolerance(inst, model))


# n^{k−1} for these n is never a multiple of the block sizes (except the one-block case), so every run
# ends with a ragged block.
@pytest.mark.parametrize("n, k, block", [(13, 3, 8), (13, 3, 1), (11, 3, 1000), (7, 4, 16), (5, 4, 7), (9, 3, 10)])
def test_exact_blocked_passes_certified_verdict(n, k, block):
    q, keys, values = _arrays(n + block, n, 3, k, dv=2)
    out = tensor_attention(q, keys, values, scale=1 / 3, block_size=block)
    v = _verdict(q, keys, values, 1 / 3, out)
    assert v.status == "pass", v.message
    assert v.evidence["ratio"] <= 1.0


def test_large_logits_stay_finite_and_pass():
    q, keys, values = _arrays(3, 9, 2, 3, big=800.0)
    out = tensor_attention(q, keys, values, scale=1.0, block_size=5)
    assert np.isfinite(out).all()
    v = _verdict(q, keys, values, 1.0, out)
    assert v.status == "pass", v.message


def test_float32_stays_float32_and_meets_float32_model():
    q, keys, values = _arrays(4, 8, 3, 3)
    q, keys, values = q.astype(np.float32), [x.astype(np.float32) for x in keys], [x.astype(np.float32) for x in values]
    out = tensor_attention(q, keys, values, scale=0.25, block_size=6)
    assert out.dtype == np.float32
    v = _verdict(q, keys, values, 0.25, out, PrecisionModel("float32"))
    assert v.status == "pass", v.message
    # ... and the same output is far outside the float64 model: the float32 model is not vacuous
    assert _verdict(q, keys, values, 0.25, out).status == "fail"


def test_block_size_changes_only_rounding():
    q, keys, values = _arrays(5, 10, 3, 3)
    outs = [tensor_attention(q, keys, values, scale=0.5, block_size=b) for b in (1, 7, 64, 1000)]
    for o in outs[1:]:
        assert np.abs(o - outs[0]).max() < 1e-14


def test_torch_namespace_matches_numpy():
    torch = pytest.importorskip("torch")
    q, keys, values = _arrays(6, 7, 3, 3)
    ref = tensor_attention(q, keys, values, scale=0.5, block_size=9)
    out = tensor_attention(torch.from_numpy(q), [torch.from_numpy(x) for x in keys], [torch.from_numpy(x) for x in values],
                           scale=0.5, block_size=9)
    assert isinstance(out, torch.Tensor)
    assert np.abs(out.numpy() - ref).max() < 1e-14


def test_shape_errors_are_reported():
    q, keys, values = _arrays(7, 4, 3, 3)
    with pytest.raises(ValueError, match="K2"):
        tensor_attention(q, [keys[0], keys[1][:, :2]], values, scale=1.0)
    with pytest.raises(ValueError, match="as many value"):
        tensor_attention(q, keys, values[:1], scale=1.0)
    with pytest.raises(ValueError, match="block_size"):
        tensor_attention(q, keys, values, scale=1.0, block_size=0)


def test_default_block_keeps_memory_linear_in_n():
    assert default_block(1024) * 1024 <= 1 << 21
    assert default_block(3) >= 16


@pytest.mark.gpu
def test_cupy_matches_numpy():
    cp = pytest.importorskip("cupy")
    q, keys, values = _arrays(8, 33, 4, 3)
    ref = tensor_attention(q, keys, values, scale=0.25, block_size=100)
    out = tensor_attention(cp.asarray(q), [cp.asarray(x) for x in keys], [cp.asarray(x) for x in values], scale=0.25, block_size=100)
    v = _verdict(q, keys, values, 0.25, cp.asnumpy(out))
    assert v.status == "pass", v.message
    assert np.abs(cp.asnumpy(out) - ref).max() < 1e-12
