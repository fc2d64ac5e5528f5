"""trtexec backend: build and time a TensorRT engine with NVIDIA's ``trtexec`` (locally or over ssh).

Protocol (NVIDIA ModelOpt / Jetson practice): ``nvpmodel -m 0`` and ``jetson_clocks`` on the device
first, then ``trtexec --onnx=M --fp16|--int8|--best --useCudaGraph --noDataTransfers --useSpinWait
--warmUp=W --iterations=N --avgRuns=A --exportLayerInfo=L --profilingVerbosity=detailed``. The latency
is the median of the "GPU Compute Time" line of the performance summary (mean, p90 and p99 from the
same line). TensorRT silently falls back to fp32 for layers it cannot run at the requested precision,
so the exported layer info is read back and the engine's per-layer precision checked
(:func:`check_engine_precision`); a mismatch flags the measurement (or raises, with ``strict``).

The parsers are pure functions over text, tested on real trtexec output of TensorRT 8.x and 10.x
(tests/fixtures/trtexec/).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from autocomp.measure.base import Measurement

CV_THRESHOLD = 0.05  # GPU timings on a locked-clock device are tight; trtexec itself warns above ~1-5%

# --------------------------------------------------------------------------- command


def precision_flags(precision: str) -> list[str]:
    """trtexec builder flags for a candidate precision. A QDQ ONNX (explicit quantization) carries
    its int8 placement itself; ``--int8`` allows it, ``--fp16`` lets the rest run in half."""
    flags = {
        "fp32": [],
        "fp16": ["--fp16"],
        "int8": ["--int8", "--fp16"],  # int8 layers where QDQ says, fp16 elsewhere (explicit quantization)
        "mixed": ["--int8", "--fp16"],
        "best": ["--best"],
    }
    if precision not in flags:
        raise ValueError(f"unknown precision {precision!r}; expected one of {sorted(flags)}")
    return flags[precision]


def build_command(onnx: str | Path, precision: str, *, warmup_ms: int = 500, iterations: int = 500, avg_runs: int = 100,
                  use_cuda_graph: bool = True, layer_info: str | Path | None = None, save_engine: str | Path | None = None,
                  trtexec: str = "trtexec", extra: Sequence[str] = ()) -> list[str]:
    """The trtexec command line (argv list) for one measurement."""
    cmd = [trtexec, f"--onnx={onnx}", *precision_flags(precision)]
    if use_cuda_graph:
        cmd.append("--useCudaGraph")
    cmd += ["--noDataTransfers", "--useSpinWait", f"--warmUp={int(warmup_ms)}", f"--iterations={int(iterations)}",
            f"--avgRuns={int(avg_runs)}"]
    if layer_info is not None:
        cmd += [f"--exportLayerInfo={layer_info}", "--profilingVerbosity=detailed"]
    if save_engine is not None:
        cmd.append(f"--saveEngine={save_engine}")
    cmd += list(extra)
    return cmd


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
        p_in = _dtype_of(str(ins[0].get("Format/Datatype", "")))
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
        fm = re.search(r"Inputs:\s*\[\s*\{[^}]*?Format/Datatype:\s*([^}]+?)\s*\}", line)
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
    """Problems with the built engine's precision (empty: it is what was asked for).

    fp16: no compute layer left in fp32. int8: at least one int8 compute layer (a QDQ model with
    every layer fallen back to fp16/fp32 is the silent failure). mixed: the engine has int8 layers.
    fp32: nothing to check. Layer info without per-layer detail yields one problem saying so.
    """
    compute = [la for la in layers if la.compute]
    if requested == "fp32":
        return []
    if not compute or all(la.precision is None for la in compute):
        return ["layer info has no per-layer precision (build with --profilingVerbosity=detailed)"]
    counts: dict[str | None, int] = {}
    for la in compute:
        counts[la.precision] = counts.get(la.precision, 0) + 1
    problems = []
    if requested == "fp16" and counts.get("fp32"):
        names = [la.name for la in compute if la.precision == "fp32"][:3]
        problems.append(f"{counts['fp32']} of {len(compute)} compute layers fell back to fp32 (e.g. {names})")
    if requested in ("int8", "mixed") and not counts.get("int8"):
        problems.append(f"no int8 compute layer in the engine ({ {k: v for k, v in counts.items()} }); QDQ placement was not honoured")
    if requested == "int8" and counts.get("fp32"):
        problems.append(f"{counts['fp32']} of {len(compute)} compute layers run in fp32")
    return problems


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


def measure(onnx_path: Path, *, device: str, precision: str, warmup_ms: int = 500, iterations: int = 500, avg_runs: int = 100,
            use_cuda_graph: bool = True, ssh: str | None = None, remote_dir: str = "/tmp/autocomp", trtexec: str = "trtexec",
            timeout_s: float = 1800, strict: bool = False, cv_threshold: float = CV_THRESHOLD, batch: int = 1) -> Measurement:
    """Build and time ``onnx_path`` with trtexec (on ``ssh`` host when given: the model is copied
    there with scp and the layer info copied back). See the module docstring for the protocol."""
    onnx_path = Path(onnx_path)
    with tempfile.TemporaryDirectory() as tmp:
        if ssh:
            rdir = f"{remote_dir}/{onnx_path.stem}-{abs(hash(str(onnx_path))) % 10**8}"
            subprocess.run(["ssh", "-o", "BatchMode=yes", ssh, f"mkdir -p {shlex.quote(rdir)}"], check=True, timeout=60)
            subprocess.run(["scp", "-q", str(onnx_path), f"{ssh}:{rdir}/model.onnx"], check=True, timeout=300)
            model, info = f"{rdir}/model.onnx", f"{rdir}/layers.json"
        else:
            model, info = str(onnx_path), str(Path(tmp) / "layers.json")
        cmd = build_command(model, precision, warmup_ms=warmup_ms, iterations=iterations, avg_runs=avg_runs,
                            use_cuda_graph=use_cuda_graph, layer_info=info, trtexec=trtexec)
        proc = _run(cmd, ssh, timeout_s)
        log = proc.stdout + proc.stderr
        if proc.returncode != 0:
            tail = " | ".join(log.strip().splitlines()[-3:])
            raise RuntimeError(f"trtexec failed (exit {proc.returncode}): {tail}")
        if ssh:
            subprocess.run(["scp", "-q", f"{ssh}:{info}", str(Path(tmp) / "layers.json")], check=False, timeout=120)
        info_path = Path(tmp) / "layers.json"
        layers = parse_layer_info(info_path.read_text()) if info_path.exists() else []
    stats = parse_summary_line(log)
    problems = check_engine_precision(layers, precision) if layers else ["no layer info exported"]
    if problems and strict:
        raise RuntimeError(f"engine precision does not match {precision!r}: {'; '.join(problems)}")
    mean = stats.mean_ms or stats.median_ms
    # trtexec does not print the standard deviation; its warning gives the CV when it exceeds ~1%,
    # else estimate it from the spread (p90 - median ~ 1.28 sigma for a normal distribution)
    cv = parse_cv_warning(log)
    if cv is None and stats.p90_ms is not None and mean:
        cv = max(stats.p90_ms - stats.median_ms, 0.0) / 1.2816 / mean
    cv = cv or 0.0
    notes = {"command": shlex.join(cmd), "ssh": ssh, "warmup_unit": "ms", "engine_precision": precision_counts(layers),
             "precision_problems": problems, "min_ms": stats.min_ms, "max_ms": stats.max_ms}
    return Measurement(
        device=device, backend="trtexec", backend_version=parse_version(log) or "unknown", precision=precision,
        batch=batch, threads=0, warmup=int(warmup_ms), repeats=int(iterations), statistic="median",
        median_ms=stats.median_ms, mean_ms=mean, p90_ms=stats.p90_ms if stats.p90_ms is not None else (stats.p99_ms or stats.median_ms),
        p99_ms=stats.p99_ms if stats.p99_ms is not None else stats.median_ms, cv=float(cv),
        host=ssh or __import__("platform").node(), flagged=bool(problems) or cv > cv_threshold, notes=json.dumps(notes),
    )
