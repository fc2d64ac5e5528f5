"""ONNX Runtime CPU backend: median of repeated single-batch runs after warm-up.

``clock`` picks what a sample is: ``wall`` (perf_counter: what a user waits, but on a shared
machine it includes the time the OS gives other processes) or ``thread_cpu`` (the CPU time of the
calling thread: with one intra-op thread ONNX Runtime computes on the calling thread, so this is the
compute time without preemption by other jobs — on a quiet machine the two agree; on a loaded one
wall medians were seen 3-4x inflated with CV 0.8-0.9 while thread-CPU medians kept CV ~0.2).
``thread_cpu`` needs ``threads=1``. The clock is recorded in ``Measurement.notes``.

``reference=True`` (the ``cpu-ort`` devices) adds the reference protocol of
:mod:`autocomp.measure.reference`: only blocks timed while the host runs at its normal speed count.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnxruntime as ort

from autocomp.measure import fingerprint as fingerprint_mod
from autocomp.measure import reference as reference_model
from autocomp.measure.base import REFERENCE_MODES, Measurement

CV_THRESHOLD = 0.15
# Images per ONNX Runtime call when scoring accuracy. Small batches keep the activations in cache: on
# a 2-vCPU EPYC host, 2,000 MNIST images through a 1.4 ms default-space candidate took 3.9 s at 8,
# 7.8 s at 100 and 30 s at 500 (one thread); a 0.3 ms candidate 0.4 s at 4-16 and 1.1 s at 100.
ACCURACY_BATCH = 8
# The reference protocol spreads its blocks over this many seconds: this host's slow phases (other
# tenants) last from a fraction of a second to several seconds, and a window of a few seconds almost
# always holds enough normal-phase blocks (see _normal_phase)
WINDOW_S = 3.0
# ONNX Runtime's QDQ fusion turns DQ -> Conv -> Q (an int8 conv feeding an int8 conv directly, e.g. the
# two halves of a low-rank pair) into an integer QLinearConv whose u8s8 kernels saturate their int16
# intermediate sums on x86 CPUs without VNNI: with full-range int8 weights the outputs moved by up
# to 3.2 logits and top-1 changed on ~3 % of MNIST test images (measured on an AVX2 host). There it
# is disabled, and every int8 layer runs as DequantizeLinear + float op: exactly the QDQ semantics
# TensorRT and PyTorch fake-quant use. Hosts with VNNI / AMX (or ARM's dot product) accumulate in
# int32 without that saturation and keep the fusion: their integer kernels are the fast path.
# A model exported with 7-bit weights (reduce_range: ONNX metadata autocomp.int8_weight_qmax <= 63,
# see autocomp.compress.quantize) cannot saturate them (2 * 255 * 64 <= 32767): its sessions keep the
# fusion on every host. The workaround so remains only for full-range weights on hosts without int8 dot.
QDQ_FUSION = "QDQSelectorActionTransformer"


def qdq_fusion(isa: list[str] | None = None) -> bool:
    """Whether autocomp's sessions keep ONNX Runtime's QDQ integer fusion for full-range int8 weights
    on this host (``isa``: another host's CPU flags) (see above)."""
    return fingerprint_mod.has_int8_dot(fingerprint_mod.this_cpu_flags() if isa is None else isa)


def disabled_optimizers(onnx_path: Path | None = None, isa: list[str] | None = None) -> list[str]:
    """The optimizers a session of ``onnx_path`` runs without on this host (``isa``: another's)."""
    if qdq_fusion(isa) or (onnx_path is not None and _weight_qmax(onnx_path) <= 63):
        return []
    return [QDQ_FUSION]


def _weight_qmax(onnx_path: Path) -> int:
    """The largest int8 weight magnitude an autocomp export records (127 when it records none)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    value = next((p.value for p in model.metadata_props if p.key == "autocomp.int8_weight_qmax"), "127")
    return int(value) if value.isdigit() else 127


def fingerprint(threads: int = 1, batch: int = 1, **_options) -> dict:
    """This host as ONNX Runtime sees it (:mod:`autocomp.measure.fingerprint`)."""
    return fingerprint_mod.cpu("onnxruntime", ort.__version__, threads, batch, qdq_fusion=qdq_fusion())


def session(onnx_path: Path, threads: int = 1, profile_prefix: str | None = None) -> ort.InferenceSession:
    """autocomp's session of ``onnx_path`` on this host; ``profile_prefix``: also record ONNX Runtime's
    per-node profile (``end_profiling()`` writes it to ``<prefix>_<date>.json``)."""
    so = ort.SessionOptions()
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled_optimizers(onnx_path))


def _input_shape(sess: ort.InferenceSession, batch: int) -> list[int]:
    return [batch if not isinstance(d, int) else d for d in sess.get_inputs()[0].shape]


def run_timer(sess: ort.InferenceSession, batch: int = 1, clock: str = "wall") -> Callable[[], float]:
    """A callable that runs ``sess`` once on a fixed random batch and returns the time in ms."""
    if clock not in ("wall", "thread_cpu"):
        raise ValueError(f"unknown clock {clock!r}; expected 'wall' or 'thread_cpu'")
    now = time.perf_counter_ns if clock == "wall" else time.thread_time_ns
    feed = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal(_input_shape(sess, batch)).astype(np.float32)}

    def timed() -> float:
        t0 = now()
        sess.run(None, feed)
        return (now() - t0) / 1e6

    return timed


def measure(onnx_path: Path, *, device: str, precision: str, threads: int = 1, batch: int = 1, warmup: int = 20,
            repeats: int = 100, min_time_s: float = 0.3, retries: int = 2, cv_threshold: float = CV_THRESHOLD,
            clock: str = "wall", reference: bool | str = False, blocks: int = 4, max_time_s: float = 8.0,
            window_s: float = WINDOW_S) -> Measurement:
    """Time ``onnx_path``; repeats until at least ``repeats`` runs and ``min_time_s`` seconds.

    With ``reference`` (for shared machines, see :mod:`autocomp.measure.reference`) the runs are
    taken in short blocks (``min_time_s / blocks`` seconds, at least 5 runs) framed by runs of a
    reference model and spread over ``window_s`` seconds; the statistic is the median of the
    ``blocks`` fastest blocks among those taken at the host's normal speed
    (``median_fastest_blocks``). If fewer than ``blocks`` were normal within ``max_time_s``, the
    fastest blocks rescaled by their reference frames are used instead (``median_ref_scaled``), flagged.
    With ``reference="ratio"``, and for inputs of at least 64x64 pixels (framed by the large
    reference at their own size), every block of the window is rescaled by its frames instead and
    the statistic is their median (``median_ref_ratio``; :mod:`autocomp.measure.reference`).

    A measurement whose CV exceeds ``cv_threshold`` is taken again (``retries`` times); the one
    with the lowest CV is kept and flagged if it is still above the threshold.
    """
    if clock == "thread_cpu" and threads != 1:
        raise ValueError("clock='thread_cpu' measures the calling thread only; it needs threads=1")
    sess = session(onnx_path, threads)
    timed = run_timer(sess, batch, clock)
    ref = reference_timer(threads, batch, clock, _input_shape(sess, batch)[1:], reference) if reference else None
    notes = json.dumps({"clock": clock, "min_time_s": min_time_s, "retries": retries, "cv_threshold": cv_threshold,
                        **(reference_notes(ref, blocks, window_s) if ref else {})})
    protocol = dict(device=device, backend="onnxruntime", backend_version=ort.__version__, precision=precision,
                    batch=batch, threads=threads, warmup=warmup, notes=notes)
    return sample(timed, ref, protocol, warmup=warmup, repeats=repeats, min_time_s=min_time_s, retries=retries,
                  cv_threshold=cv_threshold, blocks=blocks, max_time_s=max_time_s, window_s=window_s)


def reference_timer(threads: int, batch: int, clock: str, input_shape=None, mode: bool | str = True) -> reference_model.Reference:
    """The reference model of the normal-phase protocol for a candidate of ``input_shape`` (C, H, W;
    :func:`autocomp.measure.reference.name_for`), run by ONNX Runtime (every CPU backend frames its
    blocks with it, so one nominal latency per host and reference serves them all). ``mode``: the
    measurement's ``reference`` option — ``True`` (the large reference rescales, the small one
    gates) or ``"ratio"`` (every block rescaled by whichever reference frames it)."""
    if not mode or mode not in REFERENCE_MODES:
        raise ValueError(f"unknown reference mode {mode!r}; expected one of {[m for m in REFERENCE_MODES if m]}")
    name = reference_model.name_for(list(input_shape) if input_shape is not None else None)
    path = reference_model.model_path(name)
    return reference_model.Reference(lambda: run_timer(session(path, threads), batch, clock), threads, batch, clock, name,
                                     ratio=mode == "ratio")


def reference_notes(ref: reference_model.Reference, blocks: int, window_s: float) -> dict:
    """What a measurement's notes record of its reference protocol."""
    return {"reference": ref.label, "reference_nominal_ms": round(ref.nominal, 5), "blocks": blocks, "window_s": window_s,
            "statistic": "ref-ratio" if ref.rescale else "fastest-blocks"}


def sample(timed: Callable[[], float], ref: reference_model.Reference | None, protocol: dict, *,
           warmup: int, repeats: int, min_time_s: float, retries: int, cv_threshold: float, blocks: int,
           max_time_s: float, window_s: float = WINDOW_S) -> Measurement:
    """The timing loop of a CPU backend (see :func:`measure`): warm-up, then plain samples or, with a
    reference timer, normal-phase blocks; re-measured while the CV is above ``cv_threshold``; the
    best attempt is kept and flagged if still above it."""
    best: Measurement | None = None
    for _ in range(retries + 1):
        for _ in range(warmup):
            timed()
            if ref:
                ref.timed()
        if ref is None:
            samples: list[float] = []
            start = time.perf_counter()
            while len(samples) < repeats or time.perf_counter() - start < min_time_s:
                samples.append(timed())
            m = Measurement.from_samples(samples, **protocol)
        else:
            m = _normal_phase(timed, ref, repeats, min_time_s, blocks, max_time_s, protocol, window_s)
        if best is None or (m.flagged, m.cv) < (best.flagged, best.cv):
            best = m
        if (m.cv <= cv_threshold and not m.flagged) or m.statistic in ("median_ref_scaled", "median_ref_ratio"):
            break  # a run that already waited max_time_s for a normal phase (or rescaled a whole window) is not retried
    assert best is not None
    if best.cv > cv_threshold and not best.flagged:
        best = Measurement(**{**best.to_dict(), "flagged": True})
    return best


def _normal_phase(timed: Callable[[], float], ref: reference_model.Reference, repeats: int,
                  min_time_s: float, blocks: int, max_time_s: float, protocol: dict, window_s: float = WINDOW_S) -> Measurement:
    """Short blocks of candidate runs framed by reference runs, spread over ``window_s`` seconds; the
    statistic is the median of the ``blocks`` fastest blocks among those whose frames ran at the
    host's normal speed (see :func:`measure`). With a rescaling reference (``ref.rescale``) every
    block is rescaled by its frames instead and the statistic is the median of them all
    (``median_ref_ratio``; :mod:`autocomp.measure.reference`); its ``cv`` is then that of the
    rescaled blocks' medians (one run's jitter does not move a median of hundreds, a block that
    disagrees does). The frames go back to ``ref``, which lowers a nominal latency that was
    measured in a slow phase."""
    nominal = ref.nominal
    frames: list[float] = []

    def frame() -> float:
        frames.append(float(np.median([ref.timed() for _ in range(max(3, int(0.004 / max(nominal / 1e3, 1e-6))))])))
        return frames[-1]

    normal: list[list[float]] = []  # the candidate samples of each normal-phase block
    scaled: list[list[float]] = []  # every block, rescaled by its frames (the fallback)
    start = time.perf_counter()
    per_block = max(-(-repeats // max(blocks * 8, 1)), 5)
    block_s = min_time_s / max(blocks, 1)
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= max_time_s or (elapsed >= window_s and len(normal) >= blocks):
            break
        before = frame()
        own: list[float] = []
        t0 = time.perf_counter()
        while len(own) < per_block or time.perf_counter() - t0 < block_s:
            own.append(timed())
        after = frame()
        if max(before, after) <= reference_model.FAST_TOLERANCE * nominal:
            normal.append(own)
        scaled.append((np.asarray(own) * (2 * nominal / (before + after))).tolist())
    ref.observe(frames)
    if ref.rescale:  # the median of every rescaled sample; its noise is how far the blocks disagree
        m = Measurement.from_samples([x for b in scaled for x in b], **protocol)
        medians = np.array([np.median(b) for b in scaled])
        block_cv = float(medians.std() / medians.mean()) if len(medians) > 1 and medians.mean() > 0 else 0.0
        return Measurement(**{**m.to_dict(), "statistic": "median_ref_ratio", "cv": block_cv, "flagged": len(scaled) < blocks})
    chosen, statistic, flagged = (normal, "median_fastest_blocks", False) if len(normal) >= blocks else \
        (scaled, "median_ref_scaled", True)
    fastest = sorted(chosen, key=lambda b: float(np.median(b)))[:blocks]
    m = Measurement.from_samples([x for b in fastest for x in b], **protocol)
    return Measurement(**{**m.to_dict(), "statistic": statistic, "flagged": flagged or m.flagged})


def accuracy(onnx_path: Path, batches, threads: int = 1) -> float:
    """Top-1 accuracy of the exported model on (x, y) batches, run by ONNX Runtime (batches of
    :data:`ACCURACY_BATCH` images run fastest)."""
    return accuracies(onnx_path, {"all": batches}, 1, threads)["all"]


def accuracies(onnx_path: Path, splits: dict[str, Iterable], workers: int = 1, threads: int = 1) -> dict[str, float]:
    """Top-1 accuracy per named split of (x, y) batches. ``workers`` threads, each with its own
    session (of ``threads`` intra-op threads), take the batches of all splits in turn from one
    queue (ONNX Runtime releases the GIL while it runs), so the cores stay busy however unequal
    the splits are."""
    from concurrent.futures import ThreadPoolExecutor

    queue = ((split, x, y) for split, batches in splits.items() for x, y in batches)
    lock = threading.Lock()

    def work() -> dict[str, list[int]]:
        sess = session(onnx_path, threads)
        name = sess.get_inputs()[0].name
        counts = {split: [0, 0] for split in splits}
        while True:
            with lock:  # a generator is not safe to advance from two threads at once
                item = next(queue, None)
            if item is None:
                return counts
            split, x, y = item
            logits = sess.run(None, {name: x.numpy()})[0]
            counts[split][0] += int((logits.argmax(1) == y.numpy()).sum())
            counts[split][1] += len(y)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        parts = list(pool.map(lambda _: work(), range(max(1, workers))))
    return {split: sum(p[split][0] for p in parts) / max(sum(p[split][1] for p in parts), 1) for split in splits}
