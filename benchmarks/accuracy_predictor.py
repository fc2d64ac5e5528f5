"""APQ-style accuracy predictor: held-out rank correlation on real evaluations.

Evaluates N random candidates of the default space (weights inherited from the committed supernet,
compression applied, accuracy of the exported ONNX model on a validation subset), fits the
predictor on 70% and reports Spearman and Kendall on the other 30%, and the Spearman of repeated
5-fold cross-validation over all pairs (steadier than one split when N is small).

    python benchmarks/accuracy_predictor.py --n 120 --val-size 2000
    python benchmarks/accuracy_predictor.py --n 150 --val-size 1000 --workers 2     # 2 cores, ~50 min
    python benchmarks/accuracy_predictor.py --pairs benchmarks/results/accuracy_predictor.json  # refit only
    python benchmarks/accuracy_predictor.py --pairs benchmarks/results/accuracy_predictor.json \
        --pool benchmarks/results/search_pool.json --save supernets/mnist-mbv2.accuracy   # + the search pool; ship it

With ``--pool`` the pairs of the reference pool (search_pool.json: scored by the search's own
evaluator, default settings) join them, the pool's score winning where a candidate is in both; a
second cross-validation draws its test folds from the pool candidates only (trained on everything
else), the figure against the evaluator the search uses. The committed pairs of this script
(benchmarks/results/accuracy_predictor.json) were scored on 1000 validation images by the
evaluator before issue 21 (two BatchNorm recalibrations; its ranking agrees with today's at
Spearman 0.99, benchmarks/results/eval_cost.json).

Features: the space's encoding plus the per-layer summary of
``autocomp.predictor.accuracy.layer_features`` (read from the family's layer table of the compressed
candidate). ``--save`` writes the predictor fitted on all the pairs beside the supernet, where the
``budget`` controller finds it.

Prints a table and, as its last line, one JSON object (also saved to benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau, spearmanr

from autocomp.predictor.accuracy import AccuracyPredictor
from autocomp.space import Candidate, get_space

_W: dict = {}  # per-process state: space, data, settings


def _init(val_size: int, seed: int) -> None:
    import torch

    from autocomp.data import load_dataset
    from autocomp.evaluate import EvalSettings

    torch.set_num_threads(1)
    _W.update(space=get_space(), data=load_dataset("mnist"),
              settings=EvalSettings(weights="supernet", val_size=val_size, seed=seed))


def _score(c: Candidate) -> tuple[float, float]:
    from autocomp.evaluate import score

    t = time.time()
    return score(c, _W["space"], _W["data"], _W["settings"]).accuracy, time.time() - t


def evaluate(cands: list[Candidate], val_size: int, seed: int, workers: int) -> list[float]:
    """Accuracy of each candidate as the search scores it, ``workers`` processes of one thread each."""
    accs = []
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init, initargs=(val_size, seed)) as pool:
        for i, (c, (acc, wall)) in enumerate(zip(cands, pool.map(_score, cands))):  # one line each: a bar is invisible in a log
            accs.append(acc)
            print(f"[{i + 1}/{len(cands)}] {c.id} acc {acc:.4f} ({wall:.1f}s)", file=sys.stderr, flush=True)
    return accs


def cv_spearman(space, cands: list[Candidate], accs: list[float], seed: int, folds: int = 5, repeats: int = 4,
                tested: np.ndarray | None = None) -> tuple[float, float]:
    """Mean and std over folds of the held-out Spearman, ``repeats`` x ``folds``-fold cross-validation.
    ``tested``: the indices the folds are drawn from (default: all); the rest always trains."""
    y, rng, rhos = np.asarray(accs), np.random.default_rng(seed), []
    tested = np.arange(len(cands)) if tested is None else tested
    for _ in range(repeats):
        for test in np.array_split(rng.permutation(tested), folds):
            train = np.setdiff1d(np.arange(len(cands)), test)
            model = AccuracyPredictor(space).fit([cands[i] for i in train], y[train], seed=seed)
            rhos.append(spearmanr(model.predict([cands[i] for i in test]), y[test]).statistic)
    return float(np.nanmean(rhos)), float(np.nanstd(rhos))  # a fold predicted constant has no rank correlation


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--val-size", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1, help="candidates scored in parallel (processes of one thread)")
    ap.add_argument("--pairs", type=Path, default=None, help="refit on the pairs a previous run saved instead of evaluating")
    ap.add_argument("--pool", type=Path, default=None, help="also the pairs of search_pool.json (search_quality's reference pool)")
    ap.add_argument("--save", type=Path, default=None, help="write the predictor fitted on every pair to this folder")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "accuracy_predictor.json")
    a = ap.parse_args()
    space = get_space()
    t0 = time.time()
    if a.pairs is not None:
        prev = json.loads(a.pairs.read_text())
        own = [p for p in prev["pairs"] if p.get("source", "benchmark") == "benchmark"]
        cands = [Candidate.from_json(p["policy"]) for p in own]
        accs = [float(p["accuracy"]) for p in own]
        a.val_size, eval_wall, a.workers = prev["val_size"], prev["eval_wall_s"], prev.get("workers", 1)
    else:
        rng = random.Random(a.seed)
        cands = list({c.id: c for c in (space.sample(rng) for _ in range(a.n))}.values())
        accs = evaluate(cands, a.val_size, a.seed, a.workers)
        eval_wall = round(time.time() - t0, 1)
    sources = ["benchmark"] * len(cands)
    pool_load = None
    if a.pool is not None and a.pool.exists():  # the pool's score is the search's own (default settings): it wins over a pair's
        pool = json.loads(a.pool.read_text())
        pool_load = pool.get("load_avg")
        keep = [i for i, c in enumerate(cands) if c.id not in pool["candidates"]]
        cands, accs, sources = [cands[i] for i in keep], [accs[i] for i in keep], [sources[i] for i in keep]
        for r in pool["candidates"].values():
            cands.append(Candidate.from_json(r["policy"]))
            accs.append(float(r["accuracy"]))
            sources.append("pool")
    order = np.random.default_rng(a.seed).permutation(len(cands))  # the held-out split mixes both sources
    cands, accs, sources = [cands[i] for i in order], [accs[i] for i in order], [sources[i] for i in order]
    n_train = int(0.7 * len(cands))
    model = AccuracyPredictor(space).fit(cands[:n_train], accs[:n_train], seed=a.seed)
    pred = model.predict(cands[n_train:])
    truth = np.asarray(accs[n_train:])
    cv_mean, cv_std = cv_spearman(space, cands, accs, a.seed)
    in_pool = np.flatnonzero(np.asarray(sources) == "pool")
    pool_cv = cv_spearman(space, cands, accs, a.seed, tested=in_pool) if len(in_pool) >= 25 else (None, None)
    res = {
        "benchmark": "accuracy_predictor", "features": f"space.encode + layer_features ({model.features(cands[:1]).shape[1]} in all)",
        "n_pairs": len(cands), "n_pool": int(len(in_pool)), "n_train": n_train, "n_test": len(truth),
        "spearman": float(spearmanr(pred, truth).statistic), "kendall": float(kendalltau(pred, truth).statistic),
        "mae_points": float(np.abs(pred - truth).mean() * 100), "cv5x4_spearman_mean": cv_mean, "cv5x4_spearman_std": cv_std,
        "cv5x4_pool_spearman_mean": pool_cv[0], "cv5x4_pool_spearman_std": pool_cv[1],
        "accuracy_range": [float(min(accs)), float(max(accs))], "val_size": a.val_size, "eval_wall_s": eval_wall,
        "workers": a.workers, "pool_load_avg": pool_load, "load_avg_now": round(os.getloadavg()[0], 2),
        "sources": {"benchmark": f"this script's own evaluations (val_size {a.val_size})",
                    "pool": "benchmarks/results/search_pool.json: the search's own evaluator, default EvalSettings"},
        # this script's own pairs, to refit without re-evaluating (the pool's are in search_pool.json)
        "pairs": [{"id": c.id, "policy": c.to_json(), "accuracy": acc, "source": src}
                  for c, acc, src in zip(cands, accs, sources) if src == "benchmark"],
    }
    print(f"held-out: n={res['n_test']} spearman {res['spearman']:.3f} kendall {res['kendall']:.3f} MAE {res['mae_points']:.2f} points; "
          f"5-fold CV (x4) spearman {cv_mean:.3f} +- {cv_std:.3f} over {len(cands)} pairs"
          + (f"; folds of pool candidates only: {pool_cv[0]:.3f} +- {pool_cv[1]:.3f} ({len(in_pool)})" if pool_cv[0] is not None else ""))
    if a.save is not None:
        AccuracyPredictor(space).fit(cands, accs, seed=a.seed).save(a.save, {
            "trained_on": f"{len(cands)} supernet-inherited accuracies of compressed candidates (benchmarks/accuracy_predictor.py)",
            "cv5x4_spearman": round(cv_mean, 3), "cv5x4_pool_spearman": None if pool_cv[0] is None else round(pool_cv[0], 3)})
        print(f"saved the predictor to {a.save}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k != "pairs"}))


if __name__ == "__main__":
    main()
