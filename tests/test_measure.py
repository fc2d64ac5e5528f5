"""Measurement backends: trtexec command / parsers on real TensorRT output, TensorRT absence,
the ORT clock, and a tiny real measurement campaign (resume without duplicates)."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pandas as pd
import pytest

from autocomp.errors import UserError
from autocomp.measure import get_device
from autocomp.measure.base import DEVICES, Device
from autocomp.measure.trtexec import (
    build_command,
    check_engine_precision,
    parse_cv_warning,
    parse_layer_info,
    parse_summary_line,
    parse_version,
    precision_counts,
)

FIX = Path(__file__).parent / "fixtures" / "trtexec"


# --------------------------------------------------------------------------- summary parsing (real logs)


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


def test_version_and_cv_warning():
    assert parse_version((FIX / "trt8.4.0_jetson_xavier_summary.log").read_text()) == "8.4.0"
    assert parse_version((FIX / "trt10.3_jetson_orin_nx_header.log").read_text()) == "10.3.0"
    assert parse_version((FIX / "trt8.6.3_header.log").read_text()) == "8.6.3"
    assert parse_version("no version here") is None
    assert parse_cv_warning((FIX / "trt8.4.1_summary_cv_warning.log").read_text()) == pytest.approx(0.0510254)
    assert parse_cv_warning((FIX / "trt10_era_summary.log").read_text()) is None


# --------------------------------------------------------------------------- command and precision check


def test_command_builder():
    cmd = build_command("m.onnx", "int8", warmup_ms=200, iterations=300, avg_runs=50, layer_info="l.json")
    assert cmd[0] == "trtexec" and "--onnx=m.onnx" in cmd
    for flag in ("--int8", "--useCudaGraph", "--noDataTransfers", "--useSpinWait", "--warmUp=200", "--iterations=300",
                 "--avgRuns=50", "--exportLayerInfo=l.json", "--profilingVerbosity=detailed"):
        assert flag in cmd
    assert "--fp16" in build_command("m.onnx", "fp16") and "--int8" not in build_command("m.onnx", "fp16")
    assert "--best" in build_command("m.onnx", "best")
    assert not {"--fp16", "--int8"} & set(build_command("m.onnx", "fp32", use_cuda_graph=False))
    assert "--useCudaGraph" not in build_command("m.onnx", "fp32", use_cuda_graph=False)
    with pytest.raises(ValueError):
        build_command("m.onnx", "fp8")


def test_precision_check_on_real_layer_info():
    int8 = parse_layer_info((FIX / "trt_layerinfo_int8_resnet18_excerpt.json").read_text())
    assert precision_counts(int8) == {"int8": 1}  # the Reformat layer is not a compute layer
    assert check_engine_precision(int8, "int8") == []
    fp16 = parse_layer_info((FIX / "trt_layerinfo_fp16_yolo_excerpt.json").read_text())
    assert precision_counts(fp16) == {"fp16": 1}
    assert check_engine_precision(fp16, "fp16") == []
    assert any("no int8" in p for p in check_engine_precision(fp16, "int8"))  # QDQ not honoured
    fp32 = parse_layer_info((FIX / "trt_verbose_layerinfo_fp32.txt").read_text())
    assert precision_counts(fp32) == {"fp32": 1}
    assert any("fell back to fp32" in p for p in check_engine_precision(fp32, "fp16"))
    assert check_engine_precision(fp32, "fp32") == []
    names = parse_layer_info((FIX / "trt8.4_layerinfo_names_only.json").read_text())
    assert len(names) == 12 and any("profilingVerbosity" in p for p in check_engine_precision(names, "fp16"))


def _fake_trtexec(tmp_path: Path, log: str, layer_info: str) -> Path:
    """A stand-in trtexec: prints a real log and writes a real layer-info file where asked."""
    script = tmp_path / "trtexec"
    (tmp_path / "log.txt").write_text(log)
    (tmp_path / "info.json").write_text(layer_info)
    script.write_text(f"""#!{sys.executable}
import sys, shutil
for a in sys.argv[1:]:
    if a.startswith("--exportLayerInfo="):
        shutil.copy({str(tmp_path / 'info.json')!r}, a.split("=", 1)[1])
sys.stdout.write(open({str(tmp_path / 'log.txt')!r}).read())
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_trtexec_backend_end_to_end_with_real_output(tmp_path):
    log = (FIX / "trt8.4.0_jetson_xavier_summary.log").read_text()
    fake = _fake_trtexec(tmp_path, log, (FIX / "trt_layerinfo_fp16_yolo_excerpt.json").read_text())
    dev = Device("fake-jetson", "trtexec", ("fp16", "int8"), {"trtexec": str(fake), "warmup_ms": 100, "iterations": 50})
    m = dev.measure(tmp_path / "model.onnx", "fp16")
    assert m.backend == "trtexec" and m.backend_version == "8.4.0" and m.median_ms == pytest.approx(0.388443)
    assert not m.flagged and json.loads(m.notes)["engine_precision"] == {"fp16": 1}
    assert "--warmUp=100" in json.loads(m.notes)["command"]
    m8 = dev.measure(tmp_path / "model.onnx", "int8")  # fp16 engine for an int8 request: silent fallback caught
    assert m8.flagged and json.loads(m8.notes)["precision_problems"]
    with pytest.raises(RuntimeError, match="precision"):
        dev.measure(tmp_path / "model.onnx", "int8", strict=True)


def test_registered_devices_and_missing_tensorrt(tmp_path):
    assert {"cpu-ort", "cpu-ort-2t", "jetson-orin-nano-trt", "gpu-trt"} <= set(DEVICES)
    assert get_device("jetson-orin-nano-trt").backend == "trtexec"
    assert get_device("gpu-trt").resource == "device:gpu-trt"
    with pytest.raises(UserError, match="--device"):
        get_device("nope")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="TensorRT"):
            get_device("gpu-trt").measure(tmp_path / "m.onnx", "fp16")
    missing = Device("no-trtexec", "trtexec", ("fp16",), {"trtexec": str(tmp_path / "absent-trtexec")})
    with pytest.raises(RuntimeError, match="not found"):
        missing.measure(tmp_path / "m.onnx", "fp16")


# --------------------------------------------------------------------------- a tiny real campaign


TINY = """schema_version: 1
name: tiny-measure
input: {channels: 1, height: 8, width: 8}
num_classes: 10
stem: {width: [4, 8]}
stages:
  - {stride: 2, depth: [1, 2], width: [8, 16], kernel: [3], expand: [1, 2]}
head: {width: [16]}
compression: {keep_ratio: [1.0, 0.5], rank_ratio: [1.0], precision: [fp32, int8]}
"""


def test_campaign_resume_no_duplicates(tmp_path):
    from autocomp.measure.campaign import SCHEMA_VERSION, read_table, run_campaign, table_path, write_table
    from autocomp.space import get_space

    (tmp_path / "tiny.yaml").write_text(TINY)
    space = get_space(tmp_path / "tiny.yaml")
    dev = Device("cpu-ort-test", "onnxruntime", ("fp32", "int8"),
                 {"threads": 1, "warmup": 2, "repeats": 10, "min_time_s": 0.0, "retries": 0, "clock": "thread_cpu"})
    seen: list[str] = []
    df1 = run_campaign(space, dev, 2, tmp_path, seed=0, progress=False, on_row=lambda r: seen.append(r["id"]))
    assert len(df1) == 2 and len(seen) == 2
    df2 = run_campaign(space, dev, 3, tmp_path, seed=0, progress=False, on_row=lambda r: seen.append(r["id"]))
    assert len(df2) == 3 and len(seen) == 3  # only the third candidate was measured
    run_campaign(space, dev, 3, tmp_path, seed=0, progress=False, on_row=lambda r: seen.append(r["id"]))
    assert len(seen) == 3
    table = read_table(table_path("cpu-ort-test", tmp_path))
    assert table["id"].is_unique and len(table) == 3
    row = table.iloc[0]
    assert row["schema_version"] == SCHEMA_VERSION and row["backend"] == "onnxruntime" and row["threads"] == 1
    assert row["median_ms"] > 0 and row["p90_ms"] >= row["median_ms"] * 0.5 and 0 <= row["cv"]
    assert json.loads(row["notes"])["clock"] == "thread_cpu"
    assert len(row["encoding"]) == len(space.encode(space.sample(__import__("random").Random(0))))
    # a corrupt table is a one-line UserError, and the file is left as it was
    bad = tmp_path / "bad" / "cpu-ort-test" / "measurements.parquet"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not parquet")
    with pytest.raises(UserError, match="parquet"):
        run_campaign(space, dev, 1, tmp_path / "bad", progress=False)
    assert bad.read_bytes() == b"not parquet"
    write_table(pd.DataFrame({"schema_version": [99], "id": ["x"], "candidate": ["{}"], "median_ms": [1.0]}), bad)
    with pytest.raises(UserError, match="schema_version"):
        read_table(bad)


def test_measure_cli_errors_are_user_errors(tmp_path):
    from typer.testing import CliRunner

    from autocomp.measure.cli import app

    r = CliRunner().invoke(app, ["--device", "nope", "--n", "1", "--out", str(tmp_path)])
    assert isinstance(r.exception, UserError) and "--device" in str(r.exception)


def test_reference_protocol_measures_in_the_normal_phase(tmp_path, monkeypatch):
    """The reference model is a valid dynamic-batch ONNX model; its nominal latency is measured once
    and cached; a reference-protocol measurement reports real milliseconds of the candidate (close to
    a plain measurement of the same model) and records the protocol."""
    import numpy as np
    import onnx

    from autocomp.measure import reference
    from autocomp.measure.onnxruntime import measure, run_timer, session

    monkeypatch.setenv("AUTOCOMP_CACHE", str(tmp_path / "cache"))
    ref = reference.model_path()
    onnx.checker.check_model(onnx.load(str(ref)), full_check=True)
    for batch in (1, 8):
        out = session(ref).run(None, {"input": np.zeros((batch, 1, 28, 28), np.float32)})[0]
        assert out.shape == (batch, 10)
    nominal = reference.nominal_ms(1, 1, "thread_cpu", probes=20)
    cached = list((tmp_path / "cache" / "reference").glob("nominal-*.json"))
    assert len(cached) == 1 and nominal > 0
    assert reference.nominal_ms(1, 1, "thread_cpu", probes=20) == nominal  # from the cache, not re-measured
    # the reference itself measured with the protocol lands near its nominal latency
    m = measure(ref, device="t", precision="fp32", threads=1, warmup=5, repeats=40, min_time_s=0.2,
                clock="thread_cpu", reference=True, blocks=2)
    notes = json.loads(m.notes)
    assert notes["reference_nominal_ms"] == pytest.approx(nominal, rel=1e-3) and notes["blocks"] == 2
    assert m.statistic in ("median_normal_phase", "median_ref_scaled")
    assert m.flagged or m.statistic == "median_normal_phase"
    plain = float(np.median([run_timer(session(ref), 1, "thread_cpu")() for _ in range(200)]))
    assert 0.5 * plain < m.median_ms < 2.0 * plain


def test_forward_fill_of_precision_over_inactive_slots():
    import numpy as np

    from autocomp.predictor.features import _forward_fill

    active = np.array([[True, False, True, False], [False, False, False, False]])
    values = np.array([[5.0, 9.0, 7.0, 9.0], [1.0, 2.0, 3.0, 4.0]])
    out = _forward_fill(active, values, np.array([-1.0, 8.0]))
    # column i: the value of the last active slot before i (else the start); last column: after all slots
    assert out.tolist() == [[-1.0, 5.0, 5.0, 7.0, 7.0], [8.0, 8.0, 8.0, 8.0, 8.0]]


def test_random_weight_export_has_the_graph_of_a_trained_one(tmp_path):
    """Untrained weights give bit-identical tensors (zero biases of default-BatchNorm folds) that the
    TorchScript exporter shares through Identity nodes; ONNX Runtime then keeps those fp16 convs as
    NCHW fp16 + Casts (the same architecture timed 2.9x slower). The campaign's random-weight
    models must reach ONNX Runtime in the form trained models do: compared with the same
    architecture whose BatchNorms carry distinct, trained-like statistics (which convs ONNX Runtime
    can block depends on the host's vector width, so the reference is built on the same host)."""
    import random

    import onnx
    import onnxruntime as ort
    import torch

    from autocomp.measure.campaign import export_candidate, export_compressed
    from autocomp.measure.onnxruntime import DISABLED_OPTIMIZERS
    from autocomp.models.mbv2 import build
    from autocomp.space import get_space

    space = get_space("mnist-mbv2")
    rng = random.Random(3)
    cand = next(c for c in (space.sample(rng) for _ in range(50)) if c.precision == "mixed" and "fp16" in c.to_json())
    path, _ = export_candidate(cand, space, tmp_path / "m.onnx")
    assert not [n for n in onnx.load(str(path)).graph.node if n.op_type == "Identity"]

    torch.manual_seed(1)
    with torch.no_grad():
        ref = build(cand, space).eval()
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # distinct statistics: nothing bit-identical to share
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    export_compressed(ref, cand, space, tmp_path / "ref.onnx")

    def fp16_convs_left_nchw(model: Path) -> list[str]:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.optimized_model_filepath = str(model.with_suffix(".opt.onnx"))
        ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"], disabled_optimizers=DISABLED_OPTIMIZERS)
        opt = onnx.load(so.optimized_model_filepath).graph
        return sorted(n.name for n in opt.node if "Conv" in n.op_type and any("InsertedPrecisionFreeCast" in i for i in n.input))

    assert fp16_convs_left_nchw(path) == fp16_convs_left_nchw(tmp_path / "ref.onnx")
