"""The measurement protocol and the device registry."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from autocomp.errors import UserError


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
        backend = BACKENDS[self.backend]()
        return backend(onnx_path, device=self.name, precision=precision, **{**self.options, **overrides})


def _onnxruntime() -> Callable[..., Measurement]:
    from autocomp.measure.onnxruntime import measure

    return measure


BACKENDS: dict[str, Callable[[], Callable[..., Measurement]]] = {"onnxruntime": _onnxruntime}

DEVICES: dict[str, Device] = {}


def register_device(device: Device) -> Device:
    DEVICES[device.name] = device
    return device


register_device(Device(
    "cpu-ort", "onnxruntime", ("fp32", "fp16", "int8"),
    {"threads": 1, "warmup": 20, "repeats": 100, "min_time_s": 0.3},
    "this machine's CPU through ONNX Runtime, 1 thread, batch 1 (the default)",
))
register_device(Device(
    "cpu-ort-2t", "onnxruntime", ("fp32", "fp16", "int8"),
    {"threads": 2, "warmup": 20, "repeats": 100, "min_time_s": 0.3},
    "this machine's CPU through ONNX Runtime, 2 threads, batch 1",
))


def get_device(name: str) -> Device:
    if name not in DEVICES:
        raise UserError("--device", f"unknown device {name!r}", f"one of {sorted(DEVICES)}")
    return DEVICES[name]

