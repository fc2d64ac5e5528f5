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

from typing import Sequence

import numpy as np

from autocomp.predictor.model import Predictor
from autocomp.space import Candidate

METHODS = ("scale", "loglinear", "refit", "ridge")


def adapt(source: Predictor, candidates: Sequence[Candidate], latency_ms: Sequence[float], method: str = "loglinear",
          device: str | None = None, fingerprint: dict | None = None) -> Predictor:
    """A copy of ``source`` calibrated on (candidates, measured ms) of the new device, whose
    ``fingerprint`` (default: the source's) decides the host-dependent features (NCHWc block)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    y = np.log(np.asarray(latency_ms, float))
    meta = {**source.meta, **({"fingerprint": fingerprint} if fingerprint is not None else {})}
    if fingerprint is not None:
        from autocomp.measure.fingerprint import fingerprint_id

        meta["fingerprint_id"] = fingerprint_id(fingerprint)
    src = Predictor(source.kind, source.space, meta, source.coef, source.booster, None)  # the source's model, the target's features
    p = np.log(src.predict(candidates))
    if method == "scale" or len(y) < 3:
        a, b = float(np.mean(y - p)), 1.0
    else:
        b, a = np.polyfit(p, y, 1)
        a, b = float(a), float(b)
    out = Predictor(source.kind, source.space, meta, source.coef, source.booster, {"a": a, "b": b})
    if method == "refit" and source.booster is not None:
        import lightgbm as lgb

        from autocomp.predictor.features import group_features, network_features

        # continue boosting the source model (its predictions are the starting score) on the new
        # device's log latency (minus the analytic sum for sum+gbm); no calibration on top
        x = network_features(candidates, source.space, block=out.block)
        target = y
        if source.kind == "sum+gbm":
            target = y - np.log(np.maximum(group_features(candidates, source.space, block=out.block) @ source.coef, 1e-4))
        params = {"objective": "regression", "learning_rate": 0.1, "num_leaves": 4, "min_data_in_leaf": 3,
                  "verbose": -1, "seed": 0, "deterministic": True, "num_threads": 1}
        ds = lgb.Dataset(x, target, free_raw_data=False, params={"verbose": -1})
        out.booster = lgb.train(params, ds, num_boost_round=30, init_model=source.booster)
        out.calibration = None
    if method == "ridge" and len(y) >= 3:
        out = _ridge_adapt(out, src, candidates, np.exp(y), float(np.exp(a)))
    out.meta.update(adapted_from=source.meta.get("device"), adapted_to=device, adapt_method=method, n_adapt=int(len(y)))
    return out


def _ridge_solve(g: np.ndarray, y: np.ndarray, prior: np.ndarray, lam: float) -> np.ndarray:
    sigma = np.abs(prior) + 1e-3 * (np.abs(prior).max() + 1e-12)
    a = np.vstack([g / y[:, None], np.sqrt(lam) * np.diag(1.0 / sigma)])
    b = np.concatenate([np.ones(len(y)), np.sqrt(lam) * prior / sigma])
    coef, *_ = np.linalg.lstsq(a, b, rcond=None)
    return np.maximum(coef, 0.0)


def _ridge_adapt(out: Predictor, src: Predictor, candidates: Sequence[Candidate], y: np.ndarray, scale: float) -> Predictor:
    """Refit the per-layer-group costs of a ``sum`` / ``sum+gbm`` source on the new measurements, each
    pulled toward the source's cost times the log-linear ``scale`` (strength chosen by leave-one-out
    relative error); the LightGBM correction of ``sum+gbm`` stays as a per-candidate factor. A
    ``whole`` source keeps the log-linear calibration."""
    if src.coef is None:
        return out
    from autocomp.predictor.features import group_features, network_features

    g = group_features(candidates, src.space, block=src.block)
    if src.kind == "sum+gbm":
        g = g * np.exp(src.booster.predict(network_features(candidates, src.space, block=src.block), num_threads=1))[:, None]
    prior = src.coef * scale
    best, best_err = prior, np.inf
    for lam in (0.3, 1.0, 3.0, 10.0, 30.0, 100.0):
        err = 0.0
        for i in range(len(y)):  # leave-one-out relative error
            keep = np.arange(len(y)) != i
            c = _ridge_solve(g[keep], y[keep], prior, lam)
            err += ((g[i] @ c) / y[i] - 1) ** 2
        if err < best_err:
            best, best_err = _ridge_solve(g, y, prior, lam), err
    out.coef, out.calibration = best, None
    return out
