"""A new device from few measurements: adapt the cpu-ort predictor with <= 20 measurements of another
execution mode and report the ranking quality on the rest.

The new device is ``cpu-ort-b8`` by default (ONNX Runtime, batch 8: per-layer costs scale
differently from batch 1, fixed overheads amortise) — measured with ``autocomp measure --device
cpu-ort-b8``; ``cpu-ort-2t`` (2 threads, wall clock) works the same way on a quiet machine.
Methods: none (source predictor as is), scale, loglinear (default), refit (LightGBM init_model).
The adaptation rows are the first ``--n-adapt`` of the table (by campaign index); the rest are scored.
Prints figures, saves JSON to benchmarks/results/, and prints the JSON object as its last line.

    python benchmarks/predictor_transfer.py [--source cpu-ort] [--target cpu-ort-b8] [--n-adapt 20] [--save]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from autocomp.predictor.campaign import read_table, table_path
from autocomp.predictor import load_predictor, predictor_dir
from autocomp.predictor.model import candidates_of, metrics
from autocomp.predictor.transfer import METHODS, adapt

OUT = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default="cpu-ort")
    ap.add_argument("--target", default="cpu-ort-b8")
    ap.add_argument("--n-adapt", type=int, default=20)
    ap.add_argument("--method", default="loglinear", choices=METHODS)
    ap.add_argument("--save", action="store_true", help="save the adapted predictor to predictors/<target>/")
    args = ap.parse_args()

    src = load_predictor(args.source)
    if src is None:
        raise SystemExit(f"no predictor for {args.source}; run benchmarks/predictor_accuracy.py --save first")
    df = read_table(table_path(args.target)).sort_values(["seed", "index"]).reset_index(drop=True)
    ad, rest = df.head(args.n_adapt), df.iloc[args.n_adapt:]
    if len(rest) < 5:
        raise SystemExit(f"only {len(df)} measurements of {args.target}; measure more with `autocomp measure --device {args.target}`")
    ca, cr = candidates_of(ad), candidates_of(rest)
    ya, yr = ad["median_ms"].to_numpy(float), rest["median_ms"].to_numpy(float)
    res = {"source": args.source, "target": args.target, "n_adapt": len(ad), "n_eval": len(rest), "source_kind": src.kind}
    res["none"] = metrics(src.predict(cr), yr)
    for m in METHODS:
        res[m] = metrics(adapt(src, ca, ya, m, device=args.target).predict(cr), yr)
    chosen = adapt(src, ca, ya, args.method, device=args.target)
    res["method"] = args.method
    res["spearman"] = res[args.method]["spearman"]
    res["within_10pct"] = res[args.method]["within_10pct"]
    res["calibration"] = chosen.calibration
    print(f"{args.source} -> {args.target}: adapt on {len(ad)}, score {len(rest)}")
    for m in ("none", *METHODS):
        r = res[m]
        print(f"  {m:9s} spearman {r['spearman']:.3f}  kendall {r['kendall']:.3f}  within ±10% {r['within_10pct']:.3f}  RMSPE {r['rmspe']:.3f}")
    if args.save:
        chosen.meta.update(device=args.target)
        chosen.save(predictor_dir(args.target))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"predictor_transfer_{args.source}_to_{args.target}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
