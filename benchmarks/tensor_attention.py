"""``attnspec bench tensor``: exact (blocked online softmax) vs polynomial tensor attention, side by side.

For each n: best-of-k wall time of both methods on the same random instance (entries uniform in
[−B, B], s = 1/d as in Alman–Song), their ratio, and the measured max-abs difference between the two
outputs (must be ≤ ε_a: the polynomial method's contract, up to the exact kernel's own ~1e-15). Then
exponents fitted to time ≈ c·n^a (exact ≈ k, polynomial ≈ 1), and a sweep over B across the
threshold ∛log n (polynomial degree g, feature rank r, time).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from attnspec.accelerated import polynomial_features as pf
from attnspec.accelerated.tensor_attention import polynomial_degree_and_eps, polynomial_tensor_attention, tensor_attention
from attnspec.spec.validation import SpecError
from attnspec.bench.timing import emit, fit_exponent, machine_description, time_call


def _instance(rng, n: int, d: int, bound: float, order: int):
    q = rng.uniform(-bound, bound, (n, d))
    keys = [rng.uniform(-bound, bound, (n, d)) for _ in range(order - 1)]
    values = [rng.uniform(-bound, bound, (n, d)) for _ in range(order - 1)]
    return q, keys, values


def _poly_shape(d: int, bound: float, order: int, eps: float) -> dict[str, Any]:
    radius, eps_rel = polynomial_degree_and_eps(order, d, bound, 1.0 / d, eps)
    poly = pf.choose_polynomial(radius, eps_rel)
    degree = int(getattr(poly, "degree", len(getattr(poly, "coeffs", [])) - 1))
    return {"logit_radius": radius, "eps_rel": eps_rel, "degree": degree, "rank": int(pf.rank(d, degree))}


def run(ns: list[int], d: int, bound: float, eps: float, order: int = 3, repeats: int = 3,
        b_sweep: list[float] | None = None, seed: int = 0, poly_ns: list[int] | None = None) -> dict[str, Any]:
    """Measure both methods over ``ns`` (and the polynomial method over ``b_sweep``); returns a dict."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in ns:
        q, keys, values = _instance(rng, n, d, bound, order)
        scale = 1.0 / d
        exact_out = tensor_attention(q, keys, values, scale=scale)
        poly_out = polynomial_tensor_attention(q, keys, values, scale=scale, bound=bound, eps=eps)
        t_exact = time_call(lambda: tensor_attention(q, keys, values, scale=scale), repeats=repeats, warmup=False)
        t_poly = time_call(lambda: polynomial_tensor_attention(q, keys, values, scale=scale, bound=bound, eps=eps),
                           repeats=repeats)
        rows.append({
            "n": n,
            "exact_s": t_exact.best,
            "poly_s": t_poly.best,
            "speedup": t_exact.best / t_poly.best,
            "max_abs_diff": float(np.abs(exact_out - poly_out).max()),
        })
    result: dict[str, Any] = {
        "benchmark": "tensor attention: exact blocked vs polynomial",
        "order": order, "d": d, "bound": bound, "eps": eps, "repeats": repeats, "scale": "1/d",
        "polynomial": _poly_shape(d, bound, order, eps),
        "rows": rows,
        "machine": machine_description(),
    }
    if len(ns) >= 2:
        result["exponent_exact"] = fit_exponent(ns, [r["exact_s"] for r in rows])
        result["exponent_poly"] = fit_exponent(ns, [r["poly_s"] for r in rows])
    if poly_ns:
        # The polynomial method alone at sizes where the exact one would take minutes to hours:
        # its fitted exponent is only meaningful once per-call overheads are amortised.
        poly_rows = []
        for n in poly_ns:
            q, keys, values = _instance(rng, n, d, bound, order)
            t = time_call(lambda: polynomial_tensor_attention(q, keys, values, scale=1.0 / d, bound=bound, eps=eps),
                          repeats=repeats)
            poly_rows.append({"n": n, "poly_s": t.best})
        result["poly_only"] = {"rows": poly_rows}
        if len(poly_ns) >= 2:
            result["poly_only"]["exponent"] = fit_exponent(poly_ns, [r["poly_s"] for r in poly_rows])
    if b_sweep:
        n = ns[-1]
        threshold = math.log(n) ** (1.0 / order)
        sweep = []
        for b in b_sweep:
            q, keys, values = _instance(rng, n, d, b, order)
            try:
                shape = _poly_shape(d, b, order, eps)
            except SpecError as exc:  # float64 cannot reach ε at this R: say so instead of timing garbage
                sweep.append({"bound": b, "bound_over_threshold": b / threshold, "refused": str(exc)})
                continue
            t = time_call(lambda: polynomial_tensor_attention(q, keys, values, scale=1.0 / d, bound=b, eps=eps), repeats=repeats)
            sweep.append({"bound": b, "bound_over_threshold": b / threshold, **shape, "poly_s": t.best})
        result["b_sweep"] = {"n": n, "threshold_(log n)^(1/k)": threshold, "rows": sweep}
    return result


def _main(args) -> int:
    result = run(args.n, args.d, args.bound, args.eps, args.order, args.repeats, args.b_sweep, args.seed, args.poly_n)
    if args.json:
        emit(result, as_json=True)
        return 0
    print(f"{result['benchmark']}  k={args.order} d={args.d} B={args.bound} eps={args.eps}  polynomial {result['polynomial']}")
    print(f"{'n':>7} {'exact s':>10} {'poly s':>10} {'speedup':>9} {'max|diff|':>10}")
    for r in result["rows"]:
        print(f"{r['n']:>7} {r['exact_s']:>10.4g} {r['poly_s']:>10.4g} {r['speedup']:>9.1f} {r['max_abs_diff']:>10.2e}")
    if "exponent_exact" in result:
        print(f"fitted exponents: exact {result['exponent_exact']:.2f}, polynomial {result['exponent_poly']:.2f}")
    if "poly_only" in result:
        rows = ", ".join(f"n={r['n']}: {r['poly_s']:.4g} s" for r in result["poly_only"]["rows"])
        print(f"polynomial only: {rows}")
        if "exponent" in result["poly_only"]:
            print(f"fitted exponent (polynomial, large n): {result['poly_only']['exponent']:.2f}")
    if "b_sweep" in result:
        s = result["b_sweep"]
        print(f"B sweep at n={s['n']} ((log n)^(1/k) = {s['threshold_(log n)^(1/k)']:.3f}):")
        for r in s["rows"]:
            if "refused" in r:
                print(f"  B={r['bound']:<6g} B/thr={r['bound_over_threshold']:.2f} refused: {r['refused'][:110]}")
                continue
            print(f"  B={r['bound']:<6g} B/thr={r['bound_over_threshold']:.2f} R={r['logit_radius']:.3g} g={r['degree']} r={r['rank']} poly {r['poly_s']:.4g} s")
    return 0


def register(bench_sub) -> None:
    """Add ``attnspec bench tensor`` to the bench sub-parsers."""
    p = bench_sub.add_parser("tensor", help="tensor attention: exact blocked vs polynomial method, side by side")
    p.add_argument("--n", type=int, nargs="+", default=[128, 256, 512, 1024], help="sequence lengths")
    p.add_argument("--d", type=int, default=3)
    p.add_argument("--bound", type=float, default=1.0, help="entry bound B")
    p.add_argument("--eps", type=float, default=1e-6, help="contract tolerance ε_a")
    p.add_argument("--order", type=int, default=3, help="k (3: third-order attention)")
    p.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    p.add_argument("--b-sweep", type=float, nargs="*", default=None, help="entry bounds for the B sweep (at the largest n)")
    p.add_argument("--poly-n", type=int, nargs="*", default=None, help="extra sizes for the polynomial method alone")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_main)
