"""Per-layer latency labels from ONNX Runtime's profiler: does a layer-level model beat the sum model?

    python benchmarks/predictor_layers.py                                   # this host's fbnet-224 cpu-ort table
    python benchmarks/predictor_layers.py --space mnist-mbv2 --runs 200     # the default space's table

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
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autocomp.families import get_family  # noqa: E402
from autocomp.measure import get_device  # noqa: E402
from autocomp.measure.fingerprint import fingerprint_id  # noqa: E402
from autocomp.predictor import predictor_dir  # noqa: E402
from autocomp.predictor.campaign import export_candidate, read_table  # noqa: E402
from autocomp.predictor.features import group_features, nchwc_block  # noqa: E402
from autocomp.predictor.model import _fit_sum, candidates_of, host_info, is_test_id, metrics  # noqa: E402
from autocomp.resources import predictors_dir  # noqa: E402
from autocomp.space import get_space  # noqa: E402

CONV_OPS = {"Conv", "FusedConv", "QLinearConv", "NhwcFusedConv", "NhwcConv"}
PREC = {"fp32": 0, "fp16": 1, "int8": 2}
KIND = {"full": 0, "pw": 1, "dw": 2, "fc": 3}
LGB = {"objective": "regression", "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 10, "feature_fraction": 0.9,
       "verbose": -1, "num_threads": 2, "seed": 0, "deterministic": True}
ROUNDS = 600


def profile(candidate, space, device, runs: int, tmp: Path) -> tuple[list[tuple[str, float]], float]:
    """(op type, median us) of every node ONNX Runtime ran, in execution order, and the median run (us)."""
    from autocomp.measure.onnxruntime import session

    path, _ = export_candidate(candidate, space, tmp / "m.onnx", int8=device.int8_scheme())
    sess = session(path, profile_prefix=str(tmp / "profile"))
    shape = [d if isinstance(d, int) else 1 for d in sess.get_inputs()[0].shape]
    feed = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    for _ in range(runs + 3):
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    order, durs, ops = [], defaultdict(list), {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            if e["name"] not in ops:
                order.append(e["name"])
                ops[e["name"]] = e["args"].get("op_name")
            durs[e["name"]].append(e["dur"])
    model_runs = [e["dur"] for e in events if e.get("name") == "model_run"]
    return [(ops[n], float(np.median(durs[n][3:] or durs[n]))) for n in order], float(np.median(model_runs[3:]))


def layer_row(layer, prev: str) -> list[float]:
    """The layer model's features of one conv row of a layer table."""
    c_in, c_out = layer.cin, layer.cout
    return [KIND[layer.kind], PREC[layer.precision], c_in, c_out, layer.kernel, layer.stride, layer.groups, layer.in_hw, layer.out_hw,
            np.log1p(layer.macs), np.log(c_in * layer.in_hw + c_out * layer.out_hw), c_in % 16 == 0, c_out % 16 == 0,
            c_in % 8 == 0, c_out % 8 == 0, c_in % 4 == 0, c_out % 4 == 0, PREC[prev], layer.level]


def score_folds(fold: np.ndarray, folds: int, g: np.ndarray, y: np.ndarray, x: np.ndarray, variants: dict[str, np.ndarray],
                owner: np.ndarray, only: int | None = None) -> dict[str, dict]:
    """Metrics of the sum model and of each labelling of the layer model, fold ``f`` predicted from
    the others (``only``: that fold alone is scored, trained on the rest)."""
    import lightgbm as lgb

    n = len(y)
    preds = {k: np.zeros(n) for k in ("sum", *variants)}
    conv_ms = {name: np.bincount(owner, lab, n) / 1000.0 for name, lab in variants.items()}  # each candidate's profiled conv sum
    scored = np.zeros(n, bool)
    for f in range(folds) if only is None else (only,):
        tr, te = fold != f, fold == f
        scored |= te
        ltr, lte = tr[owner], te[owner]
        preds["sum"][te] = g[te] @ _fit_sum(g[tr], y[tr])
        for name, lab in variants.items():
            model = lgb.train(LGB, lgb.Dataset(x[ltr], np.log(lab[ltr])), ROUNDS)
            conv_pred = np.bincount(owner[lte], np.exp(model.predict(x[lte])), n) / 1000.0
            coef = _fit_sum(np.c_[conv_ms[name], g][tr], y[tr])
            preds[name][te] = np.c_[conv_pred, g][te] @ coef
    return {k: metrics(p[scored], y[scored]) for k, p in preds.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="fbnet-224")
    ap.add_argument("--device", default="cpu-ort", help="an ONNX Runtime device (the profiler is ONNX Runtime's)")
    ap.add_argument("--runs", type=int, default=25, help="profiled runs per candidate")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3, help="fold assignments to average over")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    device = get_device(args.device)
    if device.backend != "onnxruntime":
        sys.exit(f"--device {args.device}: backend {device.backend}; expected an onnxruntime device (the profiler is ONNX Runtime's)")
    space = get_space(args.space)
    fam = get_family(space)
    here = fingerprint_id(device.fingerprint())
    table_path = predictor_dir(args.device, here, predictors_dir(), args.space) / "measurements.parquet"
    if not table_path.exists():
        sys.exit(f"no table of this host ({here}) for {args.space}: run `autocomp measure --space {args.space} --device {args.device} --n 150`")
    table = read_table(table_path)
    cands = candidates_of(table)
    y = table["median_ms"].to_numpy(float)
    from rich.progress import Progress

    rows, labels, owner, keep, conv_share, run_ms = [], [], [], [], [], []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp, Progress() as bar:
        task = bar.add_task("profile", total=len(cands))
        for i, c in enumerate(cands):
            nodes, run_us = profile(c, space, device, args.runs, Path(tmp))
            convs = [d for op, d in nodes if op in CONV_OPS]
            layers = fam.layer_table(c, space)
            conv_rows = [L for L in layers if L.op == "conv"]
            bar.advance(task)
            if len(convs) != len(conv_rows):  # a graph ONNX Runtime rewrote beyond one node per conv: left out
                continue
            keep.append(i)
            run_ms.append(run_us / 1000.0)
            conv_share.append(sum(convs) / sum(d for _, d in nodes))
            prev, j = "fp32", 0
            for L in layers:
                if L.op == "conv":
                    rows.append(layer_row(L, prev))
                    labels.append(convs[j])
                    owner.append(len(keep) - 1)
                    j += 1
                prev = L.precision
    profile_s = time.time() - t0
    keep = np.array(keep)
    cands, y = [cands[i] for i in keep], y[keep]
    x, lab, owner = np.array(rows, float), np.array(labels), np.array(owner)
    n = len(y)
    run_ms = np.array(run_ms)
    g = group_features(cands, space, block=nchwc_block(host_info(table)["fingerprint"]))
    variants = {"layers": lab, "layers_rescaled": lab * (y / run_ms)[owner]}
    results = []
    for seed in range(args.seeds):
        fold = np.random.default_rng(seed).permutation(n) % args.folds
        row = {"seed": seed, **score_folds(fold, args.folds, g, y, x, variants, owner)}
        results.append(row)
        print(f"seed {seed}: " + " | ".join(f"{k} {row[k]['within_10pct']:.3f} within ±10 % (RMSPE {row[k]['rmspe']:.4f}, Spearman "
                                           f"{row[k]['spearman']:.3f})" for k in ("sum", *variants)), flush=True)
    held = np.array([is_test_id(str(i)) for i in table["id"].to_numpy()[keep]])
    heldout = score_folds(held.astype(int), 2, g, y, x, variants, owner, only=1)
    print("held out (" + str(int(held.sum())) + " rows): " + " | ".join(f"{k} {heldout[k]['within_10pct']:.3f}" for k in ("sum", *variants)))
    mean = {k: {m: float(np.mean([r[k][m] for r in results])) for m in ("within_10pct", "rmspe", "spearman")} for k in ("sum", *variants)}
    print(f"mean over {args.seeds} fold draws: " + ", ".join(f"{k} {mean[k]['within_10pct']:.3f}" for k in mean) + " within ±10 %")
    out = args.out or Path(__file__).parent / "results" / f"predictor_layers_{args.space}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "space": args.space, "device": args.device, "table": str(table_path), "fingerprint_id": here,
        "fingerprint": host_info(table)["fingerprint"], "candidates": int(len(table)), "matched": int(n), "convs": int(len(lab)),
        "conv_share_of_node_time": float(np.median(conv_share)), "runs": args.runs, "folds": args.folds, "profile_s": round(profile_s, 1),
        "results": results, "mean": mean, "heldout": heldout, "n_heldout": int(held.sum()), "command": " ".join(sys.argv),
    }, indent=1, default=str))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
