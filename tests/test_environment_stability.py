"""The backend's environment is the one the run started in: a restarted worker, or one started after a
Dask cluster (which sets OPENBLAS_NUM_THREADS=1 and more in the client), computes in the same environment,
so the same command gives the same bits serially and on a cluster."""

from __future__ import annotations

import os

import numpy as np
import pytest

from attnspec.conformance.harness.isolation import ProcessRunner

import helper_backends as hb

Q = np.ones((2, 3))


def test_a_restarted_worker_keeps_the_runners_environment(monkeypatch):
    monkeypatch.setenv("ATTNSPEC_ENV_PROBE", "abc")
    with ProcessRunner(hb.SPEC_PREFIX + "EnvironmentProbe", timeout=30) as runner:
        first = runner.call("attention", Q, Q, Q, scale=0.5)
        assert first.ok and first.output[0, 0] == 3.0
        monkeypatch.setenv("ATTNSPEC_ENV_PROBE", "changed later")
        crash = runner.call("attention", Q, Q, Q, scale=hb.CRASH_SCALE)
        assert not crash.ok and crash.error_kind == "crash"
        again = runner.call("attention", Q, Q, Q, scale=0.5)  # a new worker process
        assert again.ok and again.output[0, 0] == 3.0, again


def test_starting_a_local_cluster_leaves_the_environment_as_it_was():
    pytest.importorskip("distributed")
    from attnspec.conformance.harness.distributed import cluster_client

    before = dict(os.environ)
    with cluster_client(1, None, quiet=True):
        assert dict(os.environ) == before
    assert dict(os.environ) == before
