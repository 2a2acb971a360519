"""Conformance for scaled dot-product attention in production layouts (``sdpa``): batch, heads,
GQA/MQA, m ≠ n, causal masks in both alignments, boolean masks, additive bias, sliding windows.

Backend method ``sdpa(q, k, v, *, scale, causal, window, window_alignment, attn_mask, bias)``:
``q`` B×Hq×m×d, ``k`` B×Hkv×n×d, ``v`` B×Hkv×n×dv (numpy, the case dtype); ``scale`` a float;
``causal`` None, ``"top_left"`` or ``"bottom_right"``; ``window`` None or (left, right) with None sides;
``window_alignment`` ``"top_left"``/``"bottom_right"``; ``attn_mask`` None or a boolean array and ``bias``
None or a float array (−inf = masked), each 4-D and broadcastable to B×Hq×m×n. Every keyword is always
passed. Returns B×Hq×m×dv. Definition: :mod:`attnspec.spec.sdpa`.

Declaring variants. ``capabilities["variants"]["sdpa"]`` (``docs/sdpa.md``):

``supports``      the optional variants the backend implements, from :data:`VARIANTS` (``cross``: m ≠ n;
                  ``gqa``/``mqa``; ``causal_top_left``, ``causal_bottom_right``, ``window``,
                  ``bool_mask``, ``bias``); ``batch`` and plain multi-head are always assumed;
``fully_masked``  what the backend returns for a row with no visible key: ``"zero"`` (the spec's value,
                  the default), ``"nan"`` or ``"uniform"`` (the mean of all V rows, as a finite
                  large-negative mask gives).

Rule: a case is judged against the spec only. A case using an undeclared variant is not applicable
(the reason names it). A case with a fully masked row anywhere is not applicable to a backend declaring
``fully_masked`` ≠ ``"zero"`` (the reason names the convention); to a ``"zero"`` backend it is judged,
and such a row must be exactly 0 (tolerance 0: a zero convention computes acc = 0 exactly), so NaN
there is an error and anything else a fail.

Tolerance of row (b, h, i) with visible set V ≠ ∅: the softmax precision model
(:func:`attnspec.conformance.judging.precision_model.softmax_tolerance`) of the one-row view
q = q_{b,h,i}, K = K_V, V = V_V (n replaced by |V|: row 0 of the square instance whose every query is q); with a bias, the bias is one more logit term:
q' = [q, 1], k'_j = [k_j, β_j / s] (rounded away from 0), so s⟨q', k'_j⟩ = ℓ_j up to δ ≤ 2^-51·max|β| (added as (e^{2δ} − 1)·‖v‖∞) and every magnitude the
model reads (P_i, S_i, R_i) is at least the kernel's (derived here, ``docs/sdpa.md``). Long rows
are judged on a deterministic subset of rows (:func:`certified_rows`).
"""

from __future__ import annotations

import copy
import inspect
import math
import weakref
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable

import numpy as np

from attnspec.conformance.judging.case_common import ConformanceCase, cast_to, family_seed, fraction_or_none
from attnspec.conformance.judging.precision_model import overflow_reason, scale_rounding_error, softmax_tolerance
from attnspec.conformance.judging.problems import Problem, register
from attnspec.conformance.judging.verdict import ERROR, Verdict, OutputError, coerce_output, judge
from attnspec.reference.sdpa import enclose
from attnspec.spec.sdpa import PROBLEM, SdpaInstance, conditioning, default_scale, fully_masked_rows, make_instance, variant_tags
from attnspec.spec.softmax_attention import SoftmaxAttentionInstance

METHOD = "sdpa"
VARIANTS = ("batch", "cross", "gqa", "mqa", "causal_top_left", "causal_bottom_right", "window", "bool_mask", "bias")
ALWAYS_SUPPORTED = frozenset({"batch"})
FULLY_MASKED_CONVENTIONS = ("zero", "nan", "uniform")
# A case certifies every row when B·Hq·m·n is at most this; otherwise ROW_BUDGET chosen rows.
FULL_ROWS_WORK = 1 << 14
ROW_BUDGET = 12


@dataclass
class Case(ConformanceCase):
    """One SDPA case; ``rows`` (flat row indices) overrides :func:`certified_rows` for this case."""

    problem: str = PROBLEM


def validate_variants(value: Any) -> dict[str, Any]:
    """The ``sdpa`` entry of a backend's ``variants`` declaration, checked (``ValueError`` naming the
    field): ``{"supports": [...], "fully_masked": "zero" | "nan" | "uniform"}``."""
    if not isinstance(value, dict):
        raise ValueError(f"variants['sdpa'] must be a dict with 'supports' and 'fully_masked', got {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in ("supports", "fully_masked"))
    if unknown:
        raise ValueError(f"variants['sdpa'] has unknown key(s) {unknown}; known: supports, fully_masked")
    supports = value.get("supports", [])
    if isinstance(supports, (str, bytes)) or not isinstance(supports, (list, tuple, set, frozenset)):
        raise ValueError(f"variants['sdpa']['supports'] must be a list of variant names, got {supports!r}")
    bad = sorted(str(s) for s in supports if s not in VARIANTS)
    if bad:
        raise ValueError(f"variants['sdpa']['supports'] names unknown variant(s) {bad}; known: {', '.join(VARIANTS)}")
    conv = value.get("fully_masked", "zero")
    if conv not in FULLY_MASKED_CONVENTIONS:
        raise ValueError(f"variants['sdpa']['fully_masked'] must be one of {', '.join(FULLY_MASKED_CONVENTIONS)}, got {conv!r}")
    return {"supports": sorted(set(supports)), "fully_masked": conv}


def declared_variants(caps: Any) -> tuple[set[str], str]:
    """(supported variants, fully-masked convention) of a backend's capabilities (defaults: none of the
    optional variants, ``"zero"``)."""
    entry = (getattr(caps, "variants", None) or {}).get(PROBLEM)
    if entry is None:
        return set(ALWAYS_SUPPORTED), "zero"
    checked = validate_variants(dict(entry))
    return set(checked["supports"]) | ALWAYS_SUPPORTED, checked["fully_masked"]


def certified_rows(inst: SdpaInstance) -> np.ndarray:
    """The rows a case certifies: every row when B·Hq·m·n ≤ :data:`FULL_ROWS_WORK`, else at most
    :data:`ROW_BUDGET` rows: the first and last row of the first and last (b, h), the middle row, a fully
    masked row if any, and evenly spaced rows (a deterministic function of the instance, so a case file
    replays the same rows)."""
    total = inst.num_rows
    if total * inst.n <= FULL_ROWS_WORK:
        return np.arange(total, dtype=np.int64)
    m = inst.m
    last = total - 1
    chosen = {0, m - 1, last - (m - 1), last, total // 2}
    empty = fully_masked_rows(inst)
    if empty.size:
        chosen.add(int(empty[0]))
        chosen.add(int(empty[-1]))
    for r in np.linspace(0, last, ROW_BUDGET).astype(np.int64).tolist():
        if len(chosen) >= ROW_BUDGET:
            break
        chosen.add(int(r))
    return np.array(sorted(r for r in chosen if 0 <= r <= last), dtype=np.int64)


def case_rows(case: Any) -> np.ndarray:
    rows = getattr(case, "rows", None)
    return certified_rows(case.instance) if rows is None else np.asarray(rows, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Tolerance: the softmax precision model on a one-row view


def _accepts_rows(fn: Callable) -> bool:
    """Whether a precision-model function takes ``rows=`` (O(|rows|·n·d) evaluation)."""
    return "rows" in inspect.signature(fn).parameters


_ROW0 = np.zeros(1, dtype=np.int64)


def _away_from_zero(x: np.ndarray) -> np.ndarray:
    return np.where(x == 0, 0.0, np.nextafter(x, np.copysign(np.inf, x)))


def row_view(inst: SdpaInstance, r: int) -> SoftmaxAttentionInstance | None:
    """The square softmax instance whose row-0 precision-model tolerance bounds row r's (None: fully
    masked): every query row is q, the keys and values are the visible ones.

    No bias: q (1×d), K_V, V_V in the case dtype, the instance's scale. With a bias: float64
    q' = [q, 1], k'_j = [k_j, β_j/s] (rounded away from 0; s = 0: scale 1, q' = [0, 1], k'_j = [k_j, β_j]),
    so s·⟨q', k'_j⟩ = ℓ_j up to :func:`bias_view_perturbation` and every magnitude the model reads is
    an upper bound (derived here)."""
    b, h, i = inst.row_coords(r)
    vis = inst.visible_block(b, h, i, i + 1, 0, inst.n)[0]
    if not vis.any():
        return None
    kvh = inst.kv_head(h)
    q = inst.q[b, h, i:i + 1]
    k = inst.k[b, kvh][vis]
    v = inst.v[b, kvh][vis]
    scale = inst.scale
    if inst.bias is not None:
        beta = _bias_row(inst, b, h, i)[vis]
        q64 = q.astype(np.float64)
        if scale == 0:
            q64 = np.zeros_like(q64)
            col = beta
            scale = Fraction(1)
        else:
            with np.errstate(over="ignore"):
                col = _away_from_zero(beta / float(scale))
        q = np.hstack([q64, np.ones((1, 1))])
        k = np.hstack([k.astype(np.float64), col[:, None]])
        v = v.astype(np.float64)
    # A square softmax instance (every query row is q): its row 0 has exactly this row's keys and values.
    return SoftmaxAttentionInstance(q=np.broadcast_to(q, (k.shape[0], q.shape[1])), k=k, v=v, scale=scale)


def _bias_row(inst: SdpaInstance, b: int, h: int, i: int) -> np.ndarray:
    block = inst.bias_block(b, h, i, i + 1, 0, inst.n)
    assert block is not None  # callers check inst.bias first
    return block[0]


def bias_view_perturbation(inst: SdpaInstance, r: int) -> float:
    """δ_r ≥ max_j |s·k'_{j,d+1} − β_j| over row r's visible keys: the view's extra key column
    fl(β_j/s) moved one ulp away from 0 is within 2 ulps (≤ 2^-51 relative) of β_j/s, so
    δ ≤ 2^-51·max_j|β_j| (0 without a bias or with s = 0, where the view is exact; derived here)."""
    if inst.bias is None or inst.scale == 0:
        return 0.0
    b, h, i = inst.row_coords(r)
    vis = inst.visible_block(b, h, i, i + 1, 0, inst.n)[0]
    beta = _bias_row(inst, b, h, i)[vis]
    return float(np.abs(beta).max(initial=0.0)) * 2.0**-51 * (1 + 2.0**-50)


def precision_rows_tolerance(inst: SdpaInstance, rows: np.ndarray, model: Any) -> tuple[np.ndarray, str | None]:
    """(τ of shape (len(rows), dv), the first overflow reason or None) under ``model``.

    τ_r = τ_model(view_r) + (e^{2δ_r} − 1)·‖v_{:,l}‖∞: the model bounds the kernel against the view's
    exact answer (the kernel's logits are within the view's logit error of the view's logits, since
    s·P' ≥ s·Σ_t|q_t k_jt| + |β_j|); the view's logits differ from ℓ_j by at most δ_r
    (:func:`bias_view_perturbation`), which moves each weight by a factor in [e^{−2δ}, e^{2δ}] and so the
    exact output by at most (e^{2δ} − 1)·max_j|v_jl| (derived here). A fully masked row gets τ = 0 (its
    answer is the exact 0)."""
    tol = np.zeros((len(rows), inst.dv))
    for pos, r in enumerate(np.asarray(rows).tolist()):
        view = row_view(inst, r)
        if view is None:
            continue
        why = overflow_reason(view, model, rows=_ROW0) if _accepts_rows(overflow_reason) else overflow_reason(view, model)
        if why is not None:
            return tol, f"row {list(inst.row_coords(r))}: {why}"
        if _accepts_rows(softmax_tolerance):
            tol[pos] = softmax_tolerance(view, model, rows=_ROW0)[0]
        else:  # the whole square view (O(|V|²·d)): only until the row-restricted model is installed
            tol[pos] = softmax_tolerance(view, model)[0]
        delta = bias_view_perturbation(inst, r)
        if delta:
            col_norm = np.abs(view.v.astype(np.float64)).max(axis=0)
            tol[pos] += math.expm1(2 * delta) * (1 + 2.0**-50) * col_norm
    return tol, None


# ---------------------------------------------------------------------------------------------
# Case families: each yields (q, k, v, options) in float64; options: the make_instance keywords.


def _qkv(rng, b, hq, hkv, m, n, d, dv, bound=1.0):
    return (rng.uniform(-bound, bound, (b, hq, m, d)), rng.uniform(-bound, bound, (b, hkv, n, d)),
            rng.uniform(-bound, bound, (b, hkv, n, dv)))


def family_multihead(rng, count, big):
    """No mask, m = n, Hq = Hkv: plain multi-head attention (B = H = 1 is softmax_attention's case)."""
    for t in range(count):
        b, h, n = [(1, 1, 12), (2, 3, 9), (3, 2, 17)][t % 3]
        yield (*_qkv(rng, b, h, h, n, n, 5, 4, 1.5), {})


def family_decode(rng, count, big):
    """m = 1 (one new token against a KV cache), GQA, with and without the bottom-right causal mask."""
    for t in range(count):
        n = (17, 64, 130, 257)[t % 4] * (4 if big else 1)
        yield (*_qkv(rng, 2, 4, 2, 1, n, 8, 8), {"causal": "bottom_right" if t % 2 else None})


def family_cross(rng, count, big):
    """m ≠ n without a mask (cross-attention), both m < n and m > n."""
    shapes = [(5, 23), (31, 7), (1, 40), (40, 1), (9, 10)]
    for t in range(count):
        m, n = shapes[t % len(shapes)]
        yield (*_qkv(rng, 1, 2, 2, m, n, 6, 5, 2.0), {})


def family_gqa(rng, count, big):
    """Grouped-query attention: Hq = g·Hkv for g = 2, 3, 4 (query head h reads KV head h // g)."""
    heads = [(6, 2), (8, 4), (8, 2), (6, 3)]
    for t in range(count):
        hq, hkv = heads[t % len(heads)]
        yield (*_qkv(rng, 2, hq, hkv, 7, 9, 4, 3, 1.5), {"causal": "top_left" if t % 2 else None})


def family_mqa(rng, count, big):
    """Multi-query attention: one KV head for every query head."""
    for t in range(count):
        yield (*_qkv(rng, 1, 4 + t, 1, 6, 11, 5, 4, 1.5), {})


def family_causal_top_left(rng, count, big):
    """causal_top_left (j ≤ i) at m < n, m > n and m = n."""
    shapes = [(6, 15), (15, 6), (8, 8), (1, 12)]
    for t in range(count):
        m, n = shapes[t % len(shapes)]
        yield (*_qkv(rng, 1, 2, 1, m, n, 4, 4, 2.0), {"causal": "top_left"})


def family_causal_bottom_right(rng, count, big):
    """causal_bottom_right (j ≤ i + n − m) at m < n, m > n (the first m − n rows fully masked), m = n."""
    shapes = [(6, 15), (15, 6), (8, 8), (12, 1)]
    for t in range(count):
        m, n = shapes[t % len(shapes)]
        yield (*_qkv(rng, 1, 2, 1, m, n, 4, 4, 2.0), {"causal": "bottom_right"})


def family_window(rng, count, big):
    """Sliding windows (left, right), causal or not, in both alignments, at m = n and m ≠ n."""
    setups = [((3, 0), "bottom_right", "bottom_right", 12, 12), ((2, 2), None, "bottom_right", 9, 14),
              ((0, 0), None, "top_left", 10, 10), ((None, 1), None, "top_left", 7, 13), ((4, None), "top_left", "top_left", 13, 8),
              ((1, 3), None, "bottom_right", 14, 6)]
    for t in range(count):
        window, causal, align, m, n = setups[t % len(setups)]
        yield (*_qkv(rng, 1, 2, 2, m, n, 4, 3, 1.5), {"window": window, "causal": causal, "window_alignment": align})


def family_bool_mask(rng, count, big):
    """Boolean masks (True = attend) of several broadcast shapes: m×n, B×1×m×n, key padding 1×1×1×n
    per batch, per head 1×Hq×m×n; about a third of the entries masked."""
    for t in range(count):
        b, hq, hkv, m, n = 2, 4, 2, 7, 11
        q, k, v = _qkv(rng, b, hq, hkv, m, n, 4, 3, 1.5)
        shape = [(m, n), (b, 1, m, n), (b, 1, 1, n), (1, hq, m, n)][t % 4]
        mask = rng.random(shape) < 0.65
        yield q, k, v, {"attn_mask": mask, "causal": "bottom_right" if t % 3 == 2 else None}


def family_bias(rng, count, big):
    """Additive bias: ALiBi-like slopes·(j − i), random biases, −inf entries (masked), broadcast shapes."""
    for t in range(count):
        b, hq, hkv, m, n = 1, 4, 2, 6, 13
        q, k, v = _qkv(rng, b, hq, hkv, m, n, 4, 3, 1.5)
        if t % 3 == 0:
            slopes = 2.0 ** -np.arange(1, hq + 1)
            bias = slopes[None, :, None, None] * (np.arange(n)[None, None, None, :] - np.arange(m)[None, None, :, None])
        else:
            bias = rng.uniform(-4, 4, (1, hq, m, n) if t % 3 == 1 else (m, n))
        bias = np.where(rng.random(bias.shape) < 0.2, -np.inf, bias)
        yield q, k, v, {"bias": bias, "causal": "top_left" if t % 2 else None}


def family_fully_masked(rng, count, big):
    """Rows with no visible key, by a boolean mask row, a −inf bias row, a window past the keys and
    bottom-right causal at m > n; the spec's answer there is 0."""
    for t in range(count):
        b, hq, hkv, m, n = 1, 2, 1, 6, 8
        q, k, v = _qkv(rng, b, hq, hkv, m, n, 4, 3, 1.5)
        kind = t % 4
        if kind == 0:
            mask = rng.random((m, n)) < 0.7
            mask[1] = False
            mask[4] = False
            yield q, k, v, {"attn_mask": mask}
        elif kind == 1:
            bias = rng.uniform(-2, 2, (1, hq, m, n))
            bias[0, 1, 2] = -np.inf
            yield q, k, v, {"bias": bias}
        elif kind == 2:
            yield q, k[:, :, :3], v[:, :, :3], {"window": (0, 0), "window_alignment": "top_left"}
        else:
            yield q, k[:, :, :2], v[:, :, :2], {"causal": "bottom_right"}


def family_batch(rng, count, big):
    """B > 1 with per-sequence key padding (a different valid length per batch entry)."""
    for t in range(count):
        b, m, n = 3, 5, 9
        q, k, v = _qkv(rng, b, 2, 2, m, n, 4, 4, 1.5)
        lengths = np.array([9, 4, 1]) if t % 2 == 0 else rng.integers(1, n + 1, b)
        mask = np.arange(n)[None, None, None, :] < lengths[:, None, None, None]
        yield q, k, v, {"attn_mask": mask}


def family_large_logits(rng, count, big):
    """Logits up to ±400 with a causal mask: the visible row maximum must be the shift."""
    for t in range(count):
        q, k, v = _qkv(rng, 1, 2, 1, 8, 10, 3, 3)
        k /= np.maximum(np.abs(k).sum(axis=-1, keepdims=True), 1e-300)
        q = np.sign(q) * 400.0
        yield q, k, v, {"causal": "bottom_right" if t % 2 else "top_left", "scale": Fraction(1)}


def family_long_rows(rng, count, big):
    """Long rows (n = 2048, thorough 8192) with GQA and causal/window masks, judged on row subsets."""
    n = 8192 if big else 2048
    for t in range(count):
        opts: dict[str, Any] = [{"causal": "bottom_right"}, {"window": (n // 4, 0), "causal": "bottom_right"}][t % 2]
        yield (*_qkv(rng, 1, 4, 2, 4, n, 16, 8, 1.0), opts)


FAMILIES: dict[str, Callable] = {
    "multihead": family_multihead,
    "decode": family_decode,
    "cross": family_cross,
    "gqa": family_gqa,
    "mqa": family_mqa,
    "causal_top_left": family_causal_top_left,
    "causal_bottom_right": family_causal_bottom_right,
    "window": family_window,
    "bool_mask": family_bool_mask,
    "bias": family_bias,
    "fully_masked": family_fully_masked,
    "batch": family_batch,
    "large_logits": family_large_logits,
    "long_rows": family_long_rows,
}
COUNTS = {
    "quick": {"multihead": 2, "decode": 2, "cross": 3, "gqa": 2, "mqa": 1, "causal_top_left": 4, "causal_bottom_right": 4, "window": 6,
              "bool_mask": 4, "bias": 3, "fully_masked": 4, "batch": 2, "large_logits": 2, "long_rows": 2},
    "thorough": {"multihead": 6, "decode": 8, "cross": 10, "gqa": 8, "mqa": 4, "causal_top_left": 8, "causal_bottom_right": 8, "window": 12,
                 "bool_mask": 12, "bias": 9, "fully_masked": 8, "batch": 6, "large_logits": 6, "long_rows": 4},
}
PROFILES = ("quick", "thorough")


class Sdpa(Problem):
    """Scaled dot-product attention with masks, GQA/MQA and m ≠ n: backend method ``sdpa``."""

    name = PROBLEM
    method = METHOD
    case_type = Case
    profiles = PROFILES

    def __init__(self) -> None:
        self._enclosures: "weakref.WeakKeyDictionary[Any, dict[tuple, Any]]" = weakref.WeakKeyDictionary()
        self._tolerances: "weakref.WeakKeyDictionary[Any, dict[tuple, tuple[np.ndarray, str | None]]]" = weakref.WeakKeyDictionary()

    def validate_variants(self, value: Any) -> dict[str, Any]:
        """The backend's ``variants["sdpa"]`` declaration, checked (:func:`validate_variants`)."""
        return validate_variants(value)

    def families(self) -> list[str]:
        return list(FAMILIES)

    def generate_cases(self, profile: str = "quick", dtypes: tuple[str, ...] = ("float64",), seed: int = 0) -> list:
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; choose from {PROFILES}")
        big = profile == "thorough"
        cases = []
        for dtype in dtypes:
            for family, recipe in FAMILIES.items():
                fam_seed = family_seed(seed, family, 11)
                rng = np.random.default_rng(fam_seed)
                for index, (q, k, v, opts) in enumerate(recipe(rng, COUNTS[profile][family], big)):
                    cases.append(self.make_case(family, index, fam_seed, dtype, q, k, v, opts))
        return cases

    def make_case(self, family: str, index: int, seed: int, dtype: str, q: Any, k: Any, v: Any, opts: dict[str, Any]) -> Case:
        q, k, v = (cast_to(x, dtype) for x in (q, k, v))
        opts = dict(opts)
        scale = opts.pop("scale", None)
        scale = default_scale(q.shape[-1]) if scale is None else scale
        opts["scale"] = Fraction(float(np.asarray(float(scale), dtype=dtype)))  # the scale the backend receives
        if opts.get("bias") is not None:
            with np.errstate(over="ignore"):
                opts["bias"] = np.asarray(opts["bias"], dtype=np.float64).astype(dtype)
        inst = make_instance(q, k, v, **opts)
        return Case(f"{PROBLEM}/{dtype}/{family}/{index:03d}", family, dtype, seed, inst)

    # --- applicability and tolerance --------------------------------------------------------------
    def not_applicable_reasons(self, case: Any, caps: Any) -> list[str]:
        inst: SdpaInstance = case.instance
        reasons = self.declaration_reasons(caps, dtype=case.dtype, n=inst.n, d=inst.d)
        if getattr(caps, "contract_eps", None) is not None:
            reasons.append("sdpa has no contract (ε_a) tolerance: only precision-model backends are judged")
        supported, convention = declared_variants(caps)
        missing = sorted(variant_tags(inst) - supported)
        if missing:
            reasons.append(f"case uses sdpa variant(s) {', '.join(missing)} that the backend does not declare "
                           f"(declared: {', '.join(sorted(supported))})")
        if convention != "zero":
            empty = fully_masked_rows(inst)
            if empty.size:
                reasons.append(f"case has {empty.size} fully masked row(s); the backend declares fully_masked = "
                               f"{convention!r} where the spec defines 0")
        if not reasons and case.dtype in caps.dtypes:
            tol, why = self._tolerance(case, caps)
            if why is not None:
                reasons.append(why)
            elif not np.isfinite(tol).all():
                reasons.append(f"the {caps.precision_for(case.dtype).fmt} precision model is vacuous here "
                               f"(n = {inst.n}, d = {inst.d}): nothing can be promised")
        if not reasons and inst.bias is not None:
            model = caps.precision_for(case.dtype)
            if scale_rounding_error(inst.scale, case.dtype, model.fmt) > scale_rounding_error(inst.scale, "float64", model.fmt):
                reasons.append("the scale is not a float of the case dtype and the case has a bias: the bias view of "
                               "the precision model does not cover that rounding")
        return reasons

    def _tolerance(self, case: Any, caps: Any) -> tuple[np.ndarray, str | None]:
        model = caps.precision_for(case.dtype)
        rows = case_rows(case)
        key = (model, rows.tobytes())
        per = self._tolerances.setdefault(case.instance, {})
        if key not in per:
            tol, why = precision_rows_tolerance(case.instance, rows, model)
            tol.flags.writeable = False
            per[key] = (tol, why)
        return per[key]

    def tolerance_for(self, case: Any, caps: Any) -> tuple[np.ndarray, dict[str, Any]]:
        """τ for the certified rows (len(rows)×dv, read-only) and where it came from."""
        tol, _ = self._tolerance(case, caps)
        model = caps.precision_for(case.dtype)
        return tol, {"kind": "precision_model", "model": copy.deepcopy(model.__dict__),
                     "per_row": "softmax model with n = the row's visible key count"}

    # --- the call and the verdict -----------------------------------------------------------------
    def request(self, case: Any) -> tuple[str, str, tuple, dict]:
        inst: SdpaInstance = case.instance
        kwargs = {"scale": float(inst.scale), "causal": inst.causal, "window": inst.window,
                  "window_alignment": inst.window_alignment, "attn_mask": inst.attn_mask, "bias": inst.bias}
        return "call", METHOD, (inst.q, inst.k, inst.v), kwargs

    def expected_output_elements(self, case: Any) -> int:
        return int(np.prod(case.instance.output_shape))

    def enclosure(self, inst: SdpaInstance, rows: np.ndarray, prec: int) -> Any:
        per = self._enclosures.setdefault(inst, {})
        key = (rows.tobytes(), prec)
        if key not in per:
            per[key] = enclose(inst, prec, rows)
        return per[key]

    def judge(self, case: Any, output: Any, caps: Any, *, max_prec: int = 1024, tolerance: Any = None) -> Verdict:
        """Certified verdict on the certified rows of ``output`` (the whole output must still be a
        finite array of the output shape: NaN in a row that is not certified is an error too)."""
        inst: SdpaInstance = case.instance
        tol, source = tolerance if tolerance is not None else self.tolerance_for(case, caps)
        try:
            y = coerce_output(output, inst.output_shape)
        except OutputError as exc:
            evidence: dict[str, Any] = {"kind": "bad_output"}
            if exc.index is not None:
                evidence["worst_index"] = list(exc.index)
            return Verdict(ERROR, str(exc), evidence)
        rows = case_rows(case)
        y_rows = y.reshape(-1, inst.dv)[rows]
        verdict = judge(y_rows, lambda prec: self.enclosure(inst, rows, prec), tol, max_prec=max_prec)
        if "worst_index" in verdict.evidence:
            pos, col = verdict.evidence["worst_index"]
            b, h, i = inst.row_coords(int(rows[pos]))
            verdict.evidence["worst_index"] = [b, h, i, int(col)]
            verdict.message += f" (entry [b, h, i, l] = {[b, h, i, int(col)]})"
        verdict.evidence["certified_rows"] = int(len(rows))
        verdict.evidence["tolerance_source"] = source
        verdict.evidence["conditioning"] = self.conditioning(inst, rows)
        return verdict

    def conditioning(self, inst: SdpaInstance, rows: np.ndarray | None = None) -> dict[str, Any]:
        return conditioning(inst, certified_rows(inst) if rows is None else rows)

    def shape(self, case: Any) -> list[int]:
        inst = case.instance
        return [inst.batch, inst.hq, inst.hkv, inst.m, inst.n, inst.d, inst.dv]

    # --- case files ---------------------------------------------------------------------------------
    def instance_arrays(self, inst: SdpaInstance) -> dict[str, np.ndarray]:
        """q, k, v; the boolean mask as 0/1 in the case dtype (case files hold one dtype); the bias."""
        out = {"q": inst.q, "k": inst.k, "v": inst.v}
        if inst.attn_mask is not None:
            out["attn_mask"] = inst.attn_mask.astype(inst.q.dtype)
        if inst.bias is not None:
            out["bias"] = inst.bias
        return out

    def instance_params(self, inst: SdpaInstance) -> dict[str, Any]:
        """Scalars only (the case-file schema): the window as its two sides (both None: no window)."""
        left, right = (None, None) if inst.window is None else inst.window
        return {"scale": str(inst.scale), "causal": inst.causal, "window_left": left, "window_right": right,
                "window_alignment": inst.window_alignment}

    def instance_from_files(self, arrays: dict[str, np.ndarray], params: dict[str, Any]) -> SdpaInstance:
        mask = arrays.get("attn_mask")
        if mask is not None:
            if not np.isin(mask, (0, 1)).all():
                raise ValueError("sdpa case file: attn_mask must hold only 0 and 1")
            mask = mask.astype(bool)
        window = (params.get("window_left"), params.get("window_right"))
        return make_instance(arrays["q"], arrays["k"], arrays["v"], scale=fraction_or_none(params["scale"]),
                             causal=params.get("causal"), window=window,
                             window_alignment=params.get("window_alignment"), attn_mask=mask, bias=arrays.get("bias"))


problem = register(Sdpa())

__all__ = ["Case", "Sdpa", "VARIANTS", "FULLY_MASKED_CONVENTIONS", "certified_rows", "declared_variants",
           "precision_rows_tolerance", "row_view", "validate_variants", "problem"]
