"""Cross-host latency transfer: a predictor measured on one device fingerprint, adapted with k
measurements of another, scored on other measurements of that other one.

    python benchmarks/predictor_crosshost.py                       # shipped cpu-ort source -> this host's table
    python benchmarks/predictor_crosshost.py --source-fp ID --target PATH/measurements.parquet
    python benchmarks/predictor_crosshost.py --space fbnet-224 --source-device cpu-ort --target PATH  # another space

Source: a predictor of one fingerprint (``predictors/<device>/<id>/``). Target: a measurement table
of another fingerprint. The target table is split in two by a seeded permutation: the adaptation
pool and the test rows (at least 60). For each k, the k adaptation rows are chosen as the search's
calibration chooses them (spread evenly over the source's predicted log latency; ``spread``) and
also at random (``random``, mean over ``--draws`` draws). Methods: the adaptations of
:mod:`autocomp.predictor.transfer` and, from k >= 20, ``fit`` (a predictor fit on the k rows alone,
what refitting does once enough measurements exist): the learning curve. ``profiled`` (the
calibration's method on ONNX Runtime devices) also reads the k rows' profiled convs from the target
table's ``layers.parquet`` (``autocomp predictor profile``); it is skipped where the table has none.
``auto`` (``--methods ...,auto``) is what a calibration does: of
:data:`autocomp.predictor.calibrate.METHODS`, the one of the lowest leave-one-out error on the k rows.

Prints a table and saves ``benchmarks/results/predictor_crosshost.json`` (with both fingerprints).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autocomp.predictor import load_predictor, space_root  # noqa: E402
from autocomp.predictor.campaign import read_table, tables  # noqa: E402
from autocomp.predictor.model import candidates_of, fit, host_info, metrics  # noqa: E402
from autocomp.predictor.transfer import METHODS, adapt  # noqa: E402
from autocomp.resources import predictors_dir, user_predictors_dir  # noqa: E402

OUT = Path(__file__).parent / "results" / "predictor_crosshost.json"


def spread_rows(pool, source, k: int) -> np.ndarray:
    """Indices into ``pool`` of k rows evenly spaced in the source's predicted log latency."""
    order = np.argsort(np.log(source.predict(candidates_of(pool))))
    return order[np.unique(np.round(np.linspace(0, len(pool) - 1, k)).astype(int))]


def score(source, adapt_rows, test, method: str, fp: dict, profile=None) -> dict:
    y = adapt_rows["median_ms"].to_numpy(float)
    if method == "auto" and len(adapt_rows):
        from autocomp.predictor.calibrate import METHODS as CALIBRATION_METHODS, leave_one_out

        tried = [m for m in CALIBRATION_METHODS if m != "profiled" or profile is not None]
        method = min(tried, key=lambda m: leave_one_out(source, adapt_rows, m, fp, profile)["rmspe"])
    if method == "fit":
        pred, _ = fit(adapt_rows, source.space, max_train=len(adapt_rows), folds=min(5, len(adapt_rows) // 4))
    elif len(adapt_rows) == 0:
        pred = source
    else:
        pred = adapt(source, candidates_of(adapt_rows), y, method, fingerprint=fp, profile=profile)
    return metrics(pred.predict(candidates_of(test)), test["median_ms"].to_numpy(float))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source-device", default="cpu-ort")
    ap.add_argument("--space", default=None, help="the space of source and target (default: the default space)")
    ap.add_argument("--source-fp", default=None, help="source fingerprint id (default: the only shipped one of the device)")
    ap.add_argument("--target", type=Path, default=None, help="target measurements.parquet (default: this host's cpu-ort table)")
    ap.add_argument("--ks", default="0,5,10,20,50")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--test", type=int, default=60, help="at least this many test rows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    source = load_predictor(args.source_device, args.source_fp, space=args.space)
    if source is None:
        sys.exit(f"no predictor for {args.source_device}")
    if args.target is None:
        from autocomp.measure import get_device
        from autocomp.measure.fingerprint import fingerprint_id

        here = fingerprint_id(get_device(args.source_device).fingerprint())
        found = [p for root in (predictors_dir(), user_predictors_dir()) for p in tables(args.source_device, space_root(root, args.space))
                 if p.parent.name == here]
        if not found:
            sys.exit(f"no table of this host's fingerprint {here}: run `autocomp measure --device {args.source_device} --n 200`")
        args.target = found[0]
    table = read_table(args.target)
    from autocomp.predictor.layers import table_profile

    profile = table_profile(args.target)
    target_fp = host_info(table)["fingerprint"]
    if target_fp and source.fingerprint_id == host_info(table)["fingerprint_id"]:
        sys.exit("source and target are the same fingerprint")
    ks = [int(k) for k in args.ks.split(",")]
    perm = np.random.default_rng(args.seed).permutation(len(table))
    n_test = max(args.test, len(table) - max(ks) * 2)
    test, pool = table.iloc[perm[:n_test]], table.iloc[perm[n_test:]]
    if len(pool) < max(ks) or len(test) < args.test:
        sys.exit(f"{len(table)} target rows: too few for k up to {max(ks)} and {args.test} test rows")
    methods = [m for m in args.methods.split(",") if m != "profiled" or profile is not None]
    unknown = set(methods) - set(METHODS) - {"auto"}
    if unknown:
        sys.exit(f"unknown method(s) {sorted(unknown)}: expected {', '.join(METHODS)} or auto")
    t0 = time.time()
    results = []
    for k in ks:
        for method in methods + (["fit"] if k >= 20 else []):
            if k == 0 and method != methods[0]:
                continue
            m_spread = score(source, pool.iloc[spread_rows(pool, source, k)] if k else pool.iloc[:0], test, method, target_fp, profile)
            draws = []
            if k:
                rng = np.random.default_rng(args.seed + 1)
                for _ in range(args.draws):
                    draws.append(score(source, pool.iloc[rng.choice(len(pool), k, replace=False)], test, method, target_fp, profile))
            row = {"k": k, "method": "none" if k == 0 else method,
                   "spread": {m: round(v, 4) for m, v in m_spread.items()},
                   "random_mean": {m: round(float(np.mean([d[m] for d in draws])), 4) for m in m_spread} if draws else None}
            results.append(row)
            r = row["random_mean"] or row["spread"]
            print(f"k={k:3d} {row['method']:9s} spread: spearman {row['spread']['spearman']:.3f} within10 {row['spread']['within_10pct']:.2f} "
                  f"rmspe {row['spread']['rmspe']:.3f} | random: spearman {r['spearman']:.3f} within10 {r['within_10pct']:.2f}", flush=True)
    out = {
        "space": source.space.name,
        "source": {"device": args.source_device, "fingerprint_id": source.fingerprint_id, "fingerprint": source.fingerprint,
                   "kind": source.kind},
        "target": {"table": str(args.target), "fingerprint_id": host_info(table)["fingerprint_id"], "fingerprint": target_fp,
                   "rows": len(table), "flagged": int(table["flagged"].sum()),
                   "profiled": None if profile is None else int(profile["id"].nunique())},
        "n_test": len(test), "pool": len(pool), "draws": args.draws, "results": results, "wall_s": round(time.time() - t0, 1),
        "command": " ".join(sys.argv),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
