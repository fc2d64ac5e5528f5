"""Ray start-up: join a cluster or start a private local one whose node holds the device.

Measurements that must run on the device's machine are Ray tasks that need the device's custom
resource (``device:<name>``); :func:`on_device` runs a function there (or here, without Ray).
"""

from __future__ import annotations

import os
from typing import Any, Callable

from autocomp.measure import Device


def init_ray(address: str | None, device: Device, num_cpus: int | None = None) -> None:
    """Join ``address`` ('auto', 'ray://host:port', or RAY_ADDRESS from `ray job submit`) or start a
    local Ray whose single node holds the device. Dashboard and ports stay on loopback."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    env = {"env_vars": {"PYTHONWARNINGS": "ignore"}}
    if address:  # the cluster's (or the submitted job's) runtime environment applies
        ray.init(address=address, log_to_driver=False)
    else:
        # "local": always a private instance, never whatever cluster /tmp/ray/ray_current_cluster names
        ray.init(address="local", num_cpus=num_cpus, resources={device.resource: 1}, include_dashboard=False,
                 dashboard_host="127.0.0.1", runtime_env=env, log_to_driver=False)


def on_device(device: Device, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on the node that holds ``device`` when Ray is running, else here."""
    import ray

    if not ray.is_initialized():
        return fn(*args)
    task = ray.remote(num_cpus=0, max_retries=1)(fn).options(resources={device.resource: 1}, scheduling_strategy="DEFAULT")
    return ray.get(task.remote(*args))
