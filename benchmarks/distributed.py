"""``attnspec bench distributed``: one judge-bound conformance run judged serially and on a Dask
LocalCluster, side by side, and a simulated large sweep that measures the scheduler overhead.

1. **Judge-bound run.** The same ``conform`` run (default: the numpy backend on the thorough profile's
   softmax ``uniform`` family, where the certified judgement costs ~20× the backend call) judged in the
   client and then on ``--workers`` worker processes. Reported: both wall times, their ratio (the
   cluster's start-up excluded, and included), and whether the two reports agree case for case.
2. **Scheduler overhead.** ``--sweep`` synthetic judgements of ``--item-ms`` each through the same
   batching code (:class:`~attnspec.conformance.harness.distributed.BatchedMap`): overhead
   ``1 − Σ compute / (workers × wall)``, the number of tasks, and the same items sent one task each for
   comparison (``--unbatched``).

The load average before and after says whether other work shared the cores.
"""

from __future__ import annotations

import os
import time
from typing import Any

from attnspec.bench.timing import emit, machine_description

def _run(args: Any, **judging: Any) -> tuple[float, dict[str, Any]]:
    from attnspec.conformance.harness.runner import run_conformance
    from attnspec.conformance.harness.selection import CaseSelection

    t0 = time.perf_counter()
    outcome = run_conformance(args.backend, profile=args.profile, problems=[args.problem], report_dir=None,
                              isolation=args.isolation, selection=CaseSelection((), tuple(args.family), None), **judging)
    return time.perf_counter() - t0, outcome.report


def _verdicts(report: dict[str, Any]) -> list[dict[str, Any]]:
    from attnspec.conformance.harness.report import records_without_timings

    return records_without_timings(report["cases"])


def sweep_overhead(client: Any, workers: int, count: int, item_seconds: float, *, batched: bool = True) -> dict[str, Any]:
    """``count`` synthetic items through :class:`BatchedMap` (``batched=False``: one item per task)."""
    from attnspec.conformance.harness.distributed import BatchedMap, synthetic_item

    engine = BatchedMap(client, synthetic_item) if batched else BatchedMap(client, synthetic_item, target_seconds=0.0)
    t0 = time.perf_counter()
    for index in range(count):
        engine.submit(index, {"id": index, "seconds": item_seconds})
    done = sum(1 for _ in engine.drain())
    wall = time.perf_counter() - t0
    compute = engine.stats["compute_seconds"]
    return {"items": done, "tasks": engine.stats["batches"], "wall_s": wall, "compute_s": compute,
            "overhead_fraction": 1 - compute / (workers * wall), "per_task_overhead_ms": 1e3 * max(0.0, workers * wall - compute) / max(1, engine.stats["batches"])}


def run(args: Any) -> dict[str, Any]:
    from attnspec.conformance.harness.distributed import cluster_client

    load_before = os.getloadavg()
    serial_s, serial = _run(args)
    t0 = time.perf_counter()
    with cluster_client(args.workers, None, quiet=True) as client:
        started_s = time.perf_counter() - t0
        cluster_s, distributed = _run(args, dask_client=client)
        sweep = sweep_overhead(client, args.workers, args.sweep, args.item_ms / 1e3) if args.sweep else None
        unbatched = sweep_overhead(client, args.workers, args.sweep, args.item_ms / 1e3, batched=False) \
            if args.sweep and args.unbatched else None
    cases = serial["cases"]
    return {
        "command": "attnspec bench distributed " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                                            if k in ("workers", "profile", "problem", "backend", "isolation")),
        "run": {"backend": args.backend, "profile": args.profile, "problem": args.problem, "families": args.family,
                "cases": len(cases), "judge_s": sum(r.get("judge_seconds", 0.0) for r in cases),
                "backend_s": sum(r.get("backend_seconds", 0.0) for r in cases)},
        "serial_s": serial_s,
        "workers": args.workers,
        "cluster_start_s": started_s,
        "cluster_s": cluster_s,
        "speedup": serial_s / cluster_s,
        "speedup_with_start": serial_s / (cluster_s + started_s),
        "identical_reports": _verdicts(serial) == _verdicts(distributed),
        "sweep": sweep,
        "sweep_unbatched": unbatched,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "machine": machine_description(),
    }


def _main(args: Any) -> int:
    result = run(args)
    if args.json:
        emit(result, as_json=True)
        return 0 if result["identical_reports"] else 1
    r = result["run"]
    print(f"judge-bound run: {r['backend']} on {r['problem']} {r['profile']} {','.join(r['families'])}: {r['cases']} cases, "
          f"Σ judge {r['judge_s']:.1f} s, Σ backend {r['backend_s']:.1f} s")
    print(f"  serial              {result['serial_s']:8.2f} s")
    print(f"  --workers {result['workers']:<9d} {result['cluster_s']:8.2f} s   ratio {result['speedup']:.2f}×"
          f"   (cluster start {result['cluster_start_s']:.1f} s; with it {result['speedup_with_start']:.2f}×)")
    print(f"  reports identical apart from timings: {result['identical_reports']}")
    for name in ("sweep", "sweep_unbatched"):
        s = result[name]
        if s:
            print(f"{'batched' if name == 'sweep' else 'one task per item'} sweep: {s['items']} items in {s['tasks']} tasks, "
                  f"wall {s['wall_s']:.2f} s, Σ compute {s['compute_s']:.2f} s, overhead {100 * s['overhead_fraction']:.1f}% "
                  f"({s['per_task_overhead_ms']:.2f} ms per task)")
    print(f"load average before {result['load_average_before']}, after {result['load_average_after']}; "
          f"{result['machine'].get('cpu_count')} cores")
    return 0 if result["identical_reports"] else 1


def register(bench_sub: Any) -> None:
    """Add ``attnspec bench distributed`` to the bench sub-parsers."""
    p = bench_sub.add_parser("distributed", help="a judge-bound conformance run: serial vs a Dask LocalCluster; scheduler overhead")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--backend", default="numpy")
    p.add_argument("--profile", choices=["quick", "thorough"], default="thorough")
    p.add_argument("--problem", default="softmax_attention")
    p.add_argument("--family", nargs="+", default=["uniform"])
    p.add_argument("--isolation", choices=["process", "none"], default="process")
    p.add_argument("--sweep", type=int, default=2000, help="synthetic items in the overhead sweep (0: skip)")
    p.add_argument("--item-ms", type=float, default=1.0, help="compute per synthetic item, ms")
    p.add_argument("--unbatched", action="store_true", help="also send the sweep one item per task")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_main)
