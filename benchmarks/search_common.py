"""Shared helpers for the search benchmarks (not a benchmark itself)."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def latency_model(device: str = "cpu-ort", space_name: str = "mnist-mbv2"):
    """``(predictor, description)``: the device's saved predictor; else one fit in memory on the device's
    measurement table (predictors/<device>/measurements.parquet) when it has enough rows; else (None, why)."""
    from autocomp.search.constraint import load_latency_predictor

    pred, notice = load_latency_predictor(device, space_name)
    if pred is not None:
        return pred, f"saved predictor of {device} ({pred.kind}, fit on {pred.meta.get('n_train', '?')} measurements)"
    try:
        import pandas as pd

        from autocomp.predictor import fit
        from autocomp.predictor.model import split_table  # noqa: F401  (present in the predictor module)
        from autocomp.resources import data_dir

        table_path = data_dir("predictors") / device / "measurements.parquet"
        table = pd.read_parquet(table_path)
        table = table[table["space"] == space_name]
        if len(table) < 30:
            return None, f"{notice}; only {len(table)} measurements in {table_path}"
        pred, report = fit(table)
        return pred, (f"PROVISIONAL predictor fit in memory on {len(table)} real {device} measurements "
                      f"({pred.kind}); no saved predictor yet")
    except Exception as e:  # noqa: BLE001 - any failure here just means: no predictor
        return None, f"{notice}; no provisional fit ({type(e).__name__}: {e})"


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "host": platform.node(), "when": time.strftime("%Y-%m-%dT%H:%M:%S"), **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path


def load_avg() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return None
