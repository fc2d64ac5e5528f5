"""What each precision is worth per device: latency of fp32 / fp16 / int8 for whole networks and
per layer type, on ``cpu-ort`` and ``cpu-openvino`` (issue 18, item 4), so that the search's
precision dimension is measured, not assumed.

    nice python benchmarks/precision_latency.py                       # both devices, this host
    nice python benchmarks/precision_latency.py --devices cpu-openvino --images 2000

Whole network: the largest member of the default space with supernet weights (BatchNorm
recalibrated), every layer group at one precision, exported through the compress chain:

* ``fp32``, ``fp16`` (fp16 layers, casts at the group borders);
* ``int8-dequant`` — the export before issue 18: Q/DQ on every int8 layer's input activation and weight;
* ``int8-fused`` (``int8-fused-7bit`` on hosts without int8 dot products) — the outputs between
  int8 layers quantized too and the weights stored as int8, the graph integer engines fuse into
  int8 convolutions with int8 outputs (ONNX Runtime's QLinearConv, OpenVINO's low-precision pipeline);
* ``int8`` — what the search exports for the device: the variant of its int8 export scheme
  (``Device.int8_scheme``, shown by ``autocomp devices``).

Each is measured with the device's own protocol (devices/<name>.yaml) and its top-1 agreement with
the fp32 network is taken on ``--images`` MNIST test images, computed by the device's runtime.

Layer types: stacks of six identical layers (1x1 conv 64->64 at 14x14, 3x3 depthwise 64 at 14x14,
3x3 conv 32->32 at 14x14, fully connected 256->256) at fp32, fp16 and int8 (exported as the device's
int8 scheme, random calibration). A layer type whose int8 is slower than its fp32 is listed per device.

Prints a table and, as its last stdout line, one JSON object (also saved to
benchmarks/results/precision_latency.json); every figure carries the device's fingerprint id.
``--save-facts`` also writes each device's summary as ``precision.json`` beside its predictor
(``predictors/<device>/<fingerprint id>/``), where ``autocomp devices`` and the report read it.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autocomp.compress import quantize
from autocomp.data import load_dataset
from autocomp.evaluate import EvalSettings, calibration_batches, pruned_model
from autocomp.export import to_onnx
from autocomp.measure import get_device
from autocomp.measure.base import Int8Scheme
from autocomp.measure.fingerprint import fingerprint_id
from autocomp.space import get_space

RESULTS = Path(__file__).parent / "results" / "precision_latency.json"
VARIANTS = ("fp32", "fp16", "int8-dequant", "int8-fused", "int8")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def predict(device_name: str, path: Path, x: np.ndarray) -> np.ndarray:
    """Top-1 of the exported model on ``x`` run by the device's runtime."""
    backend = get_device(device_name).backend
    if backend == "openvino":
        from autocomp.measure import openvino

        return openvino.run(path, x).argmax(1)
    from autocomp.measure.onnxruntime import session

    sess = session(path)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0].argmax(1)


def network_exports(space_name: str, data, out: Path, schemes: list[Int8Scheme]) -> dict[str, Path]:
    """The largest member of the space at each uniform precision, exported (trained weights); int8
    once per scheme (``int8-<label>``: dequant, fused and the devices' own)."""
    space = get_space(space_name)
    settings = EvalSettings()
    calib = calibration_batches(data, settings)
    base = pruned_model(space.largest("fp32"), space, data, settings)
    paths = {}
    for variant in ("fp32", "fp16"):
        model = quantize.apply(copy.deepcopy(base), space.largest(variant), None)
        paths[variant] = to_onnx(model, out / f"largest-{variant}.onnx", data.input_shape)
    for scheme in {Int8Scheme(), Int8Scheme("fused"), *schemes}:
        model = quantize.apply(copy.deepcopy(base), space.largest("int8"), calib, **scheme.compress_kwargs())
        paths[f"int8-{scheme.label}"] = to_onnx(model, out / f"largest-int8-{scheme.label}.onnx", data.input_shape)
    return paths


class _Stack(nn.Module):
    def __init__(self, layers: list[nn.Module], flatten: bool = False):
        super().__init__()
        self.flatten = flatten
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1) if self.flatten else x)


def layer_models() -> dict[str, tuple[nn.Module, tuple[int, int, int]]]:
    """Six identical layers of one type each (conv + BN + ReLU; the fully connected one with ReLU)."""
    torch.manual_seed(0)

    def conv(cin: int, cout: int, k: int, groups: int = 1) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    return {
        "conv1x1": (_Stack([conv(64, 64, 1) for _ in range(6)]), (64, 14, 14)),
        "dw3x3": (_Stack([conv(64, 64, 3, groups=64) for _ in range(6)]), (64, 14, 14)),
        "conv3x3": (_Stack([conv(32, 32, 3) for _ in range(6)]), (32, 14, 14)),
        "linear": (_Stack([nn.Sequential(nn.Linear(256, 256), nn.ReLU()) for _ in range(6)], flatten=True), (256, 1, 1)),
    }


def layer_exports(out: Path, scheme: Int8Scheme) -> dict[str, dict[str, Path]]:
    paths: dict[str, dict[str, Path]] = {}
    for name, (model, shape) in layer_models().items():
        model.eval()
        calib = [torch.randn(16, *shape) for _ in range(2)]
        for prec in ("fp32", "fp16", "int8"):
            m = copy.deepcopy(model)
            if prec == "int8":
                m = quantize.quantize_model(m, calib, **scheme.compress_kwargs())
            elif prec == "fp16":
                m.layers = nn.Sequential(*[quantize.Half(layer) for layer in m.layers])
            paths.setdefault(name, {})[prec] = to_onnx(m, out / f"{name}-{prec}-{scheme.label}.onnx", shape)
    return paths


def measure(device_name: str, path: Path, precision: str) -> dict:
    m = get_device(device_name).measure(path, precision)
    notes = json.loads(m.notes)
    return {"median_ms": round(m.median_ms, 5), "cv": round(m.cv, 4), "flagged": m.flagged, "statistic": m.statistic,
            "fingerprint_id": m.fingerprint_id,
            "runtime_precision": notes.get("runtime_precision"), "precision_problems": notes.get("precision_problems")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", nargs="+", default=["cpu-ort", "cpu-openvino"])
    ap.add_argument("--space", default="mnist-mbv2")
    ap.add_argument("--images", type=int, default=2000, help="MNIST test images for the top-1 agreement")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--save-facts", action="store_true", help="write precision.json beside each device's predictor")
    args = ap.parse_args()
    data = load_dataset("mnist")
    test = data.test.subset(args.images, seed=0)
    xs = [x.numpy() for x, _ in data.batches(test, 500)]
    result: dict = {"space": args.space, "images": args.images, "devices": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fps = {dev: get_device(dev).fingerprint() for dev in args.devices}
        schemes = {dev: get_device(dev).int8_scheme(fps[dev]) for dev in args.devices}
        log("exporting the largest member at fp32 / fp16 / int8 (dequant, fused, the devices' schemes)")
        all_nets = network_exports(args.space, data, tmp, list(schemes.values()))
        for dev in args.devices:
            fp, scheme = fps[dev], schemes[dev]
            # the device's own int8 ("int8") is the export of its scheme; dequant and fused beside it
            nets = {v: all_nets[v] for v in ("fp32", "fp16", "int8-dequant", "int8-fused")}
            nets["int8"] = all_nets[f"int8-{scheme.label}"]
            layers = layer_exports(tmp, scheme)
            entry: dict = {"fingerprint_id": fingerprint_id(fp), "fingerprint": fp, "int8_export": scheme.label,
                           "network": {}, "layers": {}}
            ref = np.concatenate([predict(dev, nets["fp32"], x) for x in xs])
            for variant, path in nets.items():
                log(f"{dev}: largest {variant}")
                r = measure(dev, path, variant.split("-")[0])
                top1 = np.concatenate([predict(dev, path, x) for x in xs])
                r["top1_agreement_vs_fp32"] = round(float((top1 == ref).mean()), 5)
                entry["network"][variant] = r
            for name, by_prec in layers.items():
                for prec, path in by_prec.items():
                    log(f"{dev}: {name} {prec}")
                    entry["layers"].setdefault(name, {})[prec] = measure(dev, path, prec)
            net = entry["network"]
            entry["summary"] = {
                "int8_export": scheme.label,  # the scheme of "int8" (what the search exports for this device)
                "int8_over_fp32": round(net["int8"]["median_ms"] / net["fp32"]["median_ms"], 3),
                "int8_fused_over_fp32": round(net["int8-fused"]["median_ms"] / net["fp32"]["median_ms"], 3),
                "int8_dequant_over_int8_fused": round(net["int8-dequant"]["median_ms"] / net["int8-fused"]["median_ms"], 3),
                "fp16_over_fp32": round(net["fp16"]["median_ms"] / net["fp32"]["median_ms"], 3),
                "int8_slower_than_fp32": sorted(n for n, v in entry["layers"].items() if v["int8"]["median_ms"] > v["fp32"]["median_ms"]),
            }
            result["devices"][dev] = entry
    print(f"{'device':14} {'model':12} " + " ".join(f"{p:>11}" for p in VARIANTS))
    for dev, entry in result["devices"].items():
        net = entry["network"]
        print(f"{dev:14} {'largest':12} " + " ".join(f"{net[v]['median_ms']:>8.3f} ms" for v in VARIANTS))
        print(f"{'':14} {'top-1 agr.':12} " + " ".join(f"{net[v]['top1_agreement_vs_fp32']:>11.4f}" for v in VARIANTS))
        for name, v in entry["layers"].items():
            print(f"{'':14} {name:12} " + " ".join(f"{v[p]['median_ms']:>8.3f} ms" if p in v else f"{'':>11}" for p in VARIANTS))
        print(f"{'':14} {entry['fingerprint_id']}: {entry['summary']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    saved = dict(result)
    if args.out.exists():  # a run of some devices keeps the other devices' entries of an earlier run
        earlier = json.loads(args.out.read_text()).get("devices", {})
        saved["devices"] = {**{d: e for d, e in earlier.items() if d not in result["devices"]}, **result["devices"]}
    args.out.write_text(json.dumps(saved, indent=1))
    if args.save_facts:
        from autocomp.predictor import PRECISION_NAME, predictor_dir

        for dev, entry in result["devices"].items():
            folder = predictor_dir(dev, entry["fingerprint_id"])
            folder.mkdir(parents=True, exist_ok=True)
            (folder / PRECISION_NAME).write_text(json.dumps({**entry["summary"], "source": "benchmarks/precision_latency.py",
                                                             "space": args.space}, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
