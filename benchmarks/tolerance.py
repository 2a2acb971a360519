"""``attnspec bench tolerance``: how tight the precision-model tolerances are, measured.

(a) **Slack on correct implementations.** Every softmax case of a profile (``--profile``, float32 and
    float64) is run on correct backends (the builtin numpy and torch backends, and a tiled online
    softmax with 128-key tiles in the case's dtype) and each case's worst certified error/tolerance
    ratio max_il |y_il − o_il|⁺/τ_il is reported (median and maximum per backend and dtype, and per
    family). |y − o|⁺ is the certified upper bound from a reference much tighter than τ: the fast float64
    enclosure for float32 cases, the Arb enclosure (128 bits, the case's rows) for float64 cases.
    A median of 0.01 means the tolerance is 100× the error that correct code makes on that profile.
(b) **The smallest relative bug each tolerance can still miss.** For soft long rows (|logits| ≲ 1,
    d = 64, values 3 ± ½) at ``--n`` keys, τ on 16 rows (first, last, 14 random) against the exact
    output: an output off by the relative factor δ passes every checked entry when δ < min τ_il/|o_il|,
    and is certainly caught when δ exceeds it by the reference radius. Reported per format (and for
    float32 with a declared 128-key tile, ``float32@128``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from fractions import Fraction
from typing import Any, Callable, Sequence

import numpy as np

from attnspec.bench.timing import emit, machine_description


class OnlineSoftmax:
    """A correct tiled online softmax (FlashAttention's recurrence) in the case's dtype, 128-key tiles."""

    capabilities = {"dtypes": {"float64", "float32"}}
    block = 128

    def attention(self, q, k, v, *, scale):
        f = q.dtype.type
        m = np.full((q.shape[0], 1), -np.inf, dtype=f)
        ell = np.zeros((q.shape[0], 1), dtype=f)
        acc = np.zeros((q.shape[0], v.shape[1]), dtype=f)
        for j0 in range(0, k.shape[0], self.block):
            s = (q @ k[j0:j0 + self.block].T) * f(scale)
            m_new = np.maximum(m, s.max(axis=1, keepdims=True))
            alpha = np.exp(m - m_new)
            p = np.exp(s - m_new)
            ell = ell * alpha + p.sum(axis=1, keepdims=True)
            acc = acc * alpha + p @ v[j0:j0 + self.block]
            m = m_new
        return acc / ell


def _backends() -> dict[str, Callable[[], Any]]:
    from attnspec.conformance.harness.builtin_backends import numpy_backend

    out: dict[str, Callable[[], Any]] = {"numpy": numpy_backend, "online-128": OnlineSoftmax}
    try:
        import torch  # noqa: F401

        from attnspec.conformance.harness.builtin_backends import torch_backend

        out["torch"] = torch_backend
    except ImportError:
        pass
    return out


def _tight_reference(problem: Any, case: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A function y ↦ certified upper bounds of |y − o| on the case's checked rows, from a reference
    far tighter than its tolerance: the fast float64 bounds for float32 cases (their radius is ~10⁻⁹ of
    τ), Arb balls at 128 bits for float64 cases, the error bound taken from the ball exactly (outward
    float bounds would add an ulp of o, a sizeable part of a float64 τ)."""
    rows = None if case.rows is None else np.asarray(case.rows, dtype=np.int64)
    if case.dtype == "float32":
        lo, hi = problem.fast_engine()(case.instance, rows).float_bounds()
        return lambda y: np.maximum(np.abs(y - lo), np.abs(hi - y))
    enc = problem.enclose(case.instance, 128) if rows is None else problem.arb_rows_engine()(case.instance, 128, rows)

    def err(y: np.ndarray) -> np.ndarray:
        from flint import arb

        flat = [float((arb(float(yi)) - b).abs_upper()) for yi, b in zip(y.reshape(-1).tolist(), enc.balls)]
        return np.nextafter(np.array(flat).reshape(y.shape), np.inf)  # float() rounds to nearest: step up

    return err


def slack(profile: str, dtypes: Sequence[str] = ("float32", "float64")) -> dict[str, Any]:
    """Per backend and dtype: the median and max over applicable cases of each case's worst certified
    error/tolerance ratio (and per family)."""
    from attnspec.conformance.harness.backends import read_capabilities
    from attnspec.conformance.harness.isolation import InProcessRunner
    from attnspec.conformance.harness.runner import call_backend
    from attnspec.conformance.judging.softmax_attention import problem

    cases = problem.generate_cases(profile, tuple(dtypes))
    bounds = {}
    out: dict[str, Any] = {}
    for name, factory in _backends().items():
        backend = factory()
        runner, caps = InProcessRunner(backend), read_capabilities(backend)
        ratios: dict[str, list[float]] = defaultdict(list)
        fams: dict[tuple[str, str], list[float]] = defaultdict(list)
        skipped = 0
        for case in cases:
            _, pending = call_backend(case, runner, caps)
            if pending is None:
                skipped += 1
                continue
            tol = np.asarray(pending.tolerance[0], dtype=np.float64)
            if not np.isfinite(tol).all():
                skipped += 1
                continue
            if case.case_id not in bounds:
                bounds[case.case_id] = _tight_reference(problem, case)
            y = np.asarray(pending.output, dtype=np.float64)
            if case.rows is not None:
                y = y[np.asarray(case.rows)]
            err = bounds[case.case_id](y)
            with np.errstate(divide="ignore", invalid="ignore"):
                r = float(np.max(np.where(tol > 0, err / tol, np.where(err > 0, np.inf, 0.0)))) if err.size else 0.0
            ratios[case.dtype].append(r)
            fams[(case.dtype, case.family)].append(r)
        out[name] = {
            dt: {"cases": len(v), "median_ratio": float(np.median(v)), "max_ratio": float(np.max(v)),
                 "slack_median": float(1 / np.median(v)) if np.median(v) > 0 else None,
                 "families": {f: {"cases": len(fv), "median_ratio": float(np.median(fv))}
                              for (d2, f), fv in sorted(fams.items()) if d2 == dt}}
            for dt, v in sorted(ratios.items())
        }
        out[name]["not_applicable_or_error"] = skipped
    return out


def _model(spec: str) -> Any:
    """``"float32"`` → PrecisionModel("float32"); ``"float32@128"`` → the same with key_block = 128 (a
    backend that declares its key tile: at most ⌈n/128⌉ − 1 rescales instead of n)."""
    from attnspec.conformance.judging.precision_model import PrecisionModel

    fmt, _, block = spec.partition("@")
    return PrecisionModel(fmt, key_block=int(block) if block else None)


def sensitivity(sizes: Sequence[int], formats: Sequence[str] = ("float16", "bfloat16", "float32", "float32@128", "float64"),
                d: int = 64, seed: int = 0) -> list[dict[str, Any]]:
    """min and median of τ_il/|o_il| over 16 rows of a soft long-row instance, per format and n."""
    from attnspec.conformance.judging.precision_model import softmax_tolerance
    from attnspec.reference.fast_softmax import enclose_fast
    from attnspec.spec.softmax_attention import make_instance

    rows_out = []
    for n in sizes:
        rng = np.random.default_rng(seed + n)
        q = rng.uniform(-1, 1, (n, d))
        k = rng.uniform(-1, 1, (n, d))
        v = 3.0 + rng.uniform(-0.5, 0.5, (n, d))
        inst = make_instance(q, k, v, scale=Fraction(1, 8))
        rows = np.unique(np.concatenate([[0, n - 1], rng.choice(n, size=min(14, n), replace=False)]))
        enc = enclose_fast(inst, rows=rows)
        o = np.abs(enc.mid())
        entry: dict[str, Any] = {"n": n, "d": d, "rows": int(rows.size), "max_reference_radius_rel": float((enc.rad() / o).max())}
        for fmt in formats:
            t0 = time.perf_counter()
            model = _model(fmt)
            tau = softmax_tolerance(inst, model, rows=rows)
            rel = tau / o
            entry[fmt] = {"min_rel_tolerance": float(rel.min()), "median_rel_tolerance": float(np.median(rel)),
                          "in_ulps_of_format": float(np.median(rel) / model.u / 2),
                          "seconds": time.perf_counter() - t0}
        rows_out.append(entry)
    return rows_out


def run(args: argparse.Namespace) -> int:
    command = " ".join(["attnspec bench tolerance"] + sys.argv[3:]) if len(sys.argv) > 2 else "attnspec bench tolerance"
    result = {
        "benchmark": "precision-model tolerance: slack on correct backends, smallest relative bug that can pass",
        "command": command,
        "machine": machine_description(),
        "a_slack": {"profile": args.profile, "by_backend": slack(args.profile)},
        "b_sensitivity": sensitivity(args.n),
    }
    emit(result, as_json=args.json)
    return 0


def register(bench_subparsers) -> None:
    p = bench_subparsers.add_parser("tolerance", help="tolerance slack on correct backends and the smallest bug it can miss")
    p.add_argument("--profile", choices=("quick", "thorough"), default="quick", help="case profile for the slack figures")
    p.add_argument("--n", type=int, nargs="*", default=[256, 1024, 4096, 16384], help="sizes for the sensitivity table")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


__all__ = ["register", "slack", "sensitivity", "OnlineSoftmax"]
