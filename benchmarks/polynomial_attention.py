"""``attnspec bench attention``: exact vs polynomial-method softmax attention, side by side in one run.

    attnspec bench attention [--n N ...] [--d 4] [--bound 1] [--eps 1e-6] [--scale S] [--json] [--plot DIR]

1. Headline: at ``--headline-n`` (default the largest n), best-of-k wall time of the accelerated exact attention
   (:func:`attnspec.accelerated.softmax_attention.softmax_attention`) and of the polynomial method, and
   their ratio.
2. n sweep: both methods over the given n (exact only up to ``--exact-max-n``); least-squares
   exponents of time in n on log-log axes (exact over n ≥ ``--fit-min-n``; the polynomial method over
   n ≥ ``--poly-fit-min-n``, below which its fixed per-call costs dominate), and the crossover n.
3. B sweep at fixed n: degree g, rank r = binom(d+g, g) and time of the polynomial method as B grows
   from well below to above √(ln n) (the threshold of Alman–Song's theorem), refusals included.
PNG plots of both sweeps with ``--plot DIR`` when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

import numpy as np

from attnspec.bench.timing import crossover, emit, fit_exponent, machine_description, time_call

DEFAULT_NS = [2**k for k in range(10, 17)]
DEFAULT_B_SWEEP = [0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]


def _exact_attention():
    from attnspec.accelerated.softmax_attention import softmax_attention

    return softmax_attention


def _inputs(n: int, d: int, bound: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    return tuple(rng.uniform(-bound, bound, (n, d)) for _ in range(3))


def _time_poly(q, k, v, *, scale, bound, eps, repeats):
    from attnspec.accelerated.polynomial_attention import polynomial_attention

    return time_call(lambda: polynomial_attention(q, k, v, scale=scale, bound=bound, eps=eps), repeats=repeats).best


def _time_exact(q, k, v, *, scale, repeats, warmup=True):
    exact = _exact_attention()
    return time_call(lambda: exact(q, k, v, scale=scale), repeats=repeats, warmup=warmup).best


def run_benchmark(ns: list[int], d: int, bound: float, eps: float, scale: float, *, exact_max_n: int,
                  fit_min_n: int, b_sweep: list[float], b_sweep_n: int, repeats: int,
                  headline_n: int | None = None, poly_fit_min_n: int | None = None) -> dict[str, Any]:
    """All three parts; returns a JSON-ready dict (seconds are best-of-``repeats``)."""
    from attnspec.accelerated.polynomial_attention import plan_polynomial_attention
    from attnspec.spec.validation import SpecError

    ns = sorted(set(int(n) for n in ns))
    n_top = ns[-1] if headline_n is None else int(headline_n)
    if n_top not in ns:
        ns = sorted(ns + [n_top])
    plan = plan_polynomial_attention(n_top, d, bound=bound, scale=scale, eps=eps)
    q, k, v = _inputs(n_top, d, bound)
    poly_top = _time_poly(q, k, v, scale=scale, bound=bound, eps=eps, repeats=max(repeats, 3))
    # exact at the top n is expensive: no warm-up run, at least 2 timed runs
    exact_top = _time_exact(q, k, v, scale=scale, repeats=max(2, repeats - 1), warmup=False)
    result: dict[str, Any] = {
        "benchmark": "attention: exact (accelerated online softmax) vs polynomial method",
        "machine": machine_description(),
        "params": {"d": d, "bound": bound, "eps": eps, "scale": scale, "repeats": repeats},
        "headline": {"n": n_top, "degree": plan.degree, "rank": plan.rank, "exact_s": exact_top,
                     "poly_s": poly_top, "speedup": exact_top / poly_top},
    }
    sweep = []
    for n in ns:
        q, k, v = _inputs(n, d, bound, seed=n)
        row = {"n": n, "poly_s": poly_top if n == n_top else _time_poly(q, k, v, scale=scale, bound=bound, eps=eps, repeats=repeats)}
        if n == n_top:
            row["exact_s"] = exact_top
        elif n <= exact_max_n or n < n_top:
            row["exact_s"] = _time_exact(q, k, v, scale=scale, repeats=repeats)
        sweep.append(row)
    poly_fit = [r for r in sweep if r["n"] >= (fit_min_n if poly_fit_min_n is None else poly_fit_min_n)]
    exact_fit = [r for r in sweep if "exact_s" in r and r["n"] >= fit_min_n]
    both = [r for r in sweep if "exact_s" in r]
    result["n_sweep"] = {
        "rows": sweep,
        "poly_exponent": fit_exponent([r["n"] for r in poly_fit], [r["poly_s"] for r in poly_fit]) if len(poly_fit) > 1 else None,
        "exact_exponent": fit_exponent([r["n"] for r in exact_fit], [r["exact_s"] for r in exact_fit]) if len(exact_fit) > 1 else None,
        "fit_min_n": fit_min_n,
        "poly_fit_min_n": fit_min_n if poly_fit_min_n is None else poly_fit_min_n,
        "crossover_n": crossover([r["n"] for r in both], [r["exact_s"] for r in both], [r["poly_s"] for r in both]) if both else None,
    }
    b_rows = []
    q, k, v = _inputs(b_sweep_n, d, 1.0, seed=1)
    exact_b = _time_exact(q, k, v, scale=scale, repeats=repeats)
    for b in b_sweep:
        b_row: dict[str, Any] = {"bound": b, "logit_radius": b * b * abs(scale) * d}
        try:
            p = plan_polynomial_attention(b_sweep_n, d, bound=b, scale=scale, eps=eps)
            b_row.update(degree=p.degree, rank=p.rank,
                         poly_s=_time_poly(q * b, k * b, v * b, scale=scale, bound=b, eps=eps, repeats=repeats))
        except SpecError as exc:
            b_row["refused"] = str(exc).split(":")[0]
        b_rows.append(b_row)
    result["b_sweep"] = {"n": b_sweep_n, "sqrt_log_n": math.sqrt(math.log(b_sweep_n)), "exact_s": exact_b, "rows": b_rows}
    return result


def plot(result: dict[str, Any], directory: str) -> list[str]:
    """Write n-sweep and B-sweep PNGs; returns the paths (empty without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    os.makedirs(directory, exist_ok=True)
    paths = []
    rows = result["n_sweep"]["rows"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog([r["n"] for r in rows], [r["poly_s"] for r in rows], "o-", label=f"polynomial (fit n^{result['n_sweep']['poly_exponent']:.2f})")
    ex = [r for r in rows if "exact_s" in r]
    ax.loglog([r["n"] for r in ex], [r["exact_s"] for r in ex], "s-", label=f"exact (fit n^{result['n_sweep']['exact_exponent']:.2f})")
    ax.set_xlabel("n")
    ax.set_ylabel("seconds (best of k)")
    ax.set_title(f"d={result['params']['d']}, B={result['params']['bound']}, eps={result['params']['eps']}")
    ax.legend()
    paths.append(_save(plt, fig, directory, "attention_n_sweep.png"))
    b = result["b_sweep"]
    ok = [r for r in b["rows"] if "rank" in r]
    fig, ax1 = plt.subplots(figsize=(6, 4))
    ax1.semilogy([r["bound"] for r in ok], [r["rank"] for r in ok], "o-", label="rank r")
    ax1.semilogy([r["bound"] for r in ok], [r["poly_s"] * 1e3 for r in ok], "s--", label="poly time (ms)")
    ax1.axhline(b["exact_s"] * 1e3, color="gray", ls=":", label="exact time (ms)")
    ax1.axvline(b["sqrt_log_n"], color="red", ls="-.", label="√ln n")
    for r in b["rows"]:
        if "refused" in r:
            ax1.axvline(r["bound"], color="black", alpha=0.2)
    ax1.set_xlabel("entry bound B")
    ax1.set_title(f"n={b['n']}: polynomial method vs B (grey: refused)")
    ax1.legend()
    paths.append(_save(plt, fig, directory, "attention_b_sweep.png"))
    return paths


def register(bench_sub: Any) -> None:
    p = bench_sub.add_parser("attention", help="exact vs polynomial-method attention: time, exponents, crossover, B threshold")
    p.add_argument("--n", type=int, nargs="+", default=DEFAULT_NS, help="sequence lengths (headline at the largest)")
    p.add_argument("--d", type=int, default=4)
    p.add_argument("--bound", type=float, default=1.0)
    p.add_argument("--eps", type=float, default=1e-6)
    p.add_argument("--scale", type=float, default=None, help="default 1/d")
    p.add_argument("--headline-n", type=int, default=None, help="n of the side-by-side headline (default: the largest --n)")
    p.add_argument("--exact-max-n", type=int, default=2**15, help="largest n above the headline n also timed for exact")
    p.add_argument("--fit-min-n", type=int, default=2**12, help="smallest n used in the exponent fits")
    p.add_argument("--poly-fit-min-n", type=int, default=2**14,
                   help="smallest n in the polynomial method's fit (below it fixed per-call costs dominate)")
    p.add_argument("--b-sweep", type=float, nargs="+", default=DEFAULT_B_SWEEP)
    p.add_argument("--b-sweep-n", type=int, default=2**14)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", metavar="DIR", default=None)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from attnspec.spec.validation import SpecError

    if min(args.n) < 1 or args.d < 1 or args.repeats < 1:
        print("attnspec bench attention: --n, --d and --repeats must be positive")
        return 2
    scale = 1.0 / args.d if args.scale is None else args.scale
    try:
        result = run_benchmark(args.n, args.d, args.bound, args.eps, scale, exact_max_n=args.exact_max_n,
                               fit_min_n=args.fit_min_n, b_sweep=args.b_sweep, b_sweep_n=args.b_sweep_n,
                               repeats=args.repeats, headline_n=args.headline_n,
                               poly_fit_min_n=args.poly_fit_min_n)
    except SpecError as exc:
        print(f"attnspec bench attention: {exc}")
        return 2
    if args.plot:
        result["plots"] = plot(result, args.plot)
    emit(result, as_json=args.json)
    return 0


__all__ = ["register", "run_benchmark", "plot"]


def _save(plt, fig, directory: str, name: str) -> str:
    path = os.path.join(directory, name)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
