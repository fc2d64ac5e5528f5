"""One real small search through Ray: real MNIST, real ONNX export, real ONNX Runtime timings."""

import csv
import json
import subprocess
import sys

import onnxruntime as ort
import pytest

from autocomp.config import SearchConfig
from autocomp.errors import UserError
from autocomp.evaluate import EvalSettings, measure_onnx, score
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
        # cpu-ort's reference protocol counts the runs of normal-phase blocks only: at least half of
        # the 4 requested blocks of >= 25 runs, else every block rescaled (see measure/reference.py)
        assert int(r["repeats"]) >= 50 and int(r["warmup"]) >= 1
        med, p90 = float(r["latency_ms"]), float(r["latency_p90_ms"])
        assert 0.005 < med <= p90 < 1000
    # the figure is a timing of the candidate's exported model: re-scoring and re-measuring it agrees
    r = min(rows, key=lambda r: float(r["latency_ms"]))
    cand = Candidate.from_json(r["policy"])
    scored = score(cand, get_space(), mnist, EvalSettings(train_steps=0, val_size=500))
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
    assert audit["audited"] == min(audit["skipped"], max(2, -(-audit["skipped"] // 10))) == len(audit["rows"])
    assert audit["fit_budget"] == sum(r["fits"] for r in audit["rows"])
    # the run's measurements (and a calibration's) were recorded in this fingerprint's table, in the user's cache
    table = read_table(table_path("cpu-ort", fid, cache / "predictors"))
    assert {r["id"] for r in rows} <= set(table["id"]) and set(table["fingerprint_id"]) == {fid}
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
