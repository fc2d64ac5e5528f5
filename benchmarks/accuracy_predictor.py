"""APQ-style accuracy predictor: held-out rank correlation on real evaluations.

Evaluates N random candidates of the default space (weights inherited from the committed supernet,
compression applied, accuracy of the exported ONNX model on a validation subset), fits the
predictor on 70% and reports Spearman and Kendall on the other 30%.

    python benchmarks/accuracy_predictor.py --n 120 --val-size 2000

Prints a table and, as its last line, one JSON object (also saved to benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau, spearmanr

from autocomp.data import load_dataset
from autocomp.evaluate import EvalSettings, score
from autocomp.predictor.accuracy import AccuracyPredictor
from autocomp.space import get_space


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--val-size", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "accuracy_predictor.json")
    a = ap.parse_args()
    space, data = get_space(), load_dataset("mnist")
    rng = random.Random(a.seed)
    cands = list({c.id: c for c in (space.sample(rng) for _ in range(a.n))}.values())
    settings = EvalSettings(weights="supernet", val_size=a.val_size, seed=a.seed, bn_batches=4)
    t0 = time.time()
    accs = []
    for i, c in enumerate(cands):  # one line per evaluation (a progress bar stays invisible in a log file)
        t = time.time()
        accs.append(score(c, space, data, settings).accuracy)
        print(f"[{i + 1}/{len(cands)}] {c.id} acc {accs[-1]:.4f} ({time.time() - t:.1f}s)", file=sys.stderr, flush=True)
    n_train = int(0.7 * len(cands))
    model = AccuracyPredictor(space).fit(cands[:n_train], accs[:n_train], seed=a.seed)
    pred = model.predict(cands[n_train:])
    truth = np.asarray(accs[n_train:])
    res = {
        "benchmark": "accuracy_predictor", "n_train": n_train, "n_test": len(truth),
        "spearman": float(spearmanr(pred, truth).statistic), "kendall": float(kendalltau(pred, truth).statistic),
        "mae_points": float(np.abs(pred - truth).mean() * 100), "accuracy_range": [float(min(accs)), float(max(accs))],
        "val_size": a.val_size, "eval_wall_s": round(time.time() - t0, 1),
        "pairs": [{"id": c.id, "policy": c.to_json(), "accuracy": acc} for c, acc in zip(cands, accs)],  # refit without re-evaluating
    }
    print(f"held-out: n={res['n_test']} spearman {res['spearman']:.3f} kendall {res['kendall']:.3f} MAE {res['mae_points']:.2f} points")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k != "pairs"}))


if __name__ == "__main__":
    main()
