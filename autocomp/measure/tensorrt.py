"""TensorRT Python-API backend: build an engine from the (QDQ) ONNX with the requested precision
flags, time it with CUDA events, and check the built engine's per-layer precision.

TensorRT (``import tensorrt``) and a CUDA-enabled torch (buffers, stream, events) are imported only
when a measurement runs; without them the backend raises a RuntimeError that says what is missing.
Explicit quantization: the QDQ nodes of the exported ONNX decide which layers are int8; the INT8
flag permits them and FP16 lets the remaining layers run in half precision.
The engine's layer information (inspector, detailed verbosity) is parsed with the trtexec parser
and checked with :func:`autocomp.measure.trtexec.check_engine_precision`: TensorRT silently falls
back to fp32 where it cannot honour a precision, and such a measurement is flagged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from autocomp.measure.base import Measurement
from autocomp.measure.trtexec import check_engine_precision, parse_layer_info, precision_counts

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


def build_engine(onnx_path: Path, precision: str, workspace_mb: int = 1024, batch: int = 1) -> tuple[Any, Any]:
    """(serialized engine bytes, trt module). Raises RuntimeError with the parser errors."""
    trt = _import_trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if precision in ("fp16", "int8", "mixed"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision in ("int8", "mixed"):
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales come from the QDQ nodes
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


def measure(onnx_path: Path, *, device: str, precision: str, warmup: int = 50, repeats: int = 300, batch: int = 1,
            retries: int = 1, cv_threshold: float = CV_THRESHOLD, strict: bool = False, workspace_mb: int = 1024) -> Measurement:
    """Median of ``repeats`` engine executions timed with CUDA events (after ``warmup``)."""
    blob, trt = build_engine(onnx_path, precision, workspace_mb, batch)  # raises first when TensorRT is absent
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(blob)
    layers = []
    try:
        inspector = engine.create_engine_inspector()
        layers = parse_layer_info(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    except Exception:  # older TensorRT without the inspector
        pass
    problems = check_engine_precision(layers, precision) if layers else ["no engine layer information"]
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
        notes = json.dumps({"clock": "cuda_event", "engine_precision": precision_counts(layers), "precision_problems": problems,
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
