"""The int8 export scheme follows the device (issue 18, item 4): ``fused`` (outputs between int8
layers quantized, int8 weight initializers: integer kernels in ONNX Runtime / OpenVINO / TensorRT)
or ``dequant`` (the export before), with 7-bit weights (reduce_range) for CPU runtimes on hosts
without int8 dot products. Real models, real ONNX Runtime and OpenVINO, real device files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from autocomp.compress import compress
from autocomp.compress import inspect as qinspect
from autocomp.errors import UserError
from autocomp.export import int8_export_of, to_onnx
from autocomp.measure import get_device
from autocomp.measure.base import Int8Scheme, reload_devices
from autocomp.measure.fingerprint import has_int8_dot, this_cpu_flags
from autocomp.measure.onnxruntime import QDQ_FUSION, disabled_optimizers, session
from autocomp.models.mbv2 import build
from autocomp.space import Block, Candidate, Stage, get_space

SPACE = get_space("mnist-mbv2")
VNNI = has_int8_dot(this_cpu_flags())
AVX2 = ["avx", "avx2", "fma", "sse4_2"]  # an x86 host without VNNI/AMX
AVX512_VNNI = ["avx", "avx2", "avx512f", "avx512_vnni"]


def small(precision: str = "int8", rank: float = 1.0) -> Candidate:
    """A small default-space member (4 blocks, expansion 3) at one precision."""
    stages = tuple(Stage(min(st.width), (Block(3, 3, 1.0, rank, precision),)) for st in SPACE.stages)
    c = Candidate(SPACE.name, 16, precision, stages, 128, precision)
    SPACE.validate_candidate(c)
    return c


def int8_weights(path: Path) -> list[np.ndarray]:
    """The int8 initializers of an export (its folded weights)."""
    return [numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer
            if i.data_type == onnx.TensorProto.INT8 and len(i.dims) > 1]


def ort_ops(path: Path) -> Counter:
    """The op types of ONNX Runtime's optimized graph of ``path`` with autocomp's session settings."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # the QDQ fusions, host-independent output
    so.optimized_model_filepath = str(path.with_suffix(".opt.onnx"))
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"], disabled_optimizers=disabled_optimizers(path))
    return Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)


# --------------------------------------------------------------------------- the scheme of a device


def test_the_scheme_follows_the_device_and_its_host():
    # this host (AVX-512 VNNI / AMX here): ONNX Runtime keeps its QDQ fusion, so cpu-ort exports fused
    assert get_device("cpu-ort").int8_scheme() == Int8Scheme("fused" if VNNI else "dequant", False)
    assert get_device("cpu-openvino").int8_scheme() == Int8Scheme("fused", not VNNI)
    for name in ("gpu-trt", "jetson-orin-nano-trt"):  # TensorRT fuses Q/DQ; its GPUs do not saturate
        assert get_device(name).int8_scheme({"backend": "trtexec"}) == Int8Scheme("fused", False)
    # decided from the fingerprint of the host that runs the model, not the one asking
    assert get_device("cpu-ort").int8_scheme({"isa": AVX2}) == Int8Scheme("dequant", False)
    assert get_device("cpu-ort").int8_scheme({"isa": AVX512_VNNI}) == Int8Scheme("fused", False)
    assert get_device("cpu-openvino").int8_scheme({"isa": AVX2}).label == "fused-7bit"
    assert get_device("cpu-openvino").int8_scheme({"isa": ["asimd", "asimddp"]}).label == "fused"
    for s in (Int8Scheme(), Int8Scheme("fused"), Int8Scheme("fused", True)):
        assert Int8Scheme.from_label(s.label) == s
    assert Int8Scheme.from_label(None) == Int8Scheme.from_label("") == Int8Scheme("dequant", False)  # rows before the column
    with pytest.raises(UserError, match="int8_export"):
        Int8Scheme.from_label("fused-4bit")


LAB_CPU = """name: {name}
backend: onnxruntime
precisions: [fp32, int8]
description: the lab's CPU, short protocol
{extra}options:
  threads: 1
  warmup: 2
  repeats: 10
  min_time_s: 0.0
  retries: 0
  clock: thread_cpu
"""


def test_a_device_file_sets_the_scheme_and_campaign_rows_record_it(user_devices, tmp_path, tiny_yaml):
    from autocomp.predictor.campaign import read_table, run_campaign, tables

    (user_devices / "lab-old.yaml").write_text(LAB_CPU.format(name="lab-old", extra="int8_export: dequant\n"))
    (user_devices / "lab-new.yaml").write_text(LAB_CPU.format(name="lab-new", extra=""))
    reload_devices()
    assert get_device("lab-old").int8_scheme() == Int8Scheme("dequant", False)  # whatever the host
    assert get_device("lab-new").int8_scheme() == get_device("cpu-ort").int8_scheme()  # the backend's default
    (tmp_path / "tiny.yaml").write_text(tiny_yaml("tiny-int8-export"))
    space = get_space(tmp_path / "tiny.yaml")
    cand = space.largest("int8")
    for name in ("lab-old", "lab-new"):
        run_campaign(space, name, 1, tmp_path / "out", candidates=[cand], progress=False, use_ray=False)
        [path] = tables(name, tmp_path / "out")
        assert list(read_table(path)["int8_export"]) == [get_device(name).int8_scheme().label]


def test_a_bad_int8_export_exits_2_with_one_line_and_devices_lists_the_scheme(tmp_path):
    d = tmp_path / "devs"
    d.mkdir()
    (d / "lab.yaml").write_text(LAB_CPU.format(name="lab", extra="int8_export: int4\n"))
    env = {**os.environ, "AUTOCOMP_DEVICES": str(d)}
    r = subprocess.run([sys.executable, "-m", "autocomp.cli", "devices", "--json"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "lab.yaml: int8_export" in lines[0] and "fused" in lines[0] and "Traceback" not in r.stderr
    (d / "lab.yaml").write_text(LAB_CPU.format(name="lab", extra="int8_export: dequant\n"))
    r = subprocess.run([sys.executable, "-m", "autocomp.cli", "devices", "--json", "--no-probe"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = {row["device"]: row for row in json.loads(r.stdout)}
    assert rows["lab"]["int8_export"] == "dequant" and rows["lab"]["int8_export_source"] == "device file"
    assert rows["cpu-ort"]["int8_export"] == get_device("cpu-ort").int8_scheme().label
    assert rows["cpu-openvino"]["int8_export"] == get_device("cpu-openvino").int8_scheme().label


# --------------------------------------------------------------------------- the exported graphs


def test_dequant_is_the_old_placement_and_fused_links_int8_layers(tmp_path):
    c = small("int8", rank=0.5)  # low-rank pairs too
    calib = [torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))]
    paths = {}
    for label in ("dequant", "fused"):
        torch.manual_seed(0)
        model = compress(build(c, SPACE).eval(), c, None, SPACE, calib, **Int8Scheme.from_label(label).compress_kwargs())
        paths[label] = to_onnx(model, tmp_path / f"{label}.onnx", (1, 28, 28))
        assert int8_export_of(paths[label]) == label
        assert qinspect.check_placement(paths[label], c) == []  # an int8 layer in the search is an int8 layer here
    old, new = (qinspect.layer_precisions(paths[k]) for k in ("dequant", "fused"))
    # dequant: float weights through QuantizeLinear, an output Q only where an int8 layer reads another directly
    assert int8_weights(paths["dequant"]) == []
    g = onnx.load(str(paths["dequant"])).graph
    assert sum(n.op_type == "QuantizeLinear" and n.input[0].endswith("weight") for n in g.node) == len(old)
    # fused: every int8 layer whose output reaches the next int8 layer through ReLU quantizes it
    assert len(int8_weights(paths["fused"])) == len(new)
    assert sum(lp.output_q for lp in new) > sum(lp.output_q for lp in old) >= 1
    assert ort_ops(paths["fused"])["QLinearConv"] > ort_ops(paths["dequant"])["QLinearConv"]


def test_a_low_rank_int8_group_folds_its_batchnorm_into_the_second_conv(tmp_path):
    """A low-rank pair (or Tucker triple) is a Sequential of convs followed by the group's BatchNorm:
    the BatchNorm folds into its last conv (same outputs), so the int8 export has no BatchNorm and
    ONNX Runtime runs both halves as integer convs (before, the second half ran as a float conv on
    weights dequantized at every inference, then the BatchNorm)."""
    from autocomp.compress import lowrank
    from autocomp.compress.quantize import fold_bn

    c = small("int8", rank=0.5)
    torch.manual_seed(0)
    model = lowrank.apply(build(c, SPACE).eval(), c)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # non-trivial statistics
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 1.5)
    pairs = [m for m in model.modules() if isinstance(m, torch.nn.Sequential) and len(m) and all(isinstance(x, torch.nn.Conv2d) for x in m)]
    assert len(pairs) >= 4  # the candidate has low-rank pairs
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        before = model(x)
        fold_bn(model)
        after = model(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)

    calib = [torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))]
    torch.manual_seed(0)
    q = compress(build(c, SPACE).eval(), c, None, SPACE, calib, **Int8Scheme("fused", True).compress_kwargs())
    path = to_onnx(q, tmp_path / "m.onnx", (1, 28, 28))
    assert not any(n.op_type == "BatchNormalization" for n in onnx.load(str(path)).graph.node)
    linked = sum(lp.output_q for lp in qinspect.layer_precisions(path))  # int8 convs whose output is quantized
    assert linked >= 2 * len(pairs) - 1  # every first half, and the second halves that feed an int8 layer
    ops = ort_ops(path)  # 7-bit weights: the fusion runs on every host
    assert ops["QLinearConv"] == linked and ops["BatchNormalization"] == 0


@pytest.fixture(scope="module")
def trained_small(mnist):
    """The weights of :func:`small` trained briefly on MNIST (once for the module)."""
    from autocomp.training import train

    torch.manual_seed(0)
    return train(build(small("int8"), SPACE), mnist, 60, 128, 1e-2, 0).state_dict()


@pytest.mark.parametrize("reduce_range", [False, True], ids=["full-range", "7bit"])
def test_fused_export_agrees_with_pytorch_on_this_host(tmp_path, mnist, trained_small, reduce_range):
    """The chain's fused export run by ONNX Runtime (integer kernels: QLinearConv) and by OpenVINO
    agrees with PyTorch's fake-quant on real MNIST images, with full-range and 7-bit weights."""
    from autocomp.measure import openvino as ovb

    scheme = Int8Scheme("fused", reduce_range)
    c = small("int8")
    m = build(c, SPACE)
    m.load_state_dict(trained_small)
    calib = [x for x, _ in mnist.batches(mnist.train.subset(256, seed=1), 128)]
    q = compress(m, c, None, SPACE, calib, **scheme.compress_kwargs())
    from autocomp.compress import quantize

    q = quantize.qat(q, mnist, steps=5, lr=1e-4, batch_size=64)  # weights move after the scales: still in range
    path = to_onnx(q, tmp_path / "m.onnx", (1, 28, 28))
    assert int8_export_of(path) == scheme.label and qinspect.check_placement(path, c) == []
    weights = int8_weights(path)
    assert len(weights) == len(qinspect.layer_precisions(path))
    qmax = 63 if reduce_range else 127
    assert all(w.min() >= -qmax - 1 and w.max() <= qmax for w in weights)
    assert max(int(np.abs(w).max()) for w in weights) == qmax  # the range is used, not merely respected
    if VNNI or reduce_range:  # integer kernels run (7-bit weights keep the fusion on any host)
        assert ort_ops(path)["QLinearConv"] >= 8
    sess = session(path)
    test = mnist.test.subset(2000, seed=0)
    agree = agree_ov = correct_ort = correct_pt = total = 0
    for x, y in mnist.batches(test, 500):
        a = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0].argmax(1)
        o = ovb.run(path, x.numpy()).argmax(1)
        with torch.no_grad():
            b = q(x).argmax(1).numpy()
        agree += int((a == b).sum())
        agree_ov += int((o == b).sum())
        correct_ort += int((a == y.numpy()).sum())
        correct_pt += int((b == y.numpy()).sum())
        total += len(y)
    assert correct_pt / total > 0.5  # it learned something: the comparison is meaningful
    assert abs(correct_ort - correct_pt) / total * 100 <= 0.3
    assert agree / total > 0.99 and agree_ov / total > 0.99


def test_ort_keeps_its_qdq_fusion_for_7bit_weights_on_hosts_without_int8_dot(tmp_path):
    c = small("int8")
    calib = [torch.randn(8, 1, 28, 28)]
    paths = {}
    for rr in (False, True):
        torch.manual_seed(0)
        model = compress(build(c, SPACE).eval(), c, None, SPACE, calib, int8_export="fused", reduce_range=rr)
        paths[rr] = to_onnx(model, tmp_path / f"rr{rr}.onnx", (1, 28, 28))
    # u8s8 kernels without VNNI saturate full-range weights: the fusion stays off for those only
    assert disabled_optimizers(paths[False], isa=AVX2) == [QDQ_FUSION]
    assert disabled_optimizers(paths[True], isa=AVX2) == []
    assert disabled_optimizers(paths[False], isa=AVX512_VNNI) == disabled_optimizers(paths[True], isa=AVX512_VNNI) == []


def test_a_family_with_a_channel_shuffle_links_through_it(tmp_path):
    """fbnet's grouped ops: 1x1 (groups) -> channel shuffle -> depthwise: a permutation, so the 1x1's
    int8 output passes it; the export still agrees with PyTorch."""
    from autocomp.compress import quantize
    from autocomp.families import fbnet as F

    s32 = get_space("fbnet-32")
    cand = F.from_ops(["k3_e3", "k5_e1_g2", "k3_e1_g2"] + ["skip"] * (len(F.ops(s32.largest())) - 3), s32, precision="int8")
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    q = compress(F.build(cand, s32).eval(), cand, None, s32, [x], int8_export="fused")
    shuffled = [n for n, m in q.named_modules() if isinstance(m, F.FBBlock) and isinstance(m.shuffle, F.ChannelShuffle)]
    assert len(shuffled) == 2
    for block in shuffled:
        pw = q.get_submodule(f"{block}.pw.0")
        assert pw.consumer is q.get_submodule(f"{block}.dw.0")
    path = to_onnx(q, tmp_path / "fb.onnx", (3, 32, 32))
    sess = session(path)
    with torch.no_grad():
        ref = q(x).numpy()
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max() + 1e-3
    assert isinstance(pw, quantize.QuantLayer)


# --------------------------------------------------------------------------- search rows and the scored model


def test_score_exports_with_the_scheme_and_results_keep_an_old_header(mnist, tmp_path):
    from autocomp.evaluate import EvalSettings, score
    from autocomp.rundir import RESULT_COLUMNS, ResultsTable, read_results

    scheme = get_device("cpu-ort").int8_scheme()
    s = score(small("int8"), SPACE, mnist, EvalSettings(weights="supernet", bn_images=128, val_size=500, calib_images=64), scheme)
    assert s.int8_export == scheme.label and s.accuracy > 0.5
    (tmp_path / "m.onnx").write_bytes(s.onnx)
    assert int8_export_of(tmp_path / "m.onnx") == scheme.label
    assert "int8_export" in RESULT_COLUMNS
    # a run written before the column existed is resumed: new rows keep to its header
    path = tmp_path / "results.csv"
    path.write_text(",".join(c for c in RESULT_COLUMNS if c != "int8_export") + "\n")
    t = ResultsTable(path)
    t.append({"trial": 0, "id": "x", "status": "ok", "accuracy": 0.9, "latency_ms": 1.0, "summary": "s", "policy": "{}",
              "error": "", "int8_export": "fused"})
    t.close()
    [row] = read_results(path)
    assert row["accuracy"] == 0.9 and "int8_export" not in row
    new = tmp_path / "new.csv"
    t = ResultsTable(new)
    t.append({"trial": 0, "id": "x", "status": "ok", "int8_export": scheme.label})
    t.close()
    assert read_results(new)[0]["int8_export"] == scheme.label
