"""TensorRT backends without a GPU: the strongly typed build per TensorRT version, the trtexec
parsers on real TensorRT output (tests/fixtures/trtexec/, sources in its README), the per-layer
precision check finding a fallback, and the trtexec backend end to end with a stand-in trtexec
that prints real output."""

from __future__ import annotations

import json
import random
import stat
import sys
from pathlib import Path

import pytest

from autocomp.measure.base import Device
from autocomp.measure.trtexec import (
    build_command,
    build_plan,
    check_engine_precision,
    check_precision,
    onnx_policy,
    parse_cv_warning,
    parse_layer_info,
    parse_summary_line,
    parse_times,
    parse_version,
    precision_counts,
)

FIX = Path(__file__).parent / "fixtures" / "trtexec"
WEAK = {"--fp16", "--int8", "--best"}


# --------------------------------------------------------------------------- summary, times, version (real logs)


@pytest.mark.parametrize("name, median, mean, p90, p99", [
    ("trt8.4.0_jetson_xavier_summary.log", 0.388443, 0.388221, None, 0.393188),
    ("trt8.4.1_summary_cv_warning.log", 1.06393, 1.0693, None, 1.2522),
    ("trt8.5.2_jetson_truncated_p99.log", 0.369873, 0.369765, 0.373779, None),
    ("trt10_era_summary.log", 7.14139, 7.58404, 10.2881, 12.9485),
])
def test_gpu_compute_time_parsed_from_real_logs(name, median, mean, p90, p99):
    s = parse_summary_line((FIX / name).read_text())
    assert s.median_ms == pytest.approx(median)
    assert s.mean_ms == pytest.approx(mean)
    assert (s.p90_ms == pytest.approx(p90)) if p90 is not None else s.p90_ms is None
    assert (s.p99_ms == pytest.approx(p99)) if p99 is not None else s.p99_ms is None


def test_summary_reads_the_gpu_line_not_latency_or_total():
    text = (FIX / "trt10_era_summary.log").read_text()
    assert parse_summary_line(text).min_ms == pytest.approx(5.34595)  # not Latency's 5.38672
    assert parse_summary_line(text, "Latency").median_ms == pytest.approx(7.16092)
    with pytest.raises(ValueError, match="GPU Compute Time"):
        parse_summary_line((FIX / "trt10.3_jetson_orin_nx_header.log").read_text())


def test_per_iteration_times_from_export_times_json():
    text = (FIX / "trt_exporttimes_mobilenet_v2_qat_excerpt.json").read_text()
    times = parse_times(text)
    assert len(times) == 20 and times[0] == pytest.approx(0.288768) and times[-1] == pytest.approx(0.270464)
    assert sorted(times)[9:11] == pytest.approx([0.271456, 0.271872])  # the median is their mean, 0.271664
    # each sample is the iteration's compute span, not its enqueue or end-to-end time
    rows = json.loads(text)
    assert all(abs((r["endComputeMs"] - r["startComputeMs"]) - t) < 2e-4 for r, t in zip(rows, times))
    assert parse_times(json.dumps([{"count": 20}] + rows)) == times  # a count header is not an iteration
    with pytest.raises(ValueError, match="no iteration"):
        parse_times("[]")
    with pytest.raises(ValueError, match="not JSON"):
        parse_times(text[: len(text) // 2])  # a file cut short by a crashed run


def test_version_and_cv_warning():
    assert parse_version((FIX / "trt8.4.0_jetson_xavier_summary.log").read_text()) == "8.4.0"
    assert parse_version((FIX / "trt10.3_jetson_orin_nx_header.log").read_text()) == "10.3.0"
    assert parse_version((FIX / "trt8.6.3_header.log").read_text()) == "8.6.3"
    assert parse_version("&&&& RUNNING TensorRT.trtexec [TensorRT v110100] [b106]") == "11.1.0"
    assert parse_version("no version here") is None
    assert parse_cv_warning((FIX / "trt8.4.1_summary_cv_warning.log").read_text()) == pytest.approx(0.0510254)
    assert parse_cv_warning((FIX / "trt10_era_summary.log").read_text()) is None


# --------------------------------------------------------------------------- the build per TensorRT version


POLICY = {"/stem/stem.0/Conv": "fp32", "/blocks/blocks.0/pw/pw.0/Conv": "fp16", "/blocks/blocks.0/dw/dw.0/Conv": "int8",
          "/classifier/Gemm": "fp32"}


@pytest.mark.parametrize("version", ["10.3.0", "10.13.3", "11.1.0", None])
def test_strongly_typed_build_on_tensorrt_10_and_later(version):
    """TensorRT >= 10 (and an unknown version): --stronglyTyped, the ONNX's types decide; no weak
    typing flag, whatever the candidate's precision (on 11 the flag is a documented no-op)."""
    for precision in ("fp32", "fp16", "int8", "mixed"):
        cmd = build_command("m.onnx", precision, trt_version=version, policy=POLICY, layer_info="l.json", times="t.json")
        assert "--stronglyTyped" in cmd
        assert not WEAK & set(cmd) and not any(c.startswith(("--precisionConstraints", "--layerPrecisions")) for c in cmd)
        for flag in ("--useCudaGraph", "--noDataTransfers", "--useSpinWait", "--exportTimes=t.json",
                     "--exportLayerInfo=l.json", "--profilingVerbosity=detailed"):
            assert flag in cmd
    assert build_plan(version, "int8", POLICY).typing == "strong"
    with pytest.raises(ValueError, match="weak typing"):
        build_command("m.onnx", "best", trt_version=version)


@pytest.mark.parametrize("version", ["8.6.3", "8.5.2", "8.4.0"])
def test_weak_typing_with_obeyed_layer_precisions_before_tensorrt_10(version):
    cmd = build_command("m.onnx", "mixed", trt_version=version, policy=POLICY)
    assert "--stronglyTyped" not in cmd
    assert {"--fp16", "--int8", "--precisionConstraints=obey"} <= set(cmd)
    spec = next(c for c in cmd if c.startswith("--layerPrecisions=")).split("=", 1)[1].split(",")
    # fp32/fp16 nodes are pinned; the int8 node is placed by its Q/DQ
    assert sorted(spec) == sorted(["/stem/stem.0/Conv:fp32", "/blocks/blocks.0/pw/pw.0/Conv:fp16", "/classifier/Gemm:fp32"])
    assert f"--layerOutputTypes={','.join(spec)}" in cmd
    fp32_only = {k: v for k, v in POLICY.items() if v == "fp32"}
    cmd = build_command("m.onnx", "fp32", trt_version=version, policy=fp32_only)
    assert not WEAK & set(cmd) and "--precisionConstraints=obey" in cmd  # fp32 stays fp32: no --fp16 at all
    assert "--fp16" in build_command("m.onnx", "fp16", trt_version=version)
    assert "--best" in build_command("m.onnx", "best", trt_version=version)
    with pytest.raises(ValueError):
        build_command("m.onnx", "fp8", trt_version=version)


def _mixed_candidate_onnx(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A real exported candidate of the tiny space with fp32, fp16 and int8 layer groups."""
    from autocomp.compress.inspect import policy as group_policy
    from autocomp.predictor.campaign import export_candidate
    from autocomp.space import get_space

    yaml = (Path(__file__).parent / "fixtures" / "tiny-space.yaml").read_text()
    (tmp_path / "mixed.yaml").write_text(yaml.replace("precision: [fp32, int8]", "precision: [fp32, fp16, int8]"))
    space = get_space(tmp_path / "mixed.yaml")
    rng = random.Random(3)
    for _ in range(200):
        cand = space.sample(rng)
        if set(group_policy(cand).values()) == {"fp32", "fp16", "int8"}:
            break
    else:
        raise AssertionError("no mixed candidate sampled")
    path, _ = export_candidate(cand, space, tmp_path / "mixed.onnx")
    return path, group_policy(cand)


def test_layer_precisions_of_a_real_exported_candidate(tmp_path):
    """On TensorRT < 10 the obeyed per-layer precisions are exactly the exported ONNX's fp32 and fp16
    compute nodes, named as TensorRT's ONNX parser names its layers."""
    import onnx

    from autocomp.compress.inspect import group_of

    path, groups = _mixed_candidate_onnx(tmp_path)
    policy = onnx_policy(path)
    node_names = {n.name for n in onnx.load(str(path)).graph.node}
    assert policy and set(policy) <= node_names
    assert set(policy.values()) == {"fp32", "fp16", "int8"}
    assert all(p == groups[group_of(n)] for n, p in policy.items())  # the export follows the candidate's policy
    cmd = build_command(path, "mixed", trt_version="8.6.1", policy=policy)
    spec = dict(s.split(":") for s in next(c for c in cmd if c.startswith("--layerPrecisions=")).split("=", 1)[1].split(","))
    assert spec == {n: p for n, p in policy.items() if p != "int8"}
    assert onnx_policy(tmp_path / "absent.onnx") == {}
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    assert onnx_policy(tmp_path / "junk.onnx") == {}


# --------------------------------------------------------------------------- precision check (real layer info)


def test_aggregate_precision_check_on_real_layer_info():
    int8 = parse_layer_info((FIX / "trt_layerinfo_int8_resnet18_excerpt.json").read_text())
    assert precision_counts(int8) == {"int8": 1}  # the Reformat layer is not a compute layer
    assert check_engine_precision(int8, "int8") == []
    fp16 = parse_layer_info((FIX / "trt_layerinfo_fp16_yolo_excerpt.json").read_text())
    assert precision_counts(fp16) == {"fp16": 1}
    assert check_engine_precision(fp16, "fp16") == []
    assert any("no int8" in p for p in check_engine_precision(fp16, "int8"))  # QDQ not honoured
    assert any("reduced precision" in p for p in check_engine_precision(fp16, "fp32"))  # weak typing ran fp32 in fp16
    fp32 = parse_layer_info((FIX / "trt_verbose_layerinfo_fp32.txt").read_text())
    assert precision_counts(fp32) == {"fp32": 1}
    assert any("fell back to fp32" in p for p in check_engine_precision(fp32, "fp16"))
    assert check_engine_precision(fp32, "fp32") == []
    names = parse_layer_info((FIX / "trt8.4_layerinfo_names_only.json").read_text())
    assert len(names) == 12 and any("profilingVerbosity" in p for p in check_engine_precision(names, "fp16"))


QAT_CONVS = ["Conv_12", "Conv_29", "Conv_46", "Conv_60", "Conv_77", "Conv_94"]


def test_per_layer_check_on_a_real_int8_engine():
    """A QAT MobileNet engine (real layer info): every conv matched to its ONNX node and int8. A conv
    with an fp16 output tensor (Conv_94 feeds an unquantized residual) still computes in int8."""
    layers = parse_layer_info((FIX / "trt_layerinfo_mobilenet_qat_excerpt.json").read_text())
    assert precision_counts(layers) == {"int8": 6}
    policy = {c: "int8" for c in QAT_CONVS}
    ok = check_precision(layers, policy, "int8")
    assert ok.problems == [] and ok.fallbacks == [] and ok.checked == 6 and ok.unmatched == []
    # a policy node the engine does not name is reported as unmatched, not as a fallback
    more = check_precision(layers, {**policy, "Conv_999": "int8"}, "int8")
    assert more.problems == [] and more.unmatched == ["Conv_999"]


def test_per_layer_check_finds_a_fallback():
    # the searched policy keeps Conv_46 in fp16, the engine runs it in int8
    layers = parse_layer_info((FIX / "trt_layerinfo_mobilenet_qat_excerpt.json").read_text())
    policy = {**{c: "int8" for c in QAT_CONVS}, "Conv_46": "fp16"}
    bad = check_precision(layers, policy, "mixed")
    assert bad.checked == 6 and len(bad.fallbacks) == 1
    assert bad.fallbacks[0] == {"layer": "features.1.conv.1.weight + QuantizeLinear_42 + Conv_46", "nodes": "Conv_46",
                                "policy": "fp16", "engine": "int8"}
    assert "1 of 6 compute layers" in bad.problems[0] and "Conv_46: policy fp16, engine int8" in bad.problems[0]
    # a weakly typed fp16 engine (real layer info) running the policy's fp32 conv in fp16
    fp16 = parse_layer_info((FIX / "trt_layerinfo_fp16_yolo_excerpt.json").read_text())
    r = check_precision(fp16, {"/model.2/cv1/conv/Conv": "fp32", "/model.2/cv1/act/Relu": "fp32"}, "fp32")
    assert [(f["policy"], f["engine"]) for f in r.fallbacks] == [("fp32", "fp16")] and r.problems
    # an fp16 layer that fell back to fp32 (real verbose layer info)
    fp32 = parse_layer_info((FIX / "trt_verbose_layerinfo_fp32.txt").read_text())
    r = check_precision(fp32, {"p2o.Conv.6": "fp16"}, "fp16")
    assert [(f["policy"], f["engine"]) for f in r.fallbacks] == [("fp16", "fp32")]
    # no engine layer names a policy node (e.g. Myelin's ForeignNode): the aggregate check applies
    r = check_precision(fp16, {"/other/Conv": "fp16"}, "fp16")
    assert r.checked == 0 and r.problems == [] and r.unmatched == ["/other/Conv"]
    assert any("no int8" in p for p in check_precision(fp16, {"/other/Conv": "int8"}, "int8").problems)
    assert check_precision([], POLICY, "fp16").problems == ["no layer info exported"]


def test_tensorrt_11_layer_info_reads_the_split_datatype_field():
    """TensorRT 11's inspector gives a tensor's ``DataType`` beside its ``Format`` (10.x:
    ``Format/Datatype``); the real 10.x layer object re-keyed the 11.x way reads the same."""
    data = json.loads((FIX / "trt_layerinfo_mobilenet_qat_excerpt.json").read_text())
    for layer in data["Layers"]:
        for t in layer["Inputs"] + layer["Outputs"]:
            fmt = t.pop("Format/Datatype")
            t["Format"], t["DataType"] = fmt, ("Int8" if "Int8" in fmt else "Half" if "FP16" in fmt else "Float")
        layer.pop("Weights", None)  # only the tensors decide
    layers = parse_layer_info(json.dumps(data))
    assert precision_counts(layers) == {"int8": 6}


# --------------------------------------------------------------------------- the trtexec backend end to end


def _fake_trtexec(tmp_path: Path, banner: str, log: str, layer_info: str, times: str | None) -> Path:
    """A stand-in trtexec: ``--help`` prints a real banner, a run prints a real log, writes real
    layer info (and per-iteration times) where asked and records its arguments."""
    d = tmp_path / "fake"
    d.mkdir()
    (d / "banner.txt").write_text(banner)
    (d / "log.txt").write_text(log)
    (d / "info.json").write_text(layer_info)
    if times is not None:
        (d / "times.json").write_text(times)
    script = d / "trtexec"
    script.write_text(f"""#!{sys.executable}
import json, os, shutil, sys
d = {str(d)!r}
if sys.argv[1:] == ["--help"]:
    sys.stdout.write(open(os.path.join(d, "banner.txt")).read()); sys.exit(0)
with open(os.path.join(d, "argv.json"), "w") as f:
    json.dump(sys.argv[1:], f)
for a in sys.argv[1:]:
    if a.startswith("--exportLayerInfo="):
        shutil.copy(os.path.join(d, "info.json"), a.split("=", 1)[1])
    if a.startswith("--exportTimes=") and os.path.exists(os.path.join(d, "times.json")):
        shutil.copy(os.path.join(d, "times.json"), a.split("=", 1)[1])
sys.stdout.write(open(os.path.join(d, "log.txt")).read())
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def _one_conv_onnx(path: Path, node_name: str) -> Path:
    """A real fp32 ONNX model with one Conv node of the given name."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    node = helper.make_node("Conv", ["input", "w"], ["logits"], name=node_name)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, 4, 4])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_trtexec_backend_on_tensorrt_10_times_and_fallback(tmp_path):
    """TensorRT 10.3 (real banner): a strongly typed build; the latency comes from the per-iteration
    times (real --exportTimes), not the summary line; the engine ran the policy's fp32 conv in fp16
    (real layer info): flagged, listed in the notes, raised with strict."""
    fake = _fake_trtexec(tmp_path, (FIX / "trt10.3_jetson_orin_nx_header.log").read_text(),
                         (FIX / "trt10_era_summary.log").read_text(), (FIX / "trt_layerinfo_fp16_yolo_excerpt.json").read_text(),
                         (FIX / "trt_exporttimes_mobilenet_v2_qat_excerpt.json").read_text())
    model = _one_conv_onnx(tmp_path / "model.onnx", "/model.2/cv1/conv/Conv")
    dev = Device("fake-orin", "trtexec", ("fp32", "fp16", "int8"), {"trtexec": str(fake), "warmup_ms": 100, "iterations": 20})
    m = dev.measure(model, "fp32")
    argv = json.loads((fake.parent / "argv.json").read_text())
    assert "--stronglyTyped" in argv and not WEAK & set(argv) and "--warmUp=100" in argv
    assert any(a.startswith("--exportTimes=") for a in argv)
    assert m.backend_version == "10.3.0" and m.repeats == 20
    assert m.median_ms == pytest.approx(0.271664) and m.p99_ms < 0.29  # the samples, not the summary's 7.14 ms
    notes = json.loads(m.notes)
    assert notes["timing"] == "exportTimes" and notes["typing"] == "strong" and notes["trt_version"] == "10.3.0"
    assert m.flagged and notes["precision_fallbacks"][0]["engine"] == "fp16" and notes["precision_fallbacks"][0]["policy"] == "fp32"
    with pytest.raises(RuntimeError, match="policy fp32, engine fp16"):
        dev.measure(model, "fp32", strict=True)


def test_trtexec_backend_on_tensorrt_8_weak_typing_and_summary(tmp_path):
    """TensorRT 8.4 (real log): weak typing; no --exportTimes file, so the summary line is read."""
    log = (FIX / "trt8.4.0_jetson_xavier_summary.log").read_text()
    banner = next(ln for ln in log.splitlines() if "[TensorRT v8400]" in ln)  # trtexec prints it first
    fake = _fake_trtexec(tmp_path, banner + "\n", log, (FIX / "trt_layerinfo_fp16_yolo_excerpt.json").read_text(), None)
    dev = Device("fake-xavier", "trtexec", ("fp16", "int8"), {"trtexec": str(fake), "warmup_ms": 100, "iterations": 50})
    m = dev.measure(tmp_path / "model.onnx", "fp16")  # no ONNX at hand: the aggregate check
    argv = json.loads((fake.parent / "argv.json").read_text())
    assert "--fp16" in argv and "--stronglyTyped" not in argv
    assert m.backend == "trtexec" and m.backend_version == "8.4.0" and m.median_ms == pytest.approx(0.388443)
    notes = json.loads(m.notes)
    assert not m.flagged and notes["engine_precision"] == {"fp16": 1} and notes["timing"] == "summary"
    assert notes["typing"] == "weak"
    m8 = dev.measure(tmp_path / "model.onnx", "int8")  # fp16 engine for an int8 request: silent fallback caught
    assert m8.flagged and json.loads(m8.notes)["precision_problems"]
    with pytest.raises(RuntimeError, match="precision"):
        dev.measure(tmp_path / "model.onnx", "int8", strict=True)
    # on TensorRT 8 the policy's fp32 conv is pinned with obeyed precision constraints
    model = _one_conv_onnx(tmp_path / "one.onnx", "/model.2/cv1/conv/Conv")
    dev.measure(model, "fp32")
    argv = json.loads((fake.parent / "argv.json").read_text())
    assert "--precisionConstraints=obey" in argv and "--layerPrecisions=/model.2/cv1/conv/Conv:fp32" in argv


def test_missing_tensorrt_and_trtexec(tmp_path):
    from autocomp.measure import get_device

    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="TensorRT"):
            get_device("gpu-trt").measure(tmp_path / "m.onnx", "fp16")
    missing = Device("no-trtexec", "trtexec", ("fp16",), {"trtexec": str(tmp_path / "absent-trtexec")})
    with pytest.raises(RuntimeError, match="not found"):
        missing.measure(tmp_path / "m.onnx", "fp16")


@pytest.mark.parametrize("banner, strong", [("[TensorRT v8601]", False), ("[TensorRT v100300]", True),
                                            ("[TensorRT v110000]", True), ("no banner", True)])
def test_the_deploy_script_types_the_build_for_the_targets_tensorrt(tmp_path, banner, strong):
    """trtexec.sh reads the target's TensorRT version from the trtexec banner when it runs: TensorRT 8
    has no --stronglyTyped, so there it builds with weak-typing flags and the per-layer precisions
    obeyed; 10 and 11 (or an unknown version) build strongly typed. A stand-in ``trtexec`` on PATH
    prints the banner and records the arguments it was given (TensorRT itself cannot run here)."""
    import os
    import subprocess

    from autocomp.export import trtexec_script

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "trtexec").write_text(f'#!/bin/sh\nif [ "$1" = "--help" ]; then echo "&&&& RUNNING TensorRT.trtexec {banner}"; '
                                    'exit 1; fi\necho "$@" > "$(dirname "$0")/args"\n')
    (bindir / "trtexec").chmod(0o755)
    policy = {"/conv_a/Conv": "fp16", "/conv_b/Conv": "int8", "/conv_c/Conv": "fp32"}
    script = tmp_path / "trtexec.sh"
    script.write_text(trtexec_script("model.onnx", "mixed", policy))
    proc = subprocess.run(["bash", str(script)], env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    args = (bindir / "args").read_text().split()
    assert "--onnx=model.onnx" in args and "--saveEngine=model.engine" in args
    if strong:
        assert "--stronglyTyped" in args and not {"--fp16", "--int8"} & set(args)
    else:
        assert "--stronglyTyped" not in args and {"--fp16", "--int8", "--precisionConstraints=obey"} <= set(args)
        assert "--layerPrecisions=/conv_a/Conv:fp16,/conv_c/Conv:fp32" in args
