"""``attnspec bench reductions-maxip``: the Gap-MaxIP entry-bound threshold made visible.

    attnspec bench reductions-maxip [--n-tensor N ...] [--n-softmax N ...] [--cb C ...] [--family F]
                                    [--repeats R] [--max-rank R] [--json] [--plot DIR]

For Gap-MaxIP → tensor attention (k = 3) and → softmax attention (k = 2), at several n and for each
C_b of the sweep, one source instance (default family ``adversarial_yes``: every tuple exactly at τ_lo,
one at τ_hi) is built with the gadget's β chosen so that the largest entry is B = C_b·(ln n)^{1/k}
(β = B^k/d′, the scale being 1/d′; d′ is iterated because the tuned dummy's extra coordinates depend
on β). Per point:

- the accuracy the decoding needs, ε_a = the reduction's margin (0 below the decoding threshold
  β·Δ > ln(n^{k−1}): then no backend, exact or not, can decode, and the point is ``no_margin``);
- whether the polynomial method can meet it: ``PolynomialBackend(eps=ε_a/2, bound=max(B, 1))`` (its
  ``max_d`` lifted: here the plan decides) must pass the reduction's refusal and must plan —
  softmax: :func:`~attnspec.accelerated.polynomial_attention.plan_polynomial_attention` (design error
  and a-priori float64 evaluation error); tensor: the degree choice of
  :func:`~attnspec.accelerated.tensor_attention.polynomial_tensor_attention` (design error only, as
  that function does). ``accepted`` (degree g, rank r = binom(d′+g, g)) or ``refused`` (the reason);
- ``eps_floor``: the smallest ε_a in the decades 10⁻¹ … 10⁻¹⁴ the polynomial method plans at this B
  (the curve the needed ε_a must stay above);
- times (best of ``--repeats``): brute force on the source (all n^k tuples), the whole pipeline with
  the numpy exact backend (build with its 50-digit margins + backend + decode; brute force excluded)
  and, when accepted with r ≤ ``--max-rank``, the pipeline with the polynomial backend; ratios to
  brute force; whether each decoded answer equals brute force's.

The reduction is not an algorithm for Gap-MaxIP (it is a lower-bound argument), so the pipeline is
*expected* to be slower than brute force; the ratio says by how much at these sizes.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Any

import numpy as np

from attnspec.bench.timing import emit, machine_description
from attnspec.spec.validation import SpecError

DEFAULT_CB = [1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0, 3.5, 4.0]
# Source parameters with the smallest d′/Δ the adversarial family allows (d ≥ τ_hi + k(w − τ_lo)):
# the decoding threshold is C_b^k ≳ (k − 1)·d′/Δ, so a small d′/Δ leaves the polynomial method the most room.
SETUPS: dict[str, dict[str, Any]] = {
    "tensor": {"reduction": "maxip_to_tensor", "k": 3, "source": {"order": 3, "d": 8, "w": 2, "tau_hi": 2, "tau_lo": 0}},
    "softmax": {"reduction": "maxip_to_softmax", "k": 2, "source": {"d": 6, "w": 2, "tau_hi": 2, "tau_lo": 0}},
}
EPS_LADDER = [10.0**-e for e in range(1, 15)]


def _polynomial_backend(eps: float, bound: float) -> Any:
    """The built-in polynomial backend with ``max_d`` lifted (the rank, not a fixed d, is the cost)."""
    from attnspec.conformance.harness.builtin_backends import PolynomialBackend

    backend = PolynomialBackend(eps=eps, bound=bound)
    backend.capabilities = {k: v for k, v in backend.capabilities.items() if k != "max_d"}
    return backend


def polynomial_plan(k: int, rows: int, d: int, bound: float, scale: float, eps: float) -> dict[str, Any]:
    """What the polynomial method commits to for these parameters: ``{"degree", "rank", "radius"}``;
    :class:`SpecError` when it refuses (float64 cannot deliver ε_a at the logit radius R = |s|·d·B^k)."""
    from attnspec.accelerated import polynomial_features as pf

    if k == 2:
        from attnspec.accelerated.polynomial_attention import plan_polynomial_attention

        plan = plan_polynomial_attention(rows, d, bound=bound, scale=scale, eps=eps)
        return {"degree": plan.degree, "rank": plan.rank, "radius": plan.radius}
    from attnspec.accelerated.tensor_attention import polynomial_degree_and_eps

    radius, eps_rel = polynomial_degree_and_eps(k, d, bound, scale, eps)
    poly = pf.choose_polynomial(radius, eps_rel)
    return {"degree": poly.degree, "rank": pf.rank(d, poly.degree), "radius": radius}


def eps_floor(k: int, rows: int, d: int, bound: float, scale: float) -> float | None:
    """The smallest ε_a of :data:`EPS_LADDER` that the polynomial method plans (None: not even 0.1)."""
    best = None
    for eps in EPS_LADDER:
        try:
            polynomial_plan(k, rows, d, bound, scale, eps)
        except SpecError:
            break
        best = eps
    return best


def build_at(red: Any, family: str, n: int, cb: float, k: int, source_params: dict[str, Any], seed: int) -> tuple[Any, Any, Any]:
    """(source, build parameters, built) with the largest entry B ≈ C_b·(ln n)^{1/k}: β = B^k/d′."""
    target_b = cb * math.log(n) ** (1.0 / k)
    width = source_params["d"] + 1
    for _ in range(4):  # d′ = d + extra(β): a fixed point in a step or two
        source, params = red.generate(family, n, np.random.default_rng(seed), beta=target_b**k / width, **source_params)
        built = red.build(source, params)
        if built.meta["theorem"]["d"] == width:
            break
        width = built.meta["theorem"]["d"]
    return source, params, built


def _best_time(fn, repeats: int) -> tuple[float, Any]:
    best, value = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return best, value


def sweep_point(name: str, n: int, cb: float, *, family: str, repeats: int, max_rank: int, seed: int = 0,
                with_floor: bool = True) -> dict[str, Any]:
    """One (reduction, n, C_b) point of the sweep (module docstring)."""
    from attnspec.conformance.harness.builtin_backends import numpy_backend
    from attnspec.conformance.harness.isolation import InProcessRunner
    from attnspec.reductions.base import run_reduction
    from attnspec.reductions.registry import get_reduction

    setup = SETUPS[name]
    red, k = get_reduction(setup["reduction"]), setup["k"]
    source, params, built = build_at(red, family, n, cb, k, setup["source"], seed + n)
    th = built.meta["theorem"]
    inst = built.cases[0].instance
    rows, d, scale = 2 * n, th["d"], float(inst.scale)
    bound = max(th["B"], 1.0)  # values are 0/1
    margin = float(red.required_accuracy(built))
    brute_s, truth = _best_time(lambda: red.brute_force(source), repeats)
    row: dict[str, Any] = {
        "n": n, "C_b_target": cb, "B": th["B"], "C_b": th["C_b"], "beta": th["beta"], "d": d, "c": th["c"],
        "logit_radius": abs(scale) * d * bound**k, "eps_a_needed": margin, "C_a": th["C_a"],
        "eps_floor": eps_floor(k, rows, d, bound, scale) if with_floor else None, "brute_force_s": brute_s,
    }
    if not margin > 0:
        row.update(status="no_margin", reason=red.refusal(built, InProcessRunner(numpy_backend()).capabilities))
        return row
    numpy_s, outcome = _best_time(lambda: run_reduction(red, source, params, InProcessRunner(numpy_backend()), truth=truth),
                                  repeats)
    row.update(numpy_pipeline_s=numpy_s, numpy_ratio=numpy_s / brute_s, numpy_status=outcome.status)
    eps = margin / 2
    poly_runner = InProcessRunner(_polynomial_backend(eps, bound))
    reason = red.refusal(built, poly_runner.capabilities)
    try:
        plan = polynomial_plan(k, rows, d, bound, scale, eps)
    except SpecError as exc:
        reason = reason or str(exc)
        plan = None
    row["poly_eps"] = eps
    if reason is not None or plan is None:
        row.update(status="refused", reason=reason)
        return row
    row.update(status="accepted", degree=plan["degree"], rank=plan["rank"],
               poly_work_over_exact=plan["rank"] / rows ** (k - 1))  # n·r·d against n·n^{k−1}·d
    if plan["rank"] <= max_rank:
        poly_s, poly_out = _best_time(lambda: run_reduction(red, source, params, poly_runner, truth=truth), repeats)
        row.update(poly_pipeline_s=poly_s, poly_ratio=poly_s / brute_s, poly_status=poly_out.status)
    else:
        row["poly_skipped"] = f"rank r = {plan['rank']} > --max-rank {max_rank}: planned, not run"
    return row


def run(ns: dict[str, list[int]], cbs: list[float], *, family: str = "adversarial_yes", repeats: int = 1,
        max_rank: int = 200_000, with_floor: bool = True) -> dict[str, Any]:
    """Both sweeps; per reduction the rows and, per n, the accepted C_b range and the decoding threshold."""
    t_start = time.perf_counter()
    result: dict[str, Any] = {"benchmark": "reductions-maxip", "machine": machine_description(), "family": family,
                              "repeats": repeats, "max_rank": max_rank, "reductions": {}}
    for name, sizes in ns.items():
        setup = SETUPS[name]
        sweep_point(name, 4, max(cbs), family=family, repeats=1, max_rank=0, with_floor=False)  # warm-up: imports
        rows = [sweep_point(name, n, cb, family=family, repeats=repeats, max_rank=max_rank, with_floor=with_floor)
                for n in sizes for cb in cbs]
        boundary = []
        for n in sizes:
            mine = [r for r in rows if r["n"] == n]
            decodable = [r["C_b"] for r in mine if r["status"] != "no_margin"]
            accepted = [r["C_b"] for r in mine if r["status"] == "accepted"]
            refused = [r["C_b"] for r in mine if r["status"] == "refused"]
            boundary.append({"n": n, "root_log_n": math.log(n) ** (1.0 / setup["k"]),
                             "decoding_from_C_b": min(decodable, default=None),
                             "accepted_C_b": [min(accepted), max(accepted)] if accepted else None,
                             "refused_from_C_b": min(refused, default=None)})
        result["reductions"][name] = {"reduction": setup["reduction"], "k": setup["k"], "source": setup["source"],
                                      "rows": rows, "boundary": boundary}
    result["wall_s"] = time.perf_counter() - t_start
    return result


def _fmt(x: Any, spec: str = ".3g") -> str:
    return format("—", spec.rstrip("eEfgG").split(".")[0] or "") if x is None else format(x, spec)


def _print(result: dict[str, Any]) -> None:
    for name, part in result["reductions"].items():
        k = part["k"]
        print(f"{part['reduction']} (k = {k}, source {part['source']}, family {result['family']}):")
        print("  n    C_b    B      d'  R=B^k   eps_a needed  eps floor  status    g/r            "
              "brute s   numpy pipe s (ratio)   poly pipe s (ratio)")
        for r in part["rows"]:
            gr = f"{r['degree']}/{r['rank']}" if r["status"] == "accepted" else ""
            numpy = "" if "numpy_pipeline_s" not in r else f"{r['numpy_pipeline_s']:.3g} ({r['numpy_ratio']:.3g}×)"
            poly = f"{r['poly_pipeline_s']:.3g} ({r['poly_ratio']:.3g}×)" if "poly_pipeline_s" in r else \
                ("planned, rank too large" if "poly_skipped" in r else "")
            print(f"  {r['n']:<5d}{r['C_b']:<7.3f}{r['B']:<7.3f}{r['d']:<4d}{r['logit_radius']:<8.3g}"
                  f"{r['eps_a_needed']:<14.3g}{_fmt(r['eps_floor'], '<11.0e')}{r['status']:<10s}{gr:<15s}"
                  f"{r['brute_force_s']:<10.3g}{numpy:<23s}{poly}")
        for b in part["boundary"]:
            acc = "none" if b["accepted_C_b"] is None else f"C_b ∈ [{b['accepted_C_b'][0]:.3g}, {b['accepted_C_b'][1]:.3g}]"
            print(f"  n = {b['n']} ((ln n)^(1/{k}) = {b['root_log_n']:.3f}): decodable from C_b = "
                  f"{_fmt(b['decoding_from_C_b'])}; polynomial method accepted {acc}; refused from C_b = "
                  f"{_fmt(b['refused_from_C_b'])}")
    print(f"wall {result['wall_s']:.1f} s")


def plot(result: dict[str, Any], directory: str) -> list[str]:
    """``maxip_threshold.png``: B against (ln n)^{1/k}, one panel per reduction, each point marked
    no-margin / accepted / refused, with the lines B = C_b·(ln n)^{1/k} of the sweep (empty without
    matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    os.makedirs(directory, exist_ok=True)
    parts = list(result["reductions"].items())
    fig, axes = plt.subplots(1, len(parts), figsize=(5.2 * len(parts), 4.2), squeeze=False)
    style = {"no_margin": ("x", "lightgray", "no margin (β·Δ ≤ ln n^(k−1))"),
             "accepted": ("o", "tab:green", "polynomial method meets ε_a"),
             "refused": ("s", "tab:red", "polynomial method refuses ε_a")}
    for ax, (name, part) in zip(axes[0], parts):
        k = part["k"]
        rows = part["rows"]
        xs = sorted({math.log(r["n"]) ** (1.0 / k) for r in rows})
        for cb in sorted({r["C_b_target"] for r in rows}):
            ax.plot([0, max(xs) * 1.05], [0, cb * max(xs) * 1.05], color="gray", lw=0.4, alpha=0.5)
        for status, (marker, color, label) in style.items():
            pts = [r for r in rows if r["status"] == status]
            ax.scatter([math.log(r["n"]) ** (1.0 / k) for r in pts], [r["B"] for r in pts], marker=marker, c=color,
                       s=28, label=label, zorder=3)
        # exact decoding needs β'·Δ > ln(n^{k−1}), i.e. B = (β'·d')^{1/k} > (d'·(k−1)·ln n/Δ)^{1/k}
        src = part["source"]
        width, gap = rows[0]["d"], src["tau_hi"] - src["tau_lo"]
        grid = np.linspace(min(xs) * 0.9, max(xs) * 1.05, 50)
        ax.plot(grid, (width * (k - 1) * grid**k / gap) ** (1.0 / k), "k--", lw=1,
                label=f"decoding threshold (d′·(k−1)·ln n/Δ)^(1/k), d′ = {width}")
        ceiling = [(math.log(n) ** (1.0 / k), max((r["B"] for r in rows if r["n"] == n and r["eps_floor"] is not None),
                                                   default=None)) for n in sorted({r["n"] for r in rows})]
        ceiling = [(x, y) for x, y in ceiling if y is not None]
        if ceiling:
            ax.plot(*zip(*ceiling), "b:", marker="v", ms=4, lw=1,
                    label=f"largest B of the sweep the method plans at ε_a = {EPS_LADDER[0]:g}")
        root = "∛(ln n)" if k == 3 else "√(ln n)"
        ax.set_xlabel(f"{root}   (n = {', '.join(str(b['n']) for b in part['boundary'])})")
        ax.set_ylabel("entry bound B")
        ax.set_xlim(min(xs) * 0.9, max(xs) * 1.05)
        ax.set_ylim(bottom=1.0)
        ax.set_title(f"{part['reduction']} (k = {k}); grey lines: B = C_b·{root}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    path = os.path.join(directory, "maxip_threshold.png")
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return [path]


def register(bench_sub: Any) -> None:
    """Add ``attnspec bench reductions-maxip``."""
    p = bench_sub.add_parser("reductions-maxip", help="Gap-MaxIP → tensor/softmax attention: the entry-bound threshold")
    p.add_argument("--n-tensor", type=int, nargs="*", default=[4, 8, 16, 32], help="source sizes, k = 3 (none: skip)")
    p.add_argument("--n-softmax", type=int, nargs="*", default=[4, 8, 16, 32, 64], help="source sizes, k = 2 (none: skip)")
    p.add_argument("--cb", type=float, nargs="+", default=DEFAULT_CB, help="C_b values: B = C_b·(ln n)^(1/k)")
    p.add_argument("--family", default="adversarial_yes")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--max-rank", type=int, default=200_000, help="largest feature rank the polynomial pipeline is run at")
    p.add_argument("--no-eps-floor", action="store_true",
                   help="skip the ε_a floor (it plans the method at every decade: slow for softmax at large B)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", metavar="DIR", default=None)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from attnspec.reductions import maxip

    ns = {name: sizes for name, sizes in (("tensor", args.n_tensor), ("softmax", args.n_softmax)) if sizes}
    if not ns or any(n < 2 for sizes in ns.values() for n in sizes) or args.repeats < 1 or min(args.cb) <= 0:
        print("attnspec bench reductions-maxip: sizes must be ≥ 2, --repeats ≥ 1, --cb > 0, and some sizes given")
        return 2
    if args.family not in maxip.FAMILIES:
        print(f"attnspec bench reductions-maxip: unknown family {args.family!r}; known: {', '.join(maxip.FAMILIES)}")
        return 2
    result = run(ns, args.cb, family=args.family, repeats=args.repeats, max_rank=args.max_rank,
                 with_floor=not args.no_eps_floor)
    if args.plot:
        result["plots"] = plot(result, args.plot)
    emit(result, as_json=True) if args.json else _print(result)
    wrong = [r for part in result["reductions"].values() for r in part["rows"]
             if r.get("numpy_status", "agree") != "agree" or r.get("poly_status", "agree") != "agree"]
    return 1 if wrong else 0


__all__ = ["run", "plot", "register", "sweep_point", "polynomial_plan", "eps_floor", "build_at"]
