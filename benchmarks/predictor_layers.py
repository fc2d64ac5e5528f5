"""Per-layer latency labels from ONNX Runtime's profiler: does a layer-level model beat the sum model?

    python benchmarks/predictor_layers.py                                   # this host's fbnet-224 cpu-ort table
    python benchmarks/predictor_layers.py --space mnist-mbv2 --runs 200     # the default space's table

The profile is :func:`autocomp.predictor.campaign.profile` (what ``autocomp predictor profile`` writes
beside a table as ``layers.parquet``: that file is read instead when it exists, ``--reprofile`` to
run again) and the ``layers`` variant is the predictor's ``sum+layers`` kind, scored by
:func:`autocomp.predictor.model.cross_validate`.

The ``sum`` predictor learns one cost per (precision, op kind) from whole-network latencies: ~150
numbers per table. Every measured network also holds ~70 convs whose times, in context (the
neighbours' layouts, the caches as the network leaves them), ONNX Runtime's profiler reports. This
benchmark re-runs each candidate of a measurement table of *this host* under the profiler, matches
the profiled conv nodes (Conv, FusedConv, QLinearConv, in execution order) to the conv rows of the
family's layer table (:meth:`autocomp.families.Family.layer_table`), and compares, by K-fold
cross-validation over candidates:

* ``sum``: the shipped predictor's model on the table's whole-network latencies;
* ``layers``: a LightGBM model of one conv's log time from its layer-table row (op kind, precision,
  channels, kernel, stride, groups, areas, MACs, traffic, channel multiples of 4/8/16, the previous
  layer's precision), fit on the training candidates' profiled convs; a test candidate's predicted
  conv times are summed and enter the ``sum`` model's non-negative least squares as one more column
  (trained on the profiled sums, applied to the predicted ones);
* ``layers_rescaled``: the same with every candidate's profiled conv times rescaled by its measured
  latency over its profiled run time. A profile is one short run of the host, without the reference
  protocol, so a slow phase of the host inflates every conv of that candidate; the table's latency
  does not. (The training rows' conv sums then carry their own latency: the test rows' never do.)

Scored twice: K-fold cross-validation over the candidates (``--seeds`` fold draws), and the
predictor's own split (:func:`autocomp.predictor.model.split_table`: the held-out rows, by id hash).

The profiler adds a few microseconds per node, so it tells most at 224x224 (convs of 50-500 us) and
least at 28x28 (convs of a few us). Run it alone on the machine. Saves
``benchmarks/results/predictor_layers_<space>.json`` with the host's fingerprint.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autocomp.measure import get_device  # noqa: E402
from autocomp.measure.fingerprint import fingerprint_id  # noqa: E402
from autocomp.predictor import predictor_dir  # noqa: E402
from autocomp.predictor.campaign import profile, read_table  # noqa: E402
from autocomp.predictor.features import group_features, nchwc_block  # noqa: E402
from autocomp.predictor.layers import PROFILE_NAME, LayerData, read_profile  # noqa: E402
from autocomp.predictor.model import _fit_sum, candidates_of, cross_validate, host_info, is_test_id, metrics  # noqa: E402
from autocomp.resources import predictors_dir  # noqa: E402
from autocomp.space import get_space  # noqa: E402


def heldout(g: np.ndarray, y: np.ndarray, test: np.ndarray, variants: dict[str, LayerData]) -> dict[str, dict]:
    """Trained on the rows outside ``test``, scored on ``test`` (the predictor's own split)."""
    tr = ~test
    out = {"sum": metrics(g[test] @ _fit_sum(g[tr], y[tr]), y[test])}
    for name, data in variants.items():
        coef = _fit_sum(np.c_[data.profiled_ms[tr], g[tr]], y[tr])
        out[name] = metrics(np.c_[data.predicted_ms(data.fit(tr), test), g[test]] @ coef, y[test])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="fbnet-224")
    ap.add_argument("--device", default="cpu-ort", help="an ONNX Runtime device (the profiler is ONNX Runtime's)")
    ap.add_argument("--runs", type=int, default=25, help="profiled runs per candidate")
    ap.add_argument("--reprofile", action="store_true", help="profile again even where the table has a layers.parquet")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3, help="fold assignments to average over")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    device = get_device(args.device)
    if device.backend != "onnxruntime":
        sys.exit(f"--device {args.device}: backend {device.backend}; expected an onnxruntime device (the profiler is ONNX Runtime's)")
    space = get_space(args.space)
    here = fingerprint_id(device.fingerprint())
    table_path = predictor_dir(args.device, here, predictors_dir(), args.space) / "measurements.parquet"
    if not table_path.exists():
        sys.exit(f"no table of this host ({here}) for {args.space}: run `autocomp measure --space {args.space} --device {args.device} --n 150`")
    table = read_table(table_path)
    cands, ids = candidates_of(table), table["id"].astype(str).tolist()
    y = table["median_ms"].to_numpy(float)
    t0 = time.time()
    prof_path = table_path.parent / PROFILE_NAME
    if prof_path.exists() and not args.reprofile:
        prof = read_profile(prof_path)
    else:
        from rich.progress import Progress

        with Progress() as bar:
            task = bar.add_task("profile", total=len(cands))
            prof = profile(cands, ids, space, device, args.runs, progress=lambda: bar.advance(task))
    profile_s = time.time() - t0
    data = LayerData(cands, ids, space, prof)
    keep = np.nonzero(data.covered)[0]
    if len(keep) < len(cands):  # candidates ONNX Runtime rewrote beyond one node per conv: left out
        cands, ids, y = [cands[i] for i in keep], [ids[i] for i in keep], y[keep]
        data = LayerData(cands, ids, space, prof)
    g = group_features(cands, space, block=nchwc_block(host_info(table)["fingerprint"]))
    variants = {"layers": data, "layers_rescaled": data.rescaled(y)}
    results = []
    for seed in range(args.seeds):
        row = {"seed": seed, "sum": cross_validate(g, g, y, ("sum",), args.folds, seed)["sum"]}
        for name, d in variants.items():
            row[name] = cross_validate(g, g, y, ("sum+layers",), args.folds, seed, layers=d)["sum+layers"]
        results.append(row)
        print(f"seed {seed}: " + " | ".join(f"{k} {row[k]['within_10pct']:.3f} within ±10 % (RMSPE {row[k]['rmspe']:.4f}, Spearman "
                                           f"{row[k]['spearman']:.3f})" for k in ("sum", *variants)), flush=True)
    test = np.array([is_test_id(i) for i in ids])
    held = heldout(g, y, test, variants)
    print(f"held out ({int(test.sum())} rows): " + " | ".join(f"{k} {held[k]['within_10pct']:.3f}" for k in ("sum", *variants)))
    mean = {k: {m: float(np.mean([r[k][m] for r in results])) for m in ("within_10pct", "rmspe", "spearman")} for k in ("sum", *variants)}
    print(f"mean over {args.seeds} fold draws: " + ", ".join(f"{k} {mean[k]['within_10pct']:.3f}" for k in mean) + " within ±10 %")
    conv_share = np.median(data.profiled_ms / data.run_ms)
    out = args.out or Path(__file__).parent / "results" / f"predictor_layers_{args.space}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "space": args.space, "device": args.device, "table": str(table_path), "fingerprint_id": here,
        "fingerprint": host_info(table)["fingerprint"], "candidates": int(len(table)), "matched": int(len(y)), "convs": int(len(data.us)),
        "conv_share_of_run_time": float(conv_share), "runs": args.runs, "folds": args.folds, "profile_s": round(profile_s, 1),
        "profile": "layers.parquet" if prof_path.exists() and not args.reprofile else "profiled", "features": "with pad_macs (session 17)",
        "results": results, "mean": mean, "heldout": held, "n_heldout": int(test.sum()), "command": " ".join(sys.argv),
    }, indent=1, default=str))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
