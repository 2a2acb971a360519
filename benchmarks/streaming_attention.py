"""``attnspec bench streaming``: the three streaming algorithms side by side (docs/streaming-attention.md).

The stream is generated chunk by chunk from a seed (the whole of Q, K, V is never held by the bench), in
the ``kv_first`` order, entries uniform in [−1, 1], scale 1/d. Parts:

(a) **state and time per token** against n: the peak over chunks of :func:`reachable_bytes` of each
    algorithm's structure (and its own ``state_bytes()``), seconds per token; ratios to the first n. The
    tiled online-softmax baseline runs up to ``--baseline-max-n`` (its state is K and V).
(b) **error against n** (n ≤ ``--exact-max-n``, where the exact float64 softmax columns fit): per algorithm
    max_c ‖y_c − x̂_c‖ / Err_k(y_c) and the declared ε₂, on the same uniform input.
(c) **dense outputs**: Err_k(y_c)/‖y_c‖ on the uniform input (near 1: a k-sparse answer says little).
(d) **certified rows** (``--certify-n``): the statistics algorithm against Arb enclosures of chosen output
    rows (first, last, ``--certify-random`` random ones, and every row it emits), at O(rows·n·d) cost, so at
    n = 2^20 too; judged entrywise under its polynomial contract η (:func:`certified_rows_check`).

``--plot DIR`` writes ``streaming_state.png`` and ``streaming_time.png`` (log–log, one line per algorithm).
"""

from __future__ import annotations


import time
from typing import Any, Iterator

import numpy as np

from attnspec.accelerated.streaming_attention import SketchedStreaming, SufficientStatistics, TiledOnlineSoftmax
from attnspec.bench.timing import emit
from attnspec.spec.streaming_attention import Chunk, reachable_bytes

ALGORITHMS = {"sketch": SketchedStreaming, "statistics": SufficientStatistics, "online_softmax": TiledOnlineSoftmax}


def generated_chunks(n: int, d: int, dv: int, chunk: int, seed: int) -> Iterator[Chunk]:
    """kv_first chunks drawn from a seeded generator per chunk (reproducible, never all in memory)."""
    for a in range(0, n, chunk):
        rng = np.random.default_rng([seed, 0, a])
        m = min(chunk, n - a)
        yield Chunk("kv", a, k=rng.uniform(-1, 1, (m, d)), v=rng.uniform(-1, 1, (m, dv)))
    for a in range(0, n, chunk):
        rng = np.random.default_rng([seed, 1, a])
        yield Chunk("q", a, q=rng.uniform(-1, 1, (min(chunk, n - a), d)))


def run_stream(cls: type, n: int, d: int, dv: int, k: int, chunk: int, seed: int, measure_every: int) -> dict[str, Any]:
    s = cls(n=n, d=d, dv=dv, k=k, scale=1 / d, bound=1.0, seed=seed)
    peak = reported = 0
    t0 = time.perf_counter()
    measured_time = 0.0
    for i, c in enumerate(generated_chunks(n, d, dv, chunk, seed)):
        s.feed(c)
        if i % measure_every == 0:
            m0 = time.perf_counter()
            peak, reported = max(peak, reachable_bytes(s)), max(reported, int(s.state_bytes()))
            measured_time += time.perf_counter() - m0
    peak, reported = max(peak, reachable_bytes(s)), max(reported, int(s.state_bytes()))
    out = s.finish()
    seconds = time.perf_counter() - t0 - measured_time
    return {"state_bytes": peak, "reported_bytes": reported, "seconds_per_token": seconds / n, "output": out,
            "guarantee": s.guarantee}


def state_and_time(ns: list[int], d: int, dv: int, k: int, chunk: int, baseline_max_n: int, seed: int) -> dict[str, Any]:
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in ALGORITHMS}
    for n in ns:
        for name, cls in ALGORITHMS.items():
            if name == "online_softmax" and n > baseline_max_n:
                continue
            r = run_stream(cls, n, d, dv, k, chunk, seed, measure_every=max(1, (2 * n // chunk) // 16))
            rows[name].append({"n": n, "state_bytes": r["state_bytes"], "reported_bytes": r["reported_bytes"],
                               "us_per_token": round(1e6 * r["seconds_per_token"], 3)})
    for name, series in rows.items():
        if series:
            base = series[0]["state_bytes"]
            for row in series:
                row["state_ratio_to_first_n"] = round(row["state_bytes"] / base, 4)
    return rows


def _exact_columns(n: int, d: int, dv: int, chunk: int, seed: int) -> np.ndarray:
    parts = list(generated_chunks(n, d, dv, chunk, seed))
    k = np.concatenate([c.k for c in parts if c.kind == "kv"])
    v = np.concatenate([c.v for c in parts if c.kind == "kv"])
    q = np.concatenate([c.q for c in parts if c.kind == "q"])
    out = np.empty((n, dv))
    for a in range(0, n, 1024):
        logits = (q[a:a + 1024] @ k.T) / d
        w = np.exp(logits - logits.max(axis=1, keepdims=True))
        out[a:a + 1024] = (w @ v) / w.sum(axis=1, keepdims=True)
    return out


def _best_k(y: np.ndarray, k: int) -> np.ndarray:
    sq = np.sort(y**2, axis=0)
    return np.sqrt(sq[: y.shape[0] - k].sum(axis=0))


def errors(ns: list[int], d: int, dv: int, k: int, chunk: int, seed: int) -> list[dict[str, Any]]:
    out = []
    for n in ns:
        y = _exact_columns(n, d, dv, chunk, seed)
        best = _best_k(y, k)
        row: dict[str, Any] = {"n": n, "best_k_over_norm": [round(float(b), 4) for b in best / np.linalg.norm(y, axis=0)]}
        for name, cls in ALGORITHMS.items():
            r = run_stream(cls, n, d, dv, k, chunk, seed, measure_every=10**9)
            idx, val = r["output"]
            est = np.zeros_like(y)
            for c in range(dv):
                est[idx[c], c] = val[c]
            err = np.linalg.norm(y - est, axis=0)
            row[name] = {"max_err_over_best_k": round(float((err / best).max()), 6), "eps2": r["guarantee"].eps2}
        out.append(row)
    return out


def _stream_arrays(n: int, d: int, dv: int, chunk: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    parts = list(generated_chunks(n, d, dv, chunk, seed))
    cat = np.concatenate
    return (cat([c.q for c in parts if c.kind == "q"]), cat([c.k for c in parts if c.kind == "kv"]),
            cat([c.v for c in parts if c.kind == "kv"]))


def certified_rows_check(n: int, d: int, dv: int, k: int, chunk: int, seed: int, random_rows: int,
                         algorithm: type = SufficientStatistics) -> dict[str, Any]:
    """Judge the statistics algorithm on certified rows: its row map rows(q_i) for the chosen rows, and its
    emitted (index, value) pairs, each entry against the Arb ball of T_ic with tolerance η
    (``entry_error()``, the polynomial contract from which its declared ε₂ = 2√n·η follows).

    Rows: 0, n − 1, ``random_rows`` seeded random ones, and every emitted index. Returns the verdicts,
    the worst certified error over η (upper end of the certified error interval) and the seconds taken.
    """
    from attnspec.conformance.judging.verdict import judge
    from attnspec.reference.streaming_attention import certified_rows, sub_enclosure

    t0 = time.perf_counter()
    alg = algorithm(n=n, d=d, dv=dv, k=k, scale=1 / d, bound=1.0, seed=seed)
    for c in generated_chunks(n, d, dv, chunk, seed):
        alg.feed(c)
    idx, val = alg.finish()
    q, keys, values = _stream_arrays(n, d, dv, chunk, seed)
    chosen = {0, n - 1, *np.random.default_rng([seed, 2]).integers(0, n, random_rows).tolist()}
    rows = sorted(chosen | set(idx.ravel().tolist()))
    position = {r: i for i, r in enumerate(rows)}
    t1 = time.perf_counter()
    enclosures: dict[int, Any] = {}

    def enclose_rows(prec: int):
        if prec not in enclosures:
            enclosures[prec] = certified_rows(q[rows], keys, values, 1 / d, prec)
        return enclosures[prec]

    eta = alg.entry_error()
    rows_verdict = judge(alg.rows(q[rows]), enclose_rows, eta, shape=(len(rows), dv))
    picks = [(position[int(i)], c) for c in range(dv) for i in idx[c]]
    emitted = judge(val.reshape(-1), lambda p: sub_enclosure(enclose_rows(p), picks, (len(picks),)), eta,
                    shape=(len(picks),))
    t2 = time.perf_counter()

    def summary(v: Any) -> dict[str, Any]:
        return {"status": v.status, "worst_error_over_eta": v.evidence.get("ratio"), "prec": v.evidence.get("prec")}

    return {"n": n, "rows_checked": len(rows), "eta": eta, "eps2": alg.guarantee.eps2,
            "rows": summary(rows_verdict), "emitted": summary(emitted),
            "stream_seconds": round(t1 - t0, 2), "certify_seconds": round(t2 - t1, 2)}


def run(args: Any) -> int:
    result: dict[str, Any] = {
        "setup": {"d": args.d, "dv": args.dv, "k": args.k, "chunk": args.chunk, "order": "kv_first",
                  "entries": "uniform [-1, 1]", "scale": "1/d", "sketch": "rows 9 × 64 buckets × dv, Φ and Ψ"},
        "state_and_time": state_and_time(args.n, args.d, args.dv, args.k, args.chunk, args.baseline_max_n, args.seed),
        "error_against_n": errors([n for n in args.n if n <= args.exact_max_n], args.d, args.dv, args.k, args.chunk, args.seed),
    }
    if args.certify_n:
        result["certified_rows"] = [certified_rows_check(n, args.d, args.dv, args.k, args.chunk, args.seed,
                                                         args.certify_random) for n in args.certify_n]
    if args.plot:
        result["plots"] = plot(result["state_and_time"], args.plot)
    emit(result, as_json=args.json)
    return 0


def plot(rows: dict[str, list[dict[str, Any]]], directory: str) -> list[str]:
    """PNG plots (log–log) of persistent state and time per token against n, one line per algorithm (none
    without matplotlib, the optional ``plot`` extra)."""
    from pathlib import Path

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []

    out = []
    Path(directory).mkdir(parents=True, exist_ok=True)
    for key, label, name in (("state_bytes", "persistent state (bytes)", "streaming_state.png"),
                             ("us_per_token", "time per token (µs)", "streaming_time.png")):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for algo, series in rows.items():
            if series:
                ax.loglog([r["n"] for r in series], [r[key] for r in series], marker="o", label=algo)
        ax.set_xlabel("n")
        ax.set_ylabel(label)
        ax.legend()
        path = str(Path(directory) / name)
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        out.append(path)
    return out


def register(bench_subparsers) -> None:
    p = bench_subparsers.add_parser("streaming", help="one-pass streaming attention: state vs n, error vs n, time per token")
    p.add_argument("--n", type=int, nargs="+", default=[2**12, 2**14], help="sequence lengths")
    p.add_argument("--d", type=int, default=3)
    p.add_argument("--dv", type=int, default=2)
    p.add_argument("--k", type=int, default=8, help="sparsity k")
    p.add_argument("--chunk", type=int, default=4096, help="tokens per chunk")
    p.add_argument("--baseline-max-n", type=int, default=2**14, help="largest n for the online-softmax baseline")
    p.add_argument("--exact-max-n", type=int, default=2**14, help="largest n for the exact error columns")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--certify-n", type=int, nargs="*", default=[], help="n for the certified-rows check of the statistics")
    p.add_argument("--certify-random", type=int, default=4, help="random rows certified (besides first, last, emitted)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", metavar="DIR", default=None, help="write PNG plots of state and time per token against n")
    p.set_defaults(func=run)


__all__ = ["register", "generated_chunks", "run_stream", "state_and_time", "errors", "certified_rows_check"]

