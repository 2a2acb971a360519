"""``attnspec bench reductions-hmv``: HMV → ODAMV/OAMV phase by phase, against n at several τ.

For each τ and n, a ``random`` HMV instance is built into its trace (docs/reductions.md §2–3) and
replayed on the lazy-update structure (rebuild period ⌈n^τ⌉) in this process: Phase 1 = Init, Phase 2 =
the t = ⌊n^τ⌋ key updates, Phase 3 = the n (OAMV) or 2n (ODAMV) queries; the trivial HMV algorithm's
phases run beside it. Fitted exponents are printed next to the conjecture's n^{ω(1,1,τ)} (Phase 2, with
ω(1,1,τ) = 2 + τ(ω̂ − 2) and ω̂ measured from numpy's matmul as in ``attnspec bench dynamic``) and
n^{1+τ} (Phase 3). The decoded answers are checked against brute force on every instance.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from attnspec.accelerated.dynamic_attention import LazyDynamicAttention
from attnspec.bench.dynamic_attention import matmul_exponents
from attnspec.bench.timing import emit, fit_exponent, machine_description
from attnspec.reductions import hmv
from attnspec.reductions.hmv_to_dynamic_attention import HMV_TO_OAMV, HMV_TO_ODAMV
from attnspec.spec.dynamic_attention import Init, Query, UpdateK


def _phases(red, inst, tau: float) -> tuple[dict[str, float], bool]:
    built = red.build(inst, {})
    ops = built.cases[0].instance.ops
    s = LazyDynamicAttention(normalised=red.normalised, tau=tau)
    init = ops[0]
    assert isinstance(init, Init)
    t0 = time.perf_counter()
    s.init(np.asarray(init.q), np.asarray(init.k), np.asarray(init.v), 1.0)
    t1 = time.perf_counter()
    for op in ops:
        if isinstance(op, UpdateK):
            s.update_k(op.i, op.j, op.delta)
    t2 = time.perf_counter()
    answers = [s.query(op.i, op.j) for op in ops if isinstance(op, Query)]
    t3 = time.perf_counter()
    ok = red.decode(built, [np.asarray(answers)]).same_answer(red.brute_force(inst))
    return {"phase1_s": t1 - t0, "phase2_s": t2 - t1, "phase3_s": t3 - t2}, ok


def _trivial(inst) -> dict[str, float]:
    algo = hmv.TrivialHMV()
    t0 = time.perf_counter()
    algo.phase1(inst.m, inst.v)
    t1 = time.perf_counter()
    algo.phase2(inst.p)
    t2 = time.perf_counter()
    algo.phase3(inst.index)
    return {"phase1_s": t1 - t0, "phase2_s": t2 - t1, "phase3_s": time.perf_counter() - t2}


def run(ns: list[int], taus: list[float], repeats: int, normalised: bool, omega_ns: list[int]) -> dict[str, Any]:
    t_start = time.perf_counter()
    red = HMV_TO_ODAMV if normalised else HMV_TO_OAMV
    mm = matmul_exponents(omega_ns, taus, repeats) if omega_ns else None
    omega = mm["omega_measured"] if mm else 3.0
    rows, fits = [], []
    for tau in taus:
        per_n: list[dict[str, Any]] = []
        for n in ns:
            inst, _ = hmv.generate("random", n, np.random.default_rng(n), tau=tau)
            best: dict[str, float] = {}
            trivial: dict[str, float] = {}
            ok = True
            for _ in range(repeats):
                times, good = _phases(red, inst, tau)
                ok &= good
                best = {k: min(v, best.get(k, v)) for k, v in times.items()}
                tt = _trivial(inst)
                trivial = {k: min(v, trivial.get(k, v)) for k, v in tt.items()}
            row = {"tau": tau, "n": n, "t": int(inst.p.sum()), "decoded_ok": ok, "reduction": best, "trivial": trivial,
                   "phase3_ratio_to_trivial": best["phase3_s"] / max(trivial["phase3_s"], 1e-9)}
            rows.append(row)
            per_n.append(row)
        fit: dict[str, Any] = {"tau": tau}
        for phase in ("phase2_s", "phase3_s"):
            fit[phase.replace("_s", "_exponent")] = fit_exponent(ns, [r["reduction"][phase] for r in per_n]) if len(ns) > 1 else None
        fit.update(theory_phase2=2 + tau * (omega - 2), theory_phase3=1 + tau)
        fits.append(fit)
    return {"benchmark": "reductions-hmv", "reduction": red.name, "machine": machine_description(), "omega": omega,
            "matmul": mm, "rows": rows, "fits": fits, "wall_s": time.perf_counter() - t_start,
            "caveats": dict(red.build(hmv.generate("random", 4, np.random.default_rng(0))[0], {}).meta["caveats"])}


def _print(result: dict[str, Any]) -> None:
    print(f"{result['reduction']}: ω̂ = {result['omega']:.2f} (numpy matmul)")
    for r in result["rows"]:
        red, tri = r["reduction"], r["trivial"]
        print(f"  τ={r['tau']} n={r['n']} t={r['t']}: phase1 {red['phase1_s']:.2e}s phase2 {red['phase2_s']:.2e}s "
              f"phase3 {red['phase3_s']:.2e}s (trivial phase3 {tri['phase3_s']:.2e}s, ratio {r['phase3_ratio_to_trivial']:.1f}) "
              f"decoded {'ok' if r['decoded_ok'] else 'WRONG'}")
    for f in result["fits"]:
        p2 = "n/a" if f["phase2_exponent"] is None else f"{f['phase2_exponent']:.2f}"
        p3 = "n/a" if f["phase3_exponent"] is None else f"{f['phase3_exponent']:.2f}"
        print(f"  τ={f['tau']}: phase 2 exponent {p2} (n^ω(1,1,τ): {f['theory_phase2']:.2f}); "
              f"phase 3 exponent {p3} (n^(1+τ): {f['theory_phase3']:.2f})")
    print("  caveat: " + result["caveats"]["query_accounting"])
    print(f"wall {result['wall_s']:.1f} s")


def _main(args) -> int:
    result = run(args.n, args.tau, args.repeats, not args.oamv, args.omega_n)
    emit(result, as_json=True) if args.json else _print(result)
    return 0 if all(r["decoded_ok"] for r in result["rows"]) else 1


def register(bench_sub) -> None:
    """Add ``attnspec bench reductions-hmv``."""
    p = bench_sub.add_parser("reductions-hmv", help="HMV → ODAMV/OAMV per-phase times and exponents")
    p.add_argument("--n", type=int, nargs="+", default=[128, 256, 512, 1024])
    p.add_argument("--tau", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--omega-n", type=int, nargs="*", default=[256, 512, 1024], help="sizes for ω̂ (none: assume 3)")
    p.add_argument("--oamv", action="store_true", help="HMV → OAMV instead of ODAMV")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_main)
