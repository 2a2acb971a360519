"""Public hypothesis strategies for attention instances.

Import them in your own property tests::

    from attnspec.conformance.frontends.strategies import softmax_instances, tensor_instances, dynamic_state_machine

    @given(softmax_instances(max_n=32, bound=2.0))
    def test_my_kernel(inst): ...

    TestMyStructure = dynamic_state_machine(MyDynamicStructure).TestCase

Every drawn value is a validated :class:`~attnspec.spec.softmax_attention.SoftmaxAttentionInstance` whose
inputs are exactly representable in the requested dtype. Draws are labelled, and the structural
shapes of hard cases (large logits, near ties, constant rows, shared shapes) are reachable.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Literal

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from attnspec.spec.softmax_attention import SoftmaxAttentionInstance, make_instance, standard_scale

_FLOAT_WIDTH: dict[str, Literal[16, 32, 64]] = {"float64": 64, "float32": 32, "float16": 16}


def shapes(max_n: int = 64, max_d: int = 16) -> st.SearchStrategy[tuple[int, int]]:
    """(n, d) with 1 ≤ n ≤ max_n, 1 ≤ d ≤ max_d (n, d ≠ multiples of anything in particular)."""
    return st.tuples(st.integers(1, max_n), st.integers(1, max_d))


def bounded_matrices(n: int, d: int, bound: float, dtype: str = "float64") -> st.SearchStrategy[np.ndarray]:
    """n×d matrices with entries in [−bound, bound], exactly representable in ``dtype``."""
    elements = st.floats(-bound, bound, width=_FLOAT_WIDTH[dtype], allow_nan=False, allow_infinity=False)
    return hnp.arrays(np.dtype(dtype), (n, d), elements=elements)


def scales(d: int, dtype: str = "float64") -> st.SearchStrategy[Fraction]:
    """Alman–Song's 1/d, practice's 1/√d, zero, or an arbitrary moderate scale, rounded to ``dtype``."""
    kinds = st.sampled_from(["1/d", "1/sqrt(d)"]).map(lambda kind: standard_scale(d, kind))
    other = st.floats(-4, 4, width=_FLOAT_WIDTH[dtype], allow_nan=False).map(Fraction)
    zero = st.just(Fraction(0))
    return st.one_of(kinds, other, zero).map(lambda s: Fraction(float(np.asarray(float(s), dtype=dtype))))


@st.composite
def softmax_instances(
    draw,
    max_n: int = 32,
    max_d: int = 8,
    bound: float | None = None,
    dtype: str = "float64",
    structures: tuple[str, ...] = ("plain", "large_logits", "near_tie", "constant_rows", "identical_keys"),
) -> SoftmaxAttentionInstance:
    """A softmax attention instance; ``bound`` fixes B (else B is drawn from {0.5, 1, 2, 4, 16})."""
    n, d = draw(shapes(max_n, max_d), label="shape")
    b = bound if bound is not None else draw(st.sampled_from([0.5, 1.0, 2.0, 4.0, 16.0]), label="bound")
    q = draw(bounded_matrices(n, d, b, dtype), label="q")
    k = draw(bounded_matrices(n, d, b, dtype), label="k")
    v = draw(bounded_matrices(n, d, b, dtype), label="v")
    scale = draw(scales(d, dtype), label="scale")
    structure = draw(st.sampled_from(structures), label="structure")
    if structure == "large_logits" and bound is None:
        # Push logits toward ±1000 while keeping inputs exact in the dtype.
        big = float(np.asarray(1000.0 / max(b * b * d, 1e-30), dtype=dtype))
        scale = Fraction(float(np.asarray(big, dtype=dtype)))
    elif structure == "near_tie" and n >= 2:
        k = k.copy()
        k[1] = k[0]
    elif structure == "constant_rows":
        v = np.repeat(v[:1], n, axis=0)
    elif structure == "identical_keys":
        k = np.repeat(k[:1], n, axis=0)
    return make_instance(q, k, v, scale=scale, bound=max(b, float(np.abs(np.concatenate([q, k, v])).max(initial=0.0))))


def tensor_instances(max_n: int = 8, max_d: int = 4, orders: tuple[int, ...] = (3, 4), bound: float | None = None,
                     dtype: str = "float64"):
    """Tensor (k-th order) attention instances: see :func:`attnspec.conformance.judging.tensor_attention.tensor_instances`."""
    from attnspec.conformance.judging.tensor_attention import tensor_instances as strategy

    return strategy(max_n=max_n, max_d=max_d, orders=orders, bound=bound, dtype=dtype)


def dynamic_state_machine(backend, normalised: bool = True, **kwargs):
    """A hypothesis ``RuleBasedStateMachine`` driving a dynamic-attention structure factory through random
    traces, every query judged by the certified engine: see
    :func:`attnspec.conformance.judging.dynamic_attention.dynamic_state_machine`. Use it as
    ``TestMyStructure = dynamic_state_machine(MyStructure).TestCase``."""
    from attnspec.conformance.judging.dynamic_attention import dynamic_state_machine as machine

    return machine(backend, normalised, **kwargs)
