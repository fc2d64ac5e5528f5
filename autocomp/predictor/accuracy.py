"""Accuracy predictor (APQ-style): a GBDT fitted on evaluated (candidate -> accuracy) pairs.

Features (:func:`layer_features`) are read from the family's layer table of the *compressed*
candidate (``Family.layer_table``: every fused layer after pruning and low-rank, with its
precision) and of its uncompressed architecture, beside the space's fixed-length gene encoding:

* size: log parameters and MACs of the architecture and of the compressed network, their ratios,
  and the log storage in bits (int8 layers count 8 bits a weight, fp16 16, fp32 32) with the share
  of MACs run in int8 and in fp16;
* bottlenecks: a block is as wide as its narrowest layer (kept hidden channels, a factorised 1x1
  conv's rank, its output width); the narrowest block off the residual path (nothing bypasses it)
  and on it, the sum of their logs;
* per stage of the space: depth, width, mean kernel, mean log expansion, int8 and fp16 blocks, the
  sums of log keep and log rank, the log width of the narrowest block;
* per-layer-group compression counts: the smallest keep and rank, how many blocks keep or rank a
  quarter or less, int8 blocks that are also pruned to half or less, stem and head precision.

The target is the log error, ``-log(1 - accuracy + eps)``, which spreads the crowded top of the
accuracy range; ranking is unaffected by this monotone map. Used by the ``apq`` and ``budget``
controllers to rank proposals before real evaluations are spent. Artifacts are LightGBM text plus
JSON, never pickle; the one of a space's supernet (trained on supernet-inherited accuracies of
compressed candidates scored by the search's own evaluator, see benchmarks/accuracy_predictor.py)
lives beside it, ``supernets/<space>.accuracy/``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from autocomp.errors import UserError
from autocomp.space import GROUPED, Candidate, SearchSpace

SCHEMA_VERSION = 3
_EPS = 1e-3
PARAMS = {"objective": "regression", "learning_rate": 0.03, "num_leaves": 4, "min_data_in_leaf": 5,
          "feature_fraction": 0.5, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
          "deterministic": True, "num_threads": 1, "verbose": -1}
ROUNDS = 300
_BITS = {"fp32": 32.0, "fp16": 16.0, "int8": 8.0}


def _uncompressed(cand: Candidate) -> Candidate:
    """The architecture of ``cand``: the same genes without pruning and low-rank (precisions kept)."""
    return dataclasses.replace(cand, stages=tuple(
        dataclasses.replace(st, blocks=tuple(dataclasses.replace(b, keep=1.0, rank=1.0) for b in st.blocks)) for st in cand.stages))


def _size(rows) -> tuple[float, float, float, float, float]:
    """(params, MACs, storage bits, MACs in int8, MACs in fp16) of layer-table rows."""
    params = macs = bits = m8 = m16 = 0.0
    for r in rows:
        p, m = r.params, r.macs
        params, macs, bits = params + p, macs + m, bits + p * _BITS.get(r.precision, 32.0)
        m8 += m if r.precision == "int8" else 0.0
        m16 += m if r.precision == "fp16" else 0.0
    return params, macs, bits, m8, m16


def layer_features(space: SearchSpace, cand: Candidate) -> list[float]:
    """What compression does to each layer of ``cand``, summarised (see the module doc)."""
    from autocomp.families import get_family

    fam = get_family(space)
    rows = fam.layer_table(cand, space)
    blocks = [b for st in cand.stages for b in st.blocks]
    compressed = any(b.keep < 1.0 or b.rank < 1.0 for b in blocks)
    params, macs, bits, m8, m16 = _size(rows)
    p_arch, m_arch = _size(fam.layer_table(_uncompressed(cand), space))[:2] if compressed else (params, macs)
    index = {f"blocks.{i}": i for i in range(len(blocks))}
    outw = [float(st.width) for st in cand.stages for _ in st.blocks]
    width, hidden = list(outw), [0.0] * len(blocks)  # per block: its narrowest conv; its kept hidden channels (the depthwise's)
    res = [False] * len(blocks)
    for r in rows:
        i = index.get(r.group)
        if i is None:
            continue
        if r.op == "add":
            res[i] = True
        elif r.op != "move":  # a shuffle's channels are its neighbours' (no width of its own)
            w = float(max(r.cin if r.kind == "dw" else min(r.cin, r.cout), 1))
            width[i] = min(width[i], w)
            if r.kind == "dw":
                hidden[i] = w
    logw = [math.log(w) for w in width]
    logh = [math.log(h) if h > 0 else lw for h, lw in zip(hidden, logw)]
    rel = [lw - math.log(w) for lw, w in zip(logw, outw)]  # a block's narrowest layer against its output width
    on_path = [w for w, bypass in zip(logw, res) if not bypass]  # nothing bypasses these blocks
    bypassed = [w for w, bypass in zip(logw, res) if bypass]
    f = [math.log(p_arch), math.log(m_arch + 1.0), math.log(params), math.log(macs + 1.0), math.log(p_arch / params),
         math.log((m_arch + 1.0) / (macs + 1.0)), math.log(bits / 8.0), bits / (32.0 * params), m8 / max(macs, 1.0), m16 / max(macs, 1.0),
         min(on_path, default=0.0), sum(on_path), min(bypassed, default=0.0), sum(bypassed), float(len(bypassed)),
         sum(x for x, bypass in zip(rel, res) if not bypass), sum(x for x, bypass in zip(rel, res) if bypass)]
    i = 0
    for st in cand.stages:  # a space's candidates have its number of stages: the vector's length is fixed per space
        bs, lw, lh, n = st.blocks, logw[i: i + st.depth], logh[i: i + st.depth], max(st.depth, 1)
        first_res = res[i] if bs else False  # a stage's first block changes stride or width: as a rule nothing bypasses it
        i += st.depth
        f += [float(st.depth), math.log(st.width), sum(b.kernel for b in bs) / n, sum(math.log(max(b.expand % GROUPED, 1)) for b in bs) / n,
              float(sum(b.precision == "int8" for b in bs)), float(sum(b.precision == "fp16" for b in bs)),
              sum(math.log(b.keep) for b in bs), sum(math.log(b.rank) for b in bs), min(lw, default=0.0), min(lh, default=0.0),
              lw[0] if lw else 0.0, float(first_res), float(bool(bs) and bs[0].precision == "int8")]
    keeps, ranks = [b.keep for b in blocks] or [1.0], [b.rank for b in blocks] or [1.0]
    f += [min(keeps), float(sum(k <= 0.25 for k in keeps)), min(ranks), float(sum(r <= 0.25 for r in ranks)), float(len(blocks)),
          float(sum(b.precision == "int8" and b.keep <= 0.5 for b in blocks)), float(sum(b.precision == "int8" and b.rank <= 0.5 for b in blocks)),
          float(cand.stem_precision == "int8"), float(cand.head_precision == "int8"),
          float(cand.stem_precision == "fp16"), float(cand.head_precision == "fp16")]
    return f


def _target(acc: np.ndarray) -> np.ndarray:
    return -np.log(1.0 - np.clip(acc, 0.0, 1.0) + _EPS)


def _untarget(t: np.ndarray) -> np.ndarray:
    return 1.0 + _EPS - np.exp(-t)


class AccuracyPredictor:
    def __init__(self, space: SearchSpace, booster=None):
        self.space = space
        self.booster = booster

    def features(self, candidates: Sequence[Candidate]) -> np.ndarray:
        return np.asarray([self.space.encode(c) + layer_features(self.space, c) for c in candidates], dtype=np.float64)

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
