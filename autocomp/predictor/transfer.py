"""Adapt a device's predictor to a new device (or execution mode) from a few measurements.

``loglinear`` (default): ms_new = exp(a + b * log(ms_old)), least squares on log latency — keeps the
ranking of the source predictor and learns the new device's scale and its scaling with model size.
``scale``: b fixed to 1 (only a constant factor; the safest with very few points).
``ridge``: for the ``sum`` kind, refit the per-layer-group costs on the new measurements with a
ridge penalty that pulls each cost toward a prior — the new device may weigh MACs, memory traffic
and per-group overheads differently (strength chosen by leave-one-out). The prior is the source's
costs with one factor per precision (fp32, fp16, int8, shared terms), fit first on the same
measurements: a runtime or host mostly differs from another per precision (integer dot products,
fp16 arithmetic), so four factors learn most of the change from few points and the ridge the rest.
``refit``: for the LightGBM kinds, LightGBM continues boosting from the source model
(``init_model``) on the new measurements, a few shallow rounds, after the log-linear calibration.
``profiled``: the new host's own conv times as well. Its k calibration candidates are also run under
ONNX Runtime's profiler (:func:`autocomp.predictor.campaign.profile`): some 20-40 convs each, so
hundreds of labelled convs of the new host where the other methods see k numbers. A small layer
model (:mod:`autocomp.predictor.layers`, shallow trees) is fit on them, and
log ms_new = a + b * log(source ms) + c * log(predicted conv ms) by least squares on the k
measurements: the source knows the whole network (its non-conv ops, its int8 boundaries), the layer
model what this host's conv kernels cost. ``benchmarks/predictor_crosshost.py`` (the target table's
profile), cpu-ort Zen 5 -> Zen 4 at k = 20 (spread), within ±10 %: 69 % (``ridge``) -> 82 % on
mnist-mbv2, 71 % -> 82 % on fbnet-224. With fewer than ``PROFILED_MIN`` profiled candidates it is
``ridge``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from autocomp.predictor.model import Predictor
from autocomp.space import Candidate

if TYPE_CHECKING:
    import pandas as pd

    from autocomp.predictor.layers import LayerData

METHODS = ("scale", "loglinear", "refit", "ridge", "profiled")
PROFILED_MIN = 10  # profiled candidates a "profiled" adaptation needs (else it is "ridge")
# the calibrated host's layer model: k candidates' convs only, so shallower trees than a table's
# (num_leaves 7 against 31: Zen 5 -> Zen 4 cpu-ort k = 20, within ±10 % 79 -> 82 %)
HOST_LAYER_PARAMS = {"num_leaves": 7}


def adapt(source: Predictor, candidates: Sequence[Candidate], latency_ms: Sequence[float], method: str = "loglinear",
          device: str | None = None, fingerprint: dict | None = None, profile: "pd.DataFrame | None" = None) -> Predictor:
    """A copy of ``source`` calibrated on (candidates, measured ms) of the new device, whose
    ``fingerprint`` (default: the source's) decides the host-dependent features (NCHWc block).
    ``profile``: the candidates' profiled convs on the new device (``layers.parquet`` rows), which
    the ``profiled`` method needs."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if method == "profiled":
        out = _profiled_adapt(source, candidates, latency_ms, device, fingerprint, profile)
        if out is not None:
            return out
        method = "ridge"  # too few profiled candidates
    y = np.log(np.asarray(latency_ms, float))
    meta = {**source.meta, **({"fingerprint": fingerprint} if fingerprint is not None else {})}
    if fingerprint is not None:
        from autocomp.measure.fingerprint import fingerprint_id

        meta["fingerprint_id"] = fingerprint_id(fingerprint)
    src = Predictor(source.kind, source.space, meta, source.coef, source.booster, None, source.columns, source.layers)  # the source's model, the target's features
    p = np.log(src.predict(candidates))
    if method == "scale" or len(y) < 3:
        a, b = float(np.mean(y - p)), 1.0
    else:
        b, a = np.polyfit(p, y, 1)
        a, b = float(a), float(b)
    out = Predictor(source.kind, source.space, meta, source.coef, source.booster, {"a": a, "b": b}, source.columns, source.layers)
    if method == "refit" and source.booster is not None:
        import lightgbm as lgb

        from autocomp.predictor.features import group_features, network_features

        # continue boosting the source model (its predictions are the starting score) on the new
        # device's log latency (minus the analytic sum for sum+gbm); no calibration on top
        x = source.gbm_input(network_features(candidates, source.space, block=out.block))
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


def _profiled_adapt(source: Predictor, candidates: Sequence[Candidate], latency_ms: Sequence[float], device: str | None,
                    fingerprint: dict | None, profile: "pd.DataFrame | None") -> Predictor | None:
    """The ``profiled`` method (module docs), or None with fewer than ``PROFILED_MIN`` profiled candidates."""
    from autocomp.predictor.layers import LGB_PARAMS, predict_conv_ms

    data = profiled_convs(candidates, source.space, profile)
    if data is None:
        return None
    base = adapt(source, candidates, latency_ms, "scale", device, fingerprint)  # the target's meta and features, a = b = 0 below
    host_layers = data.fit(data.covered, {**LGB_PARAMS, **HOST_LAYER_PARAMS})
    conv = np.log(np.maximum(predict_conv_ms(host_layers, candidates, source.space), 1e-6))
    base.calibration = None
    src = np.log(base.predict(candidates))
    y = np.log(np.asarray(latency_ms, float))
    a, b, c = (float(v) for v in np.linalg.lstsq(np.c_[np.ones_like(y), src, conv], y, rcond=None)[0])
    base.calibration, base.host_layers = {"a": a, "b": b, "c": c}, host_layers
    base.meta.update(adapt_method="profiled", n_profiled=int(data.covered.sum()), profiled_convs=int(data.covered[data.owner].sum()))
    return base


def profiled_convs(candidates: Sequence[Candidate], space, profile: "pd.DataFrame | None") -> "LayerData | None":
    """The profiled convs of ``candidates`` (:class:`autocomp.predictor.layers.LayerData`), or None
    where fewer than ``PROFILED_MIN`` of them are profiled: then ``profiled`` is ``ridge``."""
    from autocomp.predictor.layers import LayerData

    if profile is None or len(candidates) < PROFILED_MIN:
        return None
    data = LayerData(candidates, [c.id for c in candidates], space, profile)
    return data if data.covered.sum() >= PROFILED_MIN else None


def _precision_groups(names: Sequence[str]) -> np.ndarray:
    """For each design column (``names``), 0 fp32, 1 fp16, 2 int8, 3 shared by all precisions."""
    from autocomp.predictor.features import PRECISIONS

    def group(name: str) -> int:
        for i, prec in enumerate(PRECISIONS):
            if f"_{prec}_" in name:
                return i
        if name.startswith("dw_macs_"):
            return 2 if "_int8_" in name else 0
        return {"qdq_elems": 2, "int8_weights": 2, "cast_elems": 1, "casts": 1}.get(name, 3)

    return np.array([group(n) for n in names])


def _precision_prior(g: np.ndarray, y: np.ndarray, coef: np.ndarray, groups: np.ndarray, lam: float = 0.03) -> np.ndarray:
    """``coef`` with one factor per precision group: prediction = sum_g exp(s_g) * (g_g @ coef_g),
    the log factors fit on relative error by Gauss-Newton, shrunk toward their mean (``lam``)."""
    n_groups = int(groups.max()) + 1
    parts = np.stack([g[:, groups == k] @ coef[groups == k] for k in range(n_groups)], axis=1)
    used = parts.any(axis=0)
    s = np.full(n_groups, np.log(max(np.mean(y / np.maximum(parts.sum(1), 1e-12)), 1e-12)))
    for _ in range(30):
        jac = parts * np.exp(s)[None] / y[:, None]
        r = jac.sum(1) - 1.0
        a = jac.T @ jac + lam * np.eye(n_groups)
        step = np.linalg.solve(a, -(jac.T @ r) - lam * (s - s[used].mean()))
        s = s + np.where(used, step, 0.0)
        if np.abs(step).max() < 1e-6:
            break
    return coef * np.exp(s)[groups]


def _ridge_solve(g: np.ndarray, y: np.ndarray, prior: np.ndarray, lam: float) -> np.ndarray:
    sigma = np.abs(prior) + 1e-3 * (np.abs(prior).max() + 1e-12)
    a = np.vstack([g / y[:, None], np.sqrt(lam) * np.diag(1.0 / sigma)])
    b = np.concatenate([np.ones(len(y)), np.sqrt(lam) * prior / sigma])
    coef, *_ = np.linalg.lstsq(a, b, rcond=None)
    return np.maximum(coef, 0.0)


def _ridge_adapt(out: Predictor, src: Predictor, candidates: Sequence[Candidate], y: np.ndarray, scale: float) -> Predictor:
    """Refit the per-layer-group costs of a ``sum`` / ``sum+gbm`` source on the new measurements, each
    pulled toward the source's cost times its precision's factor (:func:`_precision_prior`, started
    from the log-linear ``scale``; strength chosen by leave-one-out relative error); the LightGBM
    correction of ``sum+gbm`` stays as a per-candidate factor. A ``whole`` source keeps the
    log-linear calibration."""
    if src.coef is None:
        return out
    from autocomp.predictor.features import network_features

    g = src.design(candidates)
    if src.kind == "sum+gbm":
        g = g * np.exp(src.booster.predict(src.gbm_input(network_features(candidates, src.space, block=src.block)), num_threads=1))[:, None]
    groups = _precision_groups(src.design_names())
    prior = _precision_prior(g, y, src.coef * scale, groups)
    keeps = [np.arange(len(y)) != i for i in range(len(y))]
    loo_priors = [_precision_prior(g[keep], y[keep], src.coef * scale, groups) for keep in keeps]
    best, best_err = prior, np.inf
    for lam in (0.3, 1.0, 3.0, 10.0, 30.0, 100.0):
        err = 0.0
        for i, (keep, p) in enumerate(zip(keeps, loo_priors)):  # leave-one-out relative error
            c = _ridge_solve(g[keep], y[keep], p, lam)
            err += ((g[i] @ c) / y[i] - 1) ** 2
        if err < best_err:
            best, best_err = _ridge_solve(g, y, prior, lam), err
    out.coef, out.calibration = best, None
    return out
