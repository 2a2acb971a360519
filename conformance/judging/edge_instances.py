"""Edge-instance families: valid inputs on which a sloppy precision model or judge would raise false
alarms (a correct implementation getting fail or error). Each must come out pass, or not applicable
with a reason, for every correct backend (tests/test_edge_instances.py).

- subnormal entries, and subnormal *products* magnified by a huge factor (q = 3·2⁻¹⁰⁷⁴, s = ½,
  k = 1.5·2¹⁰²³: (s·q)·k, s·(q·k) and q·(s·k) round differently; the gradual-underflow logit term);
- subnormal V, and V near the format maximum (Σ p_j v_j overflows: not applicable; or it fits);
- intermediate overflow with a moderate answer (float32 q·kᵀ ≈ 1e40 with s ≈ 1e−38: not applicable);
- huge logits, 1e100 and beyond (the first Arb ball is not finite: the judge refines);
- logits all near −740 (every exp(logit) subnormal without the row shift);
- non-dyadic scales 1/3, 1/√d, 0.1 (rounded to the case dtype by the family loop, so they also appear
  as exact Fractions in :func:`exact_scale_softmax_cases`, judged against the exact scale).

Families follow the problem modules' signature ``family(rng, count, big)`` and yield float64 arrays; the
family loop casts them to the case dtype (entries that overflow it become 0), so every instance is valid
in every dtype. Dynamic traces: :data:`DYNAMIC_EDGE_RECIPES` (recipes for the seeded trace builder) and
:func:`dynamic_edge_traces` (hand-built traces: subnormal V, OAMV logits near −740, q tiny with K huge).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Iterator

import numpy as np

TINY = 5e-324  # the smallest float64 subnormal, 2⁻¹⁰⁷⁴
HUGE_K = 1.5 * 2.0**1023


def _v(rng: np.random.Generator, n: int, dv: int) -> np.ndarray:
    return rng.uniform(-1.0, 1.0, (n, dv))


def softmax_edge_arrays(rng: np.random.Generator) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray, Any]]:
    """(label, q, k, v, scale) of every crafted softmax edge instance (float64, before any cast)."""
    # q·s underflows to a subnormal, then k ≈ 2¹⁰²³ magnifies its rounding (the example)
    q = np.array([[3 * TINY, 1.0], [-3 * TINY, 0.5], [5 * TINY, -0.25]])
    k = np.array([[HUGE_K, 0.0], [-HUGE_K, 0.5], [HUGE_K / 2, 1.0]])
    yield "subnormal_product_magnified", q, k, _v(rng, 3, 2), Fraction(1, 2)
    # q·k underflows and a large scale magnifies it (2¹⁴: finite in every dtype, float16 included)
    q = np.array([[2.0**-600, 1e-300], [2.0**-620, -2.0**-600]])
    k = np.array([[2.0**-500, 2.0**-480], [-2.0**-510, 2.0**-490]])
    yield "underflow_then_large_scale", q, k, _v(rng, 2, 2), Fraction(2**14)
    # every entry subnormal
    yield "all_subnormal", rng.integers(-9, 10, (3, 2)) * TINY, rng.integers(-9, 10, (3, 2)) * TINY, \
        rng.integers(-9, 10, (3, 2)) * TINY, Fraction(1)
    # subnormal V (the answer is subnormal) with ordinary logits
    yield "subnormal_v", rng.uniform(-1, 1, (4, 3)), rng.uniform(-1, 1, (4, 3)), rng.uniform(-1, 1, (4, 2)) * 1e-310, Fraction(1, 3)
    # V near the format maximum: Σ p_j v_j can overflow (n/a), or fits (applicable)
    yield "near_max_v_overflowing", rng.uniform(-1, 1, (3, 2)), rng.uniform(-1, 1, (3, 2)), \
        np.array([[1.7e308, -1.7e308], [1.6e308, 1.5e308], [-1.7e308, 1e308]]), Fraction(1, 2)
    yield "near_max_v_fitting", rng.uniform(-1, 1, (3, 2)), rng.uniform(-1, 1, (3, 2)), \
        np.array([[1e307, -2e307], [3e307, 1e307], [-2e307, 0.5]]), Fraction(1, 2)
    yield "near_max_v_float32", rng.uniform(-1, 1, (3, 2)), rng.uniform(-1, 1, (3, 2)), \
        np.array([[3.3e38, -3.3e38], [3.0e38, 1e38], [-3.3e38, 1.0]]), Fraction(1, 2)
    # float32: q·kᵀ ≈ 2e40 overflows while s·q·kᵀ ≈ 0.2 (n/a there); ≈ 2e36 fits (applicable)
    q = np.array([[1e20, 1e20], [-1e20, 5e19], [1e19, -1e20]])
    yield "float32_qk_overflow", q, q[::-1].copy(), _v(rng, 3, 2), Fraction(float(np.float32(1e-41)))
    q = np.array([[1e18, 1e18], [-1e18, 5e17], [1e17, -1e18]])
    yield "float32_qk_large_fitting", q, q[::-1].copy(), _v(rng, 3, 2), Fraction(float(np.float32(1e-36)))
    # huge logits: 1e100 (the first ball is not finite), 1e300, and ones whose q·k overflows float64
    sign = np.sign(rng.uniform(-1, 1, (3, 2)))
    yield "logits_1e100", sign * 1e50, np.sign(rng.uniform(-1, 1, (3, 2))) * 1e50, _v(rng, 3, 2), Fraction(1)
    yield "logits_1e300", sign * 1e150, np.sign(rng.uniform(-1, 1, (3, 2))) * 1e150, _v(rng, 3, 2), Fraction(1)
    yield "qk_overflows_float64", sign * 1e160, np.sign(rng.uniform(-1, 1, (3, 2))) * 1e160, _v(rng, 3, 2), Fraction(1e-310)
    # every logit near −740: exp(logit) is subnormal unless the row maximum is subtracted
    yield "logits_near_minus_740", np.array([[-740.0], [-741.5], [-739.0]]), np.array([[1.0], [1.001], [0.999]]), \
        _v(rng, 3, 2), Fraction(1)
    # non-dyadic scales (rounded to the case dtype by the family loop)
    for label, scale in (("scale_one_third", Fraction(1, 3)), ("scale_one_tenth", Fraction(1, 10)),
                         ("scale_inv_sqrt_d", Fraction(1.0 / np.sqrt(3.0)))):
        yield label, rng.uniform(-4, 4, (5, 3)), rng.uniform(-4, 4, (5, 3)), _v(rng, 5, 2), scale


def family_softmax_edge(rng: np.random.Generator, count: int, big: bool):
    """The softmax ``edge`` family: the crafted instances (each with its label dropped), then, for the
    thorough profile, rescaled copies of them (factors 2^±e keep them edge-like)."""
    made = 0
    crafted = list(softmax_edge_arrays(rng))
    for _, q, k, v, scale in crafted:
        if made >= count:
            return
        yield q, k, v, scale, None
        made += 1
    while big and made < count:
        _, q, k, v, scale = crafted[made % len(crafted)]
        e = int(rng.integers(-8, 9))
        yield np.ldexp(q, e), np.ldexp(k, -e), v, scale, None
        made += 1


SOFTMAX_EDGE_COUNT = sum(1 for _ in softmax_edge_arrays(np.random.default_rng(0)))


def tensor_edge_arrays(rng: np.random.Generator) -> Iterator[tuple[str, np.ndarray, list, list, Any]]:
    """(label, q, keys, values, scale) of every crafted tensor edge instance (float64, k = 3 unless noted)."""
    vals = lambda n, dv=2: [_v(rng, n, dv), _v(rng, n, dv)]  # noqa: E731
    q = np.array([[3 * TINY, 1.0], [-3 * TINY, 0.5]])
    yield "subnormal_product_magnified", q, [np.array([[HUGE_K, 0.0], [-HUGE_K, 0.5]]), np.array([[0.5, 1.0], [0.75, -1.0]])], \
        vals(2), Fraction(1, 2)
    yield "subnormal_v", rng.uniform(-1, 1, (3, 2)), [rng.uniform(-1, 1, (3, 2)) for _ in range(2)], \
        [rng.uniform(-1, 1, (3, 2)) * 1e-160, rng.uniform(-1, 1, (3, 2)) * 1e-160], Fraction(1, 2)
    yield "near_max_v_overflowing", rng.uniform(-1, 1, (2, 2)), [rng.uniform(-1, 1, (2, 2)) for _ in range(2)], \
        [np.full((2, 2), 1.3e154), np.full((2, 2), -1.3e154)], Fraction(1, 2)
    q = np.array([[1e13, 1e13], [-1e13, 5e12]])
    yield "float32_product_overflow", q, [q.copy(), q[::-1].copy()], vals(2), Fraction(float(np.float32(1e-38)))
    yield "logits_1e100", np.sign(rng.uniform(-1, 1, (2, 2))) * 1e40, \
        [np.sign(rng.uniform(-1, 1, (2, 2))) * 1e30 for _ in range(2)], vals(2), Fraction(1)
    yield "logits_near_minus_740", np.array([[-740.0], [-739.0]]), [np.array([[1.0], [1.001]]), np.array([[1.0], [0.999]])], \
        vals(2), Fraction(1)
    yield "scale_one_third", rng.uniform(-2, 2, (3, 2)), [rng.uniform(-2, 2, (3, 2)) for _ in range(2)], vals(3), Fraction(1, 3)


def family_tensor_edge(rng: np.random.Generator, count: int, big: bool):
    """The tensor ``edge`` family (the crafted instances, at most ``count``)."""
    for made, (_, q, keys, values, scale) in enumerate(tensor_edge_arrays(rng)):
        if made >= count:
            return
        yield q, keys, values, scale, None


TENSOR_EDGE_COUNT = sum(1 for _ in tensor_edge_arrays(np.random.default_rng(0)))

# Recipes (n, d, dv, m, scale, steps) for the dynamic problem's seeded trace builder (entries and δ on a
# 2⁻⁸ grid in [−1, 1]): a non-dyadic-looking float scale, and logits large enough (|s|·d up to 96) that
# the tolerance's e^{span} factor makes some queries not applicable.
# (n, d, d_v, m, scale, steps): non-dyadic scales 1/3 and 0.1, and a sharp scale 4 (logit span ≤ 16, so
# the e^{span}-wide dynamic model still decides; a larger span would only be not applicable)
DYNAMIC_EDGE_RECIPES = [(3, 2, 2, 2, 1 / 3, 10), (4, 2, 1, 2, 4.0, 6), (2, 1, 1, 1, 0.1, 5)]


def dynamic_edge_traces() -> list[tuple[str, Any]]:
    """Hand-built (label, Trace) pairs for both variants: subnormal V, all logits near −740 (OAMV's answer
    is itself subnormal), q tiny with K huge (a subnormal product magnified), and a 1/3 scale."""
    from attnspec.spec.dynamic_attention import Init, Query, Trace, UpdateK, UpdateV

    out = []
    recipes: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, Any, list]] = {
        "subnormal_v": (np.array([[0.5, -0.25]]), np.array([[1.0, 0.5], [-0.5, 0.25]]),
                        np.array([[3e-310], [-7 * TINY]]), 1.0, [UpdateV(1, 0, 11 * TINY)]),
        "logits_near_minus_740": (np.array([[-740.0]]), np.array([[1.0], [1.0009765625]]), np.array([[1.0], [-0.5]]), 1.0,
                                  [UpdateK(0, 0, 2.0**-10)]),
        "subnormal_product_magnified": (np.array([[3 * TINY, 0.0]]), np.array([[HUGE_K, 0.25], [-HUGE_K, 1.0]]),
                                        np.array([[1.0], [0.5]]), 0.5, [UpdateV(0, 0, 0.25)]),
        "scale_one_third": (np.array([[0.5, -1.0]]), np.array([[0.25, 1.0], [-0.75, 0.5]]), np.array([[1.0], [0.25]]),
                            Fraction(1, 3), [UpdateK(1, 0, 0.125)]),
    }
    for label, (q, k, v, scale, updates) in recipes.items():
        for normalised in (True, False):
            ops: list = [Init(q, k, v, scale), Query(0, 0)]
            for op in updates:
                ops += [op, Query(0, 0)]
            out.append((f"{label}/{'odamv' if normalised else 'oamv'}", Trace(normalised=normalised, ops=ops)))
    return out


def exact_scale_softmax_cases(dtypes: tuple[str, ...] = ("float64", "float32")) -> list:
    """Softmax cases whose scale is an exact non-float rational (1/3, 1/10, a rational near 1/√3): the
    backend receives float(s); the tolerance covers that rounding (and a second one to the dtype)."""
    from attnspec.conformance.judging.case_common import cast_to
    from attnspec.conformance.judging.softmax_attention import Case
    from attnspec.spec.softmax_attention import make_instance

    rng = np.random.default_rng(2024)
    cases = []
    for dtype in dtypes:
        for i, scale in enumerate((Fraction(1, 3), Fraction(1, 10), Fraction(577, 1000), Fraction(-7, 3))):
            n, d = 4 + i, 3
            q, k, v = (cast_to(rng.uniform(-3, 3, (n, d)), dtype) for _ in range(3))
            inst = make_instance(q, k, v, scale=scale)
            cases.append(Case(f"softmax_attention/{dtype}/edge_exact_scale/{i:03d}", "edge_exact_scale", dtype, 2024, inst))
    return cases


def exact_scale_tensor_cases(dtypes: tuple[str, ...] = ("float64", "float32")) -> list:
    """Tensor cases with an exact non-float rational scale (see :func:`exact_scale_softmax_cases`)."""
    from attnspec.conformance.judging.case_common import cast_to
    from attnspec.conformance.judging.tensor_attention import Case
    from attnspec.spec.tensor_attention import make_instance

    rng = np.random.default_rng(2025)
    cases = []
    for dtype in dtypes:
        for i, scale in enumerate((Fraction(1, 3), Fraction(1, 10))):
            n, d = 3, 2
            mats = [cast_to(rng.uniform(-2, 2, (n, d)), dtype) for _ in range(5)]
            inst = make_instance(mats[0], mats[1:3], mats[3:5], scale=scale)
            cases.append(Case(f"tensor_attention/{dtype}/edge_exact_scale/{i:03d}", "edge_exact_scale", dtype, 2025, inst))
    return cases
