"""Timing, memory and scaling-fit utilities shared by every benchmark."""

from __future__ import annotations

import gc
import json
import math
import platform
import sys
import time
import tracemalloc
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np


@dataclass
class Timing:
    """Best and median wall-clock seconds over ``repeats`` runs (after one warm-up when asked)."""

    best: float
    median: float
    repeats: int


def time_call(fn: Callable[[], Any], *, repeats: int = 3, warmup: bool = True, sync: Callable[[], None] | None = None) -> Timing:
    """Time ``fn()``; ``sync`` (e.g. a CUDA stream synchronize) runs before each clock read."""
    if warmup:
        fn()
        if sync:
            sync()
    samples = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return Timing(best=samples[0], median=samples[len(samples) // 2], repeats=repeats)


def peak_python_memory(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated through Python's allocators (numpy included) while ``fn()`` runs."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return int(peak)


def fit_exponent(ns: Sequence[float], seconds: Sequence[float]) -> float:
    """Least-squares slope of log(time) against log(n): the empirical exponent a in time ≈ c·nᵃ."""
    x = np.log(np.asarray(ns, dtype=float))
    y = np.log(np.asarray(seconds, dtype=float))
    if len(x) < 2:
        raise ValueError("need at least two sizes to fit an exponent")
    slope, _ = np.polyfit(x, y, 1)
    return float(slope)


def crossover(ns: Sequence[float], slow: Sequence[float], fast: Sequence[float]) -> float | None:
    """Smallest n (log-linearly interpolated) from which ``fast`` beats ``slow``; None if never."""
    ratio = np.log(np.asarray(slow, dtype=float) / np.asarray(fast, dtype=float))
    for i, r in enumerate(ratio):
        if r > 0:
            if i == 0:
                return float(ns[0])
            r0 = ratio[i - 1]
            t = -r0 / (r - r0)
            return float(math.exp(math.log(ns[i - 1]) + t * (math.log(ns[i]) - math.log(ns[i - 1]))))
    return None


def machine_description() -> dict[str, Any]:
    """Where a figure came from: CPU, cores, Python and library versions."""
    import os

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def emit(result: dict[str, Any], *, as_json: bool) -> None:
    """Print a benchmark result as JSON or as readable lines."""
    if as_json:
        print(json.dumps(result, indent=2, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o)))
        return
    for key, value in result.items():
        print(f"{key}: {value}")
