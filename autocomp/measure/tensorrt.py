"""TensorRT Python-API backend: build an engine from the (QDQ) ONNX, time it with CUDA events, and
check the built engine's per-layer precision against the ONNX's policy.

TensorRT (``import tensorrt``) and a CUDA-enabled torch (buffers, stream, events) are imported only
when a measurement runs; without them the backend raises a RuntimeError that says what is missing.
Typing follows :func:`autocomp.measure.trtexec.build_plan` for ``tensorrt.__version__``: on
TensorRT >= 10 the network is created with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` (on 11
every network is strongly typed and the flag is a no-op) and no precision builder flag is set, so
the ONNX's fp16 types and Q/DQ nodes decide each layer's precision; on TensorRT < 10 the weak-typing
flags the policy needs are set with ``OBEY_PRECISION_CONSTRAINTS`` and every fp32/fp16 compute layer
gets its precision and output type. The engine's layer information (inspector, detailed verbosity)
is parsed with the trtexec parser and checked layer by layer
(:func:`autocomp.measure.trtexec.check_precision`); a fallback flags the measurement.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from autocomp.measure.base import Measurement
from autocomp.measure.trtexec import BuildPlan, build_plan, check_precision, onnx_policy, parse_layer_info, precision_counts

CV_THRESHOLD = 0.05


def _import_trt() -> Any:
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError:
        raise RuntimeError("the 'tensorrt' backend needs the TensorRT Python package (pip install tensorrt, "
                           "or JetPack's python3-libnvinfer) and an NVIDIA GPU; use device 'cpu-ort' here") from None
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("the 'tensorrt' backend needs a CUDA GPU visible to torch (torch.cuda.is_available() is False)")
    return trt


def fingerprint(*, batch: int = 1, **_options: Any) -> dict:
    """The local GPU, TensorRT and CUDA versions, and on a Jetson its module, L4T release, power mode
    and clocks (the same probes as the trtexec backend, run here)."""
    import subprocess

    from autocomp.measure.trtexec import _PROBES, fingerprint_from_probes, parse_probes

    script = "; ".join(f"echo '@@autocomp-probe {k}'; {v.format(trtexec='trtexec')}" for k, v in _PROBES.items())
    probes = parse_probes(subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=120).stdout)
    try:
        import tensorrt as trt  # type: ignore[import-not-found]

        probes["trt"] = f"TensorRT version: {trt.__version__}"
    except ImportError:
        pass
    fp = fingerprint_from_probes(probes, "tensorrt", batch)
    if fp["gpu"] is None:
        raise RuntimeError("no NVIDIA GPU found on this machine")
    return fp


def build_engine(onnx_path: Path, precision: str, workspace_mb: int = 1024, batch: int = 1,
                 policy: dict[str, str] | None = None) -> tuple[Any, Any]:
    """(serialized engine bytes, trt module), typed per :func:`autocomp.measure.trtexec.build_plan`
    (``policy``: {ONNX compute node: precision}, read from the ONNX when not given). Raises
    RuntimeError with the parser errors."""
    trt = _import_trt()
    policy = onnx_policy(onnx_path) if policy is None else policy
    plan = build_plan(trt.__version__, precision, policy)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, plan))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if not plan.strongly_typed:
        _weak_typing(trt, network, config, plan)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        shape = tuple(batch if d < 0 else d for d in inp.shape)
        profile.set_shape(inp.name, shape, shape, shape)
    config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path} ({precision})")
    return blob, trt


def _network_flags(trt: Any, plan: BuildPlan) -> int:
    flag = trt.NetworkDefinitionCreationFlag
    if plan.strongly_typed:
        return 1 << int(flag.STRONGLY_TYPED)
    return 1 << int(flag.EXPLICIT_BATCH) if hasattr(flag, "EXPLICIT_BATCH") else 0


def _weak_typing(trt: Any, network: Any, config: Any, plan: BuildPlan) -> None:
    """TensorRT < 10: the precision flags, and fp32/fp16 layers pinned to their precision."""
    for f in plan.flags:
        config.set_flag({"fp16": trt.BuilderFlag.FP16, "int8": trt.BuilderFlag.INT8}[f])  # int8: scales from Q/DQ
    if not plan.layer_precisions:
        return
    obey = getattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS", None) or trt.BuilderFlag.STRICT_TYPES
    config.set_flag(obey)
    dtype = {"fp32": trt.float32, "fp16": trt.float16}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        want = plan.layer_precisions.get(layer.name)
        if want is None:
            continue
        layer.precision = dtype[want]
        for j in range(layer.num_outputs):
            layer.set_output_type(j, dtype[want])


def measure(onnx_path: Path, *, device: str, precision: str, warmup: int = 50, repeats: int = 300, batch: int = 1,
            retries: int = 1, cv_threshold: float = CV_THRESHOLD, strict: bool = False, workspace_mb: int = 1024) -> Measurement:
    """Median of ``repeats`` engine executions timed with CUDA events (after ``warmup``)."""
    policy = onnx_policy(onnx_path)
    blob, trt = build_engine(onnx_path, precision, workspace_mb, batch, policy)  # raises first when TensorRT is absent
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(blob)
    layers = []
    try:
        inspector = engine.create_engine_inspector()
        layers = parse_layer_info(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    except Exception:  # older TensorRT without the inspector
        pass
    check = check_precision(layers, policy, precision)
    problems = check.problems
    if problems and strict:
        raise RuntimeError(f"engine precision does not match {precision!r}: {'; '.join(problems)}")
    context = engine.create_execution_context()
    stream = torch.cuda.Stream()
    buffers: dict[str, torch.Tensor] = {}
    v10 = hasattr(engine, "num_io_tensors")
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)] if v10 else [engine.get_binding_name(i) for i in range(engine.num_bindings)]
    for name in names:
        shape = tuple(context.get_tensor_shape(name)) if v10 else tuple(context.get_binding_shape(engine.get_binding_index(name)))
        shape = tuple(batch if d < 0 else d for d in shape)
        dtype = trt.nptype(engine.get_tensor_dtype(name) if v10 else engine.get_binding_dtype(engine.get_binding_index(name)))
        t = torch.from_numpy(np.zeros(shape, dtype=dtype)).cuda()
        if t.is_floating_point():
            t.normal_()
        buffers[name] = t
        if v10:
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                context.set_input_shape(name, shape)
            context.set_tensor_address(name, t.data_ptr())

    def run() -> None:
        if v10:
            context.execute_async_v3(stream.cuda_stream)
        else:
            context.execute_async_v2([buffers[n].data_ptr() for n in names], stream.cuda_stream)

    best: Measurement | None = None
    for _ in range(retries + 1):
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                run()
            stream.synchronize()
            samples = []
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record(stream)
                run()
                end.record(stream)
                end.synchronize()
                samples.append(start.elapsed_time(end))
        notes = json.dumps({"clock": "cuda_event", "typing": build_plan(trt.__version__, precision, policy).typing,
                            "engine_precision": precision_counts(layers), "precision_problems": problems,
                            "precision_fallbacks": check.fallbacks[:20], "layers_checked": check.checked,
                            "gpu": torch.cuda.get_device_name()})
        m = Measurement.from_samples(samples, device=device, backend="tensorrt", backend_version=trt.__version__,
                                     precision=precision, batch=batch, threads=0, warmup=warmup, notes=notes)
        if best is None or m.cv < best.cv:
            best = m
        if m.cv <= cv_threshold:
            break
    assert best is not None
    if best.cv > cv_threshold or problems:
        best = Measurement(**{**best.to_dict(), "flagged": True})
    return best
