"""Accuracy predictor (APQ-style): a GBDT fitted on evaluated (candidate -> accuracy) pairs.

Features are the space's fixed-length encoding (architecture genes, keep and rank ratios, and the
per-layer precision one-hots, so quantized policies are covered). The target is the log error,
``-log(1 - accuracy + eps)``, which spreads the crowded top of the accuracy range; ranking is
unaffected by this monotone map. Used by the ``apq`` controller to rank proposals before real
evaluations are spent. Artifacts (optional) are LightGBM text plus JSON, never pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from autocomp.errors import UserError
from autocomp.space import Candidate, SearchSpace

SCHEMA_VERSION = 1
_EPS = 1e-3


def _target(acc: np.ndarray) -> np.ndarray:
    return -np.log(1.0 - np.clip(acc, 0.0, 1.0) + _EPS)


def _untarget(t: np.ndarray) -> np.ndarray:
    return 1.0 + _EPS - np.exp(-t)


class AccuracyPredictor:
    def __init__(self, space: SearchSpace, booster=None):
        self.space = space
        self.booster = booster

    def features(self, candidates: Sequence[Candidate]) -> np.ndarray:
        return np.asarray([self.space.encode(c) for c in candidates], dtype=np.float64)

    def fit(self, candidates: Sequence[Candidate], accuracies: Sequence[float], seed: int = 0) -> "AccuracyPredictor":
        import lightgbm as lgb

        x, y = self.features(candidates), _target(np.asarray(accuracies, dtype=float))
        params = {"objective": "regression", "learning_rate": 0.05, "num_leaves": 8, "min_data_in_leaf": 3,
                  "feature_fraction": 0.8, "bagging_fraction": 0.9, "bagging_freq": 1, "lambda_l2": 1.0,
                  "seed": seed, "deterministic": True, "num_threads": 1, "verbose": -1}
        self.booster = lgb.train(params, lgb.Dataset(x, y, params={"verbose": -1}), num_boost_round=200)
        return self

    def predict(self, candidates: Sequence[Candidate]) -> np.ndarray:
        if self.booster is None:
            raise RuntimeError("the accuracy predictor is not fitted")
        return _untarget(self.booster.predict(self.features(candidates), num_threads=1))

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(directory / "accuracy_model.txt"))
        meta = {"schema_version": SCHEMA_VERSION, "space": self.space.name, "target": "-log(1-acc+1e-3)"}
        (directory / "accuracy_predictor.json").write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: Path, space: SearchSpace) -> "AccuracyPredictor":
        import lightgbm as lgb

        try:
            meta = json.loads((directory / "accuracy_predictor.json").read_text())
            booster = lgb.Booster(model_file=str(directory / "accuracy_model.txt"))
        except (OSError, ValueError, lgb.basic.LightGBMError) as e:
            raise UserError(str(directory), f"cannot load the accuracy predictor ({e})", "accuracy_predictor.json and accuracy_model.txt") from None
        if meta.get("schema_version") != SCHEMA_VERSION or meta.get("space") != space.name:
            raise UserError(str(directory), f"accuracy predictor for {meta.get('space')!r} schema {meta.get('schema_version')!r}",
                            f"space {space.name!r}, schema {SCHEMA_VERSION}")
        return cls(space, booster)
