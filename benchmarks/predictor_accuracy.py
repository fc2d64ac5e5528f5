"""Predictor accuracy on the default device (cpu-ort: ONNX Runtime, 1 thread, batch 1).

Fits the predictor on at most 300 measurements of predictors/cpu-ort/measurements.parquet (model kind
chosen by cross-validation), reports the held-out split (RMSPE, within ±5/±10%, Spearman, Kendall),
the measurement noise floor (the same model re-measured ``--noise`` times: between-run CV of the
median; and re-measurements of held-out models compared with their table value), and the scoring
throughput (candidates per second). Prints figures, saves JSON to benchmarks/results/, and prints the
JSON object as its last line.

    python benchmarks/predictor_accuracy.py [--device cpu-ort] [--noise 5] [--remeasure 6] [--search-models 10] [--save]
    python benchmarks/predictor_accuracy.py --root predictors/spaces/fbnet-224 --search-models 0 --save   # FBNet at 224x224

``--root``: the predictors folder holding the table (default predictors/; a space other than the
shipped one keeps its table and predictor in predictors/spaces/<space>/, see predictors/README.md).
The machine's load average (1/5/15 min) is recorded before and after.

``--search-models N`` also measures N fresh candidates exported the way the search scores them
(supernet weights, BatchNorm recalibrated, int8 calibrated on MNIST) and compares the predictor with
them: the table's models have random weights, so this checks that what is fit is what is searched.

``--save`` also writes the fitted predictor to predictors/<device>/ (what ships).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from autocomp.measure import get_device
from autocomp.measure.fingerprint import cpu_model, fingerprint_id
from autocomp.predictor.campaign import export_candidate, noise_floor, read_table, table_path
from autocomp.predictor.layers import table_profile
from autocomp.predictor import predictor_dir
from autocomp.predictor.model import candidates_of, fit, split_table
from autocomp.space import get_space

OUT = Path(__file__).parent / "results"


def throughput(pred, space, n: int = 100_000) -> float:
    rng = random.Random(0)
    cands = [space.sample(rng) for _ in range(n)]
    pred.predict(cands[:min(1000, n // 10)])
    t0 = time.perf_counter()
    pred.predict(cands)
    return n / (time.perf_counter() - t0)


def remeasure(test, space, device, k: int) -> dict:
    """Re-measure ``k`` held-out models now and compare with the table (run-to-run noise)."""
    rows = test.sample(min(k, len(test)), random_state=0)
    rel = []
    for r in rows.itertuples():
        c = candidates_of(rows.loc[[r.Index]])[0]
        with tempfile.TemporaryDirectory() as tmp:
            path, _ = export_candidate(c, space, Path(tmp) / "m.onnx", int8=device.int8_scheme())  # as the campaign exported it
            now = device.measure(path, c.precision).median_ms
        rel.append(now / r.median_ms - 1)
    rel = np.array(rel)
    return {"n": len(rel), "rms_rel_diff": float(np.sqrt(np.mean(rel ** 2))), "within_10pct": float(np.mean(np.abs(rel) <= 0.1)),
            "rel_diffs": rel.round(4).tolist()}


def search_models(pred, space, device, n: int, seed: int = 1) -> dict:
    """Predicted vs measured latency of ``n`` candidates with the weights the search gives them."""
    from autocomp.data import load_dataset
    from autocomp.evaluate import EvalSettings, compressed_model
    from autocomp.export import to_onnx

    data = load_dataset("mnist", (space.input.channels, space.input.height, space.input.width))
    rng = random.Random(seed)
    cands = [space.sample(rng) for _ in range(n)]
    measured = []
    for c in cands:
        with tempfile.TemporaryDirectory() as tmp:
            model = compressed_model(c, space, data, EvalSettings(), int8=device.int8_scheme())  # as the search exports it
            path = to_onnx(model, Path(tmp) / "m.onnx", data.input_shape)
            measured.append(device.measure(path, c.precision).median_ms)
    measured, predicted = np.array(measured), pred.predict(cands)
    rel = predicted / measured - 1
    from autocomp.predictor.model import metrics

    return {**metrics(predicted, measured), "mean_rel_error": float(rel.mean()), "measured_ms": measured.round(4).tolist(),
            "predicted_ms": predicted.round(4).tolist()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu-ort")
    ap.add_argument("--fingerprint", default=None, help="fingerprint id of the table (default: this machine's)")
    ap.add_argument("--max-train", type=int, default=300)
    ap.add_argument("--noise", type=int, default=5, help="repeats of one model for the noise floor (0: skip)")
    ap.add_argument("--remeasure", type=int, default=6, help="held-out models re-measured now (0: skip)")
    ap.add_argument("--search-models", type=int, default=0, help="candidates exported with supernet weights and measured (0: skip)")
    ap.add_argument("--save", action="store_true", help="write the fitted predictor to <root>/<device>/<fingerprint id>/")
    ap.add_argument("--root", type=Path, default=None, help="predictors folder of the table (default: predictors/)")
    ap.add_argument("--drop-flagged", action="store_true", help="fit and score without the rows the protocol flagged")
    ap.add_argument("--throughput-n", type=int, default=100_000, help="candidates scored for the throughput figure")
    args = ap.parse_args()

    load_before = os.getloadavg()
    fid = args.fingerprint or fingerprint_id(get_device(args.device).fingerprint())
    df = read_table(table_path(args.device, fid, args.root))
    prof = table_profile(table_path(args.device, fid, args.root))  # layers.parquet: sum+layers is compared too
    if args.drop_flagged:
        df = df[~df["flagged"].astype(bool)].reset_index(drop=True)
    space = get_space(str(df["space"].iloc[0]))
    device = get_device(args.device)
    t0 = time.perf_counter()
    pred, report = fit(df, space, max_train=args.max_train, profile=prof)
    fit_s = time.perf_counter() - t0
    _, test = split_table(df, args.max_train)
    res = {"device": args.device, "space": space.name, "fingerprint_id": fid, "drop_flagged": args.drop_flagged, "cpu_model": cpu_model(), "backend_version": pred.meta.get("backend_version"),
           "n_table": len(df), "n_train": report["n_train"], "kind": report["kind"], "fit_s": round(fit_s, 1),
           **report["test"], "table_within_run_cv_median": float(df["cv"].median()), "table_flagged_share": float(df["flagged"].mean()),
           "selection_cv": {k: {m: round(v, 4) for m, v in s.items()} for k, s in report["selection"].items()}}
    print(f"{args.device}: {res['n_train']} training / {res['n_test']} held-out measurements, model {res['kind']} (fit {fit_s:.0f}s)")
    for k, s in report["selection"].items():
        print(f"  cv {k:12s} rmspe {s['rmspe']:.3f} within10 {s['within_10pct']:.3f} spearman {s['spearman']:.3f}")
    print(f"held-out: RMSPE {res['rmspe']:.3f}  within ±5% {res['within_5pct']:.3f}  within ±10% {res['within_10pct']:.3f}  "
          f"Spearman {res['spearman']:.3f}  Kendall {res['kendall']:.3f}")
    if args.noise:
        mid = test.sort_values("median_ms").iloc[[len(test) // 2]]
        nf = noise_floor(candidates_of(mid)[0], space, device, args.noise)
        res["noise_floor_cv"] = nf["between_run_cv"]
        res["noise_floor"] = nf
        pred.meta["noise_floor"] = nf
        print(f"noise floor: one model x{args.noise}: between-run CV {nf['between_run_cv']:.3f} (within-run CV {nf['within_run_cv']:.3f})")
    if args.remeasure:
        rm = remeasure(test, space, device, args.remeasure)
        res["remeasure"] = rm
        print(f"re-measured {rm['n']} held-out models now vs table: RMS rel diff {rm['rms_rel_diff']:.3f}, within ±10% {rm['within_10pct']:.2f}")
    if args.search_models:
        sm = search_models(pred, space, device, args.search_models)
        res["search_models"] = sm
        print(f"{sm['n_test']} models with supernet weights: within ±10% {sm['within_10pct']:.2f}, RMSPE {sm['rmspe']:.3f}, "
              f"mean error {sm['mean_rel_error']:+.3f}, Spearman {sm['spearman']:.3f}")
    tp = throughput(pred, space, args.throughput_n)
    res["candidates_per_s"] = round(tp)
    print(f"scoring throughput: {tp:,.0f} candidates/s")
    if args.save:
        pred.meta["benchmark"] = {k: res[k] for k in ("rmspe", "within_5pct", "within_10pct", "spearman", "kendall", "n_test") if k in res}
        pred.save(predictor_dir(args.device, fid, args.root))
        print(f"saved to {predictor_dir(args.device, fid, args.root)}")
    res["loadavg_before"], res["loadavg_after"] = [round(x, 2) for x in load_before], [round(x, 2) for x in os.getloadavg()]
    res["cpu_count"] = os.cpu_count()
    OUT.mkdir(parents=True, exist_ok=True)
    suffix = ("" if args.root is None else f"_{space.name}") + ("_unflagged" if args.drop_flagged else "")
    (OUT / f"predictor_accuracy_{args.device}{suffix}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
