"""The quiet-host lock: a CPU measurement never runs beside a trial's computing on the same node, and
a waiting measurement is not starved by trials that keep starting (real processes, real flock)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

SCRIPT = """
import sys, time
from autocomp.measure import quiet
kind, hold, log = sys.argv[1], float(sys.argv[2]), sys.argv[3]
with open(log, "a") as f:
    f.write(f"want {kind} {time.time()}\\n")
ctx = quiet.computing() if kind.startswith("compute") else quiet.measuring(kind)
with ctx:
    t0 = time.time()
    if hold < 0:  # hold until the test says so
        import os
        while not os.path.exists(log + ".release"):
            time.sleep(0.02)
    else:
        time.sleep(hold)
    t1 = time.time()
with open(log, "a") as f:
    f.write(f"span {kind} {t0} {t1}\\n")
"""


def _start(kind: str, hold: float, log, env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SCRIPT, kind, str(hold), str(log)], env=env)


def _wait_for(log, text: str) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        if log.exists() and text in log.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never logged")


def test_measurement_waits_for_computing_and_is_not_starved(tmp_path):
    env = {**os.environ, "AUTOCOMP_QUIET_DIR": str(tmp_path)}
    log = tmp_path / "log"
    procs = [_start("compute1", -1, log, env)]  # computes until released below
    _wait_for(log, "want compute1")
    time.sleep(0.3)
    procs.append(_start("onnxruntime", 0.5, log, env))  # a CPU measurement: waits for the first trial
    _wait_for(log, "want onnxruntime")
    time.sleep(0.3)
    procs.append(_start("compute2", 0.5, log, env))  # a trial that starts while the measurement waits
    procs.append(_start("trtexec", 0.1, log, env))  # a remote backend: not held back at all
    _wait_for(log, "want compute2")
    _wait_for(log, "span trtexec")
    time.sleep(0.3)
    (tmp_path / "log.release").write_text("")
    for p in procs:
        assert p.wait(timeout=60) == 0
    spans, wants = {}, {}
    for line in log.read_text().splitlines():
        what, kind, *t = line.split()
        if what == "span":
            spans[kind] = (float(t[0]), float(t[1]))
        else:
            wants[kind] = float(t[0])
    c1, m, c2, r = spans["compute1"], spans["onnxruntime"], spans["compute2"], spans["trtexec"]
    assert m[0] >= c1[1] - 0.01  # the measurement began after the first trial's computing ended
    assert c2[0] >= m[1] - 0.01  # the later trial queued behind the waiting measurement
    assert wants["compute2"] < m[0]  # (it asked before the measurement got its turn)
    assert r[0] - wants["trtexec"] < 0.3  # a backend that measures elsewhere never waits
