"""Shared fixtures. One local Ray instance for the whole session (ray.init costs ~5 s and ~1 GB); a
user cache per test module for the searches, which calibrate into it."""

from __future__ import annotations

import os
from pathlib import Path

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


@pytest.fixture(scope="module")
def user_cache(tmp_path_factory):
    """A fresh user cache ($AUTOCOMP_CACHE) for searches, whose calibrations and recorded
    measurements must not land in the real one; it shares the real cache's MNIST and the reference
    model's nominal latency. The tests set AUTOCOMP_CACHE to it where they search."""
    from autocomp.resources import cache_dir

    cache = tmp_path_factory.mktemp("user-cache")
    for name in ("mnist", "reference"):
        if (cache_dir() / name).is_dir():
            (cache / name).symlink_to((cache_dir() / name).resolve(), target_is_directory=True)
    return cache


@pytest.fixture(scope="session")
def tiny_yaml():
    """``name -> YAML``: the 8x8 one-stage space of the measurement tests (tests/fixtures/tiny-8x8.yaml)
    under ``name``, so each module's tables and predictors keep a space of their own."""
    text = (Path(__file__).parent / "fixtures" / "tiny-8x8.yaml").read_text()
    return lambda name: text.replace("name: tiny-8x8", f"name: {name}", 1)


def pytest_collection_modifyitems(items):
    """test_calibrate measures on a device registered in this process only, so it runs before any
    test starts the session's Ray (it skips itself when Ray is already up); the rest keep their order."""
    items.sort(key=lambda item: 0 if item.path.name == "test_calibrate.py" else 1)


@pytest.fixture
def user_devices(tmp_path, monkeypatch):
    """An empty $AUTOCOMP_DEVICES folder; the device registry is read again after the test."""
    from autocomp.measure.base import reload_devices

    d = tmp_path / "my-devices"
    d.mkdir()
    monkeypatch.setenv("AUTOCOMP_DEVICES", str(d))
    yield d
    monkeypatch.delenv("AUTOCOMP_DEVICES")
    reload_devices()
