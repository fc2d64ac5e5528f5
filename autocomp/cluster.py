"""Ray start-up: join a cluster or start a private local one whose node holds the device.

A local instance is bound to loopback: GCS, raylet, workers and agents listen on 127.0.0.1 only,
and the dashboard is off. Should the driver be killed, a small reaper process ends that instance's
agents at once (Ray leaves them running for a minute or more). Joining a cluster (``--address``) is
checked first: the address must be well formed and answer.

Measurements that must run on the device's machine need the device's custom resource
(``device:<name>``); :func:`on_device` runs a function there (or here, without Ray). During a search,
:func:`device_workers` keeps one process per unit of that resource alive for them: a Ray task per
measurement often got a fresh worker (Ray ends idle workers beyond a node's CPU count, and the trials
hold those), which imported torch and ONNX Runtime again before every other measurement.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import socket
import subprocess
import sys
from typing import Any, Callable

from autocomp.errors import UserError
from autocomp.measure import Device

ADDRESS_EXPECTED = "'auto', HOST:PORT of a Ray head (GCS) or ray://HOST:PORT of its client server"
_HOST_PORT = re.compile(r"^(?:ray://)?(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]{1,253}):([0-9]{1,5})$", re.ASCII)


def check_address(address: str | None, timeout_s: float = 5.0) -> None:
    """``address`` names a Ray cluster that answers: 'auto', HOST:PORT or ray://HOST:PORT (a TCP
    connection is tried). UserError otherwise; None (a local Ray, or RAY_ADDRESS) passes."""
    if not address or address == "auto":  # RAY_ADDRESS (`ray job submit` sets it) is Ray's own to read
        return
    field = "--address"
    if address.startswith(("http://", "https://")):  # a dashboard address: what `ray job submit` takes
        raise UserError(field, f"{address[:100]!r} is a dashboard (job submission) address", ADDRESS_EXPECTED)
    m = _HOST_PORT.match(address)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise UserError(field, f"{address[:100]!r} is not an address", ADDRESS_EXPECTED)
    host, port = m.group(1).strip("[]"), int(m.group(2))
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise UserError(field, f"nothing answers at {address!r} ({why})", "a running Ray cluster at " + ADDRESS_EXPECTED) from None


def init_ray(address: str | None, device: Device, num_cpus: int | None = None) -> None:
    """Join ``address`` ('auto', 'ray://host:port', or RAY_ADDRESS from `ray job submit`) or start a
    local Ray whose single node holds the device, on loopback only."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    env = {"env_vars": {"PYTHONWARNINGS": "ignore"}}
    if address:  # the cluster's (or the submitted job's) runtime environment applies
        m = _HOST_PORT.match(address)
        try:
            with _loopback_node_ip(bool(m) and _is_loopback(m.group(1).strip("[]"))):
                ray.init(address=address, log_to_driver=False)
        except (ConnectionError, TimeoutError, ValueError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError("--address", f"cannot join the Ray cluster at {address!r} ({msg})", ADDRESS_EXPECTED) from None
        return
    _init_local(num_cpus, device, env)


def _init_local(num_cpus: int | None, device: Device, env: dict) -> None:
    """A private local instance ("local": never whatever cluster /tmp/ray/ray_current_cluster names)
    bound to 127.0.0.1. Ray 2.60 replaces a loopback ``_node_ip_address`` with the machine's routable
    address unless its "no cluster" switch (ray_constants.ENABLE_RAY_CLUSTER, the one that
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER sets) is off; it is turned off for this call only, and with a
    loopback node address every server binds to loopback."""
    import ray

    global _local_session
    with _loopback_node_ip():
        ray.init(address="local", num_cpus=num_cpus, resources={device.resource: 1}, include_dashboard=False,
                 dashboard_host="127.0.0.1", runtime_env=env, log_to_driver=False, _node_ip_address="127.0.0.1")
    _local_session = ray._private.worker._global_node.get_session_dir_path()
    _start_reaper(_local_session)


_local_session: str | None = None  # the session of the private local Ray this process started, if any


def _is_local_ray() -> bool:
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    return _local_session is not None and node is not None and node.get_session_dir_path() == _local_session


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def _loopback_node_ip(on: bool = True):
    """While on: this driver's node address is loopback (Ray's "no cluster" switch, see _init_local),
    for a local instance or for joining one on 127.0.0.1 (else Ray dials the routable address)."""
    from ray._private import ray_constants

    before = getattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    if on:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


# Ends every process that holds a file of the session directory open, once the driver is gone (its
# stdin, a pipe from the driver, closes). It runs from the standard library only.
_REAPER = r"""
import os, signal, sys, time
sys.stdin.buffer.read()  # returns when the driver exits, however it exits (or drops its end early)
session, driver = sys.argv[1], int(sys.argv[2])
me = os.getpid()

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

while alive(driver):  # the pipe also closes while the driver is still shutting down: never signal it
    time.sleep(0.2)

def holders():
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) in (me, driver):
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(session + "/"):
                    found.append(int(pid))
                    break
        except OSError:
            continue
    return found

time.sleep(0.5)  # a clean ray.shutdown() is already ending them
for sig in (signal.SIGTERM, signal.SIGKILL):
    pids = holders()
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    for _ in range(30):
        if not pids or not holders():
            sys.exit(0)
        time.sleep(0.1)
"""
_reaper: subprocess.Popen | None = None


def _start_reaper(session_dir: str) -> None:
    global _reaper
    if not sys.platform.startswith("linux") or not os.path.isdir("/proc"):
        return
    _reaper = subprocess.Popen([sys.executable, "-c", _REAPER, session_dir, str(os.getpid())], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)


def measures_here(device: Device) -> bool:
    """Whether ``device`` is measured in this process: no Ray, or the private local Ray this process
    started with no node holding the device (it was started for another one)."""
    import ray

    return not ray.is_initialized() or (_is_local_ray() and not ray.cluster_resources().get(device.resource))


def on_device(device: Device, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on the node that holds ``device`` when Ray is running, else here. In the private
    local Ray this process started (for another device, say), a device no node holds is this
    machine's: it runs here rather than wait forever for a node that will never join."""
    import ray

    if measures_here(device):
        return fn(*args)
    workers = _workers(device)
    if workers:
        return ray.get(random.choice(workers).call.remote(fn, *args))
    task = ray.remote(num_cpus=0, max_retries=1)(fn).options(resources={device.resource: 1}, scheduling_strategy="DEFAULT")
    return ray.get(task.remote(*args))


class _DeviceWorker:
    """A process on a node that holds a device: it runs the calls meant for the device, one at a time."""

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


def _worker_names(device: Device, n: int) -> list[str]:
    import ray

    job = ray.get_runtime_context().get_job_id()  # the driver's job: its trials look the workers up
    return [f"autocomp-device-{device.name}-{job}-{i}" for i in range(n)]


def _workers(device: Device) -> list:
    """The live workers of ``device`` that :func:`device_workers` started for this job (none: [])."""
    import ray

    found = []
    for name in _worker_names(device, 64):
        try:
            found.append(ray.get_actor(name))
        except ValueError:  # no actor by that name: the workers are numbered from 0
            break
    return found


@contextlib.contextmanager
def device_workers(device: Device):
    """While the block runs, :func:`on_device` calls for ``device`` go to long-lived workers, one per
    unit of its resource in the cluster (a node that holds the device holds one): each keeps its
    imports and ONNX Runtime warm. They hold the resource, so another job's measurements on the
    device wait for the block to end rather than time beside this one's. Nothing changes where the
    device is measured in this process."""
    import ray

    if measures_here(device):
        yield
        return
    n = max(1, int(ray.cluster_resources().get(device.resource, 1)))
    cls = ray.remote(num_cpus=0, max_restarts=1, max_task_retries=1)(_DeviceWorker)
    handles = [cls.options(name=name, resources={device.resource: 1}).remote() for name in _worker_names(device, n)]
    try:
        yield
    finally:
        for h in handles:
            ray.kill(h)
