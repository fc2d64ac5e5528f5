"""Cost of scoring one candidate, before and after issue 21, on the same candidates in one run.

"before": two BatchNorm recalibrations (after extraction and after compression) of 8 x 256 images,
NCHW, accuracy on 5000 validation images, 4 x 128 int8 calibration images (``autocomp.evaluate.BEFORE``).
"after": the default :class:`~autocomp.evaluate.EvalSettings` (one recalibration after compression
on 512 images in channels-last batches of 32, 2000 validation images, 256 calibration images).
Variants of the new path (fewer / more BatchNorm images, fewer validation images) show how many
images the ranking needs. Every score runs in this process with ``torch.set_num_threads(1)``; the
load average is recorded with each figure (the machine is shared).

Ranking: Spearman of each variant's accuracies against "before" over the fixed candidates (N
uniform samples of the default space, seed 0), and over those that "before" scores >= 0.95 (the
contested top, where differences are small).

    python benchmarks/eval_cost.py [--n 30] [--skip-before]

Per-candidate figures are kept in benchmarks/results/eval_cost.json as they are measured; a run
continues from them (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).parent))
from search_common import RESULTS, save  # noqa: E402

VARIANTS = {  # name -> EvalSettings overrides (on top of weights=supernet)
    "after": {},
    "bn128": {"bn_images": 128},
    "bn256": {"bn_images": 256},
    "bn1024": {"bn_images": 1024},
    "val1000": {"val_size": 1000},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = ap.parse_args()

    import torch

    from autocomp.data import load_dataset
    from autocomp.evaluate import BEFORE, EvalSettings, score
    from autocomp.space import get_space

    torch.set_num_threads(1)
    space, data = get_space(), load_dataset("mnist")
    rng = random.Random(args.seed)
    cands = [space.sample(rng) for _ in range(args.n)]
    out = RESULTS / "eval_cost.json"
    done: dict = {}
    if out.exists() and not args.fresh:
        done = {r["id"]: r for r in json.loads(out.read_text()).get("candidates", [])}
    settings = {"before": EvalSettings(weights="supernet", **BEFORE)}
    settings.update({k: EvalSettings(weights="supernet", **VARIANTS[k]) for k in args.variants})
    rows = []
    for i, c in enumerate(cands):
        r = done.get(c.id, {"id": c.id, "summary": c.summary()})
        for name, st in settings.items():
            if name in r:
                continue
            load = os.getloadavg()[0]
            s = score(c, space, data, st)
            r[name] = {"accuracy": s.accuracy, "se": round(s.accuracy_se, 5), "s": round(s.wall_s, 2), "load": round(load, 2)}
            print(f"[{i + 1}/{len(cands)}] {c.id} {name:<8} acc {s.accuracy:.4f} ± {s.accuracy_se:.4f}  {s.wall_s:6.1f} s  "
                  f"(load {load:.1f})", file=sys.stderr, flush=True)
        rows.append(r)
        _write(out, rows, settings, partial=True)
    _write(out, rows, settings, partial=False)


def _write(out: Path, rows: list[dict], settings: dict, partial: bool) -> None:
    names = [n for n in settings if all(n in r for r in rows)]
    summary = {}
    if "before" in names and rows:
        ref = np.array([r["before"]["accuracy"] for r in rows])
        top = ref >= 0.95
        for n in names:
            acc = np.array([r[n]["accuracy"] for r in rows])
            secs = [r[n]["s"] for r in rows]
            summary[n] = {
                "median_s": statistics.median(secs), "mean_s": statistics.mean(secs), "max_s": max(secs),
                "speedup_median": statistics.median(r["before"]["s"] / r[n]["s"] for r in rows),
                "spearman_vs_before": float(spearmanr(acc, ref).statistic) if len(rows) > 2 else None,
                "spearman_vs_before_top": float(spearmanr(acc[top], ref[top]).statistic) if top.sum() > 2 else None,
                "n_top": int(top.sum()), "mean_abs_diff_points": float(np.abs(acc - ref).mean() * 100),
                "mean_se_points": statistics.mean(r[n]["se"] for r in rows) * 100,
            }
    loads = [r[n]["load"] for r in rows for n in names]
    payload = {"partial": partial, "n": len(rows), "threads": 1, "settings": {n: s.model_dump() for n, s in settings.items()},
               "load_avg": {"min": min(loads, default=None), "median": statistics.median(loads) if loads else None,
                            "max": max(loads, default=None), "note": "2-core machine shared with other jobs: timings are loaded"},
               "summary": summary, "candidates": rows}
    path = save("eval_cost", payload)
    if not partial:
        for n, s in summary.items():
            print(f"{n:<8} median {s['median_s']:6.1f} s  max {s['max_s']:6.1f} s  speed-up x{s['speedup_median']:.1f}  "
                  f"Spearman {s['spearman_vs_before']:.3f} (top {s['n_top']}: {s['spearman_vs_before_top'] or float('nan'):.3f})  "
                  f"|diff| {s['mean_abs_diff_points']:.2f} pts  se {s['mean_se_points']:.2f} pts")
        print(f"saved {path}")
        print(json.dumps({"benchmark": "eval_cost", "n": len(rows), **{n: {k: summary[n][k] for k in ("median_s", "spearman_vs_before")} for n in summary}}))


if __name__ == "__main__":
    main()
