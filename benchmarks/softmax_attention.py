"""``attnspec bench softmax``: accelerated and certified softmax attention against their baselines.

One run reports, side by side:

(a) the accelerated blocked online softmax on numpy vs torch's CPU
    ``scaled_dot_product_attention`` (same inputs, float64 and float32; timings interleaved, best of
    ``--repeats``), the time ratio ours/torch (acceptance: ≤ 2 in float64 at n = 4096, d = 64), and our
    peak extra memory (tracemalloc) against the n²·8 bytes of a materialised attention matrix;
(b) the certified reference (``enclose``, 128 bits) at ``--ref-n`` (default 1024, acceptance ≤ 3 s),
    and the Arb reference vs the mpmath interval engine at sizes mpmath can do (ratio mpmath/Arb);
(c) with CuPy and a CUDA GPU: the same code on CuPy vs torch SDPA on the same GPU (skipped otherwise).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

from attnspec.bench.timing import machine_description, peak_python_memory, time_call, emit


def side_by_side(fns: dict[str, Callable[[], Any]], repeats: int, sync: Callable[[], None] | None = None) -> dict[str, dict[str, float]]:
    """Best and median seconds of each function, calls interleaved (a, b, a, b, …) after one warm-up
    each, so a load change on a shared machine hits every contender alike."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
        if sync:
            sync()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if sync:
                sync()
            samples[name].append(time.perf_counter() - t0)
    return {name: {"best_s": min(s), "median_s": statistics.median(s)} for name, s in samples.items()}


def _inputs(n: int, d: int, dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal((n, d)).astype(dtype) for _ in range(3))


def cpu_vs_torch(n: int, d: int, repeats: int) -> dict[str, Any]:
    """(a) numpy accelerated vs torch SDPA on CPU, float64 and float32."""
    from attnspec.accelerated.softmax_attention import softmax_attention

    try:
        import torch
    except ImportError:
        return {"skipped": "torch is not installed"}
    scale = 1.0 / np.sqrt(d)
    result: dict[str, Any] = {"n": n, "d": d, "scale": scale, "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    for dtype in (np.float64, np.float32):
        q, k, v = _inputs(n, d, dtype)
        tq, tk, tv = (torch.from_numpy(x)[None, None] for x in (q, k, v))
        ours = lambda: softmax_attention(q, k, v, scale=scale)  # noqa: E731
        sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, scale=scale)  # noqa: E731
        times = side_by_side({"ours": ours, "torch_sdpa": sdpa}, repeats)
        diff = float(np.max(np.abs(ours().astype(np.float64) - sdpa()[0, 0].numpy().astype(np.float64))))
        peak = peak_python_memory(ours)
        name = np.dtype(dtype).name
        result[name] = {
            "ours_best_s": times["ours"]["best_s"],
            "torch_best_s": times["torch_sdpa"]["best_s"],
            "ours_median_s": times["ours"]["median_s"],
            "torch_median_s": times["torch_sdpa"]["median_s"],
            "ratio_best": times["ours"]["best_s"] / times["torch_sdpa"]["best_s"],
            "ratio_median": times["ours"]["median_s"] / times["torch_sdpa"]["median_s"],
            "peak_extra_bytes": peak,
            "n2_bytes": n * n * np.dtype(dtype).itemsize,
            "peak_over_n2": peak / (n * n * np.dtype(dtype).itemsize),
            "max_abs_diff_vs_torch": diff,
        }
    return result


def reference_timings(ref_n: int, d: int, mp_sizes: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """(b) certified reference at ref_n; Arb vs mpmath on small sizes (their enclosures must intersect)."""
    from attnspec.reference.softmax_attention import enclose, enclose_mpmath
    from attnspec.spec.softmax_attention import make_instance, standard_scale

    q, k, v = _inputs(ref_n, d, np.float64, seed=1)
    inst = make_instance(q, k, v, scale=standard_scale(d, "1/sqrt(d)"))
    encs = []
    ref_t = time_call(lambda: encs.append(enclose(inst, 128)), repeats=2, warmup=False)  # ~2-3 s each
    enc, ref_s = encs[0], ref_t.best
    result: dict[str, Any] = {
        "enclose_128": {"n": ref_n, "d": d, "best_of_2_s": ref_s, "median_s": ref_t.median, "max_relative_radius": enc.max_relative_radius()},
        "arb_vs_mpmath": [],
    }
    for n, dd in mp_sizes:
        q, k, v = _inputs(n, dd, np.float64, seed=2)
        inst = make_instance(q, k, v, scale=standard_scale(dd, "1/sqrt(d)"))
        arb_t = time_call(lambda: enclose(inst, 128), repeats=3)
        t0 = time.perf_counter()
        mp_enc = enclose_mpmath(inst, 128)
        mp_s = time.perf_counter() - t0
        result["arb_vs_mpmath"].append({
            "n": n, "d": dd, "arb_best_s": arb_t.best, "mpmath_s": mp_s, "ratio_mpmath_over_arb": mp_s / arb_t.best,
            "enclosures_intersect": enclose(inst, 128).overlaps(mp_enc),
        })
    return result


def gpu_vs_torch(n: int, d: int, repeats: int) -> dict[str, Any]:
    """(c) CuPy accelerated vs torch SDPA on the same GPU, when both are usable."""
    from attnspec.accelerated.array_namespace import namespace_for
    from attnspec.accelerated.softmax_attention import softmax_attention

    try:
        cp = namespace_for("cuda")
    except RuntimeError as exc:
        return {"skipped": str(exc)}
    sync = cp.cuda.Device().synchronize
    result: dict[str, Any] = {"n": n, "d": d, "gpu": cp.cuda.runtime.getDeviceProperties(0)["name"].decode()}
    try:
        import torch

        has_torch_cuda = torch.cuda.is_available()
    except ImportError:
        has_torch_cuda = False
    scale = 1.0 / np.sqrt(d)
    for dtype in (np.float64, np.float32):
        q, k, v = (cp.asarray(x) for x in _inputs(n, d, dtype))
        fns = {"ours": lambda: softmax_attention(q, k, v, scale=scale)}
        if has_torch_cuda:
            tq, tk, tv = (torch.as_tensor(x, device="cuda")[None, None] for x in (q, k, v))
            fns["torch_sdpa"] = lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, scale=scale)

        def both_sync():
            sync()
            if has_torch_cuda:
                torch.cuda.synchronize()

        times = side_by_side(fns, repeats, sync=both_sync)
        entry = {name: t["best_s"] for name, t in times.items()}
        if "torch_sdpa" in entry:
            entry["ratio_best"] = entry["ours"] / entry["torch_sdpa"]
        result[np.dtype(dtype).name] = entry
    return result


def run(args: argparse.Namespace) -> int:
    mp_sizes = [(16, 8)] + ([(32, 8), (64, 8)] if not args.quick else [])
    command = " ".join(["attnspec bench softmax"] + sys.argv[3:]) if len(sys.argv) > 2 else "attnspec bench softmax"
    result = {
        "benchmark": "softmax attention: accelerated vs torch SDPA; certified reference vs mpmath",
        "command": command,
        "machine": machine_description(),
        "note": "CPU timings on a shared 2-core machine (another process may be busy): calls interleaved, best of repeats",
        "a_cpu_vs_torch": cpu_vs_torch(args.n, args.d, args.repeats),
        "b_reference": reference_timings(args.ref_n, args.d, mp_sizes),
        "c_gpu_vs_torch": gpu_vs_torch(args.n, args.d, args.repeats),
    }
    emit(result, as_json=args.json)
    return 0


def register(bench_subparsers) -> None:
    p = bench_subparsers.add_parser("softmax", help="accelerated softmax attention vs torch SDPA; certified reference timings")
    p.add_argument("--n", type=int, default=4096, help="sequence length for the accelerated comparison")
    p.add_argument("--d", type=int, default=64, help="head dimension")
    p.add_argument("--ref-n", type=int, default=1024, help="sequence length for the certified reference timing")
    p.add_argument("--repeats", type=int, default=7, help="timed calls per contender (best reported)")
    p.add_argument("--quick", action="store_true", help="skip the n=32 and n=64 mpmath comparisons")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


__all__ = ["register", "side_by_side", "cpu_vs_torch", "reference_timings", "gpu_vs_torch"]
