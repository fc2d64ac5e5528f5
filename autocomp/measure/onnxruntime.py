"""ONNX Runtime CPU backend: median of repeated single-batch runs after warm-up.

``clock`` picks what a sample is: ``wall`` (perf_counter: what a user waits, but on a shared
machine it includes the time the OS gives other processes) or ``thread_cpu`` (the CPU time of the
calling thread: with one intra-op thread ONNX Runtime computes on the calling thread, so this is the
compute time without preemption by other jobs — on a quiet machine the two agree; on a loaded one
wall medians were seen 3-4x inflated with CV 0.8-0.9 while thread-CPU medians kept CV ~0.2).
``thread_cpu`` needs ``threads=1``. The clock is recorded in ``Measurement.notes``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from autocomp.measure.base import Measurement

CV_THRESHOLD = 0.15


def session(onnx_path: Path, threads: int = 1) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])


def _input_shape(sess: ort.InferenceSession, batch: int) -> list[int]:
    return [batch if not isinstance(d, int) else d for d in sess.get_inputs()[0].shape]


def measure(onnx_path: Path, *, device: str, precision: str, threads: int = 1, batch: int = 1, warmup: int = 20,
            repeats: int = 100, min_time_s: float = 0.3, retries: int = 2, cv_threshold: float = CV_THRESHOLD,
            clock: str = "wall") -> Measurement:
    """Time ``onnx_path``; repeats until at least ``repeats`` runs and ``min_time_s`` seconds.

    A measurement whose CV exceeds ``cv_threshold`` is taken again (``retries`` times); the one
    with the lowest CV is kept and flagged if it is still above the threshold.
    """
    if clock not in ("wall", "thread_cpu"):
        raise ValueError(f"unknown clock {clock!r}; expected 'wall' or 'thread_cpu'")
    if clock == "thread_cpu" and threads != 1:
        raise ValueError("clock='thread_cpu' measures the calling thread only; it needs threads=1")
    now = time.perf_counter_ns if clock == "wall" else time.thread_time_ns
    notes = json.dumps({"clock": clock, "min_time_s": min_time_s, "retries": retries, "cv_threshold": cv_threshold})
    sess = session(onnx_path, threads)
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal(_input_shape(sess, batch)).astype(np.float32)
    best: Measurement | None = None
    for _ in range(retries + 1):
        for _ in range(warmup):
            sess.run(None, {name: x})
        samples: list[float] = []
        start = time.perf_counter()
        while len(samples) < repeats or time.perf_counter() - start < min_time_s:
            t0 = now()
            sess.run(None, {name: x})
            samples.append((now() - t0) / 1e6)
        m = Measurement.from_samples(samples, device=device, backend="onnxruntime", backend_version=ort.__version__,
                                     precision=precision, batch=batch, threads=threads, warmup=warmup, notes=notes)
        if best is None or m.cv < best.cv:
            best = m
        if m.cv <= cv_threshold:
            break
    assert best is not None
    if best.cv > cv_threshold:
        best = Measurement(**{**best.to_dict(), "flagged": True})
    return best


def accuracy(onnx_path: Path, batches, threads: int = 1) -> float:
    """Top-1 accuracy of the exported model on (x, y) batches, run by ONNX Runtime."""
    sess = session(onnx_path, threads)
    name = sess.get_inputs()[0].name
    correct = total = 0
    for x, y in batches:
        logits = sess.run(None, {name: x.numpy()})[0]
        correct += int((logits.argmax(1) == y.numpy()).sum())
        total += len(y)
    return correct / max(total, 1)
