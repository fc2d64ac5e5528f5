"""Read an exported ONNX file back and tell the effective precision of every Conv/Gemm/MatMul.

A node is ``int8`` when both its input activation and its weight come from DequantizeLinear
(TensorRT explicit quantization), ``fp16`` when its weight is a float16 tensor, else ``fp32``.
:func:`check_placement` compares that with a candidate's per-layer-group precision policy, so
tests and export verification can assert that "an int8 layer in the search is an int8 layer in the
exported ONNX" and that fp32 layers carry no Q/DQ.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto

from autocomp.space import Candidate

COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")
_PASS_THROUGH = ("Transpose", "Reshape", "Identity", "Unsqueeze", "Squeeze")


@dataclass(frozen=True)
class LayerPrecision:
    node: str  # ONNX node name (the exporter's module scope, e.g. /blocks/blocks.3/dw/dw.0/Conv)
    op: str
    precision: str  # int8 | fp16 | fp32
    input_dq: bool
    weight_dq: bool
    output_q: bool  # its output goes straight into QuantizeLinear (integer-fusable in ONNX Runtime)
    group: str | None  # candidate layer group: stem | blocks.<i> | head | classifier | None


def _load(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def group_of(node_name: str, owners: dict[str, str] | None = None) -> str | None:
    """The candidate layer group of an exported node name. ``owners``: module path -> group name
    (a family's layer groups, see :func:`owners_of`); None: autocomp.models.mbv2.Net naming."""
    if owners is not None:
        from autocomp.families import group_of_path, module_path

        return group_of_path(module_path(node_name), owners)
    m = re.search(r"/blocks(?:/|\.)(?:blocks\.)?(\d+)(?:/|$)", node_name)
    if m:
        return f"blocks.{m.group(1)}"
    for g in ("stem", "head", "classifier"):
        if node_name.startswith(f"/{g}/") or node_name.startswith(f"/{g}."):
            return g
    return None


def _fam(family, space):
    from autocomp.families import get_family

    if family is not None and not isinstance(family, str):
        return family
    return get_family(family or (space if space is not None else "mbv2"))


def owners_of(candidate: Candidate, family=None, space=None) -> dict[str, str]:
    """Module path -> layer group name, from the layer groups of the candidate's family."""
    return {m: g.name for g in _fam(family, space).groups(candidate, space) for m in g.modules}


def layer_precisions(model: str | Path | onnx.ModelProto, owners: dict[str, str] | None = None) -> list[LayerPrecision]:
    """Effective precision of every compute node, in graph order (``owners``: see :func:`group_of`)."""
    g = _load(model).graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    init_type = {t.name: t.data_type for t in g.initializer}
    for n in g.node:  # Constant nodes act as initializers
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    init_type[n.output[0]] = a.t.data_type

    def source(name: str) -> onnx.NodeProto | None:
        p = producer.get(name)
        while p is not None and p.op_type in _PASS_THROUGH:
            p = producer.get(p.input[0])
        return p

    def elem_type(name: str) -> int | None:
        if name in init_type:
            return init_type[name]
        p = source(name)
        if p is not None and p.op_type == "Cast":
            return next(a.i for a in p.attribute if a.name == "to")
        if p is not None and p.op_type in init_type:
            return None
        if p is not None:
            return init_type.get(p.input[0]) if p.op_type in _PASS_THROUGH else None
        return None

    out = []
    for n in g.node:
        if n.op_type not in COMPUTE_OPS or len(n.input) < 2:
            continue
        src_in, src_w = source(n.input[0]), source(n.input[1])
        in_dq = src_in is not None and src_in.op_type == "DequantizeLinear"
        w_dq = src_w is not None and src_w.op_type == "DequantizeLinear"
        if in_dq and w_dq:
            prec = "int8"
        elif elem_type(n.input[1]) == TensorProto.FLOAT16:
            prec = "fp16"
        else:
            prec = "fp32"
        out_q = any(c.op_type == "QuantizeLinear" for c in consumers.get(n.output[0], []))
        out.append(LayerPrecision(n.name, n.op_type, prec, in_dq, w_dq, out_q, group_of(n.name, owners)))
    return out


def policy(candidate: Candidate, family=None, space=None) -> dict[str, str]:
    """The precision a candidate asks of each layer group."""
    return _fam(family, space).policy(candidate, space)


def check_placement(model: str | Path | onnx.ModelProto, candidate: Candidate, family=None, space=None) -> list[str]:
    """Mismatches between the exported precisions and the candidate's policy (empty = exact):
    every int8 group's compute nodes have Q/DQ on input and weight, fp16 groups have fp16
    weights, and fp32/fp16 nodes have no DequantizeLinear on their input or weight."""
    want = policy(candidate, family, space)
    problems = []
    seen = set()
    for lp in layer_precisions(model, owners_of(candidate, family, space)):
        if lp.group is None:
            problems.append(f"{lp.node}: cannot tell which layer group it belongs to")
            continue
        seen.add(lp.group)
        exp = want.get(lp.group)
        if lp.precision != exp:
            problems.append(f"{lp.node}: {lp.precision}, policy says {exp} for {lp.group}")
        elif exp != "int8" and (lp.input_dq or lp.weight_dq):
            problems.append(f"{lp.node}: {exp} layer has a DequantizeLinear on its {'input' if lp.input_dq else 'weight'}")
    missing = sorted(set(want) - seen)
    if missing:
        problems.append(f"no compute node found for layer groups {missing}")
    return problems


def op_counts(model: str | Path | onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in _load(model).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts
