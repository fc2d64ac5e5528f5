"""The measurement protocol and the device registry."""

from __future__ import annotations

import importlib
import os
import platform
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from autocomp.errors import UserError
from autocomp.measure import fingerprint, quiet


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
    ray_resource: str | None = None  # the Ray custom resource of its node; None: device:<name>
    expected_fingerprint: dict[str, Any] | None = None  # what the device's probe should find (devices/*.yaml)
    source: str = ""  # the device file it was read from ("" when registered in code)
    int8_export: str | None = None  # fused | dequant; None: the backend's default (see int8_scheme)

    @property
    def resource(self) -> str:
        """The Ray custom resource a node holding this device advertises."""
        return self.ray_resource or f"device:{self.name}"

    def measure(self, onnx_path: Path, precision: str = "fp32", **overrides: Any) -> Measurement:
        options = {**self.options, **overrides}
        with quiet.measuring(self.backend):  # the other trials on this node pause their computing
            m = backend(self.backend).measure(onnx_path, device=self.name, precision=precision, **options)
        fp = self.fingerprint(**overrides)
        return replace(m, fingerprint=fingerprint.dumps(fp), fingerprint_id=fingerprint.fingerprint_id(fp))

    def fingerprint(self, **overrides: Any) -> dict[str, Any]:
        """The fingerprint of the machine that measures for this device, probed here (on a cluster,
        call it on the device's node)."""
        return backend(self.backend).fingerprint(**{**self.options, **overrides})

    def int8_scheme(self, fp: dict[str, Any] | None = None) -> "Int8Scheme":
        """How int8 layers are exported for this device (:mod:`autocomp.compress.quantize`):

        * ``export``: the device file's ``int8_export``, else the backend's default
          (:data:`INT8_EXPORT_DEFAULTS`): ``fused`` where its runtime fuses Q/DQ into integer
          kernels (OpenVINO, TensorRT; ONNX Runtime on hosts with VNNI/AMX or ARM's dot product,
          where autocomp keeps its QDQ fusion on: :func:`autocomp.measure.onnxruntime.qdq_fusion`),
          else ``dequant``;
        * ``reduce_range``: 7-bit weights for a ``fused`` export on a CPU runtime whose host lacks
          int8 dot products (:func:`fingerprint.has_int8_dot`), where u8s8 kernels would saturate.

        ``fp``: the device's fingerprint (its ``isa`` names the host's CPU features); None: this
        machine's CPU (call it on the device's node)."""
        isa = fp["isa"] if fp is not None and "isa" in fp else fingerprint.this_cpu_flags()
        cpu = self.backend in CPU_BACKENDS
        export = self.int8_export or INT8_EXPORT_DEFAULTS.get(self.backend, "dequant")
        if export == "fused-if-int8-dot":
            export = "fused" if fingerprint.has_int8_dot(isa) else "dequant"
        return Int8Scheme(export, export == "fused" and cpu and not fingerprint.has_int8_dot(isa))


INT8_EXPORTS = ("fused", "dequant")  # autocomp.compress.quantize.INT8_EXPORTS (measure is a leaf: not imported)
# the default int8 export of each backend (a device file's int8_export overrides it); a backend added
# with register_backend gives its own or gets dequant (the placement every runtime runs correctly).
# "fused-if-int8-dot": fused on hosts with int8 dot products, where autocomp keeps ONNX Runtime's QDQ
# fusion on (autocomp.measure.onnxruntime.qdq_fusion), dequant elsewhere
INT8_EXPORT_DEFAULTS: dict[str, str] = {
    "onnxruntime": "fused-if-int8-dot", "openvino": "fused", "tensorrt": "fused", "trtexec": "fused",
}
REFERENCE_MODES = (False, True, "ratio")  # a CPU backend's ``reference`` option (autocomp.measure.reference)
CPU_BACKENDS = {"onnxruntime", "openvino"}  # u8s8 integer kernels on the host CPU: reduce_range matters


@dataclass(frozen=True)
class Int8Scheme:
    """The int8 export scheme of a device: ``export`` (fused | dequant) and ``reduce_range`` (7-bit weights)."""

    export: str = "dequant"
    reduce_range: bool = False

    @property
    def label(self) -> str:
        """``fused``, ``fused-7bit`` or ``dequant``: the value of the ``int8_export`` column of
        results.csv and measurement tables, and of the exported ONNX's ``autocomp.int8_export``."""
        return self.export + ("-7bit" if self.reduce_range else "")

    @classmethod
    def from_label(cls, label: str | None) -> "Int8Scheme":
        """The scheme of a recorded :attr:`label` (empty or None: ``dequant``, what tables written
        before the column existed hold)."""
        label = (label or "dequant").strip()
        export, _, bits = label.partition("-")
        if export not in INT8_EXPORTS or bits not in ("", "7bit"):
            raise UserError("int8_export", f"{label!r}", "fused, fused-7bit or dequant")
        return cls(export, bits == "7bit")

    def compress_kwargs(self) -> dict[str, Any]:
        """The arguments of :func:`autocomp.compress.compress` that select this scheme."""
        return {"int8_export": self.export, "reduce_range": self.reduce_range}


# backend name -> module providing ``measure(onnx_path, *, device, precision, **options) -> Measurement``
# and ``fingerprint(**options) -> dict``; imported lazily, so a missing TensorRT only matters to the
# devices that need it. ``register_backend`` adds one from outside autocomp.
BACKENDS: dict[str, str] = {
    "onnxruntime": "autocomp.measure.onnxruntime", "tensorrt": "autocomp.measure.tensorrt",
    "trtexec": "autocomp.measure.trtexec", "openvino": "autocomp.measure.openvino",
}


def register_backend(name: str, module: str, int8_export: str = "dequant", cpu: bool = False) -> None:
    """Register a backend module (``pkg.module`` with ``measure`` and ``fingerprint``) by name;
    ``int8_export``: its devices' default int8 export (fused where its runtime fuses Q/DQ into
    integer kernels); ``cpu``: it runs on the host CPU (7-bit weights where u8s8 would saturate)."""
    if int8_export not in INT8_EXPORTS:
        raise ValueError(f"int8_export {int8_export!r}: expected one of {INT8_EXPORTS}")
    BACKENDS[name] = module
    INT8_EXPORT_DEFAULTS[name] = int8_export
    if cpu:
        CPU_BACKENDS.add(name)


def backend(name: str) -> Any:
    if name not in BACKENDS:
        raise UserError("backend", f"unknown backend {name!r}", f"one of {sorted(BACKENDS)}")
    return importlib.import_module(BACKENDS[name])

# --------------------------------------------------------------------------- devices (devices/*.yaml)
#
# A device is data: one YAML file per device in the shipped devices/ folder and in the folders that
# $AUTOCOMP_DEVICES names (os.pathsep-separated). A Jetson, a GPU server or another CPU runtime is
# added with a file; ``register_device`` still adds one from code. Schema (schema_version 1):
#
#   schema_version: 1                  optional
#   name: jetson-orin-nx-trt           required, the file's stem; [a-z0-9][a-z0-9._-]*
#   backend: trtexec                   required, one of BACKENDS
#   precisions: [fp32, fp16, int8]     required, what the device can run
#   description: text                  optional
#   options: {warmup_ms: 500, ...}     the backend's protocol options (warm-up, iterations, threads,
#                                      batch, clock, ...), passed to its measure() and fingerprint()
#   host: user@jetson                  optional, the ssh host that runs the backend (backends with an
#                                      ``ssh`` option: trtexec); null: the node holding the device
#   ray_resource: device:orin-lab-3    optional, the Ray custom resource of the node holding it
#   expected_fingerprint: {...}        optional, fields the device's probe must find (see
#                                      :func:`fingerprint_mismatches`)
#   int8_export: fused                 optional, fused | dequant: how int8 layers are exported for it
#                                      (default: the backend's, see :meth:`Device.int8_scheme`)
#
# Files are read once, on the first lookup (:func:`reload_devices` reads them again). A malformed
# file is a UserError naming the file and the field (exit code 2 in the CLI).

DEVICE_SCHEMA = 1
PRECISIONS = ("fp32", "fp16", "int8")
DEVICE_KEYS = ("schema_version", "name", "backend", "precisions", "description", "options", "host", "ray_resource",
               "expected_fingerprint", "int8_export")
DEVICES_ENV = "AUTOCOMP_DEVICES"


class _Registry(dict):
    """``DEVICES``: a dict of the devices by name, filled from the device files on first use."""

    loaded = False

    def _load(self) -> None:
        if not self.loaded:
            self.loaded = True
            try:
                _read_all(self)
            except BaseException:
                self.loaded = False
                raise

    def __getitem__(self, key: str) -> Device:
        self._load()
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self._load()
        return super().__contains__(key)

    def __iter__(self):
        self._load()
        return super().__iter__()

    def __len__(self) -> int:
        self._load()
        return super().__len__()

    def get(self, key: str, default: Any = None) -> Any:
        self._load()
        return super().get(key, default)

    def keys(self):
        self._load()
        return super().keys()

    def values(self):
        self._load()
        return super().values()

    def items(self):
        self._load()
        return super().items()


DEVICES: dict[str, Device] = _Registry()
_IN_CODE: dict[str, Device] = {}


def register_device(device: Device) -> Device:
    """Add a device from code (it wins over a device file of the same name)."""
    _IN_CODE[device.name] = device
    if DEVICES.loaded:  # type: ignore[attr-defined]
        dict.__setitem__(DEVICES, device.name, device)
    return device


def device_dirs() -> list[Path]:
    """The folders device files are read from: the shipped devices/, then $AUTOCOMP_DEVICES."""
    from autocomp.resources import data_dir

    dirs = [data_dir("devices")]
    for part in os.environ.get(DEVICES_ENV, "").split(os.pathsep):
        if part.strip():
            d = Path(part.strip()).expanduser()
            if not d.is_dir():
                raise UserError(DEVICES_ENV, f"{str(d)!r} is not a folder", "a folder of device YAML files")
            dirs.append(d)
    return dirs


def _read_all(into: dict[str, Device]) -> None:
    for d in device_dirs():
        for path in sorted(d.glob("*.yaml")) + sorted(d.glob("*.yml")):
            dev = load_device_file(path)
            if dev.name in into:
                raise UserError(f"{path}: name", f"device {dev.name!r} is already defined by {into[dev.name].source}",
                                "a name no other device file uses")
            dict.__setitem__(into, dev.name, dev)
    for name, dev in _IN_CODE.items():
        dict.__setitem__(into, name, dev)


def reload_devices() -> dict[str, Device]:
    """Read the device files again (after $AUTOCOMP_DEVICES or a file changed)."""
    dict.clear(DEVICES)
    _CHECKED.clear()
    DEVICES.loaded = False  # type: ignore[attr-defined]
    DEVICES._load()  # type: ignore[attr-defined]
    return DEVICES


_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


def load_device_file(path: Path) -> Device:
    """One device from its YAML file (``yaml.safe_load``), checked field by field."""
    import yaml

    path = Path(path)

    def bad(fieldname: str, problem: str, expected: str) -> UserError:
        return UserError(f"{path}: {fieldname}", problem, expected)

    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise bad("yaml", f"not valid YAML{where}", "a device file (see devices/cpu-ort.yaml)") from None
    except OSError as e:
        raise bad("file", f"cannot be read ({e.strerror})", "a readable device file") from None
    if not isinstance(doc, dict):
        raise bad("file", f"holds {type(doc).__name__}", "a mapping with name, backend, precisions, options")
    unknown = sorted(str(k) for k in doc if k not in DEVICE_KEYS)
    if unknown:
        raise bad(unknown[0], "unknown field", f"one of {list(DEVICE_KEYS)}")
    if doc.get("schema_version", DEVICE_SCHEMA) != DEVICE_SCHEMA:
        raise bad("schema_version", f"{doc.get('schema_version')!r}", f"{DEVICE_SCHEMA}")
    for key in ("name", "backend", "precisions"):
        if doc.get(key) is None:
            raise bad(key, "missing", "a value (see devices/cpu-ort.yaml)")
    name = doc["name"]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise bad("name", f"{name!r}", "lower-case letters, digits, '.', '_' or '-'")
    if name != path.stem:
        raise bad("name", f"{name!r} differs from the file name {path.name!r}", f"the file to be named {name}.yaml")
    backend_name = doc["backend"]
    if not isinstance(backend_name, str) or backend_name not in BACKENDS:
        raise bad("backend", f"unknown backend {backend_name!r}", f"one of {sorted(BACKENDS)}")
    precisions = doc["precisions"]
    if (not isinstance(precisions, list) or not precisions
            or any(not isinstance(p, str) or p not in PRECISIONS for p in precisions)):
        raise bad("precisions", f"{precisions!r}", f"a non-empty list of {list(PRECISIONS)}")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise bad("description", f"{description!r}", "text")
    options = doc.get("options") or {}
    if not isinstance(options, dict):
        raise bad("options", f"holds {type(options).__name__}", "a mapping of the backend's protocol options")
    for k, v in options.items():
        if not isinstance(k, str) or not k.isidentifier():
            raise bad("options", f"option name {k!r}", "identifiers (the backend's measure() arguments)")
        if not (v is None or isinstance(v, (bool, int, float, str)) or
                (isinstance(v, list) and all(isinstance(x, (bool, int, float, str)) for x in v))):
            raise bad(f"options.{k}", f"{v!r}", "a number, text, true/false, null or a list of them")
    if options.get("reference", False) not in REFERENCE_MODES:
        raise bad("options.reference", f"{options['reference']!r}", "true (the reference protocol), ratio (every block rescaled by the reference) or false")
    options = dict(options)
    if "host" in doc:
        host = doc["host"]
        if host is not None and (not isinstance(host, str) or not host.strip() or host.startswith("-")):
            raise bad("host", f"{host!r}", "an ssh destination (user@host) or null")
        if "ssh" in options:
            raise bad("host", "given twice (host and options.ssh)", "host only")
        options["ssh"] = host
    resource = doc.get("ray_resource")
    if resource is not None and (not isinstance(resource, str) or not resource.strip()):
        raise bad("ray_resource", f"{resource!r}", "the name of a Ray custom resource")
    expected = doc.get("expected_fingerprint")
    if expected is not None and not isinstance(expected, dict):
        raise bad("expected_fingerprint", f"holds {type(expected).__name__}", "a mapping of fingerprint fields")
    int8_export = doc.get("int8_export")
    if int8_export is not None and int8_export not in INT8_EXPORTS:
        raise bad("int8_export", f"{int8_export!r}", f"one of {list(INT8_EXPORTS)} (or no int8_export: the backend's default)")
    return Device(name, backend_name, tuple(precisions), options, description, resource, expected, str(path), int8_export)


def check_device_options(device: Device) -> None:
    """The device's options must be arguments of its backend's measure() (UserError naming the first
    that is not). A backend that takes ``**options`` accepts any."""
    import inspect

    try:
        params = inspect.signature(backend(device.backend).measure).parameters
    except ImportError as e:
        raise UserError(f"{device.source or device.name}: backend", f"{device.backend!r} cannot be imported ({e})",
                        "its package installed") from None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    taken = {n for n, p in params.items() if p.kind is not inspect.Parameter.POSITIONAL_ONLY} - {"onnx_path", "device", "precision"}
    for k in device.options:
        if k not in taken:
            what = "host" if k == "ssh" else f"options.{k}"
            raise UserError(f"{device.source or device.name}: {what}", f"not an option of backend {device.backend!r}",
                            f"one of {sorted(taken)}")


def fingerprint_mismatches(device: Device, fp: dict[str, Any]) -> list[str]:
    """The fields of the device's ``expected_fingerprint`` that the probed fingerprint ``fp`` does
    not have (``field: probed vs expected``); empty when none is expected or all match."""
    out = []
    for k, want in (device.expected_fingerprint or {}).items():
        have = fp.get(k)
        if have != want:
            out.append(f"{k}: {have!r} vs {want!r}")
    return out


_CHECKED: set[str] = set()


def get_device(name: str) -> Device:
    if name not in DEVICES:
        raise UserError("--device", f"unknown device {name!r}", f"one of {sorted(DEVICES)}")
    dev = DEVICES[name]
    if dev.source and dev.source not in _CHECKED:
        check_device_options(dev)
        _CHECKED.add(dev.source)
    return dev
