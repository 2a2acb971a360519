"""Test configuration: hypothesis profiles and the GPU marker.

Profiles (select with ATTNSPEC_PROFILE or HYPOTHESIS_PROFILE):
- ``ci`` (default): derandomized, few examples, no deadline (certified references are slow by design);
- ``thorough``: many examples, random seeds, for local runs before a release.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # test helper modules (backend catalogues)
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=15,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("ATTNSPEC_PROFILE", os.environ.get("HYPOTHESIS_PROFILE", "ci")))


def _gpu_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _gpu_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU with CuPy on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
