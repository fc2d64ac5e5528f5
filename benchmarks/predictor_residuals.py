"""What the latency predictor's residuals on a measurement table are made of (no timing: it reads the
table, fits, and optionally exports and optimises the table's models to read their graphs).

* the ``sum`` model (non-negative least squares on the group features, relative error) fit on every
  row (in-sample) and 5-fold cross-validated: share within ±10 %, RMSPE, Spearman;
* the residuals ``r = log(measured / in-sample prediction)``: their correlation with the prediction
  (0 for residuals independent of what the features describe) and between rows measured one after
  the other (the candidates are independent random samples, so a correlation there is the host's
  speed drifting during the campaign, not structure);
* ``--graph``: every row's model exported the way the campaign exported it (random weights, the
  device's int8 scheme) and optimised by ONNX Runtime with autocomp's session settings; features
  read from the optimised graph (MACs per kernel implementation: NCHWc / plain / fused / QLinearConv
  and per kind; elements through every Transpose, Reorder, Q/DQ, Cast, BatchNormalization, Relu,
  Add; node counts) and fit the same way. If the graph's own description of the work does not fit
  the table better than the features do, what is left is not in the graph.

    python benchmarks/predictor_residuals.py --root predictors/spaces/fbnet-224 --device cpu-ort --graph --save
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from autocomp.predictor.features import group_features, nchwc_block
from autocomp.predictor.model import _fit_sum, candidates_of, host_info, metrics
from autocomp.space import get_space

SHAPE_OPS = ("Shape", "Gather", "Unsqueeze", "Concat", "Div", "Constant")


def cross_validated(x: np.ndarray, y: np.ndarray, folds: int = 5) -> dict:
    fold = np.random.default_rng(0).permutation(len(y)) % folds
    pred = np.zeros_like(y)
    for f in range(folds):
        tr, te = fold != f, fold == f
        pred[te] = x[te] @ _fit_sum(x[tr], y[tr])
    return metrics(pred, y)


def short(m: dict) -> dict:
    return {k: round(m[k], 4) for k in ("within_10pct", "rmspe", "spearman")}


def residuals(x: np.ndarray, y: np.ndarray, order: np.ndarray) -> dict:
    p = x @ _fit_sum(x, y)
    r = np.log(y / p)[order]
    nb = np.array([np.mean(np.r_[r[max(0, i - 2):i], r[i + 1:i + 3]]) for i in range(len(r))])
    return {"in_sample": short(metrics(p, y)), "cross_validated": short(cross_validated(x, y)), "residual_std": round(float(r.std()), 4),
            "corr_residual_log_prediction": round(float(np.corrcoef(np.log(y / p), np.log(p))[0, 1]), 4),
            "lag1_autocorr_in_measurement_order": round(float(np.corrcoef(r[:-1], r[1:])[0, 1]), 4),
            "corr_residual_mean_of_2_neighbours_each_side": round(float(np.corrcoef(r, nb)[0, 1]), 4)}


def graph_features(path: Path, input_shape: tuple[int, int, int]) -> dict[str, float]:
    """Work per node kind of an ONNX Runtime-optimised graph (channels x height x width followed
    through the nodes; a conv's output from its weight and stride)."""
    import onnx

    m = onnx.load(str(path))
    init = {i.name: list(i.dims) for i in m.graph.initializer}
    shape: dict[str, tuple | None] = {m.graph.input[0].name: input_shape}
    avail = set(init) | {i.name for i in m.graph.input} | {""}
    nodes, order = list(m.graph.node), []
    while nodes:  # an optimised graph is not always stored in topological order
        rest = []
        for n in nodes:
            if all(x in avail for x in n.input):
                order.append(n)
                avail.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(nodes):
            raise RuntimeError(f"{path}: graph has a cycle")
        nodes = rest
    f: dict[str, float] = defaultdict(float)
    for n in order:
        if n.op_type == "DequantizeLinear" and n.input[0] in init:  # a weight dequantized at run time
            init[n.output[0]] = init[n.input[0]]
            f["n:weight_DequantizeLinear"] += 1
            continue
        key = n.op_type + ("@" + n.domain.split(".")[-1] if n.domain else "")
        src = next((shape.get(x) for x in n.input if shape.get(x) is not None), None)
        at = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type in ("Conv", "FusedConv", "QLinearConv"):
            w = init[n.input[3] if n.op_type == "QLinearConv" else n.input[1]]
            c, h, wd = src
            s = at.get("strides", [1, 1])[0]
            out = (w[0], math.ceil(h / s), math.ceil(wd / s))
            g = at.get("group", 1)
            kind = "dw" if g == c and g > 1 else "grouped" if g > 1 else "pw" if w[2] == 1 else "full"
            f[f"macs:{key}:{kind}"] += w[0] * w[1] * w[2] * w[3] * out[1] * out[2]
            f[f"n:{key}:{kind}"] += 1
            shape.update({o: out for o in n.output})
            continue
        f[f"n:{key}"] += 1
        if n.op_type in SHAPE_OPS or src is None:
            shape.update({o: None for o in n.output})
            continue
        f[f"elements:{key}"] += math.prod(src)
        out = (src[0], 1, 1) if n.op_type in ("GlobalAveragePool", "Gemm") else src
        shape.update({o: out for o in n.output})
    return dict(f)


def export_optimised(table, space, device_name: str, folder: Path) -> list[Path]:
    import onnxruntime as ort

    from autocomp.measure import get_device
    from autocomp.measure.base import Int8Scheme
    from autocomp.measure.onnxruntime import disabled_optimizers
    from autocomp.predictor.campaign import export_candidate

    scheme = Int8Scheme.from_label(str(table["int8_export"].mode().iloc[0])) if "int8_export" in table else get_device(device_name).int8_scheme()
    out = []
    for cid, cand in zip(table["id"], candidates_of(table)):
        raw, opt = folder / f"{cid}.onnx", folder / f"{cid}.opt.onnx"
        export_candidate(cand, space, raw, int8=scheme)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads, so.log_severity_level, so.optimized_model_filepath = 1, 3, str(opt)
        ort.InferenceSession(str(raw), so, providers=["CPUExecutionProvider"], disabled_optimizers=disabled_optimizers(raw))
        out.append(opt)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="predictors")
    ap.add_argument("--device", default="cpu-ort")
    ap.add_argument("--graph", action="store_true", help="also fit features read from the ORT-optimised graphs (exports every row)")
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args()
    import pandas as pd

    tables = sorted(Path(args.root, args.device).glob("*/measurements.parquet"))
    if len(tables) != 1:
        raise SystemExit(f"expected one table under {args.root}/{args.device}, found {len(tables)}")
    table = pd.read_parquet(tables[0])
    space = get_space(str(table["space"].iloc[0]))
    y = table["median_ms"].to_numpy(float)
    order = np.argsort(pd.to_datetime(table["measured_at"]).map(lambda t: t.timestamp()).to_numpy(), kind="stable")
    g = group_features(candidates_of(table), space, block=nchwc_block(host_info(table)["fingerprint"]))
    res = {"command": "python benchmarks/predictor_residuals.py " + " ".join(f"--{k} {v}" for k, v in (("root", args.root), ("device", args.device)))
           + (" --graph" if args.graph else ""), "table": str(tables[0]), "rows": len(y), "space": space.name,
           "group_features": {"n_features": int(g.shape[1]), **residuals(g, y, order)}}
    if args.graph:
        with tempfile.TemporaryDirectory() as tmp:
            paths = export_optimised(table, space, args.device, Path(tmp))
            gf = pd.DataFrame([graph_features(p, (space.input.channels, space.input.height, space.input.width)) for p in paths]).fillna(0.0)
        x = gf.to_numpy(float)
        x = np.column_stack([x / np.maximum(np.abs(x).max(0), 1.0), np.ones(len(y))])
        res["graph_features"] = {"n_features": int(x.shape[1]), "columns": list(gf.columns), **residuals(x, y, order)}
    print(json.dumps(res, indent=1))
    if args.save:
        name = f"predictor_residuals_{space.name}_{args.device}.json"
        Path("benchmarks/results", name).write_text(json.dumps(res, indent=1))
        print(f"saved benchmarks/results/{name}")


if __name__ == "__main__":
    main()
