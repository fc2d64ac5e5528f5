"""Devices as data: the shipped devices/*.yaml (with the option dicts the shipped predictors were
measured with), a device added by a YAML file alone running a campaign, and malformed device files
as one-line errors naming the field (exit code 2 from the CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autocomp.errors import UserError
from autocomp.measure.base import (
    DEVICES,
    Device,
    device_dirs,
    fingerprint_mismatches,
    get_device,
    load_device_file,
    register_device,
    reload_devices,
)

# The protocol of each built-in device: the shipped predictors and tables were measured with these,
# so the files must give exactly the same dicts (cpu-ort and cpu-openvino rescale by the reference
# since session 13: reference "ratio").
BUILT_IN = {
    "cpu-ort": ("onnxruntime", {"threads": 1, "warmup": 20, "repeats": 100, "min_time_s": 0.4, "blocks": 4, "max_time_s": 4.0,
                                "reference": "ratio", "clock": "thread_cpu"}),
    "cpu-ort-wall": ("onnxruntime", {"threads": 1, "warmup": 20, "repeats": 100, "min_time_s": 0.3, "clock": "wall"}),
    "cpu-ort-b8": ("onnxruntime", {"threads": 1, "batch": 8, "warmup": 10, "repeats": 48, "min_time_s": 0.4, "blocks": 4,
                                   "max_time_s": 4.0, "reference": True, "clock": "thread_cpu"}),
    "cpu-ort-2t": ("onnxruntime", {"threads": 2, "warmup": 20, "repeats": 100, "min_time_s": 0.3}),
    "jetson-orin-nano-trt": ("trtexec", {"warmup_ms": 500, "iterations": 500, "avg_runs": 100, "use_cuda_graph": True,
                                         "ssh": None}),
    "gpu-trt": ("tensorrt", {"warmup": 50, "repeats": 300}),
}


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_built_in_devices_come_from_files_with_the_same_protocol(name):
    backend, options = BUILT_IN[name]
    dev = get_device(name)
    assert dev.backend == backend and dev.precisions == ("fp32", "fp16", "int8")
    assert dev.options == options
    assert {k: type(v) for k, v in dev.options.items()} == {k: type(v) for k, v in options.items()}  # 4.0 stays a float
    assert Path(dev.source).name == f"{name}.yaml" and Path(dev.source).parent.resolve() == device_dirs()[0].resolve()
    assert dev.resource == f"device:{name}"


def test_registry_lookup_and_the_jetsons_added_by_files():
    assert {"jetson-orin-nx-trt", "jetson-agx-orin-trt"} <= set(DEVICES)
    for name in ("jetson-orin-nx-trt", "jetson-agx-orin-trt"):
        assert get_device(name).options == BUILT_IN["jetson-orin-nano-trt"][1]
    with pytest.raises(UserError, match="--device"):
        get_device("nope")
    # the package data points at the same files (autocomp/_data/devices -> devices/)
    pkg = Path(__file__).resolve().parents[1] / "autocomp" / "_data" / "devices"
    assert sorted(p.name for p in pkg.glob("*.yaml")) == sorted(p.name for p in (pkg.parents[2] / "devices").glob("*.yaml"))



LAB_CPU = """# a device added by this file alone
name: lab-cpu
backend: onnxruntime
precisions: [fp32, int8]
description: the lab's CPU, 1 thread, thread CPU time, short protocol
ray_resource: lab-cpu-node
options:
  threads: 1
  warmup: 2
  repeats: 10
  min_time_s: 0.0
  retries: 0
  clock: thread_cpu
"""


def test_a_device_added_by_yaml_alone_runs_a_campaign(user_devices, tmp_path, tiny_yaml):
    from autocomp.predictor.campaign import read_table, tables
    from autocomp.space import get_space

    (user_devices / "lab-cpu.yaml").write_text(LAB_CPU)
    reload_devices()
    dev = get_device("lab-cpu")
    assert dev.precisions == ("fp32", "int8") and dev.resource == "lab-cpu-node"
    assert Path(dev.source) == user_devices / "lab-cpu.yaml"
    (tmp_path / "tiny.yaml").write_text(tiny_yaml("tiny-measure"))
    from autocomp.predictor.campaign import run_campaign

    df = run_campaign(get_space(tmp_path / "tiny.yaml"), "lab-cpu", 2, tmp_path / "out", seed=0, progress=False, use_ray=False)
    assert len(df) == 2
    [path] = tables("lab-cpu", tmp_path / "out")
    table = read_table(path)
    assert set(table["device"]) == {"lab-cpu"} and set(table["threads"]) == {1} and (table["median_ms"] > 0).all()
    assert {json.loads(n)["clock"] for n in table["notes"]} == {"thread_cpu"}
    assert set(table["precision"]) <= {"fp32", "int8", "mixed"}


def test_a_remote_jetson_by_file(user_devices):
    (user_devices / "orin-lab.yaml").write_text(
        "name: orin-lab\nbackend: trtexec\nprecisions: [fp16, int8]\nhost: nvidia@orin-lab.local\n"
        "options: {warmup_ms: 200, iterations: 300, trt_version: '10.3.0'}\n"
        "expected_fingerprint: {jetson_module: NVIDIA Jetson Orin NX Engineering Reference Developer Kit, power_mode: MAXN (0)}\n")
    reload_devices()
    dev = get_device("orin-lab")
    assert dev.options == {"warmup_ms": 200, "iterations": 300, "trt_version": "10.3.0", "ssh": "nvidia@orin-lab.local"}
    probed = {"jetson_module": "NVIDIA Jetson Orin NX Engineering Reference Developer Kit", "power_mode": "15W (2)"}
    assert fingerprint_mismatches(dev, probed) == ["power_mode: '15W (2)' vs 'MAXN (0)'"]
    assert fingerprint_mismatches(dev, {**probed, "power_mode": "MAXN (0)"}) == []
    assert fingerprint_mismatches(get_device("cpu-ort"), probed) == []  # nothing expected


def test_a_device_registered_in_code_survives_a_reload(user_devices):
    from autocomp.measure import base

    dev = register_device(Device("code-dev", "onnxruntime", ("fp32",), {"threads": 1}))
    try:
        assert get_device("code-dev") is dev
        reload_devices()
        assert get_device("code-dev") is dev and "cpu-ort" in DEVICES
    finally:
        base._IN_CODE.pop("code-dev")


GOOD = "name: {name}\nbackend: onnxruntime\nprecisions: [fp32]\noptions: {{threads: 1}}\n"


@pytest.mark.parametrize("text, field, says", [
    ("name: bad\nprecisions: [fp32]\n", "backend", "missing"),
    ("name: bad\nbackend: openvinoo\nprecisions: [fp32]\n", "backend", "unknown backend 'openvinoo'"),
    ("name: bad\nbackend: onnxruntime\nprecisions: [fp32, fp8]\n", "precisions", "non-empty list"),
    ("name: bad\nbackend: onnxruntime\nprecisions: []\n", "precisions", "non-empty list"),
    ("name: bad\nbackend: onnxruntime\nprecision: [fp32]\n", "precision", "unknown field"),
    ("name: other\nbackend: onnxruntime\nprecisions: [fp32]\n", "name", "differs from the file name"),
    ("name: Bad Name\nbackend: onnxruntime\nprecisions: [fp32]\n", "name", "lower-case"),
    ("name: bad\nbackend: onnxruntime\nprecisions: [fp32]\noptions: [threads, 1]\n", "options", "mapping"),
    ("name: bad\nbackend: onnxruntime\nprecisions: [fp32]\noptions: {threads: {n: 1}}\n", "options.threads", "a number"),
    ("name: bad\nbackend: onnxruntime\nprecisions: [fp32]\noptions: {reference: fast}\n", "options.reference", "ratio"),
    ("name: bad\nbackend: trtexec\nprecisions: [fp32]\nhost: a@b\noptions: {ssh: a@b}\n", "host", "given twice"),
    ("name: bad\nbackend: onnxruntime\nprecisions: [fp32]\nschema_version: 2\n", "schema_version", "expected 1"),
    ("name: bad\nbackend: onnxruntime\nprecisions: [fp32]\nexpected_fingerprint: [a]\n", "expected_fingerprint", "mapping"),
    ("name: bad\nbackend: onnxruntime\n  precisions: [fp32]\n", "yaml", "not valid YAML at line"),
    ("- name: bad\n", "file", "holds list"),
    # safe_load only: a Python tag is refused, never constructed
    ("name: !!python/object/apply:os.system ['echo pwned']\nbackend: onnxruntime\nprecisions: [fp32]\n", "yaml", "not valid YAML"),
])
def test_malformed_device_file_names_the_field(user_devices, text, field, says):
    path = user_devices / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        load_device_file(path)
    msg = str(e.value)
    assert e.value.field == f"{path}: {field}" and says in msg and "\n" not in msg
    with pytest.raises(UserError, match=f"{field}"):
        reload_devices()


def test_options_and_host_are_checked_against_the_backend(user_devices):
    (user_devices / "typo.yaml").write_text(GOOD.format(name="typo").replace("threads: 1", "treads: 1"))
    (user_devices / "cpu-host.yaml").write_text(GOOD.format(name="cpu-host") + "host: me@there\n")
    reload_devices()
    with pytest.raises(UserError, match=r"typo.yaml: options.treads: not an option of backend 'onnxruntime'"):
        get_device("typo")
    with pytest.raises(UserError, match=r"cpu-host.yaml: host: not an option of backend 'onnxruntime'"):
        get_device("cpu-host")


def test_duplicate_names_and_a_missing_folder(user_devices, monkeypatch, tmp_path):
    (user_devices / "cpu-ort.yaml").write_text(GOOD.format(name="cpu-ort"))
    with pytest.raises(UserError, match="cpu-ort.yaml: name: device 'cpu-ort' is already defined by"):
        reload_devices()
    monkeypatch.setenv("AUTOCOMP_DEVICES", str(tmp_path / "absent"))
    with pytest.raises(UserError, match="AUTOCOMP_DEVICES"):
        reload_devices()


def test_cli_exits_2_with_one_line_on_a_malformed_device_file(tmp_path):
    d = tmp_path / "devs"
    d.mkdir()
    (d / "orin.yaml").write_text("name: orin\nbackend: trtexec\nprecisions: [fp16, int4]\n")
    env = {**os.environ, "AUTOCOMP_DEVICES": str(d)}
    r = subprocess.run([sys.executable, "-m", "autocomp.cli", "devices"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "orin.yaml: precisions" in lines[0] and "Traceback" not in r.stderr
    (d / "orin.yaml").write_text("name: orin\nbackend: trtexec\nprecisions: [fp16, int8]\nhost: null\n")
    r = subprocess.run([sys.executable, "-m", "autocomp.cli", "devices"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "orin" in r.stdout and "cpu-ort" in r.stdout
