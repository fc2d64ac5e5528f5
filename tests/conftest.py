"""Shared fixtures. One local Ray instance for the whole session (ray.init costs ~5 s and ~1 GB)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray (2 CPUs) whose node holds the default device resource."""
    import ray

    from autocomp.measure import get_device
    from autocomp.cluster import init_ray

    init_ray(None, get_device("cpu-ort"), num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def mnist():
    from autocomp.data import load_dataset

    return load_dataset("mnist")
