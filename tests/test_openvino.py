"""The OpenVINO backend on this CPU: the exported ONNX converted by OpenVINO (int8 through its Q/DQ
handling), latency measured with the documented protocol, the runtime precision checked, and the
converted model's outputs and accuracy agreeing with ONNX Runtime's on exported candidates."""

from __future__ import annotations

import json
import random
import time
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("openvino")

from autocomp.measure import get_device  # noqa: E402
from autocomp.measure import openvino as ovb  # noqa: E402
from autocomp.measure.fingerprint import fingerprint_id  # noqa: E402
from autocomp.measure.trtexec import onnx_policy  # noqa: E402

TINY = """schema_version: 1
name: tiny-ov
input: {channels: 1, height: 28, width: 28}
num_classes: 10
stem: {width: [8]}
stages:
  - {stride: 2, depth: [2], width: [16], kernel: [3], expand: [2]}
  - {stride: 2, depth: [1], width: [24], kernel: [3], expand: [3]}
head: {width: [32]}
compression: {keep_ratio: [1.0], rank_ratio: [1.0], precision: [fp32, fp16, int8]}
"""


def _candidate(space, want: set[str], seed: int = 0):
    from autocomp.compress.inspect import policy

    rng = random.Random(seed)
    for _ in range(500):
        c = space.sample(rng)
        if set(policy(c).values()) == want:
            return c
    raise AssertionError(f"no candidate with precisions {want}")


@pytest.fixture(scope="module")
def tiny_int8(tmp_path_factory):
    """A random-weight exported candidate with fp32, fp16 and int8 layer groups."""
    from autocomp.predictor.campaign import export_candidate
    from autocomp.space import get_space

    d = tmp_path_factory.mktemp("ov")
    (d / "tiny.yaml").write_text(TINY)
    space = get_space(d / "tiny.yaml")
    path, _ = export_candidate(_candidate(space, {"fp32", "fp16", "int8"}), space, d / "mixed.onnx")
    return path


def test_fingerprint_names_openvino_on_this_cpu():
    fp = get_device("cpu-openvino").fingerprint()
    assert fp["backend"] == "openvino" and fp["backend_version"] == ovb.version() and fp["threads"] == 1 and fp["batch"] == 1
    assert fp["isa"] == get_device("cpu-ort").fingerprint()["isa"]  # the same CPU as cpu-ort
    fid = fingerprint_id(fp)
    assert "openvino" in fid and fid == fingerprint_id(get_device("cpu-openvino").fingerprint())


def test_latency_with_the_documented_protocol(tiny_int8, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOCOMP_CACHE", str(tmp_path / "cache"))  # the reference's nominal latency, measured afresh
    dev = get_device("cpu-openvino")
    assert dev.options["threads"] == 1 and dev.options["reference"] == "ratio" and dev.options["clock"] == "thread_cpu"
    m = dev.measure(tiny_int8, "mixed", warmup=5, repeats=40, min_time_s=0.1, max_time_s=3.0, retries=0)
    notes = json.loads(m.notes)
    assert m.backend == "openvino" and m.backend_version == ovb.version() and m.threads == 1 and m.batch == 1
    assert notes["config"] == {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": "1",
                               "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": "NO"}
    assert m.statistic == "median_ref_ratio" and notes["statistic"] == "ref-ratio" and notes["reference_runtime"] == "onnxruntime"
    assert m.fingerprint_id == fingerprint_id(dev.fingerprint())
    # every int8 node of the export runs as an integer kernel
    assert notes["runtime_precision"].get("int8") == Counter(onnx_policy(tiny_int8).values())["int8"]
    assert notes["precision_problems"] == []
    # the compiled model honours the protocol, and the figure is the model's own time
    compiled = ovb.compile_model(tiny_int8)
    assert str(compiled.get_property("PERFORMANCE_HINT")) == "LATENCY" and int(compiled.get_property("NUM_STREAMS")) == 1
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1 and not compiled.get_property("ENABLE_CPU_PINNING")
    assert "float32" in str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    assert list(compiled.inputs[0].get_shape()) == [1, 1, 28, 28]
    plain = ovb.run_timer(compiled, 1, "thread_cpu")
    wall = ovb.run_timer(compiled, 1, "wall")
    bursts, walls = [], []  # the protocol reports the normal phase: compare with the fastest of 5 plain bursts
    for _ in range(5):
        bursts.append([plain() for _ in range(60)])
        walls += [wall() for _ in range(60)]  # interleaved, so both clocks meet the same phases
        time.sleep(0.2)
    fastest = min(float(np.median(b)) for b in bursts)
    assert 0.5 * fastest < m.median_ms < 2.0 * fastest
    samples = [x for b in bursts for x in b]
    # one thread computes on the calling thread: its CPU time is the inference (what thread_cpu needs)
    assert min(samples) > 0.7 * min(walls)


def test_runtime_precision_check_finds_a_fallback(tiny_int8):
    layers = ovb.runtime_layers(ovb.compile_model(tiny_int8))
    policy = onnx_policy(tiny_int8)
    ok = ovb.check_runtime_precision(layers, policy)
    assert ok["problems"] == [] and ok["counts"]["int8"] == sum(p == "int8" for p in policy.values())
    assert ok["fp16_as_fp32"] > 0  # this CPU computes the fp16 layers in f32: counted, not flagged
    # a node the policy keeps in fp32 that runs as an integer kernel is a fallback
    named_int8 = next(n for kind, prec, nodes in layers if prec in ("u8", "i8") for n in nodes if policy.get(n) == "int8")
    bad = ovb.check_runtime_precision(layers, {**policy, named_int8: "fp32"})
    assert bad["fallbacks"][0]["policy"] == "fp32" and bad["fallbacks"][0]["runtime"] == "int8"
    assert any("another precision" in p for p in bad["problems"])
    # an int8 node with no integer kernel (here: a policy int8 node more than the runtime has)
    more = ovb.check_runtime_precision(layers, {**policy, "/extra/Conv": "int8"})
    assert any("integer compute layers for" in p for p in more["problems"]) and "/extra/Conv" in more["unmatched"]


def test_a_fused_subgraph_is_not_taken_for_a_fallback(tmp_path):
    """OpenVINO compiles a stack of int8 fully connected layers into one JIT ``Subgraph`` whose
    inner precision it does not report: its nodes are known, not counted as float layers."""
    import torch
    from torch import nn

    from autocomp.compress import quantize
    from autocomp.export import to_onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), *[nn.Sequential(nn.Linear(64, 64), nn.ReLU()) for _ in range(3)]).eval()
    model = quantize.quantize_model(model, [torch.randn(8, 64, 1, 1)])
    path = to_onnx(model, tmp_path / "fc.onnx", (64, 1, 1))
    policy = onnx_policy(path)
    assert list(policy.values()) == ["int8"] * 3
    layers = ovb.runtime_layers(ovb.compile_model(path))
    check = ovb.check_runtime_precision(layers, policy)
    assert [kind for kind, _, _ in layers] == ["Subgraph"]  # OpenVINO 2026.4 on x86
    assert check["problems"] == [] and check["counts"] == {"subgraph": 1} and check["in_subgraphs"] == sorted(policy)


def test_outputs_agree_with_onnxruntime_fp32(tmp_path):
    """An fp32 export: OpenVINO's logits equal ONNX Runtime's up to float rounding."""
    from autocomp.measure.onnxruntime import session
    from autocomp.predictor.campaign import export_candidate
    from autocomp.space import get_space

    (tmp_path / "tiny.yaml").write_text(TINY)
    space = get_space(tmp_path / "tiny.yaml")
    path, _ = export_candidate(_candidate(space, {"fp32"}), space, tmp_path / "fp32.onnx")
    x = np.random.default_rng(0).standard_normal((16, 1, 28, 28)).astype(np.float32)
    ref = session(path).run(None, {"input": x})[0]
    got = ovb.run(path, x)
    assert got.shape == ref.shape == (16, 10)
    assert np.abs(got - ref).max() < 1e-4 * max(1.0, float(np.abs(ref).max()))


def test_accuracy_agrees_with_onnxruntime_on_a_trained_mixed_candidate(mnist, tmp_path):
    """A candidate of the default space with supernet weights, compressed and calibrated on MNIST
    (fp32, fp16 and int8 layer groups): OpenVINO's int8 kernels and ONNX Runtime agree on the test
    images' top-1 and on the accuracy."""
    from autocomp.evaluate import EvalSettings, compressed_model
    from autocomp.export import to_onnx
    from autocomp.measure.onnxruntime import accuracy as ort_accuracy
    from autocomp.measure.onnxruntime import session
    from autocomp.space import get_space

    space = get_space("mnist-mbv2")
    cand = _candidate(space, {"fp32", "fp16", "int8"}, seed=1)
    model = compressed_model(cand, space, mnist, EvalSettings(bn_images=512, calib_images=256))
    path = to_onnx(model, tmp_path / "model.onnx", mnist.input_shape)
    assert "int8" in onnx_policy(path).values()
    test = mnist.test.subset(2000, seed=0)
    acc_ort = ort_accuracy(path, mnist.batches(test, 500))
    acc_ov = ovb.accuracy(path, mnist.batches(test, 500))
    assert acc_ort > 0.9 and abs(acc_ov - acc_ort) <= 0.005
    sess = session(path)
    agree = total = 0
    for x, _ in mnist.batches(test, 500):
        a = sess.run(None, {"input": x.numpy()})[0].argmax(1)
        b = ovb.run(path, x.numpy()).argmax(1)
        agree += int((a == b).sum())
        total += len(a)
    assert agree / total >= 0.99
