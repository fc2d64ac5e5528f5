"""Latency predictors: fit on a device's measurement table, chosen by measurement, saved as JSON +
LightGBM text (no pickle), loaded by device name.

Three model kinds, all on the analytic features of :mod:`autocomp.predictor.features`:

``sum``       latency = sum over fused layer groups of a per-group cost, linear in the group's
              MACs / activation traffic / count per (precision, op kind), plus Cast, QDQ and add costs;
              non-negative least squares on relative error. Interpretable, extrapolates sanely.
``whole``     LightGBM on whole-network features, target log(latency).
``sum+gbm``   the ``sum`` model corrected by LightGBM on log(measured / sum prediction).
``sum+layers`` the ``sum`` model with one more column: the candidate's conv time as a per-conv
              LightGBM model predicts it, learnt from ONNX Runtime's profile of the table's
              candidates (:mod:`autocomp.predictor.layers`; offered when the table has a profile).

``fit`` scores each kind by K-fold cross-validation on the training rows (RMSPE) and keeps the best;
the scores are recorded in the metadata (``selection``).

Artifacts in ``predictors/<device>/``: ``predictor.json`` (schema version, kind, space, coefficients,
calibration, metadata) and, for the LightGBM kinds, ``model.txt`` (LightGBM's text format; the layer
model of ``sum+layers``: ``layers.txt``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from autocomp.errors import UserError
from autocomp.predictor.features import (
    analyse,
    block_arrays,
    group_feature_names,
    group_features,
    nchwc_block,
    network_feature_names,
    network_features,
)
from autocomp.predictor.layers import HOST_LAYERS_MODEL, LAYERS_MODEL
from autocomp.space import Candidate, SearchSpace, get_space

SCHEMA_VERSION = 1
META_NAME = "predictor.json"
MODEL_NAME = "model.txt"
KINDS = ("sum", "whole", "sum+gbm", "sum+layers")
LAYERS_COLUMN = "conv_ms_layers"  # the layer model's column of a sum+layers design
MAX_TRAIN = 300
CHUNK = 2048  # candidates per vectorised pass (and per scoring thread)
SCORING_THREADS = min(2, os.cpu_count() or 1)  # batched scoring of more than CHUNK candidates
TEST_SHARE = 5  # one id in five (by hash) is held out

LGB_PARAMS = {
    "objective": "regression", "learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 5,
    "feature_fraction": 0.8, "bagging_fraction": 0.9, "bagging_freq": 1, "lambda_l2": 1.0,
    "verbose": -1, "seed": 0, "deterministic": True, "num_threads": 1, "force_row_wise": True,
}
NUM_ROUNDS = 400
# LightGBM sizes tried by cross-validation (rounds, learning rate), cheapest first: scoring cost grows
# with the number of trees, so a smaller ensemble within GBM_TIE of the best CV RMSPE is preferred.
GBM_GRID = ((50, 0.2), (100, 0.1), (400, 0.05))
GBM_TIE = 0.02


# --------------------------------------------------------------------------- metrics


def metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """RMSPE, share within ±5% / ±10%, Spearman and Kendall rank correlations, n."""
    from scipy.stats import kendalltau, spearmanr

    pred, y = np.asarray(pred, float), np.asarray(y, float)
    rel = (pred - y) / y
    out = {
        "n_test": int(len(y)),
        "rmspe": float(np.sqrt(np.mean(rel ** 2))) if len(y) else float("nan"),
        "mape": float(np.mean(np.abs(rel))) if len(y) else float("nan"),
        "within_5pct": float(np.mean(np.abs(rel) <= 0.05)) if len(y) else float("nan"),
        "within_10pct": float(np.mean(np.abs(rel) <= 0.10)) if len(y) else float("nan"),
    }
    if len(y) > 2:
        out["spearman"] = float(spearmanr(pred, y).statistic)
        out["kendall"] = float(kendalltau(pred, y).statistic)
    else:
        out["spearman"] = out["kendall"] = float("nan")
    return out


# --------------------------------------------------------------------------- splits


def is_test_id(cid: str) -> bool:
    """The deterministic held-out split: stable as a table grows, independent of row order."""
    return int(hashlib.sha1(("split:" + cid).encode()).hexdigest()[:8], 16) % TEST_SHARE == 0


def split_table(df: pd.DataFrame, max_train: int = MAX_TRAIN) -> tuple[pd.DataFrame, pd.DataFrame]:
    test = df["id"].map(is_test_id)
    train = df[~test].sort_values(["seed", "index"] if "index" in df else "id").head(max_train)
    return train.reset_index(drop=True), df[test].reset_index(drop=True)


def candidates_of(df: pd.DataFrame) -> list[Candidate]:
    return [Candidate.from_json(s) for s in df["candidate"]]


# --------------------------------------------------------------------------- the predictor

_POOL: Any = None


def _chunked(fn: Any, chunks: list) -> np.ndarray:
    """``fn`` over chunks on up to ``SCORING_THREADS`` threads (NumPy and LightGBM release the GIL
    inside their loops), concatenated in order."""
    global _POOL
    if SCORING_THREADS <= 1 or len(chunks) < 2:
        return np.concatenate([fn(c) for c in chunks])
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(SCORING_THREADS, thread_name_prefix="autocomp-predict")
    return np.concatenate(list(_POOL.map(fn, chunks)))


class Predictor:
    """Predicts a device's latency (ms) for candidates of one search space."""

    def __init__(self, kind: str, space: SearchSpace, meta: dict[str, Any], coef: np.ndarray | None = None,
                 booster: Any = None, calibration: dict[str, float] | None = None, columns: list[int] | None = None,
                 layers: Any = None, host_layers: Any = None):
        if kind not in KINDS:
            raise ValueError(f"unknown predictor kind {kind!r}; expected one of {KINDS}")
        self.kind, self.space, self.meta = kind, space, meta
        self.coef, self.booster = coef, booster
        # {"a", "b"}: ms' = exp(a + b * log(ms)), from a few new-device measurements; with "c" also
        # + c * log(conv ms of host_layers), the new host's own layer model (transfer's "profiled")
        self.calibration = calibration
        self.columns = columns  # the network features its LightGBM model reads (None: all of this version's)
        self.layers = layers  # sum+layers: the per-conv LightGBM model (autocomp.predictor.layers)
        self.host_layers = host_layers  # a calibration's per-conv model of the calibrated host (profiled convs)

    @property
    def fingerprint(self) -> dict[str, Any]:
        """The device fingerprint of the measurements it was fit (or calibrated) on; {} if unknown."""
        return dict(self.meta.get("fingerprint") or {})

    @property
    def fingerprint_id(self) -> str | None:
        return self.meta.get("fingerprint_id")

    @property
    def block(self) -> int:
        """The NCHWc block of its fingerprint's host: features describe the kernels of that host."""
        return nchwc_block(self.meta.get("fingerprint"))

    # ----------------------------------------------------------------- predict

    def design_names(self) -> list[str]:
        """The columns of :meth:`design`, one per coefficient."""
        return design_names(self.kind)

    def design(self, candidates: Sequence[Candidate] | None, arrays: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """The matrix its coefficients multiply: the group features (``sum+layers``: after the layer
        model's predicted conv time)."""
        if arrays is None:
            arrays = block_arrays(candidates, self.space)
        g = group_features(None, self.space, analyse(candidates, self.space, arrays, block=self.block))
        if self.kind != "sum+layers":
            return g
        from autocomp.predictor.features import candidates_from_arrays
        from autocomp.predictor.layers import predict_conv_ms

        cands = list(candidates) if candidates is not None else candidates_from_arrays(arrays, self.space)
        return np.c_[predict_conv_ms(self.layers, cands, self.space), g]

    def _raw(self, candidates: Sequence[Candidate] | None, arrays: dict[str, np.ndarray] | None = None) -> np.ndarray:
        if arrays is None:
            arrays = block_arrays(candidates, self.space)
        if self.kind in ("sum", "sum+layers"):  # (the candidates too: families other than mbv2 read their layer tables)
            return np.maximum(self.design(candidates, arrays) @ self.coef, 1e-4)
        x = network_features(candidates, self.space, arrays, block=self.block)
        log_gbm = self.booster.predict(self.gbm_input(x), num_threads=1)
        if self.kind == "whole":
            return np.exp(log_gbm)
        base = np.maximum(x[:, : len(self.coef) - 1] @ self.coef[:-1] + self.coef[-1], 1e-4)
        return base * np.exp(log_gbm)

    def gbm_input(self, x: np.ndarray) -> np.ndarray:
        """The columns of :func:`network_features` output that its LightGBM model was fit on."""
        return x if self.columns is None else x[:, self.columns]

    def predict(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """Predicted latency in milliseconds, one per candidate (batched; no export)."""
        if not len(candidates):
            return np.zeros(0)
        spaces = {c.space for c in candidates}
        if spaces - {self.space.name}:
            raise UserError("candidate.space", f"{sorted(spaces)} but this predictor was fit on space {self.space.name!r}", self.space.name)
        if len(candidates) > CHUNK:
            return _chunked(self.predict, [candidates[i:i + CHUNK] for i in range(0, len(candidates), CHUNK)])
        return self._calibrated(self._raw(candidates), candidates)

    def predict_arrays(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Like :meth:`predict` from :func:`autocomp.predictor.features.block_arrays` output: for a
        search that keeps its population as arrays (reading Python Candidate objects is the
        throughput limit of :meth:`predict`, ~100k/s)."""
        n = len(arrays["stem_width"])
        if n > CHUNK:
            return _chunked(self.predict_arrays, [{k: v[i:i + CHUNK] for k, v in arrays.items()} for i in range(0, n, CHUNK)])
        return self._calibrated(self._raw(None, arrays), None, arrays)

    def _calibrated(self, y: np.ndarray, candidates: Sequence[Candidate] | None, arrays: dict[str, np.ndarray] | None = None) -> np.ndarray:
        if self.calibration:
            log_y = self.calibration["a"] + self.calibration["b"] * np.log(y)
            if self.calibration.get("c") is not None:
                from autocomp.predictor.features import candidates_from_arrays
                from autocomp.predictor.layers import predict_conv_ms

                cands = list(candidates) if candidates is not None else candidates_from_arrays(arrays, self.space)
                log_y = log_y + self.calibration["c"] * np.log(np.maximum(predict_conv_ms(self.host_layers, cands, self.space), 1e-6))
            y = np.exp(log_y)
        return y

    # ----------------------------------------------------------------- persistence

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION, "kind": self.kind, "space": self.space.name,
            "space_def": self.space.model_dump(mode="json"),  # a space from a YAML path has no name to look up
            "group_features": self.design_names(),
            "network_features": [n for i, n in enumerate(network_feature_names(self.space)) if self.columns is None or i in self.columns],
            "coef": None if self.coef is None else [float(v) for v in self.coef],
            "calibration": self.calibration, "model_file": MODEL_NAME if self.booster is not None else None,
            "layers_file": LAYERS_MODEL if self.layers is not None else None,
            "host_layers_file": HOST_LAYERS_MODEL if self.host_layers is not None else None,
            "meta": self.meta,
        }

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        if self.booster is not None:
            tmp = directory / (MODEL_NAME + ".tmp")
            self.booster.save_model(str(tmp))
            tmp.replace(directory / MODEL_NAME)
        for model, name in ((self.layers, LAYERS_MODEL), (self.host_layers, HOST_LAYERS_MODEL)):
            if model is not None:
                tmp = directory / (name + ".tmp")
                model.save_model(str(tmp))
                tmp.replace(directory / name)
        tmp = directory / (META_NAME + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1, default=str))
        tmp.replace(directory / META_NAME)
        return directory / META_NAME

    @classmethod
    def load(cls, directory: Path) -> "Predictor":
        import lightgbm as lgb

        path = directory / META_NAME
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as e:  # ValueError: JSON or UTF-8
            raise UserError(str(path), f"unreadable predictor metadata ({type(e).__name__})", "a predictor.json written by `autocomp predictor train`") from None
        if not isinstance(d, dict) or d.get("schema_version") != SCHEMA_VERSION:
            got = d.get("schema_version") if isinstance(d, dict) else None
            raise UserError(str(path), f"schema_version {got!r}", f"schema_version {SCHEMA_VERSION} (retrain with `autocomp predictor train`)")
        if d.get("kind") not in KINDS:
            raise UserError(str(path), f"kind {d.get('kind')!r}", f"one of {KINDS}")
        if d.get("space_def") is not None:  # the space it was fit on (one given by path is not in search_spaces/)
            try:
                space = SearchSpace.model_validate(d["space_def"])
            except Exception as e:
                raise UserError(str(path), f"unreadable space_def ({type(e).__name__})", "a predictor.json written by this autocomp version") from None
        elif isinstance(d.get("space"), str):
            space = get_space(d["space"])
        else:
            raise UserError(str(path), "names no space", "a predictor.json written by `autocomp predictor train` (space or space_def)")
        columns = None  # the LightGBM model's input columns, where it was fit on fewer features than this version's
        if d["kind"] in ("whole", "sum+gbm") and d.get("network_features") not in (None, network_feature_names(space)):
            current, names = network_feature_names(space), d["network_features"]
            if not isinstance(names, list) or not set(names) <= set(current):
                raise UserError(str(path), "feature set differs from this autocomp version", "a predictor retrained with this version")
            columns = [current.index(n) for n in names]

        def booster_of(mpath: Path) -> Any:
            try:
                return lgb.Booster(model_str=mpath.read_text())
            except Exception as e:
                raise UserError(str(mpath), f"unreadable LightGBM model ({type(e).__name__})", "a LightGBM text model") from None

        booster = booster_of(directory / d["model_file"]) if d.get("model_file") else None
        layers = booster_of(directory / LAYERS_MODEL) if d["kind"] == "sum+layers" else None
        calibration = d.get("calibration")
        if calibration is not None and (not isinstance(calibration, dict) or not all(
                isinstance(calibration.get(k), (int, float)) for k in ("a", "b")) or not isinstance(calibration.get("c"), (int, float, type(None)))):
            raise UserError(str(path), "calibration is not {a, b[, c]} numbers", "a predictor.json written by autocomp's calibration")
        host_layers = booster_of(directory / HOST_LAYERS_MODEL) if calibration and calibration.get("c") is not None else None
        try:
            coef = np.asarray(d["coef"], float) if d.get("coef") is not None else None
        except (TypeError, ValueError):
            raise UserError(str(path), "coef is not a list of numbers", "a predictor.json written by `autocomp predictor train`") from None
        if coef is not None and (coef.ndim != 1 or not np.isfinite(coef).all()):
            raise UserError(str(path), "coef is not a list of finite numbers", "a predictor.json written by `autocomp predictor train`")
        if coef is not None:
            coef = _by_name(coef, d.get("group_features"), path, design_names(d["kind"]))
        return cls(d["kind"], space, d.get("meta", {}), coef, booster, calibration, columns, layers, host_layers)


def design_names(kind: str) -> list[str]:
    """The columns the coefficients of a predictor of ``kind`` multiply."""
    return ([LAYERS_COLUMN] if kind == "sum+layers" else []) + group_feature_names()


def _by_name(coef: np.ndarray, names: Any, path: Path, current: list[str]) -> np.ndarray:
    """Coefficients in this version's feature order (``current``): a feature the predictor was fit
    without (one added since, such as the channel-padding MACs) costs nothing, so an older predictor
    predicts what it did; a feature this version does not know is refused."""
    if names is None:
        names = current
    if not isinstance(names, list) or len(names) != len(coef):
        raise UserError(str(path), "group_features does not name every coefficient", "a predictor.json written by `autocomp predictor train`")
    unknown = sorted(set(names) - set(current))
    if unknown:
        raise UserError(str(path), f"unknown latency features {unknown[:3]}", "a predictor retrained with this version")
    out = np.zeros(len(current))
    out[[current.index(n) for n in names]] = coef
    return out


# --------------------------------------------------------------------------- fitting


def _fit_sum(g: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative error (rows scaled by 1/y); the constant is free to be
    any sign (fixed per-inference overhead)."""
    from scipy.optimize import nnls

    w = 1.0 / y
    a = g * w[:, None]
    b = np.ones_like(y)
    scale = np.maximum(np.abs(a).max(0), 1e-12)
    coef, _ = nnls(a / scale, b)
    return coef / scale


def _fit_gbm(x: np.ndarray, target: np.ndarray, rounds: int = NUM_ROUNDS, init_model: Any = None,
             learning_rate: float | None = None) -> Any:
    import lightgbm as lgb

    ds = lgb.Dataset(x, target, free_raw_data=False, params={"verbose": -1, "num_threads": 1})
    params = {**LGB_PARAMS, "num_iterations": rounds, **({"learning_rate": learning_rate} if learning_rate else {})}
    return lgb.train(params, ds, init_model=init_model)


def _fit_kind(kind: str, g: np.ndarray, x: np.ndarray, y: np.ndarray, rounds: int = NUM_ROUNDS,
              learning_rate: float | None = None, layers: Any = None) -> tuple[np.ndarray | None, Any]:
    """(coefficients, LightGBM model: of the network for the LightGBM kinds, of the convs for ``sum+layers``)."""
    if kind == "sum+layers":  # the layer model on these candidates' profiled convs; the sum on their profiled conv sums
        return _fit_sum(np.c_[layers.profiled_ms, g], y), layers.fit()
    if kind == "sum":
        return _fit_sum(g, y), None
    if kind == "whole":
        return None, _fit_gbm(x, np.log(y), rounds, learning_rate=learning_rate)
    coef = _fit_sum(g, y)
    base = np.maximum(g @ coef, 1e-4)
    return coef, _fit_gbm(x, np.log(y / base), rounds, learning_rate=learning_rate)


def _predict_kind(kind: str, coef, booster, g: np.ndarray, x: np.ndarray) -> np.ndarray:
    if kind == "sum":
        return np.maximum(g @ coef, 1e-4)
    if kind == "whole":
        return np.exp(booster.predict(x, num_threads=1))
    return np.maximum(g @ coef, 1e-4) * np.exp(booster.predict(x, num_threads=1))


def cross_validate(g: np.ndarray, x: np.ndarray, y: np.ndarray, kinds: Sequence[str] = KINDS, folds: int = 5, seed: int = 0,
                   rounds: int = NUM_ROUNDS, learning_rate: float | None = None, layers: Any = None) -> dict[str, dict]:
    """K-fold CV metrics per kind (``layers``: the :class:`autocomp.predictor.layers.LayerData` of
    these rows, for ``sum+layers``)."""
    rng = np.random.default_rng(seed)
    fold = rng.permutation(len(y)) % folds
    out = {}
    for kind in kinds:
        pred = np.zeros_like(y)
        for f in range(folds):
            tr, te = fold != f, fold == f
            if kind == "sum+layers":
                coef = _fit_sum(np.c_[layers.profiled_ms[tr], g[tr]], y[tr])
                pred[te] = np.maximum(np.c_[layers.predicted_ms(layers.fit(tr), te), g[te]] @ coef, 1e-4)
                continue
            coef, booster = _fit_kind(kind, g[tr], x[tr], y[tr], rounds, learning_rate)
            pred[te] = _predict_kind(kind, coef, booster, g[te], x[te])
        out[kind] = metrics(pred, y)
    return out


def select(g: np.ndarray, x: np.ndarray, y: np.ndarray, kinds: Sequence[str] = KINDS, folds: int = 5,
           grid: Sequence[tuple[int, float]] = GBM_GRID, layers: Any = None,
           known: dict[str, dict] | None = None) -> tuple[str, int, float | None, dict[str, dict]]:
    """Cross-validate every kind (the LightGBM kinds at every ``grid`` size); returns (kind, rounds,
    learning rate, scores keyed ``kind`` or ``kind@rounds``). The best CV RMSPE wins, except that an
    option within ``GBM_TIE`` (relative) of it that scores faster (no trees, or fewer) is taken instead.
    ``known``: scores already cross-validated with these folds, by key (not computed again)."""
    options: list[tuple[str, int, float | None, int]] = []  # (kind, rounds, lr, trees)
    for kind in kinds:
        if kind == "sum":
            options.append((kind, 0, None, 0))
        elif kind == "sum+layers":  # scored through its layer model: costlier than any network-level option
            options.append((kind, 0, None, 10 ** 6))
        else:
            options += [(kind, r, lr, r) for r, lr in grid]
    scores, rmspe = {}, {}
    for kind, r, lr, trees in options:
        key = kind if kind in ("sum", "sum+layers") else f"{kind}@{r}"
        scores[key] = (known or {}).get(key) or cross_validate(g, x, y, (kind,), folds, rounds=max(r, 1), learning_rate=lr,
                                                               layers=layers)[kind]
        rmspe[(kind, r, lr, trees)] = scores[key]["rmspe"]
    best = min(rmspe.values())
    kind, r, lr, _ = min((o for o in rmspe if rmspe[o] <= best * (1 + GBM_TIE) + 1e-4), key=lambda o: (o[3], rmspe[o]))
    return kind, r, lr, scores


def host_info(table: pd.DataFrame) -> dict[str, Any]:
    """Where the table was measured: its device fingerprint, host, CPU model, backend and version
    (most common values). A table mixing fingerprints is refused."""
    def mode(col: str) -> Any:
        return table[col].mode().iloc[0] if col in table and len(table) and table[col].notna().any() else None

    if "fingerprint_id" in table and table["fingerprint_id"].nunique() > 1:
        raise UserError("measurements", f"the table mixes {table['fingerprint_id'].nunique()} device fingerprints",
                        "one table per fingerprint (predictors/<device>/<fingerprint id>/)")
    fp = mode("fingerprint")
    return {"host": mode("host"), "cpu_model": mode("cpu_model"), "backend": mode("backend"),
            "backend_version": mode("backend_version"), "device": mode("device"),
            "threads": int(mode("threads")) if mode("threads") is not None else None,
            "batch": int(mode("batch")) if mode("batch") is not None else None,
            "fingerprint": json.loads(fp) if fp else None, "fingerprint_id": mode("fingerprint_id")}


def fit(table: pd.DataFrame, space: SearchSpace | None = None, kinds: Sequence[str] = KINDS, max_train: int = MAX_TRAIN,
        drop_flagged: bool = False, folds: int = 5, rounds: int | None = None,
        profile: pd.DataFrame | None = None) -> tuple[Predictor, dict[str, Any]]:
    """Fit a predictor on a measurement table's training split; returns (predictor, report) where the
    report has the CV selection scores and held-out metrics. ``rounds`` fixes the LightGBM size
    (default: chosen from ``GBM_GRID`` by cross-validation). ``profile``: the table's per-conv
    profile (``layers.parquet``), which makes ``sum+layers`` one of the kinds compared."""
    if drop_flagged and "flagged" in table:
        table = table[~table["flagged"].astype(bool)]
    train, test = split_table(table, max_train)
    if len(train) < 10:
        raise UserError("measurements", f"only {len(train)} training rows", "at least 10 measured candidates (run `autocomp measure`)")
    space = space or get_space(str(train["space"].iloc[0]))
    cands = candidates_of(train)
    y = train["median_ms"].to_numpy(float)
    block = nchwc_block(host_info(table)["fingerprint"])
    g, x = group_features(cands, space, block=block), network_features(cands, space, block=block)
    layers, layer_note, known = None, None, {}
    if "sum+layers" in kinds and profile is not None:
        from autocomp.predictor.layers import LayerData

        layers = LayerData(cands, train["id"].astype(str).tolist(), space, profile)
        if not layers.covered.all():
            layer_note = f"{int((~layers.covered).sum())} of {len(cands)} training candidates have no profiled convs"
            layers = None
        elif (scaled := layers.rescaled(y)) is not None:  # which labels: as profiled, or rescaled to the measured latency
            labels = {d.labels: cross_validate(g, x, y, ("sum+layers",), folds, layers=d)["sum+layers"] for d in (layers, scaled)}
            layers = min((layers, scaled), key=lambda d: labels[d.labels]["rmspe"])
            known["sum+layers"] = labels[layers.labels]  # (the same folds as select's)
            layer_note = "labels " + ", ".join(f"{k}: CV RMSPE {v['rmspe']:.4f}" for k, v in labels.items())
    if layers is None:
        if tuple(kinds) == ("sum+layers",):
            raise UserError("--kind", "sum+layers needs the table's layer profile" + (f" ({layer_note})" if layer_note else ""),
                            "`autocomp predictor profile` on the table's host first")
        kinds = [k for k in kinds if k != "sum+layers"]
    lr = None
    grid = GBM_GRID if rounds is None else ((rounds, None),)
    if len(kinds) > 1:
        best, rounds, lr, selection = select(g, x, y, kinds, folds, grid, layers, known)
    else:
        best, selection, (rounds, lr) = kinds[0], {}, grid[-1]
    coef, booster = _fit_kind(best, g, x, y, rounds, lr, layers)
    layer_model = None
    if best == "sum+layers":
        layer_model, booster = booster, None
    meta = {
        **host_info(table), "space": space.name, "kind": best, "n_train": int(len(train)), "n_test": int(len(test)),
        "n_table": int(len(table)), "trained_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "trained_on": platform.node(), "selection": selection, "target": "median_ms",
        "rounds": rounds, "learning_rate": lr or LGB_PARAMS["learning_rate"], "split": f"held out: sha1('split:'+id) % {TEST_SHARE} == 0; train: first {max_train} others by (seed, index)",
        "layer_profile": None if layers is None else {"candidates": int(layers.n), "convs": int(len(layers.us)), "labels": layers.labels},
        **({"layer_profile_note": layer_note} if layer_note else {}),
    }
    pred = Predictor(best, space, meta, coef, booster, layers=layer_model)
    report = {"kind": best, "selection": selection, "n_train": len(train)}
    if len(test):
        report["test"] = metrics(pred.predict(candidates_of(test)), test["median_ms"].to_numpy(float))
        meta["test"] = report["test"]
    return pred, report
