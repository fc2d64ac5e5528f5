"""Compression operators on real models (no mocks): default-space subnets of mbv2.build,
torchvision MobileNetV2 and ResNet-18 (random init), real MNIST images for the int8 ORT check."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torchvision
from torch import nn

from autocomp.compress import inspect as qinspect
from autocomp.compress import lowrank, prune, quantize
from autocomp.export import to_onnx
from autocomp.measure.onnxruntime import session
from autocomp.models.mbv2 import build, count_params
from autocomp.space import Block, Candidate, Stage, get_space

SPACE = get_space("mnist-mbv2")


def small(precisions: list[str] | None = None, keep: float = 1.0, rank: float = 1.0, stem: str = "fp32", head: str = "fp32") -> Candidate:
    """A small default-space member: 1 block per stage (expansions 3/3/3/3), 4 blocks."""
    precisions = precisions or ["fp32"] * 4
    stages = tuple(Stage(min(st.width), (Block(3, 3, keep, rank, p),)) for st, p in zip(SPACE.stages, precisions))
    c = Candidate(SPACE.name, 16, stem, stages, 128, head)
    SPACE.validate_candidate(c)
    return c


def net(c: Candidate, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = build(c, SPACE)
    # non-trivial BN statistics so that folding and pruning are actually exercised
    with torch.no_grad():
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.1, 0.1)
                bn.running_mean.uniform_(-0.1, 0.1)
                bn.running_var.uniform_(0.5, 1.5)
    return m.eval()


def x28(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def export(model: nn.Module, tmp_path: Path, name: str = "m.onnx") -> Path:
    return to_onnx(model, tmp_path / name, (1, 28, 28))


def ort_run(path: Path, x: torch.Tensor) -> np.ndarray:
    s = session(path)
    return s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]


def conv_channels(path: Path) -> dict[str, int]:
    """Output channels of every Conv weight in an ONNX file, by node name."""
    g = onnx.load(str(path)).graph
    inits = {t.name: t.dims for t in g.initializer}
    return {n.name: inits[n.input[1]][0] for n in g.node if n.op_type == "Conv" and n.input[1] in inits}


# --------------------------------------------------------------------------- structured pruning


@pytest.mark.parametrize("importance", ["l1", "l2", "bn", "taylor"])
def test_net_pruning_removes_hidden_channels(importance):
    c = small(keep=0.5)
    m = net(c)
    full = count_params(m)
    hidden = [b.dw[0].out_channels for b in m.blocks]
    batches = [(x28(8), torch.randint(0, 10, (8,)))]
    prune.apply(m, c, importance, batches=batches)
    assert [b.dw[0].out_channels for b in m.blocks] == [round(h * 0.5) for h in hidden]
    for b in m.blocks:
        h = b.dw[0].out_channels
        assert b.expand[0].out_channels == b.expand[1].num_features == b.dw[1].num_features == b.project[0].in_channels == h
        assert b.dw[0].groups == h
    assert count_params(m) < full
    assert m(x28()).shape == (4, 10)


def test_pruning_keeps_the_most_important_channels_and_output():
    """Zeroing a channel's BN makes it the least important: pruning it away changes nothing."""
    c = small(keep=0.75)
    m = net(c)
    blk = m.blocks[1]
    h = blk.dw[0].out_channels
    drop = h - round(h * 0.75)
    with torch.no_grad():
        for bn in (blk.expand[1], blk.dw[1]):
            bn.weight[:drop] = 0.0
            bn.bias[:drop] = 0.0
    keep_c = replace(c, stages=tuple(replace(s, blocks=tuple(replace(b, keep=0.75 if i == 1 else 1.0) for b in s.blocks)) for i, s in enumerate(c.stages)))
    before = m(x28())
    prune.apply(m, keep_c, "bn")
    assert blk.dw[0].out_channels == h - drop
    torch.testing.assert_close(m(x28()), before, atol=1e-5, rtol=1e-5)


def test_pruned_onnx_has_fewer_channels(tmp_path):
    c = small(keep=0.25)
    full = conv_channels(export(net(c), tmp_path, "full.onnx"))
    m = prune.apply(net(c), c)
    pruned = conv_channels(export(m, tmp_path, "pruned.onnx"))
    assert full.keys() == pruned.keys()
    dw = [k for k in full if "/dw/" in k]
    assert dw and all(pruned[k] == round(full[k] * 0.25) for k in dw)
    assert sum(pruned.values()) < sum(full.values())
    np.testing.assert_allclose(ort_run(tmp_path / "pruned.onnx", x28()), m(x28()).detach().numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch,importance", [("mobilenet_v2", "l1"), ("resnet18", "taylor")])
def test_torch_pruning_generic_models(arch, importance):
    torch.manual_seed(0)
    m = getattr(torchvision.models, arch)(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    full = count_params(m)
    batches = [(torch.randn(2, 3, 32, 32), torch.tensor([1, 2]))]
    prune.prune_model(m, x, keep_ratio=0.5, importance=importance, batches=batches)
    assert m(x).shape == (1, 10)
    # conv weights scale with (in x out) channels: about a quarter of them remain
    assert 0.15 * full < count_params(m) < 0.4 * full
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert convs[0].out_channels == 32 // 2 if arch == "mobilenet_v2" else convs[0].out_channels == 32
    assert m.fc.in_features == 256 if arch == "resnet18" else m.classifier[-1].in_features == 640


def test_torch_pruning_bn_importance_is_ours_on_every_group():
    """``bn`` in prune_model is Torch-Pruning's BNScaleImportance (L1 where a group has no BatchNorm):
    the same channels as our criterion on each group, in a network with and without BatchNorm."""
    import copy

    import torch_pruning as tp

    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    for m in (torchvision.models.mobilenet_v2(num_classes=10).eval(),
              nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.BatchNorm2d(32), nn.ReLU(),
                            nn.Conv2d(32, 8, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 28 * 28, 10)).eval()):
        for bn in (b for b in m.modules() if isinstance(b, nn.BatchNorm2d)):
            bn.weight.data = torch.rand(bn.num_features) + 0.1  # distinct gammas: the ranking is not a tie
        ours = copy.deepcopy(m)
        tp.pruner.MetaPruner(ours, x, importance=prune._TPImportance(prune.BNScaleImportance()), pruning_ratio=0.5,
                             ignored_layers=prune._classifier_layers(ours, None)).step()
        lib = prune.prune_model(copy.deepcopy(m), x, keep_ratio=0.5, importance="bn")
        a, b = ours.state_dict(), lib.state_dict()
        assert all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def test_torch_pruning_per_layer_ratios():
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    target = m.layer1[0].conv1  # an unconstrained conv (its output feeds only bn1 -> conv2)
    prune.prune_model(m, x, keep_ratio=1.0, per_layer={target: 0.25})
    assert m.layer1[0].conv1.out_channels == 16 and m.layer1[0].conv2.in_channels == 16
    assert m.layer2[0].conv1.out_channels == 128
    assert m(x).shape == (1, 10)


def test_unstructured_sparsity_is_storage_only():
    c = small()
    m = net(c)
    shapes = [p.shape for p in m.parameters()]
    rep = prune.magnitude_sparsity(m, 0.7)
    assert [p.shape for p in m.parameters()] == shapes  # nothing removed
    assert rep.sparsity == pytest.approx(0.7, abs=0.01)
    assert rep.compressed_bytes < 0.5 * rep.dense_bytes
    assert prune.magnitude_sparsity(m, 0.0).sparsity == pytest.approx(rep.sparsity)


# --------------------------------------------------------------------------- low-rank


def test_full_rank_factorisations_reproduce_outputs():
    torch.manual_seed(0)
    layers = [(nn.Linear(24, 16), torch.randn(3, 24)),
              (nn.Conv2d(12, 20, 1, stride=2), torch.randn(2, 12, 9, 9)),
              (nn.Conv2d(12, 20, 3, stride=2, padding=1), torch.randn(2, 12, 9, 9)),
              (nn.Conv2d(8, 6, 5, padding=2, bias=False), torch.randn(2, 8, 7, 7))]
    for layer, x in layers:
        f = lowrank.factorize(layer, 1.0, force=True)
        assert isinstance(f, nn.Sequential)
        torch.testing.assert_close(f(x), layer(x), atol=1e-5, rtol=1e-4)


def test_tucker_and_svd_shrink_resnet():
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    full = count_params(m)
    per_layer = {"layer1.0.conv1": 0.25, "layer1.0.conv2": 0.25, "layer2.0.downsample.0": 0.25, "fc": 0.25}
    lowrank.factorize_model(m, 1.0, per_layer=per_layer)
    assert m(x).shape == (1, 10)
    f = m.layer1[0].conv1  # 64->64 3x3: 1x1 (64->16), 3x3 (16->16), 1x1 (16->64)
    assert [tuple(c.weight.shape) for c in f] == [(16, 64, 1, 1), (16, 16, 3, 3), (64, 16, 1, 1)]
    assert [tuple(c.weight.shape) for c in m.layer2[0].downsample[0]] == [(16, 64, 1, 1), (128, 16, 1, 1)]
    assert isinstance(m.fc, nn.Sequential) and isinstance(m.layer1[1].conv1, nn.Conv2d)
    saved = 2 * (64 * 64 * 9 - (64 * 16 + 16 * 16 * 9 + 16 * 64)) + (64 * 128 - 16 * (64 + 128)) + (512 * 10 - 3 * (512 + 10))
    assert full - count_params(m) == saved


def test_net_rank_gene(tmp_path):
    c = small(rank=0.25)
    m = net(c)
    full = count_params(m)
    lowrank.apply(m, c)
    assert count_params(m) < full
    assert isinstance(m.blocks[3].expand[0], nn.Sequential)
    assert m(x28()).shape == (4, 10)
    same = lowrank.apply(net(c), small(rank=1.0))
    assert count_params(same) == full


# --------------------------------------------------------------------------- precision


def test_fp32_policy_changes_nothing():
    c = small()
    m = net(c)
    ref = copy.deepcopy(m)
    quantize.apply(m, c, None)
    x = x28()
    assert torch.equal(m(x), ref(x))
    assert all(not isinstance(mod, (quantize.QuantLayer, quantize.Half)) for mod in m.modules())


def test_mixed_precision_placement_matches_policy(tmp_path):
    c = small(["int8", "fp16", "fp32", "int8"], keep=0.5, rank=0.5, stem="int8", head="fp16")
    m = lowrank.apply(prune.apply(net(c), c), c)
    q = quantize.apply(m, c, [x28(16, 1)], method="mse")
    path = export(q, tmp_path)
    assert qinspect.check_placement(path, c) == []
    lps = qinspect.layer_precisions(path)
    want = qinspect.policy(c)
    assert {lp.group for lp in lps} == set(want)
    for lp in lps:
        assert lp.precision == want[lp.group]
        if lp.precision != "int8":
            assert not lp.input_dq and not lp.weight_dq
    # fp16 layers are fp16 tensors in the graph
    g = onnx.load(str(path)).graph
    inits = {t.name: t.data_type for t in g.initializer}
    for n in g.node:
        if n.op_type == "Conv" and qinspect.group_of(n.name) in ("blocks.1", "head"):
            assert inits[n.input[1]] == onnx.TensorProto.FLOAT16
    # int8 layers: weights per-channel (axis 0), activations per-tensor, all symmetric (zero point 0)
    dq = [n for n in g.node if n.op_type == "DequantizeLinear"]
    assert dq
    consts = {n.output[0]: n.attribute[0].t for n in g.node if n.op_type == "Constant"}
    for n in dq:
        zp = consts.get(n.input[2]) if len(n.input) > 2 else None
        if zp is not None:
            assert not onnx.numpy_helper.to_array(zp).any()
    # a wrong policy is caught
    wrong = replace(c, head_precision="fp32")
    assert qinspect.check_placement(path, wrong)
    # ORT runs the mixed model and agrees with PyTorch
    x = x28(8, 2)
    np.testing.assert_allclose(ort_run(path, x), q(x).detach().numpy(), atol=5e-2, rtol=0)


@pytest.mark.parametrize("method", quantize.CALIBRATION_METHODS)
def test_calibration_methods(method):
    c = small(["int8"] * 4, stem="int8", head="int8")
    x = x28(16, 3)
    q = quantize.apply(net(c), c, [x], method=method)
    scales = [float(m.act_scale) for m in q.modules() if isinstance(m, quantize.QuantLayer)]
    assert all(s > 0 for s in scales)
    if method != "minmax":
        mm = quantize.apply(net(c), c, [x], method="minmax")
        mm_scales = [float(m.act_scale) for m in mm.modules() if isinstance(m, quantize.QuantLayer)]
        assert all(s <= t * (1 + 1e-6) for s, t in zip(scales, mm_scales))  # clipping never widens the range


def test_calibration_thresholds_on_a_known_histogram():
    rng = np.random.default_rng(0)
    v = np.abs(np.concatenate([rng.normal(0, 1, 200_000), [40.0]]))  # one outlier
    hist, edges = np.histogram(v, bins=2048, range=(0, v.max()))
    assert quantize.amax_from_histogram(hist, edges, "minmax") == pytest.approx(40.0)
    assert 3.0 < quantize.amax_from_histogram(hist, edges, "percentile", 99.99) < 5.0
    assert quantize.amax_from_histogram(hist, edges, "mse") < 0.6 * 40.0  # clips the lone outlier
    assert quantize.amax_from_histogram(hist, edges, "entropy") < 0.6 * 40.0


def test_int8_onnx_matches_pytorch_on_mnist(tmp_path):
    from autocomp.data import load_dataset
    from autocomp.evaluate import train

    data = load_dataset("mnist")
    c = small(["int8", "int8", "fp32", "int8"], stem="int8", head="int8")
    torch.manual_seed(0)
    m = train(build(c, SPACE), data, 60, 128, 1e-2, 0)
    calib = [x for x, _ in data.batches(data.train.subset(256, seed=1), 128)]
    q = quantize.apply(m, c, calib, method="percentile")
    q = quantize.qat(q, data, steps=5, lr=1e-4, batch_size=64)
    path = export(q, tmp_path)
    assert qinspect.check_placement(path, c) == []
    test = data.test.subset(2000, seed=0)
    sess = session(path)
    agree = correct_ort = correct_pt = total = 0
    for x, y in data.batches(test, 500):
        a = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0].argmax(1)
        with torch.no_grad():
            b = q(x).argmax(1).numpy()
        agree += int((a == b).sum())
        correct_ort += int((a == y.numpy()).sum())
        correct_pt += int((b == y.numpy()).sum())
        total += len(y)
    assert correct_pt / total > 0.5  # it learned something: the comparison is meaningful
    assert abs(correct_ort - correct_pt) / total * 100 <= 0.3
    assert agree / total > 0.99


def test_quantize_generic_model(tmp_path):
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10).eval()
    m.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    q = quantize.quantize_model(m, [x28(4)], method="percentile", skip=[m.fc])
    path = export(q, tmp_path)
    lps = qinspect.layer_precisions(path)
    assert [lp.precision for lp in lps if lp.op == "Conv"] and all(lp.precision == "int8" for lp in lps if lp.op == "Conv")
    assert [lp.precision for lp in lps if lp.op == "Gemm"] == ["fp32"]
    x = x28(2, 5)
    np.testing.assert_allclose(ort_run(path, x), q(x).detach().numpy(), atol=5e-2, rtol=0)


def test_output_quantization_keeps_placement_and_lets_ort_fuse_integer_convs(tmp_path):
    c = small(["int8", "int8", "fp32", "int8"], stem="int8", head="fp32")
    q = quantize.apply(net(c), c, [x28(16, 1)], int8_export="fused")
    path = export(q, tmp_path)
    assert qinspect.check_placement(path, c) == []
    lps = qinspect.layer_precisions(path)
    linked = [lp.node for lp in lps if lp.output_q]
    assert all(qinspect.policy(c)[lp.group] == "int8" for lp in lps if lp.input_dq or lp.weight_dq)
    assert "/stem/stem.0/Conv" in linked and "/blocks/blocks.0/expand/expand.0/Conv" in linked
    x = x28(4, 2)
    assert np.abs(ort_run(path, x) - q(x).detach().numpy()).max() < 0.1
