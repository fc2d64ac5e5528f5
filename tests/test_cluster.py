"""A real two-node Ray cluster on loopback (``ray start`` head + worker processes): the search runs
through it and every latency measurement runs on the worker that holds ``device:cpu-ort``.

The cluster gets its own temp dir and ports, so it does not clash with the session's local Ray, and
it is torn down by ending the two ``ray start --block`` process groups this test started (never a
machine-wide ``ray stop``: other Ray instances may be running here).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

DEVICE_RESOURCE = "device:cpu-ort"


TINY_SPACE = (Path(__file__).parent / "fixtures" / "tiny-space.yaml").read_text()


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _node_ports(ports: list[int]) -> list[str]:
    nm, om, agent, agent_grpc, metrics, renv = ports[:6]
    return ["--node-manager-port", str(nm), "--object-manager-port", str(om), "--dashboard-agent-listen-port", str(agent),
            "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics),
            "--runtime-env-agent-port", str(renv)]


def _stop(proc: subprocess.Popen) -> None:
    """End one `ray start --block` and everything it started (its own process group)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def cluster():
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    tmp = tempfile.mkdtemp(prefix="acl", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs, client, *ports = free_ports(15)
    w0, w1 = sorted(free_ports(2))
    common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--object-store-memory", "80000000",
              "--disable-usage-stats"]
    head = subprocess.Popen(
        ["ray", "start", "--head", "--port", str(gcs), "--ray-client-server-port", str(client), "--include-dashboard", "false",
         "--temp-dir", tmp, "--resources", "{}", *common, *_node_ports(ports[:6])],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [head]
    try:
        address = f"127.0.0.1:{gcs}"
        deadline = time.time() + 90
        while subprocess.run(["ray", "status", "--address", address], env=env, capture_output=True).returncode != 0:
            if time.time() > deadline or head.poll() is not None:
                pytest.fail("the Ray head did not come up")
            time.sleep(1)
        worker = subprocess.Popen(
            ["ray", "start", "--address", address, "--resources", json.dumps({DEVICE_RESOURCE: 1}), *common,
             *_node_ports(ports[6:12])],
            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(worker)
        probe = ("import json, time, ray\n"
                 f"ray.init(address={address!r}, log_to_driver=False)\n"
                 "t = time.time()\n"
                 "while len([n for n in ray.nodes() if n['Alive']]) < 2 and time.time() - t < 90: time.sleep(0.5)\n"
                 "print(json.dumps([{'id': n['NodeID'], 'resources': n['Resources']} for n in ray.nodes() if n['Alive']]))\n")
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=150)
        nodes = json.loads(out.stdout.strip().splitlines()[-1])
        assert len(nodes) == 2, nodes
        yield {"address": address, "env": env, "nodes": nodes}
    finally:
        for p in reversed(procs):
            _stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


def test_search_through_the_cluster_measures_on_the_device_node(cluster, tmp_path, user_cache):
    nodes = cluster["nodes"]
    device_nodes = [n["id"] for n in nodes if n["resources"].get(DEVICE_RESOURCE)]
    assert len(device_nodes) == 1, "exactly one node (the worker) holds the device"
    head_id = next(n["id"] for n in nodes if n["id"] not in device_nodes)

    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "autocomp.cli", "search", "--budget", "5ms", "--trials", "2", "--seed", "0",
           "--out", str(out), "--space", str(space), "--train-steps", "1", "--val-size", "100", "--top-k", "0",
           "--no-calibrate", "--address", cluster["address"]]  # no predictor covers the tiny space
    env = {**cluster["env"], "AUTOCOMP_CACHE": str(user_cache)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    from autocomp.rundir import read_results

    rows = read_results(out / "results.csv")
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows), rows
    assert {r["measure_node"] for r in rows} == {device_nodes[0]}
    assert head_id not in {r["measure_node"] for r in rows}
    assert all(int(r["measure_pid"]) > 0 for r in rows)
    # the fingerprint was probed, and every measurement made, on the device node (this machine here)
    from autocomp.measure import get_device
    from autocomp.measure.fingerprint import fingerprint_id

    fid = fingerprint_id(get_device("cpu-ort").fingerprint())
    assert {r["fingerprint_id"] for r in rows} == {fid}
    assert json.loads((out / "summary.json").read_text())["latency_model"]["fingerprint_id"] == fid
    assert json.loads((out / "summary.json").read_text())["evaluated"] == 2
