"""trtexec backend: build and time a TensorRT engine with NVIDIA's ``trtexec`` (locally or over ssh).

Protocol (NVIDIA ModelOpt / Jetson practice): ``nvpmodel -m 0`` and ``jetson_clocks`` on the device
first, then ``trtexec --onnx=M --stronglyTyped --useCudaGraph --noDataTransfers --useSpinWait
--warmUp=W --iterations=N --avgRuns=A --exportTimes=T --exportLayerInfo=L --profilingVerbosity=detailed``.

Typing (:func:`build_plan`). The exported ONNX carries every layer's precision itself: fp16 layers
are fp16 in the graph, int8 layers are QuantizeLinear/DequantizeLinear (explicit quantization).

* TensorRT >= 10: a strongly typed build (``--stronglyTyped``; ``NetworkDefinitionCreationFlag.
  STRONGLY_TYPED`` in the Python API). TensorRT follows the graph's types and no precision flag is
  passed. Weak typing (``--fp16 --int8``, ``BuilderFlag.FP16|INT8``) is deprecated in 10.12 and
  removed in 11, and it let TensorRT run the policy's fp32 layers in fp16. On TensorRT 11 every
  network is strongly typed and the flag is accepted as a no-op (TensorRT 10.x -> 11.x migration
  guide), so it is passed there too.
* TensorRT < 10 (JetPack 5 and older): the weak-typing flags the policy needs (``--fp16`` when it
  has fp16 layers, ``--int8`` when it has int8 layers) with ``--precisionConstraints=obey`` and
  ``--layerPrecisions=<node>:fp32|fp16,...`` for every fp32/fp16 compute node of the ONNX, so that
  TensorRT may not pick another precision for them; int8 nodes are placed by their Q/DQ.

The version comes from the trtexec banner (``trtexec --help``: ``[TensorRT v100300]``) unless the
device names it (``trt_version``); an unknown version is built strongly typed, as today's TensorRT.

Timing: the latency is the median of the per-iteration GPU compute times that ``--exportTimes``
writes (a JSON list of ``{"startEnqMs", ..., "computeMs", ..., "latencyMs"}``), so that mean, p90,
p99 and CV are computed from the samples themselves. Logs without that file (older runs, a copy that
was lost) fall back to the "GPU Compute Time" line of the performance summary.

Precision check (:func:`check_precision`): after the build the exported layer information is read
back; every engine compute layer (convolution, GEMM) is matched to the ONNX nodes it was fused from
(engine layer names join node names with `` + ``) and its precision compared with the policy's
precision of those nodes (:func:`autocomp.compress.inspect.layer_precisions`). A layer that runs at
another precision (a fallback) flags the measurement and is listed in its notes, or raises with
``strict``. Without the ONNX policy the check falls back to the requested precision as a whole
(:func:`check_engine_precision`).

The parsers are pure functions over text, tested on real trtexec output of TensorRT 8.x and 10.x
(tests/fixtures/trtexec/). TensorRT 11's inspector splits ``Format/Datatype`` into ``Format`` and
``DataType``; both are read.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence


from autocomp.measure import fingerprint as fp_mod
from autocomp.measure.base import Measurement

CV_THRESHOLD = 0.05  # GPU timings on a locked-clock device are tight; trtexec itself warns above ~1-5%
PRECISIONS = ("fp32", "fp16", "int8", "mixed")
STRONG_TYPING_MIN_MAJOR = 10  # --stronglyTyped / STRONGLY_TYPED exist from TensorRT 10 on; 11 has only strong typing

# --------------------------------------------------------------------------- build plan and command


def major_version(version: str | None) -> int | None:
    """``'10.3.0'`` -> 10; None for an unknown version."""
    m = re.match(r"\s*(\d+)", version or "")
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class BuildPlan:
    """How an engine is typed for one TensorRT version: strongly typed, or weak-typing flags with
    per-layer precision constraints (TensorRT < 10)."""

    strongly_typed: bool
    flags: tuple[str, ...] = ()  # weak typing only: "fp16", "int8", "best"
    layer_precisions: Mapping[str, str] = field(default_factory=dict)  # node -> fp32 | fp16 (obeyed)

    @property
    def typing(self) -> str:
        return "strong" if self.strongly_typed else "weak"

    def trtexec_args(self) -> list[str]:
        if self.strongly_typed:
            return ["--stronglyTyped"]
        args = [f"--{f}" for f in self.flags]
        if self.layer_precisions:
            spec = ",".join(f"{n}:{p}" for n, p in self.layer_precisions.items())
            args += ["--precisionConstraints=obey", f"--layerPrecisions={spec}", f"--layerOutputTypes={spec}"]
        return args


def build_plan(version: str | None, precision: str, policy: Mapping[str, str] | None = None) -> BuildPlan:
    """The typing of a build on TensorRT ``version`` (None: unknown, built strongly typed) for a
    candidate of ``precision`` whose ONNX compute nodes have the precisions ``policy`` ({node: fp32 |
    fp16 | int8}, :func:`onnx_policy`). See the module docstring."""
    if precision not in PRECISIONS + ("best",):
        raise ValueError(f"unknown precision {precision!r}; expected one of {list(PRECISIONS)}")
    major = major_version(version)
    if major is None or major >= STRONG_TYPING_MIN_MAJOR:
        if precision == "best":
            raise ValueError("precision 'best' is weak typing (TensorRT < 10); a strongly typed build takes the ONNX's types")
        return BuildPlan(True)
    policy = dict(policy or {})
    wanted = set(policy.values()) | ({precision} if precision != "mixed" else {"fp16", "int8"})
    if precision == "best":
        return BuildPlan(False, ("best",))
    flags = tuple(f for f in ("fp16", "int8") if f in wanted)
    # int8 nodes are placed by their Q/DQ; fp32/fp16 nodes may not run at any other precision
    constraints = {n: p for n, p in policy.items() if p in ("fp32", "fp16") and not re.search(r"[,:\s]", n)}
    return BuildPlan(False, flags, constraints)


def precision_flags(precision: str, version: str | None = None) -> list[str]:
    """The trtexec typing flags for a candidate precision on TensorRT ``version`` (without a policy:
    on TensorRT < 10 only the weak-typing flags)."""
    return build_plan(version, precision).trtexec_args()


def build_command(onnx: str | Path, precision: str, *, trt_version: str | None = None,
                  policy: Mapping[str, str] | None = None, warmup_ms: int = 500, iterations: int = 500,
                  avg_runs: int = 100, use_cuda_graph: bool = True, layer_info: str | Path | None = None,
                  times: str | Path | None = None, save_engine: str | Path | None = None, trtexec: str = "trtexec",
                  extra: Sequence[str] = ()) -> list[str]:
    """The trtexec command line (argv list) for one measurement on TensorRT ``trt_version``."""
    cmd = [trtexec, f"--onnx={onnx}", *build_plan(trt_version, precision, policy).trtexec_args()]
    if use_cuda_graph:
        cmd.append("--useCudaGraph")
    cmd += ["--noDataTransfers", "--useSpinWait", f"--warmUp={int(warmup_ms)}", f"--iterations={int(iterations)}",
            f"--avgRuns={int(avg_runs)}"]
    if times is not None:
        cmd.append(f"--exportTimes={times}")
    if layer_info is not None:
        cmd += [f"--exportLayerInfo={layer_info}", "--profilingVerbosity=detailed"]
    if save_engine is not None:
        cmd.append(f"--saveEngine={save_engine}")
    cmd += list(extra)
    return cmd


def onnx_policy(onnx_path: str | Path) -> dict[str, str]:
    """{compute node name: fp32 | fp16 | int8} of an exported ONNX, as its types and Q/DQ say
    (:func:`autocomp.compress.inspect.layer_precisions`); empty when the file cannot be read."""
    path = Path(onnx_path)
    if not path.is_file():
        return {}
    from autocomp.compress.inspect import layer_precisions

    try:
        return {lp.node: lp.precision for lp in layer_precisions(path) if lp.node}
    except Exception:  # not an ONNX file: no policy, the aggregate check applies
        return {}


# --------------------------------------------------------------------------- output parsing


@dataclass(frozen=True)
class TimingStats:
    """One line of trtexec's performance summary, in milliseconds (None where not printed)."""

    min_ms: float | None
    max_ms: float | None
    mean_ms: float | None
    median_ms: float | None
    p90_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


_NUM = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_FIELD = {
    "min": "min_ms", "max": "max_ms", "mean": "mean_ms", "median": "median_ms",
    "percentile(90%)": "p90_ms", "percentile(95%)": "p95_ms", "percentile(99%)": "p99_ms",
}


def parse_summary_line(text: str, metric: str = "GPU Compute Time") -> TimingStats:
    """Parse ``<metric>: min = a ms, max = b ms, mean = c ms, median = d ms, percentile(90%) = e ms, ...``
    (the last summary of ``text``). TensorRT 8.0-8.4 print only percentile(99%), 8.5+ and 10.x also
    90% and 95%; copies of logs sometimes lose the ``=``, both are accepted. Raises ValueError when
    the metric is missing."""
    lines = [ln for ln in text.splitlines() if re.search(rf"(?:^|\]\s*){re.escape(metric)}:\s*min", ln.strip())]
    if not lines:
        raise ValueError(f"no '{metric}: min = ...' line in trtexec output (did the run finish? see its log)")
    line = lines[-1]
    found: dict[str, float] = {}
    for key, attr in _FIELD.items():
        m = re.search(rf"(?<![\w(]){re.escape(key)}\s*=?\s*{_NUM}\s*ms", line)
        if m:
            found[attr] = float(m.group(1))
    if "median_ms" not in found:
        raise ValueError(f"'{metric}' line has no median: {line.strip()!r}")
    return TimingStats(**{a: found.get(a) for a in _FIELD.values()})


def parse_times(text: str) -> list[float]:
    """Per-iteration GPU compute times (ms) of a ``--exportTimes`` JSON file: a list of one object
    per timed iteration, ``{"startEnqMs": .., "startComputeMs": .., "endComputeMs": .., "computeMs":
    .., "latencyMs": ..}`` (TensorRT 8.x-10.x; warm-up iterations are not written). Entries without
    ``computeMs`` (a count header) are skipped; ValueError when the file holds no iteration."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--exportTimes file is not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, list):
        raise ValueError(f"--exportTimes file holds {type(data).__name__}, expected a list of iterations")
    out = []
    for item in data:
        if isinstance(item, dict) and "computeMs" in item:
            out.append(float(item["computeMs"]))
        elif isinstance(item, dict) and "startComputeMs" in item and "endComputeMs" in item:
            out.append(float(item["endComputeMs"]) - float(item["startComputeMs"]))
    if not out:
        raise ValueError("--exportTimes file has no iteration with computeMs")
    return out


def parse_version(text: str) -> str | None:
    """TensorRT version of a trtexec log: ``[TensorRT v100300]`` -> ``10.3.0``, ``v8601`` -> ``8.6.1``,
    or the ``TensorRT version: 8.6.3`` line."""
    m = re.search(r"TensorRT version:\s*([0-9][0-9.]*)", text)
    if m:
        return m.group(1).rstrip(".")
    m = re.search(r"\[TensorRT v(\d+)\]", text)
    if not m:
        return None
    v = m.group(1)
    if len(v) == 4:  # v8601: major, minor, patch, build
        return f"{v[0]}.{v[1]}.{v[2]}"
    if len(v) == 6:  # v100300: major (2 digits), minor (2), patch (2)
        return f"{int(v[:2])}.{int(v[2:4])}.{int(v[4:])}"
    return v


def parse_cv_warning(text: str) -> float | None:
    """trtexec's own instability warning: ``coefficient of variance = 5.10254%`` -> 0.0510254."""
    m = re.search(r"coefficient of variance\s*=\s*" + _NUM + r"\s*%", text)
    return float(m.group(1)) / 100.0 if m else None


# --------------------------------------------------------------------------- engine precision


_COMPUTE_PARAM = {"Convolution", "Deconvolution", "FullyConnected", "MatrixMultiply", "Gemm"}


def _dtype_of(fmt: str) -> str | None:
    f = fmt.lower()
    if "int8" in f:
        return "int8"
    if "fp16" in f or "half" in f:
        return "fp16"
    if "bf16" in f:
        return "bf16"
    if "fp32" in f or "float" in f or "tf32" in f:
        return "fp32"
    return None


def _tensor_dtype(t: Mapping[str, Any]) -> str | None:
    """A tensor's data type in layer info: ``Format/Datatype`` (TensorRT 8.x-10.x, e.g. "Thirty-two
    wide channel vectorized row major Int8 format") or ``DataType`` (TensorRT 11, beside ``Format``)."""
    for key in ("Format/Datatype", "DataType", "Datatype"):
        if t.get(key):
            return _dtype_of(str(t[key]))
    return None


@dataclass(frozen=True)
class EngineLayer:
    name: str
    layer_type: str
    precision: str | None  # int8 | fp16 | fp32 | None (unknown: layer info without detail)
    compute: bool  # a convolution / GEMM (the layers whose precision matters)


def _layer_from_dict(d: dict[str, Any]) -> EngineLayer:
    ltype = str(d.get("LayerType", ""))
    ptype = str(d.get("ParameterType", ""))
    compute = ptype in _COMPUTE_PARAM or any(k in ltype for k in ("Convolution", "Gemm", "MatrixMultiply", "FullyConnected"))
    prec = None
    w = d.get("Weights")
    if isinstance(w, dict) and w.get("Type"):
        prec = _dtype_of(str(w["Type"]))
    ins = d.get("Inputs") or []
    if ins and isinstance(ins[0], dict):
        p_in = _tensor_dtype(ins[0])
        # int8 convolutions read int8 activations (their weights may show as Int8 or as Float when
        # TensorRT quantizes them at build time); the input format decides
        if p_in == "int8" or prec is None:
            prec = p_in or prec
    return EngineLayer(str(d.get("Name", "")), ltype, prec, compute)


def parse_layer_info(text: str) -> list[EngineLayer]:
    """Layers of a trtexec ``--exportLayerInfo`` JSON (``{"Layers": [...]}``; with
    ``--profilingVerbosity=detailed`` each layer is a dict, otherwise only its name) or of the verbose
    ``--dumpLayerInfo`` text (``Name: ..., LayerType: ..., Inputs: [...Format/Datatype: ...]``)."""
    text = text.strip()
    if text.startswith("{"):
        data = json.loads(text)
        out = []
        for item in data.get("Layers", []):
            if isinstance(item, dict):
                out.append(_layer_from_dict(item))
            else:
                out.append(EngineLayer(str(item), "", None, False))
        return out
    layers = []
    for line in text.splitlines():
        m = re.search(r"Name:\s*(.*?),\s*LayerType:\s*([^,]+),", line)
        if not m:
            continue
        d: dict[str, Any] = {"Name": m.group(1), "LayerType": m.group(2).strip()}
        fm = re.search(r"Inputs:\s*\[\s*\{[^}]*?(?:Format/Datatype|DataType):\s*([^},]+?)\s*[},]", line)
        if fm:
            d["Inputs"] = [{"Format/Datatype": fm.group(1)}]
        pm = re.search(r"ParameterType:\s*([A-Za-z]+)", line)
        if pm:
            d["ParameterType"] = pm.group(1)
        wm = re.search(r'Weights:\s*\{"Type":\s*"(\w+)"', line)
        if wm:
            d["Weights"] = {"Type": wm.group(1)}
        layers.append(_layer_from_dict(d))
    return layers


def check_engine_precision(layers: Sequence[EngineLayer], requested: str) -> list[str]:
    """Problems with the built engine's precision as a whole (empty: it is what was asked for), for
    when the ONNX policy is not at hand (:func:`check_precision` checks layer by layer).

    fp16: no compute layer left in fp32. int8: at least one int8 compute layer (a QDQ model with
    every layer fallen back to fp16/fp32 is the silent failure). mixed: the engine has int8 layers.
    fp32: no compute layer in reduced precision. Layer info without per-layer detail yields one
    problem saying so.
    """
    compute = [la for la in layers if la.compute]
    if not compute or all(la.precision is None for la in compute):
        return [] if requested == "fp32" and not compute else \
            ["layer info has no per-layer precision (build with --profilingVerbosity=detailed)"]
    counts: dict[str | None, int] = {}
    for la in compute:
        counts[la.precision] = counts.get(la.precision, 0) + 1
    problems = []
    if requested == "fp32" and (counts.get("fp16") or counts.get("int8")):
        low = counts.get("fp16", 0) + counts.get("int8", 0)
        problems.append(f"{low} of {len(compute)} compute layers run in reduced precision in an fp32 candidate")
    if requested == "fp16" and counts.get("fp32"):
        names = [la.name for la in compute if la.precision == "fp32"][:3]
        problems.append(f"{counts['fp32']} of {len(compute)} compute layers fell back to fp32 (e.g. {names})")
    if requested in ("int8", "mixed") and not counts.get("int8"):
        problems.append(f"no int8 compute layer in the engine ({ {k: v for k, v in counts.items()} }); QDQ placement was not honoured")
    if requested == "int8" and counts.get("fp32"):
        problems.append(f"{counts['fp32']} of {len(compute)} compute layers run in fp32")
    return problems


def _node_tokens(layer_name: str) -> set[str]:
    """The names an engine layer was fused from: ``w + QuantizeLinear_8 + Conv_12 + PWN(Clip_16)``
    -> {w, QuantizeLinear_8, Conv_12, Clip_16}."""
    return {t.strip() for t in re.split(r"\s\+\s|\bPWN\(|\)(?=\s|$)", layer_name) if t.strip()}


@dataclass(frozen=True)
class PrecisionCheck:
    """The engine's compute layers against the policy, layer by layer."""

    problems: list[str]  # empty: every checked layer runs at its policy's precision
    fallbacks: list[dict[str, str]]  # {layer, nodes, policy, engine} of each layer at another precision
    checked: int  # engine compute layers matched to policy nodes
    unmatched: list[str]  # policy nodes named by no engine layer (fused away or renamed by TensorRT)


def check_precision(layers: Sequence[EngineLayer], policy: Mapping[str, str], requested: str) -> PrecisionCheck:
    """Every engine compute layer built from policy nodes must run at their precision. Without a
    policy, without layer info, or when no engine layer names a policy node (a Myelin
    ``{ForeignNode[...]}``), the aggregate :func:`check_engine_precision` applies instead."""
    if not layers:
        return PrecisionCheck(["no layer info exported"], [], 0, sorted(policy))
    compute = [la for la in layers if la.compute]
    seen: set[str] = set()
    fallbacks: list[dict[str, str]] = []
    unknown = checked = 0
    for la in compute:
        nodes = sorted(_node_tokens(la.name) & set(policy))
        if not nodes:
            continue
        checked += 1
        seen.update(nodes)
        want = {policy[n] for n in nodes}
        if la.precision is None:
            unknown += 1
        elif la.precision not in want:
            fallbacks.append({"layer": la.name, "nodes": ",".join(nodes), "policy": "/".join(sorted(want)),
                              "engine": la.precision})
    unmatched = sorted(set(policy) - seen)
    if not checked:
        return PrecisionCheck(check_engine_precision(layers, requested), [], 0, unmatched)
    problems = []
    if fallbacks:
        shown = "; ".join(f"{f['nodes']}: policy {f['policy']}, engine {f['engine']}" for f in fallbacks[:3])
        problems.append(f"{len(fallbacks)} of {checked} compute layers run at another precision than the policy's ({shown})")
    if unknown == checked:
        problems.append("layer info has no per-layer precision (build with --profilingVerbosity=detailed)")
    return PrecisionCheck(problems, fallbacks, checked, unmatched)


def precision_counts(layers: Sequence[EngineLayer]) -> dict[str, int]:
    out: dict[str, int] = {}
    for la in layers:
        if la.compute:
            k = la.precision or "unknown"
            out[k] = out.get(k, 0) + 1
    return out


# --------------------------------------------------------------------------- running


def _run(cmd: list[str], ssh: str | None, timeout_s: float) -> subprocess.CompletedProcess:
    argv = ["ssh", "-o", "BatchMode=yes", ssh, shlex.join(cmd)] if ssh else cmd
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise RuntimeError(f"{argv[0]!r} not found: install TensorRT (trtexec) or set the device's ssh host") from None


# One shell script probes what selects a TensorRT device's kernels; each probe's output follows its marker.
_PROBES = {
    "model": "cat /proc/device-tree/model 2>/dev/null | tr -d '\\0'",
    "l4t": "cat /etc/nv_tegra_release 2>/dev/null",
    "gpu": "nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1",
    "smi": "nvidia-smi 2>/dev/null | head -5",
    "nvcc": "(nvcc --version || /usr/local/cuda/bin/nvcc --version) 2>/dev/null",
    "trt": "{trtexec} --help 2>&1 | head -3",
    "nvpmodel": "nvpmodel -q 2>/dev/null",
    "clocks": "sudo -n jetson_clocks --show 2>/dev/null",
}


def parse_probes(text: str) -> dict[str, str]:
    """Split the probe script's output into {probe: text}."""
    out: dict[str, str] = {}
    for part in text.split("@@autocomp-probe ")[1:]:
        name, _, body = part.partition("\n")
        out[name.strip()] = body
    return out


def fingerprint_from_probes(probes: dict[str, str], backend: str = "trtexec", batch: int = 1) -> dict:
    model = probes.get("model", "").strip() or None
    gpu = probes.get("gpu", "").strip() or None
    return fp_mod.tensorrt(
        backend, gpu=gpu or model, trt_version=fp_mod.parse_trt_version(probes.get("trt", "")),
        cuda=fp_mod.parse_cuda_version(probes.get("nvcc", "")) or fp_mod.parse_cuda_version(probes.get("smi", "")),
        batch=batch, jetson_module=model if model and "jetson" in model.lower() else None,
        l4t=fp_mod.parse_l4t(probes.get("l4t", "")), power_mode=fp_mod.parse_nvpmodel(probes.get("nvpmodel", "")),
        clocks_locked=fp_mod.parse_jetson_clocks(probes.get("clocks", "")))


def fingerprint(*, ssh: str | None = None, trtexec: str = "trtexec", batch: int = 1, **_options: Any) -> dict:
    """The fingerprint of the machine trtexec runs on (``ssh`` host or here)."""
    script = "; ".join(f"echo '@@autocomp-probe {k}'; {v.format(trtexec=shlex.quote(trtexec))}" for k, v in _PROBES.items())
    proc = _run(["sh", "-c", script], ssh, 120)
    fp = fingerprint_from_probes(parse_probes(proc.stdout), "trtexec", batch)
    if fp["gpu"] is None and fp["backend_version"] is None:
        raise RuntimeError(f"no NVIDIA GPU or trtexec found on {ssh or 'this machine'}")
    return fp


_VERSIONS: dict[tuple[str, str | None], str | None] = {}


def detect_version(trtexec: str = "trtexec", ssh: str | None = None) -> str | None:
    """The TensorRT version of ``trtexec`` (on ``ssh`` host or here) from its banner, cached."""
    key = (trtexec, ssh)
    if key not in _VERSIONS:
        proc = _run([trtexec, "--help"], ssh, 120)
        _VERSIONS[key] = parse_version(proc.stdout + proc.stderr)
    return _VERSIONS[key]


def measure(onnx_path: Path, *, device: str, precision: str, warmup_ms: int = 500, iterations: int = 500, avg_runs: int = 100,
            use_cuda_graph: bool = True, ssh: str | None = None, remote_dir: str = "/tmp/autocomp", trtexec: str = "trtexec",
            timeout_s: float = 1800, strict: bool = False, cv_threshold: float = CV_THRESHOLD, batch: int = 1,
            trt_version: str | None = None) -> Measurement:
    """Build and time ``onnx_path`` with trtexec (on ``ssh`` host when given: the model is copied
    there with scp, the layer info and times copied back). See the module docstring for the protocol."""
    onnx_path = Path(onnx_path)
    version = trt_version or detect_version(trtexec, ssh)
    policy = onnx_policy(onnx_path)
    with tempfile.TemporaryDirectory() as tmp:
        local = {"layers": Path(tmp) / "layers.json", "times": Path(tmp) / "times.json"}
        if ssh:
            rdir = f"{remote_dir}/{onnx_path.stem}-{abs(hash(str(onnx_path))) % 10**8}"
            subprocess.run(["ssh", "-o", "BatchMode=yes", ssh, f"mkdir -p {shlex.quote(rdir)}"], check=True, timeout=60)
            subprocess.run(["scp", "-q", str(onnx_path), f"{ssh}:{rdir}/model.onnx"], check=True, timeout=300)
            model, info, times = f"{rdir}/model.onnx", f"{rdir}/layers.json", f"{rdir}/times.json"
        else:
            model, info, times = str(onnx_path), str(local["layers"]), str(local["times"])
        cmd = build_command(model, precision, trt_version=version, policy=policy, warmup_ms=warmup_ms,
                            iterations=iterations, avg_runs=avg_runs, use_cuda_graph=use_cuda_graph, layer_info=info,
                            times=times, trtexec=trtexec)
        proc = _run(cmd, ssh, timeout_s)
        log = proc.stdout + proc.stderr
        if proc.returncode != 0:
            tail = " | ".join(log.strip().splitlines()[-3:])
            raise RuntimeError(f"trtexec failed (exit {proc.returncode}): {tail}")
        if ssh:
            for name, remote in (("layers", info), ("times", times)):
                subprocess.run(["scp", "-q", f"{ssh}:{remote}", str(local[name])], check=False, timeout=120)
        layers = parse_layer_info(local["layers"].read_text()) if local["layers"].exists() else []
        samples = parse_times(local["times"].read_text()) if local["times"].exists() else None
    check = check_precision(layers, policy, precision)
    if check.problems and strict:
        raise RuntimeError(f"engine precision does not match {precision!r}: {'; '.join(check.problems)}")
    plan = build_plan(version, precision, policy)
    notes = {"command": shlex.join(cmd), "ssh": ssh, "warmup_unit": "ms", "trt_version": version, "typing": plan.typing,
             "timing": "exportTimes" if samples else "summary", "engine_precision": precision_counts(layers),
             "precision_problems": check.problems, "precision_fallbacks": check.fallbacks[:20],
             "layers_checked": check.checked, "policy_nodes_unmatched": check.unmatched[:20]}
    protocol = dict(device=device, backend="trtexec", backend_version=parse_version(log) or version or "unknown",
                    precision=precision, batch=batch, threads=0, warmup=int(warmup_ms), host=ssh or __import__("platform").node())
    if samples:
        m = Measurement.from_samples(samples, **protocol, notes=json.dumps(notes))
        return Measurement(**{**m.to_dict(), "flagged": bool(check.problems) or m.cv > cv_threshold})
    stats = parse_summary_line(log)
    mean = stats.mean_ms or stats.median_ms
    # trtexec does not print the standard deviation; its warning gives the CV when it exceeds ~1%,
    # else estimate it from the spread (p90 - median ~ 1.28 sigma for a normal distribution)
    cv = parse_cv_warning(log)
    if cv is None and stats.p90_ms is not None and mean:
        cv = max(stats.p90_ms - stats.median_ms, 0.0) / 1.2816 / mean
    cv = cv or 0.0
    notes.update(min_ms=stats.min_ms, max_ms=stats.max_ms)
    return Measurement(
        **protocol, repeats=int(iterations), statistic="median", median_ms=stats.median_ms, mean_ms=mean,
        p90_ms=stats.p90_ms if stats.p90_ms is not None else (stats.p99_ms or stats.median_ms),
        p99_ms=stats.p99_ms if stats.p99_ms is not None else stats.median_ms, cv=float(cv),
        flagged=bool(check.problems) or cv > cv_threshold, notes=json.dumps(notes),
    )
