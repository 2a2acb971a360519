"""``attnspec bench dynamic``: the lazy-update structure vs the eager and lazy-everything baselines.

Three parts, one run, same machine:

1. **Matrix-product exponent.** Best-of-k time of numpy's square matmul T(n,n,n) over ``--n``: the fitted
   exponent ω̂ is what "fast matrix multiplication" means here (BLAS: classical, ω̂ ≈ 3 at best). Also
   the rectangular T(n, n, ⌈n^τ⌉) exponent, measured directly. Theory's exponents are then computed from
   ω̂ via ω(1,1,τ) = 2 + τ(ω̂ − 2) (square blocking of the rectangular product).
2. **Scaling.** For d = n and d = 64, each τ and each n: amortized update time (K and V updates
   alternating, over two full rebuild periods; eager over a fixed number of updates) and the worst query
   time (a query with the maximal b − 1 pending keys, best of k), with fitted exponents beside the
   theory: lazy update ω(1,1,τ) − τ (d = n) / 1 (d = 64), lazy query 1 + τ (d = n) / τ (d = 64), eager
   update 2 / 1, lazy-everything query 2 / 1.
3. **Mixed workload** at ``--mixed-n`` (default n = d = 2048): one random operation sequence
   (``--mix`` fractions of K updates, V updates, queries) replayed on the eager baseline, the
   lazy-everything baseline and the lazy structure for each τ; total time best of k, ratios to eager.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from attnspec.accelerated.dynamic_attention import EagerDynamicAttention, LazyDynamicAttention, LazyRecomputeDynamicAttention
from attnspec.bench.timing import emit, fit_exponent, machine_description, time_call


def _inputs(rng, n: int, d: int):
    # entries in [−1, 1], scale 1/√d: logits O(1), the regime of trained attention
    return rng.uniform(-1, 1, (n, d)), rng.uniform(-1, 1, (n, d)), rng.uniform(-1, 1, (n, d)), 1.0 / math.sqrt(d)


def matmul_exponents(ns: list[int], taus: list[float], repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    square: list[float] = []
    rect: dict[float, list[float]] = {t: [] for t in taus}
    for n in ns:
        a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
        square.append(time_call(lambda: a @ b, repeats=repeats).best)
        for t in taus:
            c = rng.standard_normal((n, max(1, math.ceil(n ** t))))
            rect[t].append(time_call(lambda: a @ c, repeats=repeats).best)
    omega = fit_exponent(ns, square)
    return {"ns": ns, "square_s": square, "omega_measured": omega,
            "rectangular": {str(t): {"seconds": rect[t], "exponent_measured": fit_exponent(ns, rect[t]),
                                     "exponent_from_omega": 2 + t * (omega - 2)} for t in taus}}


def _amortized_update(struct, n: int, d: int, count: int, rng) -> float:
    ii = rng.integers(0, n, count)
    jj = rng.integers(0, d, count)
    dl = rng.uniform(-0.1, 0.1, count)
    t0 = time.perf_counter()
    for t in range(count):
        (struct.update_k if t % 2 == 0 else struct.update_v)(int(ii[t]), int(jj[t]), float(dl[t]))
    return (time.perf_counter() - t0) / count


def _worst_query(struct, n: int, d: int, repeats: int, rng) -> float:
    """Query time with the most pending keys the structure can hold (b − 1 distinct key rows)."""
    b = getattr(struct, "rebuild_period", None)
    if b is not None:
        while struct.pending_updates:  # start from a fresh snapshot
            struct.update_v(0, 0, 0.0)
        for r in rng.choice(n, size=min(b - 1, n), replace=False):
            struct.update_k(int(r), 0, 0.01)
    return time_call(lambda: struct.query(n // 2, d // 2), repeats=repeats).best


def scaling(ns: list[int], ds: list[str], taus: list[float], repeats: int, eager_updates: int) -> dict[str, Any]:
    rows = []
    for dspec in ds:
        for n in ns:
            d = n if dspec == "n" else int(dspec)
            rng = np.random.default_rng(n)
            q, k, v, s = _inputs(rng, n, d)
            row: dict[str, Any] = {"d": dspec, "n": n}
            eager = EagerDynamicAttention(True)
            eager.init(q, k, v, s)
            row["eager_update_s"] = min(_amortized_update(eager, n, d, eager_updates, rng) for _ in range(repeats))
            row["eager_query_s"] = _worst_query(eager, n, d, repeats, rng)
            lazy_all = LazyRecomputeDynamicAttention(True)
            lazy_all.init(q, k, v, s)
            row["lazy_recompute_update_s"] = _amortized_update(lazy_all, n, d, 200, rng)
            row["lazy_recompute_query_s"] = _worst_query(lazy_all, n, d, repeats, rng)
            for tau in taus:
                lazy = LazyDynamicAttention(True, tau=tau)
                lazy.init(q, k, v, s)
                b = lazy.rebuild_period
                row[f"lazy_{tau}_b"] = b
                row[f"lazy_{tau}_update_s"] = min(_amortized_update(lazy, n, d, 2 * b, rng) for _ in range(repeats))
                row[f"lazy_{tau}_query_s"] = _worst_query(lazy, n, d, repeats, rng)
            rows.append(row)
    return {"rows": rows}


def _fits(rows: list[dict[str, Any]], taus: list[float], omega: float) -> list[dict[str, Any]]:
    out = []
    for dspec in sorted({r["d"] for r in rows}):
        sub = [r for r in rows if r["d"] == dspec]
        if len(sub) < 2:
            continue
        ns = [r["n"] for r in sub]
        dn = dspec == "n"

        def fit(key):
            return fit_exponent(ns, [r[key] for r in sub])

        out.append({"d": dspec, "method": "eager", "update_exp": fit("eager_update_s"), "update_theory": 2 if dn else 1,
                    "query_exp": fit("eager_query_s"), "query_theory": 0})
        out.append({"d": dspec, "method": "lazy_recompute", "update_exp": fit("lazy_recompute_update_s"),
                    "update_theory": 0, "query_exp": fit("lazy_recompute_query_s"), "query_theory": 2 if dn else 1})
        for tau in taus:
            w = 2 + tau * (omega - 2)
            out.append({"d": dspec, "method": f"lazy tau={tau}", "update_exp": fit(f"lazy_{tau}_update_s"),
                        "update_theory": (w - tau) if dn else 1.0, "query_exp": fit(f"lazy_{tau}_query_s"),
                        "query_theory": (1 + tau) if dn else tau})
    return out


def mixed(n: int, d: int, ops: int, mix: tuple[float, float, float], taus: list[float], repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(2048)
    q, k, v, s = _inputs(rng, n, d)
    kinds = rng.choice(3, size=ops, p=np.asarray(mix) / sum(mix))
    ii = rng.integers(0, n, ops)
    jj = rng.integers(0, d, ops)
    dl = rng.uniform(-0.1, 0.1, ops)

    def replay(factory):
        best = math.inf
        answers = None
        for _ in range(repeats):
            st = factory()
            st.init(q, k, v, s)  # init excluded from the timing: every structure pays the same n²d
            out = []
            t0 = time.perf_counter()
            for t in range(ops):
                if kinds[t] == 0:
                    st.update_k(int(ii[t]), int(jj[t]), float(dl[t]))
                elif kinds[t] == 1:
                    st.update_v(int(ii[t]), int(jj[t]), float(dl[t]))
                else:
                    out.append(st.query(int(ii[t]), int(jj[t])))
            best = min(best, time.perf_counter() - t0)
            answers = np.array(out)
        return best, answers

    results: dict[str, Any] = {}
    t_eager, ref = replay(lambda: EagerDynamicAttention(True))
    results["eager"] = {"total_s": t_eager}
    t_all, y = replay(lambda: LazyRecomputeDynamicAttention(True))
    results["lazy_recompute"] = {"total_s": t_all, "speedup_vs_eager": t_eager / t_all,
                                 "max_abs_diff_vs_eager": float(np.abs(y - ref).max()) if y.size else 0.0}
    for tau in taus:
        t_lazy, y = replay(lambda: LazyDynamicAttention(True, tau=tau))
        results[f"lazy tau={tau}"] = {"total_s": t_lazy, "b": max(1, math.ceil(n ** tau - 1e-9)),
                                      "speedup_vs_eager": t_eager / t_lazy,
                                      "max_abs_diff_vs_eager": float(np.abs(y - ref).max()) if y.size else 0.0}
    counts = np.bincount(kinds, minlength=3)
    return {"n": n, "d": d, "ops": ops, "mix": {"update_k": int(counts[0]), "update_v": int(counts[1]), "query": int(counts[2])},
            "repeats": repeats, "results": results}


def run(args) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "dynamic attention (ODAMV): lazy-update structure vs eager and lazy-everything",
                              "machine": machine_description(),
                              "note": "float64 numpy, CPU; another process may have been busy on the second core; best of k"}
    t0 = time.perf_counter()
    mm = matmul_exponents(args.n, args.tau, args.repeats)
    result["matmul"] = mm
    if not args.skip_scaling:
        sc = scaling(args.n, args.d, args.tau, args.repeats, args.eager_updates)
        result["scaling"] = sc
        result["fits"] = _fits(sc["rows"], args.tau, mm["omega_measured"])
    if args.mixed_n:
        result["mixed"] = mixed(args.mixed_n, args.mixed_d or args.mixed_n, args.mixed_ops, tuple(args.mix),
                                args.mixed_tau or args.tau, args.repeats)
    result["wall_s"] = time.perf_counter() - t0
    return result


def _print(result: dict[str, Any]) -> None:
    mm = result["matmul"]
    print(result["benchmark"])
    print(f"numpy matmul: measured ω̂ = {mm['omega_measured']:.2f} over n = {mm['ns']}")
    for t, r in mm["rectangular"].items():
        print(f"  T(n,n,n^{t}): measured exponent {r['exponent_measured']:.2f}, 2 + τ(ω̂−2) = {r['exponent_from_omega']:.2f}")
    if "scaling" in result:
        for r in result["scaling"]["rows"]:
            cells = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items())
            print("  " + cells)
        print(f"{'d':>4} {'method':>16} {'update exp':>10} {'theory':>7} {'query exp':>10} {'theory':>7}")
        for f in result["fits"]:
            print(f"{f['d']:>4} {f['method']:>16} {f['update_exp']:>10.2f} {f['update_theory']:>7.2f} "
                  f"{f['query_exp']:>10.2f} {f['query_theory']:>7.2f}")
    if "mixed" in result:
        m = result["mixed"]
        print(f"mixed workload n={m['n']} d={m['d']} ops={m['ops']} mix={m['mix']} (best of {m['repeats']})")
        for name, r in m["results"].items():
            extra = f" speedup vs eager {r['speedup_vs_eager']:.1f}x" if "speedup_vs_eager" in r else ""
            print(f"  {name:>16}: {r['total_s']:.3f} s{extra}")
    print(f"wall {result['wall_s']:.1f} s")


def _main(args) -> int:
    result = run(args)
    if args.json:
        emit(result, as_json=True)
    else:
        _print(result)
    return 0


def register(bench_sub) -> None:
    """Add ``attnspec bench dynamic`` to the bench sub-parsers."""
    p = bench_sub.add_parser("dynamic", help="dynamic attention: lazy-update structure vs eager and lazy-everything")
    p.add_argument("--n", type=int, nargs="+", default=[256, 512, 1024, 2048], help="sizes for the scaling fits")
    p.add_argument("--d", nargs="+", default=["n", "64"], help="key widths: 'n' (d = n) and/or integers")
    p.add_argument("--tau", type=float, nargs="+", default=[0.5, 0.75], help="rebuild exponents τ (b = ⌈n^τ⌉)")
    p.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    p.add_argument("--eager-updates", type=int, default=16, help="updates timed for the eager baseline")
    p.add_argument("--skip-scaling", action="store_true")
    p.add_argument("--mixed-n", type=int, default=2048, help="mixed-workload size (0: skip)")
    p.add_argument("--mixed-d", type=int, default=0, help="mixed-workload d (0: d = n)")
    p.add_argument("--mixed-ops", type=int, default=1200, help="operations (enough for several rebuilds at every τ)")
    p.add_argument("--mix", type=float, nargs=3, default=[0.5, 0.25, 0.25], metavar=("K", "V", "Q"),
                   help="fractions of key updates, value updates and queries")
    p.add_argument("--mixed-tau", type=float, nargs="*", default=[0.4, 0.5, 0.6, 0.7])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_main)
