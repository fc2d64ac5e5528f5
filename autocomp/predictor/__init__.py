"""Latency predictors trained on real device measurements (code only; artifacts live in predictors/).

Public API (used by the search)::

    from autocomp.predictor import load_predictor, check_host
    pred = load_predictor("cpu-ort")          # Predictor | None (None: no predictor for that device)
    ms = pred.predict(candidates)             # numpy array of milliseconds, batched, no export
    pred.meta                                 # host, cpu_model, backend, backend_version, n_train, ...
    warning = check_host(pred)                # str | None: this machine differs from the measured one

Modules: ``features`` (analytic, fusion-aware features), ``model`` (fit / select / save / load),
``transfer`` (adapt a predictor to a new device from a few measurements), ``cli``.
"""

from __future__ import annotations

from pathlib import Path

from autocomp.predictor.model import META_NAME, Predictor, fit, metrics

__all__ = ["Predictor", "check_host", "fit", "load_predictor", "metrics", "predictor_dir"]


def predictor_dir(device_name: str, root: Path | str | None = None) -> Path:
    from autocomp.measure.campaign import predictors_dir

    return (Path(root) if root is not None else predictors_dir()) / device_name


def load_predictor(device_name: str, root: Path | str | None = None) -> Predictor | None:
    """The predictor of ``device_name`` (``predictors/<device>/predictor.json``), or None when that
    device has none. A corrupt or incompatible artifact raises UserError (one line, exit 2)."""
    d = predictor_dir(device_name, root)
    if not (d / META_NAME).exists():
        return None
    return Predictor.load(d)


def check_host(predictor: Predictor) -> str | None:
    """A warning when this machine is not the one the predictor's table was measured on (CPU model
    or ONNX Runtime version differ) for local backends; None when they match or the device is remote."""
    meta = predictor.meta or {}
    if meta.get("backend") != "onnxruntime":
        return None
    from autocomp.measure.campaign import cpu_model

    diffs = []
    here_cpu = cpu_model()
    if meta.get("cpu_model") and meta["cpu_model"] != here_cpu:
        diffs.append(f"CPU {here_cpu!r} (measured on {meta['cpu_model']!r})")
    try:
        import onnxruntime

        here_ort = onnxruntime.__version__
    except ImportError:
        here_ort = None
    if meta.get("backend_version") and here_ort and meta["backend_version"] != here_ort:
        diffs.append(f"ONNX Runtime {here_ort} (measured with {meta['backend_version']})")
    if not diffs:
        return None
    dev = meta.get("device", "the device")
    return (f"latency predictor for {dev} was measured on another machine: this one has {', '.join(diffs)}; "
            f"predictions may be off — run with --calibrate (a short measurement campaign) to adapt it")
