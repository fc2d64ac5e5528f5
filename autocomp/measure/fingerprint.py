"""A device fingerprint: whatever selects the kernels that a latency figure was measured with.

A latency figure, a measurement table and a predictor are valid only for the fingerprint that
measured them. Two machines with the same fingerprint run the same kernels; a different CPU ISA
class, runtime version, thread count, batch, GPU, JetPack, TensorRT or power mode is a new device.

* ONNX Runtime on a CPU (:func:`cpu`): CPU model, architecture, the ISA features that pick
  ONNX Runtime's kernels (vector width for its blocked NCHWc layout, VNNI/AMX for integer GEMMs,
  fp16/bf16 support), whether QDQ integer fusion runs, ONNX Runtime version, threads, batch.
  Also the host's identity behind the model name (:data:`HOST_KEYS`): a cloud VM reports "AMD EPYC"
  for a Zen 4 and a Zen 5 alike, so the CPUID family/model/stepping and the cache sizes are part of
  it; they decide the speed of the same kernels.
* TensorRT (:func:`tensorrt`): GPU or SoC, Jetson module, L4T release, TensorRT and CUDA versions,
  power mode (``nvpmodel -q``), whether clocks are locked (``jetson_clocks --show``). The parsers
  take the tools' text, so they are tested on real output without a GPU.

A fingerprint is a plain dict (JSON); :func:`fingerprint_id` is its stable short name,
``<readable slug>-<hash>``, used as the folder name of its table and predictor. A fingerprint
missing a field that selects kernels (a table written before fingerprints existed) never matches.

This module is a leaf: it imports nothing of autocomp.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import re
from pathlib import Path
from typing import Any

SCHEMA = 1
# /proc/cpuinfo flags that change which kernels ONNX Runtime (MLAS) picks on x86, and the ARM ones
ISA_FLAGS = (
    "sse4_1", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
    "asimd", "asimddp", "fphp", "asimdhp", "i8mm", "bf16", "sve", "sve2",
)
# the fields of a fingerprint that must be equal for two of them to match, per backend
KEYS = {
    "onnxruntime": ("backend", "arch", "cpu_model", "isa", "backend_version", "threads", "batch", "qdq_fusion"),
    "openvino": ("backend", "arch", "cpu_model", "isa", "backend_version", "threads", "batch"),
    "tensorrt": ("backend", "gpu", "jetson_module", "l4t", "backend_version", "cuda", "power_mode", "clocks_locked", "batch"),
}
KEYS["trtexec"] = KEYS["tensorrt"]
# the CPU's identity behind its model name: CPUID family.model.stepping (ARM: implementer.part.variant)
# and the cache sizes. Fingerprints from before they were recorded lack them: their ids stay what they
# were, and they match no fingerprint that has them (the same host cannot be shown).
HOST_KEYS = ("cpu_id", "caches")


# --------------------------------------------------------------------------- the CPU


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU model string (``/proc/cpuinfo``), or platform.processor()."""
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.lower().startswith(("model name", "hardware")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """The kernel-selecting ISA features of this CPU (``flags`` on x86, ``Features`` on ARM), sorted."""
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.lower().startswith(("flags", "features")):
            have = set(line.split(":", 1)[1].split())
            return sorted(f for f in ISA_FLAGS if f in have)
    return []


def vector_width(isa: list[str] | None) -> int:
    """SIMD width in bits that ONNX Runtime's float kernels use (its NCHWc block is width / 32 floats)."""
    isa = set(isa or ())
    if "avx512f" in isa:
        return 512
    if "avx2" in isa or "avx" in isa:
        return 256
    return 128


def has_int8_dot(isa: list[str] | None) -> bool:
    """VNNI / AMX (x86) or the dot-product extension (ARM): u8s8 integer GEMMs accumulate in int32,
    without the int16 saturation of plain AVX2's ``vpmaddubsw``."""
    return bool(set(isa or ()) & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"})


def cpu_id(cpuinfo: str | None = None) -> str | None:
    """The CPU's microarchitecture as CPUID reports it: ``family.model.stepping`` on x86,
    ``implementer.part.variant`` on ARM; None when /proc/cpuinfo does not say."""
    fields: dict[str, str] = {}
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if not line.strip() and fields:
            break  # the first processor's block
        if ":" in line:
            key, value = (x.strip().lower() for x in line.split(":", 1))
            fields.setdefault(key, value)
    for keys in (("cpu family", "model", "stepping"), ("cpu implementer", "cpu part", "cpu variant")):
        if all(k in fields for k in keys):
            return ".".join(fields[k] for k in keys)
    return None


def caches(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> str | None:
    """The data and unified caches one core sees, ``L1d 32K, L2 1024K, L3 32768K``; None when
    sysfs does not list them."""
    out = []
    for index in sorted(root.glob("index*")):
        try:
            level, kind, size = ((index / f).read_text().strip() for f in ("level", "type", "size"))
        except OSError:
            continue
        if kind != "Instruction":
            out.append(f"L{level}{'d' if kind == 'Data' else ''} {size}")
    return ", ".join(out) or None


@functools.lru_cache(maxsize=None)
def _this_cpu() -> tuple[str, str, tuple[str, ...]]:
    return cpu_model(), platform.machine(), tuple(cpu_flags())


@functools.lru_cache(maxsize=None)
def _this_host() -> dict[str, str]:
    return {k: v for k, v in (("cpu_id", cpu_id()), ("caches", caches())) if v is not None}


def this_cpu_flags() -> list[str]:
    """:func:`cpu_flags` of this machine, read once per process."""
    return list(_this_cpu()[2])


def cpu(backend: str, backend_version: str, threads: int, batch: int, **extra: Any) -> dict[str, Any]:
    """The fingerprint of a CPU runtime on this machine."""
    model, arch, isa = _this_cpu()
    return {"schema": SCHEMA, "backend": backend, "cpu_model": model, "arch": arch, "isa": list(isa), **_this_host(),
            "backend_version": backend_version, "threads": int(threads), "batch": int(batch), **extra}


# --------------------------------------------------------------------------- TensorRT / Jetson


def parse_l4t(text: str) -> str | None:
    """``/etc/nv_tegra_release`` (``# R36 (release), REVISION: 4.0, ...``) -> ``'36.4.0'``."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text or "")
    return f"{m.group(1)}.{m.group(2)}" if m else None


def parse_nvpmodel(text: str) -> str | None:
    """``nvpmodel -q`` (``NV Power Mode: MAXN`` then the mode id) -> ``'MAXN (0)'``."""
    m = re.search(r"NV Power Mode:\s*(\S+)", text or "")
    if not m:
        return None
    ids = [ln.strip() for ln in text[m.end():].splitlines() if ln.strip().isdigit()]
    return f"{m.group(1)} ({ids[0]})" if ids else m.group(1)


def parse_jetson_clocks(text: str) -> bool | None:
    """``jetson_clocks --show``: locked when every CPU and the GPU run at MinFreq == MaxFreq == CurrentFreq.
    Only the ``cpuN:`` and ``GPU`` lines count: jetson_clocks pins EMC (and the DLA/PVA clocks) by an
    override, so their MinFreq stays below MaxFreq when locked (``EMC MinFreq=204000000
    MaxFreq=1600000000 CurrentFreq=1600000000 FreqOverride=1``)."""
    rows = re.findall(r"^\s*(?:cpu\d+:.*?|GPU\s+)MinFreq=(\d+)\s+MaxFreq=(\d+)\s+CurrentFreq=(\d+)", text or "", re.M)
    if not rows:
        return None
    return all(lo == hi == cur for lo, hi, cur in rows)


def parse_trt_version(text: str) -> str | None:
    """trtexec's ``TensorRT version: 10.3.0`` or ``[TensorRT v100300]`` -> ``'10.3.0'``."""
    m = re.search(r"TensorRT version:\s*([\d.]+)", text or "")
    if m:
        return m.group(1)
    m = re.search(r"\[TensorRT v(\d+)\]", text or "")
    if m:
        v = int(m.group(1))  # vMMmmpp (10.x and later) or vMmmpp (8.x)
        major, rest = (v // 10000, v % 10000) if v >= 100000 else (v // 1000, v % 1000)
        return f"{major}.{rest // 100}.{rest % 100}"
    return None


def parse_cuda_version(text: str) -> str | None:
    """``nvcc --version`` (``release 12.6, V12.6.68``) or nvidia-smi's ``CUDA Version: 12.6``."""
    m = re.search(r"release\s+([\d.]+)", text or "") or re.search(r"CUDA Version:\s*([\d.]+)", text or "")
    return m.group(1) if m else None


def tensorrt(backend: str, *, gpu: str | None, trt_version: str | None, cuda: str | None, batch: int = 1,
             jetson_module: str | None = None, l4t: str | None = None, power_mode: str | None = None,
             clocks_locked: bool | None = None) -> dict[str, Any]:
    """The fingerprint of a TensorRT device from what its probes printed (see the ``parse_*`` helpers)."""
    return {"schema": SCHEMA, "backend": backend, "gpu": gpu, "jetson_module": jetson_module, "l4t": l4t,
            "backend_version": trt_version, "cuda": cuda, "power_mode": power_mode, "clocks_locked": clocks_locked,
            "batch": int(batch)}


# --------------------------------------------------------------------------- identity and matching


def _slug(fp: dict[str, Any]) -> str:
    if fp.get("gpu") or fp.get("jetson_module"):
        parts = [fp.get("jetson_module") or fp.get("gpu"), f"trt{fp.get('backend_version')}", fp.get("power_mode")]
    else:
        isa = fp.get("isa")
        isa_class = "isa-unknown" if isa is None else (
            ("avx512" if "avx512f" in isa else "avx2" if "avx2" in isa else fp.get("arch") or "cpu")
            + ("-vnni" if has_int8_dot(isa) else "") + ("-amx" if "amx_tile" in isa else ""))
        parts = [fp.get("cpu_model"), fp.get("cpu_id"), isa_class, f"{fp.get('backend')}{fp.get('backend_version')}",
                 f"t{fp.get('threads')}b{fp.get('batch')}"]
    text = "-".join(str(p) for p in parts if p)
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")[:60]


def _keys(fp: dict[str, Any]) -> tuple[str, ...]:
    """The fields that identify ``fp``: its backend's keys, plus the host keys it records (so a
    fingerprint written before those existed keeps its id)."""
    keys = KEYS.get(str(fp.get("backend")))
    if keys is None:
        return tuple(sorted(k for k in fp if k != "schema"))
    return keys + tuple(k for k in HOST_KEYS if k in fp)


def fingerprint_id(fp: dict[str, Any]) -> str:
    """``<slug>-<sha1 of the matching fields>``: stable, readable, safe as a folder name."""
    ident = json.dumps({k: fp.get(k) for k in _keys(fp)}, sort_keys=True)
    return f"{_slug(fp)}-{hashlib.sha1(ident.encode()).hexdigest()[:8]}"


def differences(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """The matching fields that differ (``field: have != want``); empty when they match. A field
    that either side lacks (``None``) counts as a difference: it cannot be shown to match."""
    keys = KEYS.get(str(want.get("backend")), tuple(sorted(set(have) | set(want))))
    host = tuple(k for k in HOST_KEYS if k not in keys and (k in have or k in want))
    out = []
    for k in keys + host:
        a, b = have.get(k), want.get(k)
        if a is None or b is None or a != b:
            out.append(f"{k}: {_short(a)} vs {_short(b)}")
    return out


def _short(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ",".join(map(str, v)) + "]"
    return "unknown" if v is None else str(v)


def matches(have: dict[str, Any], want: dict[str, Any]) -> bool:
    return not differences(have, want)


def similarity(a: dict[str, Any], b: dict[str, Any]) -> float:
    """How close two fingerprints are, for choosing the source of a calibration: same backend first,
    then the ISA class / GPU, then the rest (a score, higher is closer)."""
    if a.get("backend") != b.get("backend"):
        return 0.0
    score = 1.0
    if a.get("gpu") is not None or b.get("gpu") is not None:
        score += 4.0 * (a.get("gpu") == b.get("gpu")) + 2.0 * (a.get("jetson_module") == b.get("jetson_module"))
    else:
        ia, ib = a.get("isa"), b.get("isa")
        if ia is not None and ib is not None:
            score += 2.0 * (vector_width(ia) == vector_width(ib)) + 2.0 * (has_int8_dot(ia) == has_int8_dot(ib))
    for k in ("backend_version", "threads", "batch", "cpu_model", "cpu_id"):
        score += 0.5 * (a.get(k) == b.get(k) and a.get(k) is not None)
    return score


def dumps(fp: dict[str, Any]) -> str:
    return json.dumps(fp, sort_keys=True, separators=(",", ":"))
