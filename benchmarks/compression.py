"""Compression benchmark: ONNX Runtime latency (device ``cpu-ort``: 1 thread, batch 1, median of
thread-CPU time) of one default-space network against channel keep ratio (1.0 / 0.75 / 0.5 / 0.25,
structured pruning of every block's hidden channels) and against precision (fp32 / fp16 / int8),
with the MNIST test accuracy of the same exported ONNX file beside each.

    nice python benchmarks/compression.py                 # medium subnet, trained briefly
    nice python benchmarks/compression.py --arch largest  # the largest subnet (slow to train on 2 cores)

Weights: ``--weights auto`` extracts the subnet from ``supernets/<space>.pt`` when that file and
``autocomp.models.supernet`` exist, else trains it briefly (``--train-steps``); pruned networks
are fine-tuned for ``--finetune-steps`` before they are scored. int8 is PTQ (calibrated on 4
training batches); ``int8`` is the default export (Q/DQ on inputs and weights: ORT runs
DequantizeLinear + float conv), ``int8-qlinear`` also quantizes int8->int8 outputs so that ONNX
Runtime fuses integer QLinearConv kernels (see autocomp/compress/quantize.py for why that is not
the default). Prints a table and, as its last stdout line, one JSON
object (also saved to benchmarks/results/compression.json).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import onnxruntime as ort
import torch

from autocomp.compress import inspect as qinspect
from autocomp.compress import prune, quantize
from autocomp.data import load_dataset
from autocomp.evaluate import train
from autocomp.export import to_onnx
from autocomp.measure import get_device
from autocomp.measure.onnxruntime import accuracy as ort_accuracy
from autocomp.models.mbv2 import build, count_params
from autocomp.space import Block, Candidate, Stage, get_space

KEEPS = (1.0, 0.75, 0.5, 0.25)
RESULTS = Path(__file__).parent / "results" / "compression.json"


def medium(space) -> Candidate:
    """A mid-size member of the default space (cheap enough to train on 2 CPU cores)."""
    widths = [sorted(st.width)[1] for st in space.stages]
    stages = tuple(Stage(w, tuple(Block(3, max(st.expand), 1.0, 1.0, "fp32") for _ in range(2))) for st, w in zip(space.stages, widths))
    return Candidate(space.name, sorted(space.stem.width)[1], "fp32", stages, sorted(space.head.width)[1], "fp32")


def with_policy(c: Candidate, keep: float = 1.0, precision: str = "fp32") -> Candidate:
    stages = tuple(replace(s, blocks=tuple(replace(b, keep=1.0 if b.expand == 1 else keep, precision=precision) for b in s.blocks)) for s in c.stages)
    return replace(c, stages=stages, stem_precision=precision, head_precision=precision)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def torch_accuracy(model, data, split) -> float:
    correct = total = 0
    with torch.no_grad():
        for x, y in data.batches(split, 500):
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default="mnist-mbv2")
    ap.add_argument("--arch", choices=["medium", "largest"], default="medium")
    ap.add_argument("--weights", choices=["auto", "train", "supernet"], default="auto")
    ap.add_argument("--train-steps", type=int, default=150)
    ap.add_argument("--finetune-steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--test-size", type=int, default=5000)
    ap.add_argument("--calibration", default="percentile", choices=quantize.CALIBRATION_METHODS)
    ap.add_argument("--device", default="cpu-ort")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    space = get_space(args.space)
    data = load_dataset("mnist")
    test = data.test.subset(args.test_size, seed=args.seed)
    base_c = space.largest() if args.arch == "largest" else medium(space)
    device = get_device(args.device)

    weights = "trained"
    model = None
    if args.weights in ("auto", "supernet"):
        try:
            from autocomp.models.supernet import default_checkpoint, extract

            ckpt = default_checkpoint(space.name)
            if ckpt is not None:
                model = extract(base_c, space, ckpt, data=data, bn_batches=4)
                weights = f"supernet:{ckpt.name}"
        except Exception as e:  # the supernet is optional here
            if args.weights == "supernet":
                raise
            log(f"supernet unavailable ({type(e).__name__}: {e}); training instead")
    if model is None:
        log(f"training {base_c.summary()} for {args.train_steps} steps")
        model = train(build(base_c, space, data.num_classes), data, args.train_steps, args.batch_size, 1e-2, args.seed)
    model.eval()
    calib = [x for x, _ in data.batches(data.train.subset(4 * 128, seed=args.seed), 128)]

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:

        def score(name: str, m, cand: Candidate, precision: str, **extra) -> dict:
            path = to_onnx(m, Path(tmp) / f"{name}.onnx", data.input_shape)
            problems = qinspect.check_placement(path, cand)
            if problems:
                raise SystemExit(f"{name}: exported precisions do not match the policy: {problems[:3]}")
            lps = qinspect.layer_precisions(path)
            extra["int8_convs"] = sum(lp.precision == "int8" for lp in lps)
            extra["int8_convs_with_int8_output"] = sum(lp.precision == "int8" and lp.output_q for lp in lps)
            meas = device.measure(path, precision)
            acc = ort_accuracy(path, data.batches(test, 500))
            row = {"name": name, "precision": precision, "params": count_params(m), "onnx_bytes": path.stat().st_size,
                   "median_ms": round(meas.median_ms, 4), "p90_ms": round(meas.p90_ms, 4), "cv": round(meas.cv, 3),
                   "flagged": meas.flagged, "accuracy": round(acc, 4), **extra}
            log(f"{name}: {row['median_ms']:.3f} ms (cv {row['cv']:.2f}), acc {acc:.4f}")
            rows.append(row)
            return row

        # ---- channel keep ratio (fp32)
        for keep in KEEPS:
            cand = with_policy(base_c, keep)
            m = prune.apply(copy.deepcopy(model), cand, "l1")
            if keep < 1.0 and args.finetune_steps > 0:
                m = train(m, data, args.finetune_steps, args.batch_size, 1e-3, args.seed + 1)
            score(f"keep{keep}", m.eval(), cand, "fp32", keep=keep)

        # ---- precision (keep 1.0)
        for prec in ("fp16", "int8"):
            cand = with_policy(base_c, 1.0, prec)
            m = quantize.apply(copy.deepcopy(model), cand, calib, method=args.calibration)
            extra = {"keep": 1.0}
            if prec == "int8":
                extra["torch_fakequant_accuracy"] = round(torch_accuracy(m, data, test), 4)
            r = score(prec, m, cand, prec, **extra)
            if prec == "int8":
                r["ort_vs_torch_gap"] = round(abs(r["accuracy"] - r["torch_fakequant_accuracy"]), 4)
        cand = with_policy(base_c, 1.0, "int8")
        m = quantize.apply(copy.deepcopy(model), cand, calib, method=args.calibration, int8_export="fused")
        r = score("int8-qlinear", m, cand, "int8", keep=1.0, torch_fakequant_accuracy=round(torch_accuracy(m, data, test), 4))
        r["ort_vs_torch_gap"] = round(abs(r["accuracy"] - r["torch_fakequant_accuracy"]), 4)
        # int8 on top of keep 0.5
        cand = with_policy(base_c, 0.5, "int8")
        m = prune.apply(copy.deepcopy(model), cand, "l1")
        if args.finetune_steps > 0:
            m = train(m, data, args.finetune_steps, args.batch_size, 1e-3, args.seed + 1)
        m = quantize.apply(m.eval(), cand, calib, method=args.calibration)
        score("keep0.5+int8", m, cand, "int8", keep=0.5)

    by = {r["name"]: r for r in rows}
    fp32 = by["keep1.0"]["median_ms"]
    for r in rows:
        r["speedup"] = round(fp32 / r["median_ms"], 3)

    print(f"\n{space.name} {base_c.summary()} weights={weights}; device {args.device} "
          f"(onnxruntime {ort.__version__}, 1 thread, batch 1, median)")
    print(f"{'variant':<16}{'prec':<6}{'params':>9}{'median ms':>11}{'p90 ms':>9}{'cv':>6}{'speedup':>9}{'test acc':>10}")
    for r in rows:
        print(f"{r['name']:<16}{r['precision']:<6}{r['params']:>9}{r['median_ms']:>11.3f}{r['p90_ms']:>9.3f}{r['cv']:>6.2f}"
              f"{r['speedup']:>9.2f}{r['accuracy']:>10.4f}")
    int8 = by["int8"]
    summary = {
        "schema_version": 1,
        "benchmark": "compression",
        "space": space.name,
        "arch": args.arch,
        "candidate": base_c.summary(),
        "weights": weights,
        "device": args.device,
        "backend": f"onnxruntime {ort.__version__}",
        "threads": 1,
        "batch": 1,
        "statistic": "median",
        "test_images": len(test),
        "calibration": args.calibration,
        "train_steps": args.train_steps if weights == "trained" else 0,
        "finetune_steps": args.finetune_steps,
        "speedup_at_keep_0.75": by["keep0.75"]["speedup"],
        "speedup_at_keep_0.5": by["keep0.5"]["speedup"],
        "speedup_at_keep_0.25": by["keep0.25"]["speedup"],
        "fp32_ms": fp32,
        "fp16_ms": by["fp16"]["median_ms"],
        "int8_ms": int8["median_ms"],
        "int8_qlinear_ms": by["int8-qlinear"]["median_ms"],
        "int8_qlinear_ort_vs_torch_gap": by["int8-qlinear"]["ort_vs_torch_gap"],
        "speedup_int8": int8["speedup"],
        "speedup_fp16": by["fp16"]["speedup"],
        "accuracy_fp32": by["keep1.0"]["accuracy"],
        "accuracy_fp16": by["fp16"]["accuracy"],
        "accuracy_int8_ort": int8["accuracy"],
        "accuracy_int8_torch": int8["torch_fakequant_accuracy"],
        "int8_ort_vs_torch_gap": int8["ort_vs_torch_gap"],
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    return summary


if __name__ == "__main__":
    main()
