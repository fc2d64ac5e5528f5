"""The layer model: per-conv latency labels from ONNX Runtime's profiler, learnt per conv and summed.

A ``sum`` predictor learns one cost per (precision, op kind) from whole-network latencies: ~150
numbers per table. Every measured network also holds dozens of convs whose times, in context (the
neighbours' layouts, the caches as the network leaves them), ONNX Runtime's profiler reports.
``autocomp predictor profile`` re-runs every candidate of a table of *this host* under the profiler
(:func:`autocomp.predictor.campaign.profile`) and writes ``layers.parquet`` beside the table: one
row per conv (``id``: the candidate, ``conv``: its index among the candidate's conv rows of the
family's layer table, ``us``: the profiled median time, ``run_ms``: the candidate's median profiled
run). ``autocomp predictor train`` then also cross-validates the ``sum+layers`` kind: LightGBM on
one conv's log time from its layer-table row (:func:`conv_features`), whose predicted conv times,
summed per candidate, are one more column of the ``sum`` model's least squares (fit on the
profiled sums, applied to the predicted ones). The labels are the profiled times as they are, or
rescaled per candidate to its measured latency (:meth:`LayerData.rescaled`), whichever
cross-validates better. The LightGBM model is saved as text (``layers.txt``).

A candidate whose profiled convs do not pair one to one with its layer table's (ONNX Runtime
rewrote the graph beyond one node per conv) gets no rows; ``sum+layers`` is offered only when every
training candidate has them. Measured on the Zen 4 host (``benchmarks/predictor_layers.py``, 300
fbnet-224 candidates): 5-fold CV within ±10 % 86 % (``sum``), 88 % (profiled labels), 90 %
(rescaled labels); the 28x28 space (convs of a few microseconds, where the profiler's own cost per
node weighs) gains less.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from autocomp.space import Candidate, SearchSpace

PROFILE_NAME = "layers.parquet"
LAYERS_MODEL = "layers.txt"  # the layer model of a sum+layers predictor, beside its predictor.json
HOST_LAYERS_MODEL = "host_layers.txt"  # a calibration's layer model of the calibrated host (transfer's "profiled")
_PREC = {"fp32": 0, "fp16": 1, "int8": 2}
_KIND = {"full": 0, "pw": 1, "dw": 2, "fc": 3}
# 100 trees at learning rate 0.3 cross-validated as well as 600 at 0.05 on both of the Zen 4 host's
# profiled tables (fbnet-224 and mnist-mbv2, within 0.001 RMSPE) and score six times faster
LGB_PARAMS = {"objective": "regression", "learning_rate": 0.3, "num_leaves": 31, "min_data_in_leaf": 10,
              "feature_fraction": 0.9, "verbose": -1, "num_threads": 1, "seed": 0, "deterministic": True,
              "force_row_wise": True}
ROUNDS = 100


def conv_features(candidates: Sequence[Candidate], space: SearchSpace) -> tuple[np.ndarray, np.ndarray]:
    """(rows, owner): one feature row per conv of every candidate's layer table, in execution order
    (op kind, precision, channels, kernel, stride, groups, areas, log MACs, log traffic, channel
    multiples of 4/8/16, the preceding layer's precision, resolution level), and the index of the
    candidate each row belongs to."""
    from autocomp.families import get_family

    fam = get_family(space)
    rows, owner = [], []
    for i, c in enumerate(candidates):
        prev = "fp32"
        for layer in fam.layer_table(c, space):
            if layer.op == "conv":
                ci, co = layer.cin, layer.cout
                rows.append((_KIND[layer.kind], _PREC[layer.precision], ci, co, layer.kernel, layer.stride, layer.groups,
                             layer.in_hw, layer.out_hw, np.log1p(layer.macs), np.log(ci * layer.in_hw + co * layer.out_hw),
                             ci % 16 == 0, co % 16 == 0, ci % 8 == 0, co % 8 == 0, ci % 4 == 0, co % 4 == 0,
                             _PREC[prev], layer.level))
                owner.append(i)
            prev = layer.precision
    return np.array(rows, float).reshape(len(rows), 19), np.array(owner, int)


def read_profile(path: Path) -> pd.DataFrame:
    """A ``layers.parquet`` (no pickle: parquet); a malformed one is a UserError."""
    from autocomp.errors import UserError

    try:
        df = pd.read_parquet(path)
    except Exception as e:
        raise UserError(str(path), f"unreadable layer profile ({type(e).__name__})", "a layers.parquet written by `autocomp predictor profile`") from None
    if not {"id", "conv", "us"} <= set(df.columns) or not np.isfinite(df["us"].to_numpy(float)).all() or (df["us"] <= 0).any():
        raise UserError(str(path), "not a layer profile", "columns id, conv, us (positive microseconds)")
    return df


def table_profile(table_path: Path) -> pd.DataFrame | None:
    """The layer profile beside a measurement table, or None where it has none."""
    path = Path(table_path).parent / PROFILE_NAME
    return read_profile(path) if path.exists() else None


class LayerData:
    """The profiled convs of a table's candidates, aligned with :func:`conv_features`: ``x`` (rows),
    ``owner`` (candidate of each row), ``us`` (label), ``profiled_ms`` (each candidate's conv sum),
    ``run_ms`` (each candidate's profiled run; NaN where the profile has none)."""

    def __init__(self, candidates: Sequence[Candidate], ids: Sequence[str], space: SearchSpace, prof: pd.DataFrame):
        self.x, self.owner = conv_features(candidates, space)
        self.n = len(candidates)
        n_convs = np.bincount(self.owner, minlength=self.n)
        by_id = {cid: g.sort_values("conv")["us"].to_numpy(float) for cid, g in prof.groupby("id")}
        self.us = np.zeros(len(self.owner))
        self.covered = np.zeros(self.n, bool)
        runs = prof.groupby("id")["run_ms"].first() if "run_ms" in prof else {}
        self.run_ms = np.array([float(runs.get(str(cid), np.nan)) for cid in ids])
        self.labels = "profiled"
        start = np.concatenate([[0], np.cumsum(n_convs)])
        for i, cid in enumerate(ids):
            t = by_id.get(str(cid))
            if t is not None and len(t) == n_convs[i]:
                self.us[start[i]:start[i + 1]] = t
                self.covered[i] = True
        self.profiled_ms = np.bincount(self.owner, self.us, self.n) / 1000.0

    def rescaled(self, latency_ms: np.ndarray) -> "LayerData | None":
        """A copy whose conv times are rescaled per candidate by its measured latency over its profiled
        run. A profile is one short run without the reference protocol, so a slow phase of the host
        inflates every conv of that candidate; the table's latency does not (fbnet-224 on the Zen 4
        host: 5-fold CV 88 -> 90 % within ±10 %). None where a candidate's run time is unknown."""
        if not np.isfinite(self.run_ms).all():
            return None
        out = copy.copy(self)
        out.us = self.us * (np.asarray(latency_ms, float) / self.run_ms)[self.owner]
        out.profiled_ms = np.bincount(self.owner, out.us, self.n) / 1000.0
        out.labels = "rescaled"
        return out

    def fit(self, rows: np.ndarray | None = None, params: dict | None = None) -> Any:
        """LightGBM on the log time of the convs of the candidates ``rows`` (a boolean mask; all)."""
        import lightgbm as lgb

        mask = np.ones(len(self.owner), bool) if rows is None else rows[self.owner]
        ds = lgb.Dataset(self.x[mask], np.log(self.us[mask]), params={"verbose": -1, "num_threads": 1})
        return lgb.train(params or LGB_PARAMS, ds, ROUNDS)

    def predicted_ms(self, booster: Any, rows: np.ndarray) -> np.ndarray:
        """The predicted conv sums of the candidates ``rows`` (boolean mask), in ms."""
        mask = rows[self.owner]
        return (np.bincount(self.owner[mask], np.exp(booster.predict(self.x[mask], num_threads=1)), self.n) / 1000.0)[rows]


def predict_conv_ms(booster: Any, candidates: Sequence[Candidate], space: SearchSpace) -> np.ndarray:
    """Each candidate's conv time (ms) as the layer model predicts it, summed over its convs."""
    x, owner = conv_features(candidates, space)
    if not len(owner):
        return np.zeros(len(candidates))
    return np.bincount(owner, np.exp(booster.predict(x, num_threads=1)), len(candidates)) / 1000.0
