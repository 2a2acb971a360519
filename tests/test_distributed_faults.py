"""A Dask worker killed in the middle of a run costs a retry of its batch, not the run: the run finishes,
every case is judged exactly once, the report is the serial one and the journal shows the retry.

One LocalCluster of three worker processes (each under a nanny, which restarts a killed worker)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

distributed = pytest.importorskip("distributed")

from attnspec.conformance.harness.runner import run_conformance  # noqa: E402
from attnspec.conformance.harness.report import records_without_timings  # noqa: E402
from attnspec.conformance.harness.selection import CaseSelection  # noqa: E402

FAMILIES = ("uniform", "odd_sizes")


@pytest.fixture(scope="module")
def client():
    import logging

    with distributed.LocalCluster(n_workers=3, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=logging.CRITICAL) as cluster, distributed.Client(cluster) as c:
        yield c


def _die_if_computing_a_batch(dask_worker) -> bool:
    """Runs in the worker's event loop, the thread that would record a finished task: while it runs, a
    batch computing now cannot finish, so checking and killing here leaves no race."""
    if any(str(ts.key).startswith("attnspec-batch-") for ts in dask_worker.state.executing):
        os.kill(os.getpid(), signal.SIGKILL)
    return False


def _kill_a_busy_worker(client) -> str:
    """SIGKILL a worker in the middle of computing one of this run's batches (waits until one is)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for addr in sorted(client.scheduler_info()["workers"]):
            try:
                client.run(_die_if_computing_a_batch, workers=[addr])
            except Exception:  # the worker died answering: it was computing a batch
                return addr
        time.sleep(0.005)
    raise AssertionError("no worker ever computed a batch")


def test_a_killed_worker_costs_a_retry_not_the_run(client, tmp_path):
    selection = CaseSelection((), FAMILIES, None)
    serial = run_conformance("numpy", problems=["softmax_attention"], report_dir=tmp_path / "serial", isolation="none",
                             selection=selection).report
    killed: list[str] = []

    def progress(done, total, counts):
        if not killed and done >= total // 3:  # mid-run: batches have grown to ~0.2 s, many still to come
            killed.append(_kill_a_busy_worker(client))

    report = run_conformance("numpy", problems=["softmax_attention"], report_dir=tmp_path / "killed", isolation="none",
                             selection=selection, dask_client=client, progress=progress).report
    assert killed
    ids = [r["case_id"] for r in report["cases"]]
    assert len(ids) == len(set(ids)) == serial["summary"]["total"]  # every case exactly once
    strip = lambda rep: records_without_timings(rep["cases"])  # noqa: E731
    assert strip(report) == strip(serial)
    lines = [json.loads(line) for line in (tmp_path / "killed" / "cases.jsonl").read_text().splitlines()[1:]]
    retries = [e for e in lines if e.get("event") == "retry"]
    assert retries and all(e["worker"] == killed[0] for e in retries), lines[-3:]
    judged = [e["case_id"] for e in lines if "status" in e]
    assert sorted(judged) == sorted(ids)  # the journal, too, holds each case once
