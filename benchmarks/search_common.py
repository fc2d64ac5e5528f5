"""Shared helpers for the search benchmarks (not a benchmark itself)."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def latency_model(device: str = "cpu-ort", space_name: str = "mnist-mbv2"):
    """``(predictor, description)``: the device's predictor of this machine's fingerprint (a shipped one
    or a calibration in the user's cache), else (None, why): a benchmark never filters with a
    predictor measured on another machine."""
    from autocomp.measure import get_device
    from autocomp.measure.fingerprint import fingerprint_id
    from autocomp.predictor.calibrate import load_model
    from autocomp.space import get_space

    fp = get_device(device).fingerprint()
    pred = load_model(device, get_space(space_name), fp)
    if pred is None:
        return None, (f"no latency predictor of {device} for this machine ({fingerprint_id(fp)}): run a search once "
                      "(it calibrates one) or `autocomp measure` + `autocomp predictor train`")
    return pred, f"predictor of {device} on {pred.fingerprint_id} ({pred.kind}, fit on {pred.meta.get('n_train', '?')} measurements)"


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
