"""Ray glue: start or join a cluster, run evaluations as Ray tasks, stream results to the run table.

Scoring (weights -> compress -> export -> accuracy) runs on any node with a free CPU; the latency
measurement of the exported ONNX runs on a node that advertises the device's custom resource
(``device:<name>``), one at a time per device unit, so measurements do not fight each other.
"""

from __future__ import annotations

import csv
import json
import os
import traceback
from pathlib import Path
from typing import Any, Callable

import ray

from autocomp.data import Dataset
from autocomp.evaluate import EvalSettings, candidate_precision, measure_onnx, score
from autocomp.measure import Device
from autocomp.space import Candidate, SearchSpace

RESULT_COLUMNS = [
    "trial", "id", "status", "accuracy", "latency_ms", "latency_p90_ms", "latency_cv", "latency_flagged",
    "params", "onnx_bytes", "score_s", "summary", "policy", "error",
    "device", "backend", "backend_version", "precision", "batch", "threads", "warmup", "repeats", "host",
]


def init_ray(address: str | None, device: Device, num_cpus: int | None = None) -> None:
    """Join ``address`` ('auto', 'ray://host:port', or RAY_ADDRESS from `ray job submit`) or start a
    local Ray whose single node holds the device. Dashboard and ports stay on loopback."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    env = {"env_vars": {"PYTHONWARNINGS": "ignore"}}
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, resources={device.resource: 1}, include_dashboard=False,
                 dashboard_host="127.0.0.1", runtime_env=env, log_to_driver=False)


@ray.remote(num_cpus=1, max_retries=1)
def _score_task(cand_json: str, space: SearchSpace, data: Dataset, settings: EvalSettings) -> dict:
    cand = Candidate.from_json(cand_json)
    try:
        s = score(cand, space, data, settings)
        return {"ok": True, "onnx": s.onnx, "accuracy": s.accuracy, "params": s.params, "onnx_bytes": s.onnx_bytes, "score_s": s.wall_s}
    except Exception as e:  # recorded in the table; the search goes on
        return {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=5)}


@ray.remote(num_cpus=1, max_retries=1)
def _measure_task(onnx: bytes, device: str, precision: str) -> dict:
    try:
        return {"ok": True, **measure_onnx(onnx, device, precision)}
    except Exception as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


class ResultsTable:
    """Append-only CSV, one row per evaluated candidate, flushed and fsynced as each arrives."""

    def __init__(self, path: Path):
        self.path = path
        new = not path.exists() or path.stat().st_size == 0
        self._f = path.open("a", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
        if new:
            self._w.writeheader()
            self._flush()

    def _flush(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def append(self, row: dict) -> None:
        self._w.writerow(row)
        self._flush()

    def close(self) -> None:
        self._f.close()


def read_results(path: Path) -> list[dict]:
    """Rows of a results table with numeric fields parsed."""
    if not path.exists():
        return []
    rows = []
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            for k in ("accuracy", "latency_ms", "latency_p90_ms", "latency_cv", "score_s"):
                r[k] = float(r[k]) if r.get(k) not in (None, "") else None
            for k in ("trial", "params", "onnx_bytes"):
                r[k] = int(r[k]) if r.get(k) not in (None, "") else None
            rows.append(r)
    return rows


def run_trials(
    controller, space: SearchSpace, data: Dataset, device: Device, settings: EvalSettings, n_trials: int,
    table: ResultsTable, concurrency: int, on_row: Callable[[dict], Any] = lambda r: None,
) -> list[dict]:
    """Ask/evaluate/tell until ``n_trials`` candidates are evaluated; returns the rows."""
    data_ref, space_ref = ray.put(data), ray.put(space)
    measure = _measure_task.options(resources={device.resource: 1})
    inflight: dict[ray.ObjectRef, tuple[str, int, Candidate, dict]] = {}
    rows: list[dict] = []
    asked = 0

    def submit_score() -> None:
        nonlocal asked
        cand = controller.ask()
        ref = _score_task.remote(cand.to_json(), space_ref, data_ref, settings)
        inflight[ref] = ("score", asked, cand, {})
        asked += 1

    def finish(trial: int, cand: Candidate, row: dict) -> None:
        row.update(trial=trial, id=cand.id, summary=cand.summary(), policy=cand.to_json(), precision=candidate_precision(cand))
        table.append(row)
        rows.append(row)
        controller.tell(cand, row)
        on_row(row)

    while len(rows) < n_trials:
        scoring = sum(1 for kind, *_ in inflight.values() if kind == "score")
        while scoring < concurrency and asked < n_trials:
            submit_score()
            scoring += 1
        done, _ = ray.wait(list(inflight), num_returns=1)
        ref = done[0]
        kind, trial, cand, partial = inflight.pop(ref)
        try:
            out = ray.get(ref)
        except Exception as e:  # the worker died (e.g. out of memory)
            out = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
        if not out["ok"]:
            finish(trial, cand, {**partial, "status": "error", "error": out["error"]})
        elif kind == "score":
            partial = {k: out[k] for k in ("accuracy", "params", "onnx_bytes", "score_s")}
            inflight[measure.remote(out["onnx"], device.name, candidate_precision(cand))] = ("measure", trial, cand, partial)
        else:
            finish(trial, cand, {
                **partial, "status": "ok", "error": "",
                "latency_ms": out["median_ms"], "latency_p90_ms": out["p90_ms"], "latency_cv": out["cv"],
                "latency_flagged": out["flagged"],
                **{k: out[k] for k in ("device", "backend", "backend_version", "batch", "threads", "warmup", "repeats", "host")},
            })
    return sorted(rows, key=lambda r: r["trial"])


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)

