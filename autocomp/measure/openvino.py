"""OpenVINO CPU backend (``pip install openvino``): the exported ONNX, read by OpenVINO's ONNX
frontend, compiled for this CPU and timed like the ONNX Runtime backend.

Conversion. ``Core.read_model`` reads the exported ONNX directly (no conversion step, no
``ovc``/``convert_model``); the graph is reshaped to a static batch, as a deployment compiles it.
int8 layers reach OpenVINO as QuantizeLinear/DequantizeLinear pairs: its frontend turns them into
FakeQuantize and its low-precision transformations fuse them into integer (u8/i8) convolutions
where the CPU has integer kernels. fp16 layers keep their fp16 weights; the CPU plugin computes them
in f32 unless the CPU has native fp16 arithmetic.

Protocol (documented, fixed): ``PERFORMANCE_HINT=LATENCY``, ``NUM_STREAMS=1``,
``INFERENCE_NUM_THREADS=threads`` (1, as ``cpu-ort``), ``INFERENCE_PRECISION_HINT=f32`` (otherwise
OpenVINO runs fp32 layers in bf16 on CPUs that have it, and the policy's fp32 would not be what
runs), ``ENABLE_CPU_PINNING=NO`` (the OS schedules the thread, as for ONNX Runtime), batch 1, one
synchronous infer request whose input tensor (fixed, random) is set once. With one thread OpenVINO
computes on the calling thread, so the ``thread_cpu`` clock and the reference protocol of :mod:`autocomp.measure.reference`
(candidate blocks framed by the ONNX Runtime reference model, only normal-phase blocks count) apply
as for ``cpu-ort``; the statistic is the median.

Precision check: the compiled model's runtime graph tells each convolution's / matmul's runtime
precision and the original ONNX nodes it was fused from; an int8 policy node that does not run as
an integer kernel, or an fp32 node that runs in lower precision, flags the measurement and is listed
in its notes. fp16 nodes computing in f32 are counted, not flagged (the CPU's arithmetic).
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from autocomp.measure import fingerprint as fingerprint_mod
from autocomp.measure.base import Measurement

CV_THRESHOLD = 0.15  # as the ONNX Runtime CPU backend
COMPUTE_TYPES = ("Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Deconvolution")
_PRECISION = {"u8": "int8", "i8": "int8", "f32": "fp32", "f16": "fp16", "bf16": "bf16"}


def _ov() -> Any:
    try:
        import openvino as ov
    except ImportError:
        raise RuntimeError("the 'openvino' backend needs the OpenVINO runtime (pip install openvino)") from None
    return ov


@functools.lru_cache(maxsize=1)
def core() -> Any:
    return _ov().Core()


def version() -> str:
    """The OpenVINO release (``2026.4.1``; the build suffix dropped)."""
    return str(_ov().__version__).split("-")[0]


def config(threads: int = 1) -> dict[str, str]:
    """The compile properties of the protocol (module docstring)."""
    return {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(int(threads)),
            "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": "NO"}


def compile_model(onnx_path: Path, threads: int = 1, batch: int | None = 1) -> Any:
    """The exported ONNX compiled for this CPU (static ``batch``; None keeps the dynamic batch)."""
    model = core().read_model(str(onnx_path))
    if batch is not None:
        model.reshape({inp: [batch, *list(inp.get_partial_shape())[1:]] for inp in model.inputs})
    return core().compile_model(model, "CPU", config(threads))


def fingerprint(threads: int = 1, batch: int = 1, **_options: Any) -> dict:
    """This host as OpenVINO sees it (:mod:`autocomp.measure.fingerprint`)."""
    return fingerprint_mod.cpu("openvino", version(), threads, batch)


def run_timer(compiled: Any, batch: int = 1, clock: str = "wall") -> Callable[[], float]:
    """A callable that runs ``compiled`` once (synchronous request, fixed random input) and returns
    the time in ms."""
    if clock not in ("wall", "thread_cpu"):
        raise ValueError(f"unknown clock {clock!r}; expected 'wall' or 'thread_cpu'")
    now = time.perf_counter_ns if clock == "wall" else time.thread_time_ns
    request = compiled.create_infer_request()
    shape = [batch if d.is_dynamic else d.get_length() for d in compiled.inputs[0].get_partial_shape()]
    # the input tensor is set once, as a deployment does: a run is the inference, not a numpy copy
    request.set_input_tensor(_ov().Tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32)))

    def timed() -> float:
        t0 = now()
        request.infer()
        return (now() - t0) / 1e6

    return timed


# --------------------------------------------------------------------------- runtime precision


def runtime_layers(compiled: Any) -> list[tuple[str, str, list[str]]]:
    """(layer type, runtime precision, original ONNX node names) of each compute layer of the compiled
    model, in execution order. ``Subgraph`` layers (OpenVINO's JIT-fused chains, e.g. a stack of
    fully connected layers) are listed too: their precision inside is not reported."""
    out = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else ""
        if kind not in COMPUTE_TYPES + ("Subgraph",):
            continue
        prec = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else ""
        names = info["originalLayersNames"].astype(str).split(",") if "originalLayersNames" in info else []
        # OpenVINO names a conv whose bias it split off "<node>/WithoutBiases"
        nodes = [n.strip().removesuffix("/WithoutBiases") for n in names if n.strip()]
        out.append((kind, prec, nodes))
    return out


def check_runtime_precision(layers: list[tuple[str, str, list[str]]], policy: dict[str, str]) -> dict[str, Any]:
    """The compiled layers against the ONNX policy ({node: fp32|fp16|int8}): ``problems`` (int8 nodes
    not run as integer kernels, fp32 nodes in lower precision), ``fallbacks`` (each such layer),
    ``fp16_as_fp32`` (fp16 nodes computed in f32), ``counts`` (runtime precision of the compute
    layers) and ``unmatched`` (policy nodes no compute layer names)."""
    counts: dict[str, int] = {}
    fallbacks: list[dict[str, str]] = []
    seen: set[str] = set()
    fp16_as_fp32 = 0
    in_subgraphs: set[str] = set()
    for kind, prec, nodes in layers:
        mine = [n for n in nodes if n in policy]
        seen.update(mine)
        if kind == "Subgraph":  # a fused chain: its compute precision is not reported, nothing to check
            if mine:
                counts["subgraph"] = counts.get("subgraph", 0) + 1
                in_subgraphs.update(mine)
            continue
        got = _PRECISION.get(prec, prec or "unknown")
        counts[got] = counts.get(got, 0) + 1
        for want in {policy[n] for n in mine}:
            if (want == "int8" and got != "int8") or (want == "fp32" and got != "fp32"):
                fallbacks.append({"nodes": ",".join(mine), "type": kind, "policy": want, "runtime": got})
            elif want == "fp16" and got == "fp32":
                fp16_as_fp32 += 1
    problems = []
    if fallbacks:
        shown = "; ".join(f"{f['nodes']}: policy {f['policy']}, runtime {f['runtime']}" for f in fallbacks[:3])
        problems.append(f"{len(fallbacks)} compute layers run at another precision than the policy's ({shown})")
    # OpenVINO renames some layers (a conv with a folded BatchNorm becomes Multiply_<n>), so the names
    # cannot match every node; the number of integer layers must match the policy's int8 nodes anyway
    n_int8 = sum(p == "int8" for n, p in policy.items() if n not in in_subgraphs)
    if policy and counts.get("int8", 0) != n_int8:
        problems.append(f"{counts.get('int8', 0)} integer compute layers for {n_int8} int8 nodes in the policy")
    return {"problems": problems, "fallbacks": fallbacks, "fp16_as_fp32": fp16_as_fp32, "counts": counts,
            "unmatched": sorted(set(policy) - seen), "in_subgraphs": sorted(in_subgraphs)}


# --------------------------------------------------------------------------- measuring


def measure(onnx_path: Path, *, device: str, precision: str, threads: int = 1, batch: int = 1, warmup: int = 20,
            repeats: int = 100, min_time_s: float = 0.3, retries: int = 2, cv_threshold: float = CV_THRESHOLD,
            clock: str = "wall", reference: bool | str = False, blocks: int = 4, max_time_s: float = 8.0,
            window_s: float | None = None) -> Measurement:
    """Time ``onnx_path`` compiled by OpenVINO; the options and their meaning are those of
    :func:`autocomp.measure.onnxruntime.measure` (``reference``: the normal-phase protocol)."""
    from autocomp.measure.onnxruntime import WINDOW_S, reference_notes, reference_timer, sample
    from autocomp.measure.trtexec import onnx_policy

    if clock == "thread_cpu" and threads != 1:
        raise ValueError("clock='thread_cpu' measures the calling thread only; it needs threads=1")
    compiled = compile_model(onnx_path, threads, batch)
    check = check_runtime_precision(runtime_layers(compiled), onnx_policy(onnx_path))
    timed = run_timer(compiled, batch, clock)
    shape = [d.get_length() for d in list(compiled.inputs[0].get_partial_shape())[1:] if not d.is_dynamic]
    ref = reference_timer(threads, batch, clock, shape, reference) if reference else None
    notes = {"clock": clock, "min_time_s": min_time_s, "retries": retries, "cv_threshold": cv_threshold,
             "config": config(threads), "runtime_precision": check["counts"], "fp16_as_fp32": check["fp16_as_fp32"],
             "precision_problems": check["problems"], "precision_fallbacks": check["fallbacks"][:20],
             "policy_nodes_unmatched": check["unmatched"][:20]}
    if ref is not None:
        notes.update(reference_notes(ref, blocks, WINDOW_S if window_s is None else window_s), reference_runtime="onnxruntime")
    protocol = dict(device=device, backend="openvino", backend_version=version(), precision=precision, batch=batch,
                    threads=threads, warmup=warmup, notes=json.dumps(notes))
    best = sample(timed, ref, protocol, warmup=warmup, repeats=repeats, min_time_s=min_time_s, retries=retries,
                  cv_threshold=cv_threshold, blocks=blocks, max_time_s=max_time_s,
                  window_s=WINDOW_S if window_s is None else window_s)
    if check["problems"] and not best.flagged:
        best = Measurement(**{**best.to_dict(), "flagged": True})
    return best


def run(onnx_path: Path, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """The model's first output for the batch ``x`` (float32, NCHW), computed by OpenVINO."""
    compiled = compile_model(onnx_path, threads, batch=None)
    return np.asarray(compiled.create_infer_request().infer({0: np.ascontiguousarray(x, np.float32)})[0])


def accuracy(onnx_path: Path, batches: Iterable, threads: int = 1) -> float:
    """Top-1 accuracy of the exported model, compiled by OpenVINO, on (x, y) batches of tensors."""
    compiled = compile_model(onnx_path, threads, batch=None)
    request = compiled.create_infer_request()
    correct = total = 0
    for x, y in batches:
        logits = request.infer({0: np.ascontiguousarray(x.numpy(), np.float32)})[0]
        correct += int((np.asarray(logits).argmax(1) == y.numpy()).sum())
        total += len(y)
    return correct / max(total, 1)
