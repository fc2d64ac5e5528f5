"""One real small search through Ray: real MNIST, real ONNX export, real ONNX Runtime timings."""

import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import onnxruntime as ort
import pytest

from autocomp.config import SearchConfig
from autocomp.errors import UserError
from autocomp.evaluate import EvalSettings, measure_onnx, score
from autocomp.measure import get_device
from autocomp.pipeline import run_search
from autocomp.space import Candidate, get_space

CALIBRATE = 6  # calibration measurements when this machine does not match the shipped predictor


@pytest.fixture(scope="module")
def small_run(ray_local, tmp_path_factory, user_cache):
    out = tmp_path_factory.mktemp("run") / "r1"
    cfg = SearchConfig(budget_ms=2.0, trials=3, seed=11, out=out)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOCOMP_CACHE", str(user_cache))  # it calibrates (when this host is not the shipped one) there
        summary = run_search(cfg, train_steps=0, calibrate=CALIBRATE)
    return out, summary, user_cache


def test_results_table_has_one_row_per_candidate(small_run):
    out, summary, _ = small_run
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 3 == summary["evaluated"]
    assert len({r["id"] for r in rows}) == 3
    space = get_space()
    for r in rows:
        assert r["status"] == "ok", r["error"]
        cand = Candidate.from_json(r["policy"])
        assert cand.id == r["id"]
        space.validate_candidate(cand)
        assert 0.0 <= float(r["accuracy"]) <= 1.0


def test_latencies_are_real_onnxruntime_measurements(small_run, mnist):
    out, _, _ = small_run
    rows = list(csv.DictReader((out / "results.csv").open()))
    for r in rows:
        assert r["backend"] == "onnxruntime" and r["backend_version"] == ort.__version__
        assert r["device"] == "cpu-ort" and r["threads"] == "1" and r["batch"] == "1"
        # cpu-ort's reference protocol ("ratio") counts the runs of every block of its 3 s window, each
        # rescaled by its reference frames and of >= 5 runs and >= 0.1 s: 20 runs at the very least
        # (measure/onnxruntime.py: _normal_phase)
        assert int(r["repeats"]) >= 20 and int(r["warmup"]) >= 1
        med, p90 = float(r["latency_ms"]), float(r["latency_p90_ms"])
        assert 0.005 < med <= p90 < 1000
    # the figure is a timing of the candidate's exported model: re-scoring and re-measuring it agrees
    r = min(rows, key=lambda r: float(r["latency_ms"]))
    cand = Candidate.from_json(r["policy"])
    from autocomp.measure.base import Int8Scheme

    # exported as the device's int8 scheme, which every row records
    assert {row["int8_export"] for row in rows} == {get_device("cpu-ort").int8_scheme().label}
    scored = score(cand, get_space(), mnist, EvalSettings(train_steps=0, val_size=500), Int8Scheme.from_label(r["int8_export"]))
    again = measure_onnx(scored.onnx, "cpu-ort", r["precision"])["median_ms"]
    assert int(r["params"]) == scored.params
    assert 1 / 3 < again / float(r["latency_ms"]) < 3

def test_summary_reports_front_best_and_binding(small_run):
    out, summary, _ = small_run
    assert json.loads((out / "summary.json").read_text())["evaluated"] == 3
    front = summary["pareto_front"]
    assert front and all(a["latency_ms"] <= b["latency_ms"] and a["accuracy"] < b["accuracy"] for a, b in zip(front, front[1:]))
    best = summary["best_under_budget"]
    if best is not None:
        assert best["latency_ms"] <= 2.0
    assert isinstance(summary["binding"], bool) and summary["verdict"]


def test_results_record_the_fingerprint_and_the_latency_model(small_run):
    """Every row of results.csv carries the fingerprint of the machine that measured it; the run
    filtered with a latency model of exactly that fingerprint from its first trial (matched, or
    calibrated before any filtering) and states its live error, calibration and skip audit."""
    from autocomp.measure import get_device
    from autocomp.measure.fingerprint import fingerprint_id
    from autocomp.predictor.campaign import read_table, table_path
    from autocomp.predictor.model import Predictor

    out, summary, cache = small_run
    fp = get_device("cpu-ort").fingerprint()
    fid = fingerprint_id(fp)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert rows and all(r["fingerprint_id"] == fid for r in rows)
    assert all(json.loads(r["fingerprint"]) == fp for r in rows)
    # the filter was on from the first trial, with this fingerprint's model (saved in the run)
    assert all(r["predicted_latency_ms"] not in ("", None) for r in rows)
    saved = Predictor.load(out / "latency_model")
    assert saved.fingerprint_id == fid and saved.meta["latency_model"]["fingerprint_id"] == fid
    for r in rows:
        state = json.loads(r["latency_state"])
        assert {"a", "b", "margin", "n"} <= set(state) and 0.0 < state["margin"] <= 0.5
    on_disk = json.loads((out / "summary.json").read_text())
    lm = on_disk["latency_model"]
    assert lm["fingerprint_id"] == fid and lm["predictor_fingerprint_id"] == fid
    assert lm["how"] in ("matched", "calibrated")  # a fresh user cache: nothing cached yet
    live = lm["live_error"]
    assert live["n"] == len(rows) and 0.0 <= live["within_10pct"] <= 1.0 and live["median_abs_error"] >= 0.0
    assert lm["online"]["n"] == len(rows)  # the online model saw every measurement
    audit = on_disk["skip_audit"]
    assert audit["skipped"] == summary["skipped_infeasible"]
    assert audit["audited"] == min(audit["skipped"], 4, max(2, -(-audit["skipped"] // 10))) == len(audit["rows"])
    assert audit["fit_budget"] == sum(r["fits"] for r in audit["rows"])
    # the run's measurements (and a calibration's) were recorded in this fingerprint's table, in the user's cache
    table = read_table(table_path("cpu-ort", fid, cache / "predictors"))
    assert {r["id"] for r in rows} <= set(table["id"]) and set(table["fingerprint_id"]) == {fid}
    if lm["how"] == "matched":  # the shipped predictor, rescaled by the host's drift since its table
        from autocomp.predictor.calibrate import ANCHORS

        assert lm["anchor"]["n"] == ANCHORS and len(lm["anchor"]["ratios"]) == ANCHORS
        assert saved.calibration["a"] == pytest.approx(math.log(lm["anchor"]["drift"]), abs=1e-9) and saved.calibration["b"] == 1.0
    if lm["how"] == "calibrated":
        cal = lm["calibration"]
        assert cal["k"] == CALIBRATE and cal["fingerprint_id"] == fid and cal["source_fingerprint_id"] != fid
        from_run = table["notes"].map(lambda n: json.loads(n or "{}").get("from_run", False))
        assert (~from_run).sum() == CALIBRATE  # the calibration's measurements, then the run's
        assert Predictor.load(cache / "predictors" / "cpu-ort" / fid).fingerprint_id == fid  # cached for next time


def test_existing_run_dir_is_refused_and_kept(small_run):
    out, _, _ = small_run
    before = (out / "results.csv").read_bytes()
    with pytest.raises(UserError, match="already holds a run"):
        run_search(SearchConfig(budget_ms=2.0, trials=1, out=out), train_steps=0)
    assert (out / "results.csv").read_bytes() == before


def test_cli_refuses_existing_run_dir_with_exit_2(small_run):
    out, _, _ = small_run
    p = subprocess.run([sys.executable, "-m", "autocomp.cli", "search", "--budget", "10ms", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "already holds a run" in p.stderr and "Traceback" not in p.stderr


def test_cli_unknown_device_and_space(tmp_path):
    for args, msg in ((["--device", "toaster"], "--device"), (["--space", "nope"], "--space")):
        p = subprocess.run([sys.executable, "-m", "autocomp.cli", "search", "--budget", "10ms", "--out", str(tmp_path / "x"), *args],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 2 and msg in p.stderr and "Traceback" not in p.stderr
        assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- a run directory, killed and resumed


def _descendants(root: int) -> set[int]:
    """Every process below ``root`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(p))
    found, stack = set(), [root]
    while stack:
        for c in children.get(stack.pop(), []):
            found.add(c)
            stack.append(c)
    return found


def _listening(pids: set[int]) -> list[tuple[int, str]]:
    """(pid, local address) of the TCP sockets that ``pids`` hold in LISTEN state (what `ss -ltnp` shows)."""
    import ipaddress
    import socket

    addrs: dict[str, str] = {}
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            lines = open(f"/proc/net/{name}").read().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            f = ln.split()
            if f[3] != "0A":  # LISTEN
                continue
            hexip, port = f[1].split(":")
            raw = bytes.fromhex(hexip)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # /proc stores 32-bit words little-endian
            addrs[f[9]] = f"{ipaddress.ip_address(raw)}:{int(port, 16)}"
    out = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in addrs:
                out.append((pid, addrs[link[8:-1]]))
    return out


def _loopback(addr: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(addr.rsplit(":", 1)[0])
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


class _Planted:
    """What a hostile run directory could hold: a pickle that creates a file when it is loaded."""

    def __init__(self, proof):
        self.proof = str(proof)

    def __reduce__(self):
        return (open, (self.proof, "w"))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "autocomp.cli", *args]


TRIALS = 4


def test_a_killed_run_is_locked_on_loopback_and_resumes_from_its_results_alone(ray_local, tmp_path, user_cache):
    """One run, end to end, as a user's machine would see it:
    - a search started without --address runs its own Ray, and everything of it listens on loopback;
    - while it runs, a second search (--resume) and a report on the directory are refused (its lock);
    - SIGKILL of the driver: within seconds nothing of that Ray still listens (no orphaned agents);
    - a crash mid-write leaves the last row without its line end (made here by cutting the row:
      one row is one write() of a line), and a hostile tuner.pkl is planted in the directory;
    - ``--resume RUN_DIR`` alone continues it: every trial exactly once, the torn row set aside in
      results.csv.torn and its trial re-run, the rows before it untouched, the pickle never loaded."""
    import pickle

    from autocomp.rundir import read_results
    from autocomp.search import get_controller
    from autocomp.space import load_space

    sp, out = tmp_path / "tiny.yaml", tmp_path / "run"
    sp.write_text((Path(__file__).parent / "fixtures" / "tiny-space.yaml").read_text())
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "AUTOCOMP_CACHE": str(user_cache)}
    first = subprocess.Popen(_cli("search", "--budget", "5ms", "--trials", str(TRIALS), "--seed", "3", "--out", str(out),
                                  "--space", str(sp), "--controller", "random", "--train-steps", "20", "--val-size", "100", "--top-k", "0",
                                  "--no-calibrate", "--concurrency", "1"),
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    results = out / "results.csv"
    try:
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None:
            if results.exists() and len(results.read_bytes().splitlines()) >= 2:  # header + 1 row
                break
            time.sleep(0.2)
        assert first.poll() is None, first.stderr.read().decode()[-2000:]
        ours = _descendants(first.pid)
        socks = _listening(ours)
        assert socks, "the local Ray should be listening"
        assert [s for s in socks if not _loopback(s[1])] == [], socks  # nothing of ours on a routable address

        # the run directory has one writer: a second search on it and a report are refused, one line each
        others = [subprocess.Popen(_cli(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for args in (("search", "--resume", str(out)), ("report", str(out)))]
        for p in others:
            _, err = p.communicate(timeout=180)
            assert p.returncode == 2 and "in use by another autocomp command" in err, err[-1000:]
            assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert first.poll() is None  # the first goes on
        ours |= _descendants(first.pid)
    finally:
        first.kill()  # SIGKILL: no clean-up of its own
        first.wait()
    t0 = time.time()
    while _listening(ours) and time.time() - t0 < 30:
        time.sleep(0.5)
    assert _listening(ours) == [], "processes of the killed run's Ray still listen"

    lines = results.read_bytes().splitlines(keepends=True)
    assert 2 <= len(lines) <= TRIALS, "the driver should have been killed mid-search"
    torn = lines[-1][: len(lines[-1]) // 2]
    results.write_bytes(b"".join(lines[:-1]) + torn)
    kept = lines[:-1]
    proof = tmp_path / "pwned"
    for name in ("tune/search/tuner.pkl", "tune/search/searcher-state-0.pkl", "tuner.pkl"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(pickle.dumps(_Planted(proof)))

    address = ray_local.get_runtime_context().gcs_address  # the session's Ray: no second start-up
    done = subprocess.run(_cli("search", "--resume", str(out), "--address", address, "--concurrency", "2"), env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert not proof.exists(), "a pickle from the run directory was loaded"
    after = results.read_bytes().splitlines(keepends=True)
    assert after[: len(kept)] == kept  # nothing recorded is lost or rewritten
    assert (out / "results.csv.torn").read_bytes() == torn + b"\n"
    rows = read_results(results)
    assert sorted(r["trial"] for r in rows) == list(range(TRIALS))  # each trial exactly once, the torn one re-run
    ctrl = get_controller("random", load_space(sp), 3)  # the seed's candidates, in order
    assert [r["id"] for r in sorted(rows, key=lambda r: r["trial"])] == [ctrl.ask().id for _ in range(TRIALS)]
    assert all(r["status"] == "ok" for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed"] and summary["evaluated"] == TRIALS and summary["replayed"] == len(kept) - 1
    said = " ".join(done.stdout.split())
    assert "the interrupted run had no latency model: candidates are not filtered" in said and "calibrating" not in said
