"""Accuracy predictor (APQ-style): a GBDT fitted on evaluated (candidate -> accuracy) pairs.

Features: the space's fixed-length encoding (architecture genes, and per block its keep and rank
ratios and precision one-hots), plus what compression does to the network as a whole, computed per
layer from the block shapes: kept hidden channels and ranks (smallest, sum of logs, count of
aggressive cuts), int8 / fp16 layer counts (stem and head apart), and the log MACs of the
architecture before and after pruning and low-rank. The target is the log error,
``-log(1 - accuracy + eps)``, which spreads the crowded top of the accuracy range; ranking is
unaffected by this monotone map. Used by the ``apq`` and ``budget`` controllers to rank proposals
before real evaluations are spent. Artifacts are LightGBM text plus JSON, never pickle; the one of a
space's supernet (trained on supernet-inherited accuracies of compressed candidates, see
benchmarks/accuracy_predictor.py) lives beside it, ``supernets/<space>.accuracy/``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from autocomp.errors import UserError
from autocomp.space import Candidate, SearchSpace

SCHEMA_VERSION = 2
_EPS = 1e-3
PARAMS = {"objective": "regression", "learning_rate": 0.03, "num_leaves": 4, "min_data_in_leaf": 5,
          "feature_fraction": 0.5, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
          "deterministic": True, "num_threads": 1, "verbose": -1}
ROUNDS = 300


def compression_features(space: SearchSpace, cand: Candidate) -> list[float]:
    """What pruning, low-rank and quantization do to ``cand`` as a whole (see the module doc)."""
    blocks = [b for s in cand.stages for b in s.blocks]
    keeps = [b.keep for b in blocks]
    ranks = [b.rank for b in blocks]
    precs = cand.layer_precisions()
    h = space.input.height
    cin = cand.stem_width
    macs_arch = macs_eff = float(h * h * space.input.channels * cin * 9)
    min_hidden, min_rank_ch = math.inf, math.inf
    for st_spec, st in zip(space.stages, cand.stages):
        for i, b in enumerate(st.blocks):
            stride, cout, k = (st_spec.stride if i == 0 else 1), st.width, b.kernel
            hidden = cin * b.expand
            kept = max(1, round(hidden * b.keep)) if b.expand != 1 else cin
            ho = h // stride

            def pw(a: int, c: int) -> float:  # a 1x1 conv's MACs per position, factorised when that is smaller
                r = max(1, math.ceil(b.rank * min(a, c)))
                return float(min(a * c, r * (a + c))) if b.rank < 1.0 else float(a * c)

            macs_arch += (h * h * cin * hidden if b.expand != 1 else 0) + ho * ho * hidden * (k * k + cout)
            macs_eff += (h * h * pw(cin, kept) if b.expand != 1 else 0) + ho * ho * (kept * k * k + pw(kept, cout))
            min_hidden = min(min_hidden, kept / cin)
            min_rank_ch = min(min_rank_ch, b.rank * min(cin, kept))
            cin, h = cout, ho
    head = float(h * h * cin * cand.head_width + cand.head_width * space.num_classes)
    macs_arch, macs_eff = macs_arch + head, macs_eff + head
    return [min(keeps), sum(keeps) / len(keeps), sum(k <= 0.25 for k in keeps), sum(k <= 0.5 for k in keeps),
            sum(math.log(k) for k in keeps), min(ranks), sum(ranks) / len(ranks), sum(r <= 0.25 for r in ranks),
            sum(math.log(r) for r in ranks), precs.count("int8"), precs.count("fp16"), float(cand.stem_precision == "int8"),
            float(cand.head_precision == "int8"), len(blocks), min_hidden, min_rank_ch, math.log(macs_arch),
            math.log(macs_eff), math.log(macs_arch / macs_eff)]


def _target(acc: np.ndarray) -> np.ndarray:
    return -np.log(1.0 - np.clip(acc, 0.0, 1.0) + _EPS)


def _untarget(t: np.ndarray) -> np.ndarray:
    return 1.0 + _EPS - np.exp(-t)


class AccuracyPredictor:
    def __init__(self, space: SearchSpace, booster=None):
        self.space = space
        self.booster = booster

    def features(self, candidates: Sequence[Candidate]) -> np.ndarray:
        return np.asarray([self.space.encode(c) + compression_features(self.space, c) for c in candidates], dtype=np.float64)

    def fit(self, candidates: Sequence[Candidate], accuracies: Sequence[float], seed: int = 0) -> "AccuracyPredictor":
        import lightgbm as lgb

        x, y = self.features(candidates), _target(np.asarray(accuracies, dtype=float))
        params = {**PARAMS, "seed": seed, "min_data_in_leaf": min(PARAMS["min_data_in_leaf"], max(1, len(y) // 4))}
        self.booster = lgb.train(params, lgb.Dataset(x, y, params={"verbose": -1}), num_boost_round=ROUNDS)
        return self

    def predict(self, candidates: Sequence[Candidate]) -> np.ndarray:
        if self.booster is None:
            raise RuntimeError("the accuracy predictor is not fitted")
        return _untarget(self.booster.predict(self.features(candidates), num_threads=1))

    def save(self, directory: Path, meta: dict | None = None) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(directory / "accuracy_model.txt"))
        meta = {"schema_version": SCHEMA_VERSION, "space": self.space.name, "target": "-log(1-acc+1e-3)", **(meta or {})}
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


def default_accuracy_predictor(space: SearchSpace) -> AccuracyPredictor | None:
    """The predictor shipped beside the space's supernet (``supernets/<space>.accuracy/``), or None."""
    from autocomp.resources import data_dir

    d = data_dir("supernets") / f"{space.name}.accuracy"
    if not (d / "accuracy_predictor.json").is_file():
        return None
    return AccuracyPredictor.load(d, space)
