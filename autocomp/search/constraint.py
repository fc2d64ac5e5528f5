"""The latency budget as a hard constraint: the target device's predictor, when one exists."""

from __future__ import annotations

import importlib


def load_latency_predictor(device_name: str, space_name: str | None = None):
    """``(predictor, notice)``: the device's latency predictor, or ``(None, why not)``.

    Uses ``autocomp.predictor.load_predictor(device_name)``; when that module or a predictor for the
    device does not exist, the search runs without filtering and says so.
    """
    try:
        mod = importlib.import_module("autocomp.predictor")
        loader = getattr(mod, "load_predictor")
    except (ImportError, AttributeError):
        return None, "no latency predictor module (autocomp.predictor) yet: candidates are not filtered by the budget"
    pred = loader(device_name)
    if pred is None:
        return None, (f"no latency predictor for device {device_name!r} (train one with `autocomp predictor`): "
                      "candidates are not filtered by the budget")
    fitted_on = getattr(getattr(pred, "space", None), "name", None)
    if space_name is not None and fitted_on is not None and fitted_on != space_name:
        return None, (f"the latency predictor of {device_name!r} was fit on space {fitted_on!r}, not {space_name!r}: "
                      "candidates are not filtered by the budget")
    return pred, None
