"""Adapt a device's predictor to a new device (or execution mode) from a few measurements.

``loglinear`` (default): ms_new = exp(a + b * log(ms_old)), least squares on log latency — keeps the
ranking of the source predictor and learns the new device's scale and its scaling with model size.
``scale``: b fixed to 1 (only a constant factor; the safest with very few points).
``ridge``: for the ``sum`` kind, refit the per-layer-group costs on the new measurements with a
ridge penalty that pulls each cost toward the source's (scaled) cost — the new device may weigh
MACs, memory traffic and per-group overheads differently (strength chosen by leave-one-out).
``refit``: for the LightGBM kinds, LightGBM continues boosting from the source model
(``init_model``) on the new measurements, a few shallow rounds, after the log-linear calibration.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np

from autocomp.predictor.model import Predictor
from autocomp.space import Candidate

METHODS = ("scale", "loglinear", "refit", "ridge")


def adapt(source: Predictor, candidates: Sequence[Candidate], latency_ms: Sequence[float], method: str = "loglinear",
          device: str | None = None) -> Predictor:
    """A copy of ``source`` calibrated on (candidates, measured ms) of the new device."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    y = np.log(np.asarray(latency_ms, float))
    base = source.calibration
    src = copy.copy(source)
    src.calibration = None
    p = np.log(src.predict(candidates))
    src.calibration = base
    if method == "scale" or len(y) < 3:
        a, b = float(np.mean(y - p)), 1.0
    else:
        b, a = np.polyfit(p, y, 1)
        a, b = float(a), float(b)
    out = Predictor(source.kind, source.space, {**source.meta}, source.coef, source.booster, {"a": a, "b": b})
    if method == "refit" and source.booster is not None:
        import lightgbm as lgb

        from autocomp.predictor.features import group_features, network_features

        # continue boosting the source model (its predictions are the starting score) on the new
        # device's log latency (minus the analytic sum for sum+gbm); no calibration on top
        x = network_features(candidates, source.space)
        target = y
        if source.kind == "sum+gbm":
            target = y - np.log(np.maximum(group_features(candidates, source.space) @ source.coef, 1e-4))
        params = {"objective": "regression", "learning_rate": 0.1, "num_leaves": 4, "min_data_in_leaf": 3,
                  "verbose": -1, "seed": 0, "deterministic": True, "num_threads": 1}
        ds = lgb.Dataset(x, target, free_raw_data=False, params={"verbose": -1})
        out.booster = lgb.train(params, ds, num_boost_round=30, init_model=source.booster)
        out.calibration = None
    if method == "ridge" and source.kind == "sum" and len(y) >= 3:
        out.coef = _ridge_toward(source, candidates, np.exp(y), float(np.exp(a)))
        out.calibration = None
    out.meta.update(adapted_from=source.meta.get("device"), adapted_to=device, adapt_method=method, n_adapt=int(len(y)))
    return out


def _ridge_solve(g: np.ndarray, y: np.ndarray, prior: np.ndarray, lam: float) -> np.ndarray:
    sigma = np.abs(prior) + 1e-3 * (np.abs(prior).max() + 1e-12)
    a = np.vstack([g / y[:, None], np.sqrt(lam) * np.diag(1.0 / sigma)])
    b = np.concatenate([np.ones(len(y)), np.sqrt(lam) * prior / sigma])
    coef, *_ = np.linalg.lstsq(a, b, rcond=None)
    return np.maximum(coef, 0.0)


def _ridge_toward(source: Predictor, candidates: Sequence[Candidate], y: np.ndarray, scale: float) -> np.ndarray:
    from autocomp.predictor.features import group_features

    g = group_features(candidates, source.space)
    prior = source.coef * scale
    best, best_err = prior, np.inf
    for lam in (0.3, 1.0, 3.0, 10.0, 30.0, 100.0):
        err = 0.0
        for i in range(len(y)):  # leave-one-out relative error
            keep = np.arange(len(y)) != i
            c = _ridge_solve(g[keep], y[keep], prior, lam)
            err += ((g[i] @ c) / y[i] - 1) ** 2
        if err < best_err:
            best, best_err = _ridge_solve(g, y, prior, lam), err
    return best


def calibrate(device: str, n: int = 20, seed: int = 1000, root=None, method: str = "loglinear", progress: bool = True,
              source: str | None = None) -> Predictor:
    """``--calibrate``: measure ``n`` candidates of a short seeded campaign on ``device`` here, adapt the
    shipped predictor of ``source`` (default: ``device``) to them and save the result under ``root``
    (default: ``~/.cache/autocomp/predictors``) as ``<root>/<device>/``; load it back with
    ``load_predictor(device, root)``. The shipped table is never touched."""
    from pathlib import Path

    from autocomp.errors import UserError
    from autocomp.measure.campaign import read_table, run_campaign, table_path
    from autocomp.predictor import load_predictor, predictor_dir

    src = load_predictor(source or device)
    if src is None:
        raise UserError("--device", f"no predictor for {source or device!r} to calibrate", "a device with a shipped predictor")
    root = Path(root) if root is not None else Path.home() / ".cache" / "autocomp" / "predictors"
    run_campaign(src.space, device, n, root, seed, progress=progress)
    df = read_table(table_path(device, root))
    df = df[df["seed"] == seed].sort_values("index").head(n)
    from autocomp.predictor.model import candidates_of

    out = adapt(src, candidates_of(df), df["median_ms"].to_numpy(float), method, device=device)
    from autocomp.predictor.model import host_info

    out.meta.update(host_info(df), calibrated=True)  # this machine now: check_host stays quiet
    out.save(predictor_dir(device, root))
    return out
