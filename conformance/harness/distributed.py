"""Certified judging and instance generation fanned out to a Dask ``distributed`` cluster.

The backend under test stays where it is (its isolated worker process, driven by the client); only the
expensive, pure steps travel: the certified judgement of an output and the derivation of an instance.

What crosses a process boundary is numpy arrays and JSON-able records only. python-flint's balls do not
pickle, and a :class:`ConformanceCase` may hold enclosure caches, so a judge item carries the instance
as its case-file parts (``instance_arrays`` + ``instance_params``) and the worker rebuilds it with
``instance_from_files`` (the validated path of every replay file). The output is the runner's coerced
output (a float, an int or a real numeric ndarray), never an object of the backend's.

:class:`BatchedMap` is the engine: items are grouped into batches sized so that one batch computes for
about :data:`TARGET_BATCH_SECONDS` (the per-case cost is learned from the batches already back), at
most ``2 × workers`` batches are in flight, and results come back as they complete. With a per-task
scheduler overhead ``c ≈ 200 µs`` and a batch time ``T``, the overhead fraction is about ``c / T``
(0.1 % at ``T = 0.2 s``). A batch whose worker dies is rescheduled by Dask (``allowed-failures``) and
one that raises is retried (``retries=``); the journal gets a ``retry`` event naming its cases. A batch
that fails for good is computed in the client, so nothing is lost and a verdict never depends on the
cluster.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from collections import deque
from typing import Any, Callable, Iterator

import numpy as np

TARGET_BATCH_SECONDS = 0.2  # ≥ 100 ms per task: scheduler overhead ≈ 200 µs / 0.2 s = 0.1 %
MAX_BATCH_ITEMS = 2000
IN_FLIGHT_PER_WORKER = 2  # one batch computing, one queued behind it on each worker
TASK_RETRIES = 2


# --------------------------------------------------------------------------- the worker side


def run_batch(fn: Callable[[Any], Any], items: list[tuple[int, Any]]) -> dict[str, Any]:
    """Apply ``fn`` to each ``(index, item)``; the results with each item's compute seconds and where
    the batch ran (for the journal and the overhead figures)."""
    results, seconds = [], []
    for index, item in items:
        t0 = time.perf_counter()
        results.append((index, fn(item)))
        seconds.append(time.perf_counter() - t0)
    return {"results": results, "seconds": seconds, "pid": os.getpid()}


_CAPS_CACHE: dict[str, Any] = {}


def _capabilities(caps_json: dict[str, Any]) -> Any:
    import json

    from attnspec.conformance.harness.capabilities import Capabilities

    key = json.dumps(caps_json, sort_keys=True)
    if key not in _CAPS_CACHE:
        _CAPS_CACHE[key] = Capabilities.from_json(caps_json)
    return _CAPS_CACHE[key]


def judge_item(item: dict[str, Any]) -> dict[str, Any]:
    """Worker side of one judgement: rebuild the case from its files' parts, judge the output.

    Returns the record fields of :func:`~attnspec.conformance.harness.runner.judge_output`, sanitized to
    JSON values (so nothing that does not pickle can come back)."""
    from attnspec.conformance.harness.report import sanitize
    from attnspec.conformance.harness.runner import judge_output
    from attnspec.conformance.judging.problems import get_problem

    problem = get_problem(item["problem"])
    instance = problem.instance_from_files(item["arrays"], item["params"])
    case = problem.case_type(item["case_id"], item["family"], item["dtype"], item["seed"], instance)
    if item.get("rows") is not None:  # a row-subset case certifies those rows only
        case.rows = tuple(int(r) for r in item["rows"])
    tolerance = item["tolerance"]
    if tolerance is not None:
        tolerance = (tolerance[0], tolerance[1])
    fields = judge_output(case, item["output"], _capabilities(item["caps"]), tolerance, max_prec=item["max_prec"])
    return sanitize(fields)


def judge_payload(case: Any, output: Any, tolerance: Any, caps: Any, *, max_prec: int = 1024) -> dict[str, Any]:
    """Client side: the item :func:`judge_item` needs, as numpy arrays and JSON-able values only."""
    from attnspec.conformance.harness.report import sanitize
    from attnspec.conformance.judging.problems import get_problem

    problem = get_problem(case.problem)
    if isinstance(output, np.ndarray):
        output = np.array(output, copy=True, subok=False)  # a plain, owned ndarray
    elif not isinstance(output, (float, int)) or isinstance(output, bool):
        raise TypeError(f"a judge item's output must be a coerced number or ndarray, got {type(output).__name__}")
    if tolerance is not None:  # (array fixed before the call, where it came from)
        tolerance = (np.array(tolerance[0], dtype=np.float64, copy=True), sanitize(tolerance[1]))
    return {
        "problem": case.problem, "case_id": case.case_id, "family": case.family, "dtype": case.dtype,
        "seed": int(case.seed), "arrays": {k: np.array(v, copy=True) for k, v in problem.instance_arrays(case.instance).items()},
        "params": sanitize(problem.instance_params(case.instance)), "output": output, "tolerance": tolerance,
        "caps": caps.to_json(), "max_prec": int(max_prec),
        "rows": None if getattr(case, "rows", None) is None else [int(r) for r in case.rows],
    }


def synthetic_item(item: dict[str, Any]) -> dict[str, Any]:
    """A stand-in judgement for overhead measurements: spins for ``item["seconds"]`` of compute and
    returns a status that depends on the item alone (deterministic)."""
    t_end = time.perf_counter() + float(item["seconds"])
    x = 0
    while time.perf_counter() < t_end:
        x += 1
    return {"status": "pass" if item["id"] % 7 else "fail", "id": item["id"]}


# --------------------------------------------------------------------------- the client side


def cluster_client(workers: int | None = None, scheduler: str | None = None, *, quiet: bool = False) -> contextlib.AbstractContextManager:
    """A Dask client: on ``scheduler`` (an address such as ``tcp://host:8786``) when given, else on a new
    ``LocalCluster(n_workers=workers, threads_per_worker=1, processes=True)``; closed (and the local
    cluster shut down) on exit. The dashboard link is printed on stderr."""
    return _cluster_client(workers, scheduler, quiet)


@contextlib.contextmanager
def _cluster_client(workers: int | None, scheduler: str | None, quiet: bool) -> Iterator[Any]:
    import logging

    from distributed import Client, LocalCluster

    if scheduler is not None:
        client = Client(scheduler)
        cluster = None
    else:
        if workers is None or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        saved = dict(os.environ)  # LocalCluster sets OPENBLAS_NUM_THREADS=1, PYTHONHASHSEED, … in this process
        try:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                                   silence_logs=logging.ERROR)
            client = Client(cluster)
        finally:  # a backend worker started after this must see the user's environment, not Dask's
            os.environ.clear()
            os.environ.update(saved)
    try:
        if not quiet:
            link = dashboard_link(client)
            where = scheduler or f"a local cluster of {workers} worker processes"
            print(f"attnspec: computing on {where}" + (f"; dashboard: {link}" if link else " (no dashboard: pip install bokeh)"),
                  file=sys.stderr)
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def dashboard_link(client: Any) -> str | None:
    """The cluster's dashboard address, when the scheduler serves one."""
    try:
        info = client.scheduler_info()
        if "dashboard" not in (info.get("services") or {}):
            return None
        return str(client.dashboard_link)
    except Exception:
        return None


def worker_count(client: Any) -> int:
    try:
        return max(1, len(client.scheduler_info().get("workers", {})))
    except Exception:
        return 1


class BatchedMap:
    """``fn`` applied to submitted items on a Dask cluster, batched, results as they complete.

    ``submit(index, item)`` queues an item; ``ready()`` returns the ``(index, result)`` pairs finished so
    far without waiting; ``drain()`` waits for all of them. ``note(event)`` receives the journal events
    (``retry``: a batch was on a worker that died and runs again; ``client_fallback``: a batch failed for
    good and was computed in the client). ``stats`` holds the figures for the throughput model.
    """

    def __init__(self, client: Any, fn: Callable[[Any], Any], *, describe: Callable[[Any], str] = str,
                 note: Callable[[dict[str, Any]], None] | None = None, target_seconds: float = TARGET_BATCH_SECONDS,
                 max_in_flight: int | None = None, retries: int = TASK_RETRIES):
        self.client = client
        self.fn = fn
        self.describe = describe
        self.note = note or (lambda event: None)
        self.target_seconds = target_seconds
        self.max_in_flight = max_in_flight or IN_FLIGHT_PER_WORKER * worker_count(client)
        self.retries = retries
        self.token = uuid.uuid4().hex[:12]
        self.pending: deque[tuple[int, Any]] = deque()
        self.in_flight: dict[Any, list[tuple[int, Any]]] = {}  # future → its items
        self.done: list[tuple[int, Any]] = []
        self.seconds_per_item: float | None = None
        self._batches = 0
        self._draining = False
        self._seen_retries: set[tuple[str, str]] = set()
        self.stats = {"batches": 0, "items": 0, "compute_seconds": 0.0, "retries": 0, "client_fallbacks": 0}

    # -- sizing -------------------------------------------------------------------------------
    def batch_size(self) -> int:
        """Items in the next batch: about ``target_seconds`` of compute at the cost learned so far (one
        item while nothing is known: the first batches calibrate, and idle workers get work at once)."""
        if not self.seconds_per_item:
            return 1
        size = int(min(MAX_BATCH_ITEMS, max(1, self.target_seconds / self.seconds_per_item)))
        if self._draining:  # no more items coming: share the rest out, so no worker idles at the end
            size = min(size, max(1, -(-len(self.pending) // self.max_in_flight)))
        return size

    def _learn(self, seconds: list[float]) -> None:
        if not seconds:
            return
        mean = sum(seconds) / len(seconds)
        self.seconds_per_item = mean if self.seconds_per_item is None else 0.5 * (self.seconds_per_item + mean)

    # -- the loop ---------------------------------------------------------------------------
    def submit(self, index: int, item: Any) -> None:
        self.pending.append((index, item))
        self._dispatch()

    def _dispatch(self) -> None:
        while self.pending and len(self.in_flight) < self.max_in_flight:
            size = self.batch_size()
            batch = [self.pending.popleft() for _ in range(min(size, len(self.pending)))]
            self._batches += 1
            key = f"attnspec-batch-{self.token}-{self._batches:06d}"
            future = self.client.submit(run_batch, self.fn, batch, key=key, retries=self.retries, pure=False)
            self.in_flight[future] = batch

    def _collect(self, futures: list[Any]) -> None:
        for future in futures:
            batch = self.in_flight.pop(future)
            try:
                reply = future.result()
            except Exception as exc:  # KilledWorker after allowed-failures, or an error after the retries
                self.note({"event": "client_fallback", "task": str(future.key), "error": f"{type(exc).__name__}: {exc}"[:500],
                           "cases": [self.describe(item) for _, item in batch]})
                self.stats["client_fallbacks"] += 1
                reply = run_batch(self.fn, batch)
            finally:
                future.release()
            self._learn(reply["seconds"])
            self.stats["batches"] += 1
            self.stats["items"] += len(reply["results"])
            self.stats["compute_seconds"] += sum(reply["seconds"])
            self.done.extend(reply["results"])
        self._note_retries()

    def _note_retries(self) -> None:
        """Journal a ``retry`` for each of our batches that was on a worker the scheduler removed."""
        try:
            events = self.client.get_events("all")
        except Exception:
            return
        prefix = f"attnspec-batch-{self.token}-"
        for stamp, msg in events:
            if not isinstance(msg, dict) or msg.get("action") != "remove-worker":
                continue
            lost = [(str(k), "the worker running it was removed") for k in msg.get("processing-tasks", ())]
            lost += [(str(k), "its result was lost with its worker") for k in msg.get("lost-computed-tasks", ())]
            for key, reason in sorted(lost):
                if key.startswith(prefix) and (key, str(msg.get("worker"))) not in self._seen_retries:
                    self._seen_retries.add((key, str(msg.get("worker"))))
                    self.stats["retries"] += 1
                    self.note({"event": "retry", "task": key, "reason": reason,
                               "worker": str(msg.get("worker")), "expected": bool(msg.get("expected"))})

    def ready(self) -> list[tuple[int, Any]]:
        finished = [f for f in self.in_flight if f.done()]
        if finished:
            self._collect(finished)
            self._dispatch()
        out, self.done = self.done, []
        return out

    def drain(self) -> Iterator[tuple[int, Any]]:
        from distributed import wait

        self._draining = True
        yield from self.ready()
        while self.in_flight or self.pending:
            self._dispatch()
            finished = wait(list(self.in_flight), return_when="FIRST_COMPLETED").done
            self._collect(list(finished))
            self._dispatch()
            out, self.done = self.done, []
            yield from out
        self._note_retries()


def map_ordered(client: Any, fn: Callable[[Any], Any], items: list[Any], **options: Any) -> Iterator[Any]:
    """``fn(item)`` for each item, computed on the cluster in batches, yielded in the items' order
    (each result as soon as it and every one before it are back)."""
    engine = BatchedMap(client, fn, **options)
    for index, item in enumerate(items):
        engine.submit(index, item)
    waiting: dict[int, Any] = {}
    nxt = 0
    for index, result in engine.drain():
        waiting[index] = result
        while nxt in waiting:
            yield waiting.pop(nxt)
            nxt += 1


# --------------------------------------------------------------------------- the conformance run


class SerialJudging:
    """Judging in the client, at once (the default): the same interface as :class:`DaskJudging`."""

    def __init__(self, caps: Any, max_prec: int = 1024):
        self.caps = caps
        self.max_prec = max_prec
        self._done: list[tuple[int, dict[str, Any]]] = []

    def submit(self, index: int, pending: Any) -> None:
        from attnspec.conformance.harness.runner import judge_output

        self._done.append((index, judge_output(pending.case, pending.output, self.caps, pending.tolerance, max_prec=self.max_prec)))

    def ready(self) -> list[tuple[int, dict[str, Any]]]:
        out, self._done = self._done, []
        return out

    def drain(self) -> Iterator[tuple[int, dict[str, Any]]]:
        yield from self.ready()


class DaskJudging:
    """Judging on a Dask cluster: each output becomes a :func:`judge_payload` item of a
    :class:`BatchedMap`, judged by :func:`judge_item` while the client calls the backend on the next cases."""

    def __init__(self, client: Any, caps: Any, *, note: Callable[[dict[str, Any]], None], max_prec: int = 1024, **options: Any):
        self.caps = caps
        self.max_prec = max_prec
        self.engine = BatchedMap(client, judge_item, describe=lambda item: item["case_id"], note=note, **options)
        self._conditioning: dict[int, Any] = {}

    def submit(self, index: int, pending: Any) -> None:
        from attnspec.conformance.harness.report import sanitize
        from attnspec.conformance.judging.problems import get_problem

        # The conditioning numbers are float diagnostics (a BLAS product of the inputs): their last bits
        # follow the BLAS and its thread count, which differ between this process and a worker. They are
        # computed here, as in a serial run, so the report cannot depend on where the judging ran.
        problem = get_problem(pending.case.problem)
        if hasattr(problem, "conditioning"):
            self._conditioning[index] = sanitize(problem.conditioning(pending.case.instance))
        self.engine.submit(index, judge_payload(pending.case, pending.output, pending.tolerance, self.caps, max_prec=self.max_prec))

    def _local_conditioning(self, done: list[tuple[int, dict[str, Any]]] | Iterator[tuple[int, dict[str, Any]]]) -> Iterator[tuple[int, dict[str, Any]]]:
        for index, fields in done:
            conditioning = self._conditioning.pop(index, None)
            evidence = fields.get("evidence")
            if conditioning is not None and isinstance(evidence, dict) and "conditioning" in evidence:
                evidence["conditioning"] = conditioning
            yield index, fields

    def ready(self) -> list[tuple[int, dict[str, Any]]]:
        return list(self._local_conditioning(self.engine.ready()))

    def drain(self) -> Iterator[tuple[int, dict[str, Any]]]:
        return self._local_conditioning(self.engine.drain())


# --------------------------------------------------------------------------- instance generation


def derive_item(item: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Worker side of instance generation: one instance's manifest record and arrays, from its seed."""
    from attnspec.reductions.instance_sets import derive
    from attnspec.reductions.registry import get_reduction

    return derive(get_reduction(item["reduction"]), item["family"], item["n"], item["seed"], item["parameters"],
                  with_reference=item["with_reference"])


def derive_on(client: Any) -> Callable[..., Iterator[tuple[dict[str, Any], dict[str, np.ndarray]]]]:
    """A ``derive_many`` for :func:`~attnspec.reductions.instance_sets.generate_set` that derives the
    instances on ``client``'s cluster (results in index order: the set is the serial one, byte for byte)."""

    def derive_many(reduction: str, n: int, jobs: list[tuple[str, int]], parameters: dict[str, Any],
                    with_reference: bool) -> Iterator[tuple[dict[str, Any], dict[str, np.ndarray]]]:
        items = [{"reduction": reduction, "family": fam, "n": n, "seed": seed, "parameters": parameters,
                  "with_reference": with_reference} for fam, seed in jobs]
        return map_ordered(client, derive_item, items, describe=lambda item: f"seed {item['seed']}")

    return derive_many


__all__ = ["BatchedMap", "DaskJudging", "SerialJudging", "cluster_client", "derive_on", "judge_item", "judge_payload",
           "map_ordered", "run_batch", "synthetic_item", "TARGET_BATCH_SECONDS"]
