"""A fixed reference model that cancels a shared machine's slow phases out of CPU measurements.

On a shared VM (this project's 2-core CI machine is one) the host's other tenants slow every
computation on a vCPU by the same factor (~1.7x here) for seconds at a time: the same ONNX session
measured back to back gives 5.8 ms, then 10.2 ms for a few seconds, then 5.8 ms again, in wall
clock and in thread CPU time alike. A measurement that lands in such a phase is wrong by 70 %,
whatever its number of repeats.

The ``reference`` protocol of the ONNX Runtime backend therefore times the candidate in short
blocks, each framed by a few runs of this fixed reference model on the same thread, and keeps only
the blocks whose reference runs were at the host's normal speed (within ``FAST_TOLERANCE`` of
``nominal_ms``): the result is in real milliseconds of the normal phase. If too few blocks were
normal within the time allowed, every block's samples are rescaled by ``nominal / reference median
of the block`` instead and the measurement is flagged. ``nominal_ms`` — the reference's latency on
this host in its normal phase — is the 10th percentile of many short measurements, cached
per host, ONNX Runtime version, threads, batch and clock under ``$AUTOCOMP_CACHE/reference/``.

A nominal latency measured while the host was busy (other tenants, or one's own test suite) is too
high, and would otherwise be trusted forever: slow blocks then pass as normal, and every later
measurement on this host is inflated by the same factor. Each measurement therefore reports its
frames back (:meth:`Reference.observe`): when a quarter of them ran the reference more than
``LOWER_MARGIN`` faster than the cached nominal, the cache is lowered to that quartile and says so
(``lowered_from``). The nominal only ever moves down this way; ``refresh`` re-measures it.

The reference is built from ONNX operators directly (no torch, seeded weights): conv 3x3 1->16,
conv 3x3 16->32, conv 3x3 s2 32->64, depthwise 3x3, global pool, dense 64->10, ReLUs between —
about 8 M MACs on a 1x28x28 input (~1 ms on one core), roughly the middle of the default space.

**Large inputs get a matched reference.** The small reference sits in L2 (~100 KB of weights and
activations); a 224x224 candidate's activations (several MB) live in L3 and memory, which the
host's other tenants contend for. That contention slows such candidates by up to 1.5x for minutes
at a time while the small reference slows by ~14 %, so the gate above passes those blocks as
normal: one FBNet-224 table measured again nine hours later agreed within ±10 % on 23 % of its 150
rows (median shift +22 %). Candidates whose input has at least ``LARGE_AREA`` pixels are therefore
framed by a *large* reference at their own input size (:func:`build_large`, a MobileNetV2-style
network whose working set is a mobile CNN's), and every block is rescaled by ``nominal / frames``
(statistic ``median_ref_ratio``): the candidate's latency relative to a network that feels the same
contention, in milliseconds of the reference's nominal (fastest-seen) speed. On this host
(``benchmarks/reference_stability.py``, 30 FBNet-224 candidates, both protocols interleaved), two
passes agreed within ±10 % on 90 % of the candidates with the large reference (sd of the log ratio
0.073) against 47 % (0.152) with the small one.

**A device may rescale by the small reference too** (option ``reference: ratio``; ``cpu-ort`` and
``cpu-openvino`` do since session 13). The gate keeps the fastest blocks the reference calls normal,
so on a host whose slow phases last longer than the window (or whose "normal" moves by the hour)
a figure is whatever phase the window fell in. Rescaling every block by its frames measures the
candidate relative to the reference instead: on 30 default-space candidates on ``cpu-openvino``,
two interleaved passes agreed within ±10 % on 87 % of them rescaled (sd of the log ratio 0.071)
against 50 % (0.149) gated.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np

VERSION = 2
# a block counts as normal-phase when its reference median <= FAST_TOLERANCE x nominal. The gate only
# excludes grossly slow phases: the statistic is the fastest normal blocks of the window (see
# autocomp.measure.onnxruntime), and this host's boost clock moves the reference by ~15 % with the
# other cores' load alone (0.074 ms with the other core idle, 0.087-0.095 ms beside a busy one), so a
# tighter gate rejected most blocks on a quiet host once the nominal had been lowered to the idle speed.
FAST_TOLERANCE = 1.25
LOWER_MARGIN = 1.08  # frames whose lower quartile is this much faster than nominal lower the nominal
MIN_FRAMES = 8  # frames a measurement needs before it may lower the nominal
# inputs of at least this many pixels are framed by the large reference at their own size (module doc)
LARGE_AREA = 64 * 64
LARGE_VERSION = 1


def _cache() -> Path:
    from autocomp.resources import cache_dir

    d = cache_dir() / "reference"
    d.mkdir(parents=True, exist_ok=True)
    return d


def build(path: Path) -> Path:
    """Write the reference ONNX model (dynamic batch, input ``input`` [N,1,28,28]) to ``path``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1234)

    def w(name: str, *shape: int) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:])) or 1
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)

    inits = [w("w1", 16, 1, 3, 3), w("w2", 32, 16, 3, 3), w("w3", 64, 32, 3, 3), w("w4", 64, 1, 3, 3),
             w("fc", 10, 64)]
    inits += [numpy_helper.from_array(np.zeros(c, np.float32), f"b{i}") for i, c in enumerate((16, 32, 64, 64, 10), 1)]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("Conv", ["r3", "w4", "b4"], ["c4"], pads=[1, 1, 1, 1], group=64),
        helper.make_node("Relu", ["c4"], ["r4"]),
        helper.make_node("GlobalAveragePool", ["r4"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "b5"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "autocomp-reference",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="autocomp")
    model.ir_version = 8
    return _save(model, path)


def _save(model, path: Path) -> Path:
    import onnx

    onnx.checker.check_model(model)
    tmp = path.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)
    return path


def build_large(path: Path, channels: int, height: int, width: int) -> Path:
    """Write the large reference for inputs of ``channels`` x ``height`` x ``width`` (dynamic batch):
    a MobileNetV2-style network of seeded weights, built from ONNX operators — a stride-2 3x3 stem
    (16 channels), seven inverted residual blocks (expand 6, depthwise 3x3; 24, 24, 40, 40, 80, 96,
    192 channels, four of them stride 2, two with residual adds), a 1x1 head of 640 channels, global
    pool and a dense layer to 10. At 224x224 it is ~150 M MACs (a few ms on one core) and its
    activations (up to 96 x 112 x 112 floats, 4.8 MB) live in L3 and memory, as a mobile CNN's do."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4321)
    inits, nodes = [], []

    def conv(x: str, cin: int, cout: int, k: int = 1, stride: int = 1, group: int = 1, relu: bool = True) -> str:
        i = len(nodes)
        shape = (cout, cin // group, k, k)
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32), f"w{i}"))
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), f"b{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[k // 2] * 4, strides=[stride] * 2, group=group))
        if not relu:
            return f"c{i}"
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        return f"r{i}"

    x = conv("input", channels, 16, 3, 2)
    cin = 16
    for cout, stride in ((24, 2), (24, 1), (40, 2), (40, 1), (80, 2), (96, 1), (192, 2)):
        h = conv(x, cin, 6 * cin)
        h = conv(h, 6 * cin, 6 * cin, 3, stride, group=6 * cin)
        h = conv(h, 6 * cin, cout, relu=False)
        if stride == 1 and cin == cout:
            nodes.append(helper.make_node("Add", [h, x], [f"a{len(nodes)}"]))
            h = nodes[-1].output[0]
        x, cin = h, cout
    x = conv(x, cin, 640)
    inits.append(numpy_helper.from_array((rng.standard_normal((10, 640)) / np.sqrt(640)).astype(np.float32), "fc"))
    inits.append(numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"))
    nodes += [helper.make_node("GlobalAveragePool", [x], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
              helper.make_node("Gemm", ["f", "fc", "fc_b"], ["logits"], transB=1)]
    graph = helper.make_graph(
        nodes, "autocomp-reference-large",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", channels, height, width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="autocomp")
    model.ir_version = 8
    return _save(model, path)


def name_for(input_shape: tuple[int, ...] | list[int] | None) -> str:
    """The reference for a candidate of input ``input_shape`` (C, H, W): ``""`` (the small model,
    1x28x28) for inputs under ``LARGE_AREA`` pixels or of unknown size, else the large model at the
    candidate's own input size (``large-v1-3x224x224``)."""
    if input_shape is None or len(input_shape) != 3 or not all(isinstance(d, int) and d > 0 for d in input_shape):
        return ""
    c, h, w = input_shape
    return f"large-v{LARGE_VERSION}-{c}x{h}x{w}" if h * w >= LARGE_AREA else ""


def model_path(name: str = "") -> Path:
    """The reference model ``name`` (see :func:`name_for`), built into the cache on first use."""
    if not name:
        path = _cache() / f"reference-v{VERSION}.onnx"
        if not path.exists():
            build(path)
        return path
    path = _cache() / f"reference-{name}.onnx"
    if not path.exists():
        c, h, w = (int(d) for d in name.rsplit("-", 1)[1].split("x"))
        build_large(path, c, h, w)
    return path


def _key(threads: int, batch: int, clock: str, name: str = "") -> str:
    import onnxruntime as ort

    from autocomp.measure.fingerprint import cpu_model, this_cpu_flags

    ident = [VERSION, platform.node(), cpu_model(), this_cpu_flags(), ort.__version__, threads, batch, clock]
    ident += [name] if name else []
    return hashlib.sha1(json.dumps(ident).encode()).hexdigest()[:12]


def _nominal_path(threads: int, batch: int, clock: str, name: str = "") -> Path:
    return _cache() / f"nominal-{_key(threads, batch, clock, name)}.json"


def nominal_ms(timer: Callable[[], Callable[[], float]], threads: int = 1, batch: int = 1, clock: str = "wall",
               probes: int = 200, runs: int = 10, refresh: bool = False, name: str = "") -> float:
    """The reference's normal-phase latency on this host: the 10th percentile of the medians of
    ``probes`` back-to-back short measurements (``runs`` runs each; slow phases lift many of them,
    a lone minimum would be luck). ``timer()`` makes the callable that runs the reference once and
    returns its time in ms (the ONNX Runtime backend owns the sessions). Cached per reference
    ``name`` (:func:`name_for`); ``refresh`` measures again."""
    cache = _nominal_path(threads, batch, clock, name)
    if cache.exists() and not refresh:
        return float(json.loads(cache.read_text())["nominal_ms"])
    timed = timer()
    for _ in range(20):
        timed()
    medians = []
    for _ in range(probes):
        medians.append(float(np.median([timed() for _ in range(runs)])))
    value = float(np.percentile(medians, 10))
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps({"nominal_ms": value, "threads": threads, "batch": batch, "clock": clock,
                               "probe_medians_ms": [round(m, 4) for m in medians], "host": platform.node(),
                               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    os.replace(tmp, cache)
    return value


def lower_nominal(threads: int, batch: int, clock: str, frames: list[float], name: str = "") -> float | None:
    """Lower the cached nominal latency when ``frames`` (the reference medians framing the blocks of
    one measurement) show the host runs the reference faster than it: their lower quartile, when it
    is more than ``LOWER_MARGIN`` below the nominal. Returns the new nominal, or None if unchanged."""
    cache = _nominal_path(threads, batch, clock, name)
    if len(frames) < MIN_FRAMES or not cache.exists():
        return None
    record = json.loads(cache.read_text())
    low = float(np.percentile(frames, 25))
    if low * LOWER_MARGIN >= float(record["nominal_ms"]):
        return None
    record.setdefault("lowered_from", []).append({"nominal_ms": record["nominal_ms"], "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    record["nominal_ms"] = low
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, cache)
    return low


class Reference:
    """The reference timer of one measurement and this host's nominal latency for it: ``timer()``
    makes the callable that runs the reference model once (the backend owns the session). ``name``:
    which reference (:func:`name_for`). ``rescale``: the protocol rescales every block by its
    frames instead of keeping the normal-phase blocks (module doc): always with a large reference,
    with the small one when ``ratio`` (the device option ``reference: ratio``)."""

    def __init__(self, timer: Callable[[], Callable[[], float]], threads: int = 1, batch: int = 1, clock: str = "wall",
                 name: str = "", ratio: bool = False):
        self.threads, self.batch, self.clock, self.name = threads, batch, clock, name
        self.rescale = bool(name) or ratio
        probes = dict(probes=100, runs=5) if name else {}  # the large reference runs for milliseconds
        self.nominal = nominal_ms(timer, threads, batch, clock, name=name, **probes)
        self.timed = timer()

    @property
    def label(self) -> str:
        """What measurement notes call it: ``v2`` or ``large-v1-3x224x224``."""
        return self.name or f"v{VERSION}"

    def observe(self, frames: list[float]) -> None:
        """The frames one measurement took; they may lower the cached nominal (see the module doc)."""
        lowered = lower_nominal(self.threads, self.batch, self.clock, frames, self.name)
        if lowered is not None:
            self.nominal = lowered
