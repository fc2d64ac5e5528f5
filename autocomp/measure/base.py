"""The measurement protocol and the device registry."""

from __future__ import annotations

import importlib
import platform
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from autocomp.errors import UserError
from autocomp.measure import fingerprint


@dataclass(frozen=True)
class Measurement:
    """One latency measurement with its full protocol. Times are milliseconds."""

    device: str
    backend: str
    backend_version: str
    precision: str
    batch: int
    threads: int
    warmup: int
    repeats: int
    statistic: str
    median_ms: float
    mean_ms: float
    p90_ms: float
    p99_ms: float
    cv: float
    host: str = field(default_factory=platform.node)
    flagged: bool = False  # CV stayed above the threshold after the allowed re-measurements
    notes: str = ""  # backend-specific protocol details as a JSON string (e.g. the trtexec command, engine precision check)
    fingerprint: str = ""  # the device fingerprint that measured it (JSON; autocomp.measure.fingerprint)
    fingerprint_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_samples(cls, samples_ms: list[float] | np.ndarray, **protocol: Any) -> "Measurement":
        a = np.asarray(samples_ms, dtype=float)
        mean = float(a.mean())
        return cls(
            statistic="median", median_ms=float(np.median(a)), mean_ms=mean,
            p90_ms=float(np.percentile(a, 90)), p99_ms=float(np.percentile(a, 99)),
            cv=float(a.std() / mean) if mean > 0 else 0.0, repeats=len(a), **protocol,
        )


@dataclass(frozen=True)
class Device:
    """A named measurement target: which backend, with which settings."""

    name: str
    backend: str
    precisions: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def resource(self) -> str:
        """The Ray custom resource a node holding this device advertises."""
        return f"device:{self.name}"

    def measure(self, onnx_path: Path, precision: str = "fp32", **overrides: Any) -> Measurement:
        options = {**self.options, **overrides}
        m = backend(self.backend).measure(onnx_path, device=self.name, precision=precision, **options)
        fp = self.fingerprint(**overrides)
        return replace(m, fingerprint=fingerprint.dumps(fp), fingerprint_id=fingerprint.fingerprint_id(fp))

    def fingerprint(self, **overrides: Any) -> dict[str, Any]:
        """The fingerprint of the machine that measures for this device, probed here (on a cluster,
        call it on the device's node)."""
        return backend(self.backend).fingerprint(**{**self.options, **overrides})


# backend name -> module providing ``measure(onnx_path, *, device, precision, **options) -> Measurement``
# and ``fingerprint(**options) -> dict``; imported lazily, so a missing TensorRT only matters to the
# devices that need it. ``register_backend`` adds one from outside autocomp.
BACKENDS: dict[str, str] = {
    "onnxruntime": "autocomp.measure.onnxruntime", "tensorrt": "autocomp.measure.tensorrt",
    "trtexec": "autocomp.measure.trtexec",
}


def register_backend(name: str, module: str) -> None:
    """Register a backend module (``pkg.module`` with ``measure`` and ``fingerprint``) by name."""
    BACKENDS[name] = module


def backend(name: str) -> Any:
    if name not in BACKENDS:
        raise UserError("backend", f"unknown backend {name!r}", f"one of {sorted(BACKENDS)}")
    return importlib.import_module(BACKENDS[name])

DEVICES: dict[str, Device] = {}


def register_device(device: Device) -> Device:
    DEVICES[device.name] = device
    return device


register_device(Device(
    "cpu-ort", "onnxruntime", ("fp32", "fp16", "int8"),
    {"threads": 1, "warmup": 20, "repeats": 100, "min_time_s": 0.4, "blocks": 4, "max_time_s": 4.0, "reference": True, "clock": "thread_cpu"},
    "this machine's CPU through ONNX Runtime, 1 thread, batch 1, thread CPU time in the host's normal phase (reference protocol; the default)",
))
register_device(Device(
    "cpu-ort-wall", "onnxruntime", ("fp32", "fp16", "int8"),
    {"threads": 1, "warmup": 20, "repeats": 100, "min_time_s": 0.3, "clock": "wall"},
    "this machine's CPU through ONNX Runtime, 1 thread, batch 1, wall-clock time (quiet machines only)",
))
register_device(Device(
    "cpu-ort-b8", "onnxruntime", ("fp32", "fp16", "int8"),
    {"threads": 1, "batch": 8, "warmup": 10, "repeats": 48, "min_time_s": 0.4, "blocks": 4, "max_time_s": 4.0, "reference": True, "clock": "thread_cpu"},
    "this machine's CPU through ONNX Runtime, 1 thread, batch 8, thread CPU time, reference protocol (a second execution mode)",
))
register_device(Device(
    "cpu-ort-2t", "onnxruntime", ("fp32", "fp16", "int8"),
    {"threads": 2, "warmup": 20, "repeats": 100, "min_time_s": 0.3},
    "this machine's CPU through ONNX Runtime, 2 threads, batch 1",
))


register_device(Device(
    "jetson-orin-nano-trt", "trtexec", ("fp32", "fp16", "int8"),
    {"warmup_ms": 500, "iterations": 500, "avg_runs": 100, "use_cuda_graph": True, "ssh": None},
    "Jetson Orin Nano through trtexec (nvpmodel -m 0, jetson_clocks), batch 1; set options.ssh to run it remotely",
))
register_device(Device(
    "gpu-trt", "tensorrt", ("fp32", "fp16", "int8"),
    {"warmup": 50, "repeats": 300},
    "the local NVIDIA GPU through the TensorRT Python API, CUDA-event timing, batch 1",
))


def get_device(name: str) -> Device:
    if name not in DEVICES:
        raise UserError("--device", f"unknown device {name!r}", f"one of {sorted(DEVICES)}")
    return DEVICES[name]

