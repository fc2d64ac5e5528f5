"""ONNX export. int8 layers carry QuantizeLinear/DequantizeLinear, fp16 layers are fp16 in the graph.

A model with int8 layers records its export scheme in the ONNX metadata (``autocomp.int8_export``:
``fused``, ``fused-7bit`` or ``dequant``; ``autocomp.int8_weight_qmax``: 127, or 63 with
reduce_range; see :mod:`autocomp.compress.quantize`). In the ``fused`` scheme the weights are stored
as int8 initializers read by DequantizeLinear (the QuantizeLinear of each float weight folded, with
the ONNX rounding), the form integer runtimes expect.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

OPSET = 17


def to_onnx(model: nn.Module, path: Path, input_shape: tuple[int, int, int], dynamic_batch: bool = True) -> Path:
    """Export ``model`` (eval mode) to ``path`` with input ``input`` and output ``logits`` (a
    channels-last model, as scoring makes it, is exported in the default layout)."""
    model.eval().to(memory_format=torch.contiguous_format)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(1, *input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model, (x,), str(path), dynamo=False, opset_version=OPSET,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None,
        )
    unshare_initializers(path)
    from autocomp.compress.quantize import int8_metadata

    meta = int8_metadata(model)
    if meta:
        finish_int8(path, meta, fold_weights="fused" in meta["autocomp.int8_export"])
    return path


def finish_int8(path: Path, metadata: dict[str, str], fold_weights: bool) -> int:
    """Write ``metadata`` into the ONNX file and, with ``fold_weights``, fold the QuantizeLinear of
    every constant float weight into an int8 initializer; returns how many were folded."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    consts = {i.name: i for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = n.attribute[0].t
    readers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    keep, folded = [], 0
    for n in g.node:
        if (fold_weights and n.op_type == "QuantizeLinear" and len(n.input) == 3 and n.input[0] in consts
                and n.input[1] in consts and n.input[2] in consts):
            w = numpy_helper.to_array(consts[n.input[0]]).astype(np.float32)
            scale = numpy_helper.to_array(consts[n.input[1]]).astype(np.float32)
            zp = numpy_helper.to_array(consts[n.input[2]])
            if scale.ndim == 1 and scale.size > 1:  # per axis
                axis = next((a.i for a in n.attribute if a.name == "axis"), 1) % w.ndim
                shape = [1] * w.ndim
                shape[axis] = -1
                scale, zp = scale.reshape(shape), zp.reshape(shape)
            info = np.iinfo(zp.dtype)
            q = np.clip(np.rint(w / scale) + zp.astype(np.int32), info.min, info.max).astype(zp.dtype)
            g.initializer.append(numpy_helper.from_array(q, n.output[0]))
            for i in n.input:
                readers[i] -= 1
            folded += 1
            continue
        keep.append(n)
    if folded:
        del g.node[:]
        g.node.extend(keep)
        unused = [i for i in g.initializer if readers.get(i.name, 1) <= 0 and i.name not in {o.name for o in g.output}]
        for i in unused:
            g.initializer.remove(i)
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **metadata})
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return folded


def int8_export_of(path: Path) -> str | None:
    """The int8 export scheme recorded in an exported ONNX file (None: no int8 layers, or not ours)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((p.value for p in model.metadata_props if p.key == "autocomp.int8_export"), None)


def unshare_initializers(path: Path) -> int:
    """Give every weight its own initializer again; returns how many were restored.

    The TorchScript exporter stores bit-identical tensors once and feeds the other users through
    ``Identity`` nodes. Identical tensors happen with untrained weights (every BatchNorm folded from
    default statistics gives the same zero bias), rarely with trained ones. ONNX Runtime then keeps
    the fp16 layers that consume a shared tensor as fp16 Conv + inserted Casts in NCHW instead of
    fusing them into its NCHWc fp32 kernels: the same architecture measured 10.9 ms with shared
    initializers and 3.8 ms without. One graph shape per architecture, whatever the weights.
    """
    import onnx

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    keep, restored = [], 0
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            model.graph.initializer.append(copy)
            restored += 1
        else:
            keep.append(node)
    if restored:
        del model.graph.node[:]
        model.graph.node.extend(keep)
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        kept_inits = [i for i in model.graph.initializer if i.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept_inits)
        tmp = path.with_name(path.name + ".tmp")
        onnx.save(model, str(tmp))
        tmp.replace(path)
    return restored


def check_onnx(path: Path) -> int:
    """Run onnx.checker (full check, with shape inference); returns the model's default-domain opset."""
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


@torch.no_grad()
def compare_outputs(model: nn.Module, onnx_path: Path, x: torch.Tensor) -> tuple[float, float]:
    """(largest absolute logit difference, share of identical top-1 predictions) between PyTorch and
    ONNX Runtime on ``x`` (fp16 layers differ by float rounding; int8 layers agree up to rounding:
    ORT runs the QDQ graph as DequantizeLinear + float ops, or, fused, as integer kernels whose
    int32 sums are exact; see autocomp.measure.onnxruntime)."""
    from autocomp.measure.onnxruntime import session

    model.eval()
    ref = model(x).float().numpy()
    sess = session(onnx_path)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return float(abs(ref - got).max()), float((ref.argmax(1) == got.argmax(1)).mean())


def trtexec_script(onnx_name: str, precision: str, policy: dict[str, str] | None = None) -> str:
    """A shell script that builds and times the engine on a Jetson the way the predictor's data was
    taken. The TensorRT version is read from the target's trtexec banner when the script runs: from
    TensorRT 10 on (or when the banner says nothing) a strongly typed build; before 10 the weak-typing
    flags with the ONNX's per-layer precisions obeyed (``policy``: {node: precision}, from
    :func:`autocomp.measure.trtexec.onnx_policy`), since ``--stronglyTyped`` does not exist there."""
    import shlex

    from autocomp.measure.trtexec import build_command

    def line(version: str | None) -> str:
        cmd = build_command(onnx_name, precision, trt_version=version, policy=policy, layer_info="layers.json",
                            save_engine="model.engine")
        return " ".join(shlex.quote(c) for c in cmd) + " | tee trtexec.log"

    return "\n".join([
        "#!/usr/bin/env bash",
        "# Build and time the TensorRT engine on the target (Jetson: lock clocks first).",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        "if command -v nvpmodel >/dev/null; then sudo nvpmodel -m 0 && sudo jetson_clocks; fi",
        "# trtexec's banner: [TensorRT v100300] is 10.3.0, [TensorRT v8601] is 8.6.1",
        "v=$(trtexec --help 2>&1 | sed -n 's/.*\\[TensorRT v\\([0-9]*\\)\\].*/\\1/p' | head -n 1 || true)",
        'if [ -n "$v" ] && [ "${#v}" -lt 6 ]; then',
        "  # TensorRT < 10: weak typing, every fp32/fp16 layer constrained to its precision",
        "  " + line("8"),
        "else",
        "  # TensorRT >= 10: strongly typed, the ONNX's types and Q/DQ decide every layer's precision",
        "  " + line(None),
        "fi",
        "",
    ])
