"""The ``network`` family: the user's own CNN, the whole loop on torchvision resnet18 and
mobilenet_v3_small at 3x32x32 (MNIST as RGB, the networks trained briefly here):
search (ask/tell under a budget, the latency filter from the layer-table features) -> scoring
(prune/skip/factorise from the user's weights -> BN recalibration -> recovery distillation ->
quantization -> export -> accuracy of the exported model) -> distillation from the unmodified
network -> export -> verification (precision placement, outputs against PyTorch, measured latency).
Kept small for CI: a few training steps, two trials, small validation subsets."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from autocomp.data import Dataset, Split
from autocomp.errors import UserError
from autocomp.families import get_family
from autocomp.families.network import derive_space, kept, load_network, parse_input, space_yaml, structure
from autocomp.measure import Device

DEVICE = Device("cpu-ort-net-test", "onnxruntime", ("fp32", "fp16", "int8"),
                {"threads": 1, "warmup": 2, "repeats": 20, "min_time_s": 0.05})
SHAPE = (3, 32, 32)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for this module's PyTorch passes: these networks at 3x32x32 are too small
    for a second thread to pay, and on a busy host the two spin-wait for each other (12 training
    steps of resnet18 took 16 s of CPU with 2 threads, 2 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rgb32(split: Split, n: int, seed: int) -> Split:
    s = split.subset(n, seed)
    x = np.pad(s.x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    return Split(np.repeat(x, 3, axis=1), s.y)


@pytest.fixture(scope="module")
def rgb(mnist) -> Dataset:
    """MNIST as RGB 3x32x32 (padded, channels repeated), small splits."""
    return Dataset("mnist-rgb32", _rgb32(mnist.train, 4000, 0), _rgb32(mnist.val, 128, 1), _rgb32(mnist.test, 128, 2),
                   10, mnist.mean, mnist.std)


@pytest.fixture(scope="module")
def trained(rgb, tmp_path_factory):
    """name -> weights path of a torchvision network trained briefly on ``rgb`` (the user's network)."""
    import torchvision

    from autocomp.training import train

    out = {}
    d = tmp_path_factory.mktemp("nets")
    for name in ("resnet18", "mobilenet_v3_small"):
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, num_classes=10)
        train(model, rgb, steps=12, batch_size=32, lr=2e-3, seed=0)
        torch.save(model.state_dict(), d / f"{name}.pt")
        out[name] = d / f"{name}.pt"
    return out


def test_derived_space_resnet18(trained, tmp_path):
    sp = derive_space("torchvision:resnet18", str(trained["resnet18"]), SHAPE)
    assert sp.family == "network" and sp.num_classes == 10 and sp.name == "resnet18-3x32x32"
    # four stages (layer1..layer4); the second block of each can be skipped; layer1's first as well
    # (64 -> 64, stride 1) but a stage keeps at least one block
    assert [s.depth for s in sp.stages] == [[1, 2]] * 4
    assert [s.stride for s in sp.stages] == [1, 2, 2, 2] and [s.width[0] for s in sp.stages] == [64, 128, 256, 512]
    st = structure("torchvision:resnet18", str(trained["resnet18"]), SHAPE)
    assert st.stem == ["conv1", "bn1"] and st.head == ["fc"]
    # each BasicBlock's inner channels are its one internal Torch-Pruning group; residual channels are not
    assert [[st.group_sizes[g] for g in b.groups] for b in st.blocks] == [[64], [64], [128], [128], [256], [256], [512], [512]]
    assert kept(64, 0.5) == 32 and kept(72, 0.75) == 56 and kept(8, 0.5) == 8  # multiples of 8
    # the YAML written for editing reads back as the same space
    p = tmp_path / "space.yaml"
    p.write_text(space_yaml(sp))
    from autocomp.space import load_space

    assert load_space(p) == sp


def test_the_library_takes_the_network_by_its_spec(trained):
    """autocomp.search names the user's network as the CLI does ('torchvision:NAME' + weights + input):
    the library derives the same space; the nn.Module object itself (its weights loaded) gives the
    same blocks, stages and choices (tests/test_api_module.py searches one)."""
    from autocomp.api import _space_of

    name, sp, spec = _space_of("torchvision:resnet18", str(trained["resnet18"]), "3x32x32")
    assert spec == "torchvision:resnet18" and sp == derive_space(spec, str(trained["resnet18"]), SHAPE) and name == sp.name
    assert _space_of("mnist-mbv2")[1:] == (None, None)
    obj = load_network("torchvision:resnet18", str(trained["resnet18"]))
    _, live, spec = _space_of(obj, "auto", "3x32x32")
    assert spec == "python:ResNet" and live.network.model == spec and live.name.startswith("ResNet-")
    assert live.model_dump(exclude={"name", "network"}) == sp.model_dump(exclude={"name", "network"})


def test_structure_is_computed_once_across_threads(trained):
    """The latency predictor scores candidates on threads; the network's structure (traced with
    torch.fx and Torch-Pruning, which patch torch process-wide while tracing) is computed by one of
    them, the others get the same object (before: a NameError from a forward pass caught mid-trace)."""
    from concurrent.futures import ThreadPoolExecutor

    from autocomp.families.network import _structure

    _structure.cache_clear()
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: structure("torchvision:mobilenet_v3_small", str(trained["mobilenet_v3_small"]), SHAPE),
                            range(4)))
    assert all(g is got[0] for g in got)


def test_network_layer_table_and_compression(trained):
    """The layer table (no export) has the compressed network's MACs; skipped blocks are gone; the
    exported int8/fp16 layers sit where the candidate says."""
    import random

    from autocomp.compress import compress
    from autocomp.compress.inspect import check_placement
    from autocomp.export import compare_outputs, to_onnx
    from autocomp.models.mbv2 import count_macs

    sp = derive_space("torchvision:mobilenet_v3_small", str(trained["mobilenet_v3_small"]), SHAPE)
    fam = get_family(sp)
    rng = random.Random(1)
    cands = [sp.sample(rng) for _ in range(3)]
    with tempfile.TemporaryDirectory() as tmp:
        for i, c in enumerate(cands):
            model = compress(fam.build(c, sp), c, fam, sp, precision="none")
            assert count_macs(model, SHAPE) == int(sum(r.macs for r in fam.layer_table(c, sp)))
            n_skipped = sum(max(s.depth) - cs.depth for s, cs in zip(sp.stages, c.stages))
            assert sum(isinstance(m, torch.nn.Identity) for m in model.features) == n_skipped
        c = cands[0]
        model = compress(fam.build(c, sp), c, fam, sp, [torch.randn(16, *SHAPE)])
        path = to_onnx(model, Path(tmp) / "m.onnx", SHAPE)
        assert check_placement(path, c, fam, sp) == []
        diff, _ = compare_outputs(model, path, torch.randn(4, *SHAPE))
        assert diff < 1e-2


def test_network_latency_features_from_the_layer_table(trained):
    """A user's network gets the same feature columns as the built-in family, from its layer table:
    more MACs where the candidate keeps more."""
    from autocomp.predictor.features import group_feature_names, group_features, network_feature_names, network_features

    sp = derive_space("torchvision:resnet18", str(trained["resnet18"]), SHAPE)
    big, small = sp.largest(), sp.smallest("int8")
    g = group_features([big, small], sp)
    assert g.shape == (2, len(group_feature_names()))
    names = group_feature_names()
    macs = [i for i, n in enumerate(names) if n.startswith("macs_")]
    assert g[0, macs].sum() > g[1, macs].sum() > 0
    assert network_features([big, small], sp).shape[1] == len(network_feature_names(sp))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_whole_loop(name, trained, rgb, tmp_path):
    """search -> distill -> export -> verify on the user's network."""
    from autocomp.deploy import export_winner
    from autocomp.distill import KDConfig
    from autocomp.evaluate import EvalSettings, score
    from autocomp.export import to_onnx
    from autocomp.measure.onnxruntime import accuracy as ort_accuracy
    from autocomp.predictor.features import group_feature_names, group_features
    from autocomp.search import get_controller

    sp = derive_space(f"torchvision:{name}", str(trained[name]), SHAPE, keep_ratio=(1.0, 0.5), rank_ratio=(1.0, 0.5))
    fam = get_family(sp)
    teacher = fam.teacher(sp)
    t_path = to_onnx(teacher, tmp_path / "teacher.onnx", SHAPE)
    t_acc = ort_accuracy(t_path, rgb.batches(rgb.val, 128))
    t_ms = DEVICE.measure(t_path, "fp32").median_ms
    budget = 0.8 * t_ms

    col = [i for i, n in enumerate(group_feature_names()) if n.startswith("macs_")]
    ref = group_features([sp.largest()], sp)[0, col].sum()

    class MacsLatency:  # the latency filter: the layer-table MACs, scaled by the unmodified network's measured latency
        def predict(self, cands):
            return t_ms * group_features(cands, sp)[:, col].sum(1) / ref

    ctrl = get_controller("random", sp, seed=0, budget_ms=budget, predictor=MacsLatency())
    settings = EvalSettings(bn_images=32, calib_images=32, batch_size=32, val_size=128, finetune_steps=1, seed=0)
    rows = []
    for trial in range(2):
        cand = ctrl.ask()
        assert MacsLatency().predict([cand])[0] <= budget  # the budget filter held
        s = score(cand, sp, rgb, settings)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "m.onnx").write_bytes(s.onnx)
            lat = DEVICE.measure(Path(tmp) / "m.onnx", cand.precision).median_ms
        row = {"accuracy": s.accuracy, "latency_ms": lat}
        ctrl.tell(cand, row, trial)
        rows.append((cand, row))
        assert 0.0 <= s.accuracy <= 1.0 and s.params > 0
    best, row = max(rows, key=lambda r: r[1]["accuracy"])
    m = export_winner(best, sp, rgb, DEVICE, teacher, tmp_path / best.id, settings,
                      KDConfig(kinds=("logits",), steps=2, batch_size=32), budget_ms=budget)
    assert m["precision_placement_problems"] == []
    # (the briefly trained networks give near-ties: top-1 agreement is not 1 even for tiny differences)
    assert m["max_abs_output_diff_vs_torch"] < 0.5 and m["top1_agreement_vs_torch"] >= 0.75, m
    assert m["distillation"]["steps"] == 2
    assert m["measured_latency_ms"] > 0 and m["macs"] > 0
    assert (tmp_path / best.id / "model.onnx").is_file()
    # the student keeps a useful share of the teacher's accuracy on this tiny training budget
    assert m["accuracy_val"] > 0.2 or t_acc < 0.3


def test_bad_input(trained, tmp_path):
    with pytest.raises(UserError, match="--model"):
        load_network("torchvision:not_a_net", str(trained["resnet18"]))
    with pytest.raises(UserError, match="--model"):
        load_network("no_such_module_xyz:make")
    with pytest.raises(UserError, match="--weights.*does not fit"):
        load_network("torchvision:resnet18", str(trained["mobilenet_v3_small"]))
    with pytest.raises(UserError, match="--input"):
        parse_input("3x32")
    # a network that cannot run at that input size (untraceable there)
    with pytest.raises(UserError, match="--model"):
        derive_space("torchvision:resnet18", str(trained["resnet18"]), (1, 32, 32))
    # through the command line: exit 2, one line, no traceback, nothing written
    out = tmp_path / "s.yaml"
    p = subprocess.run([sys.executable, "-m", "autocomp.cli", "space", "--model", "torchvision:resnet18", "--weights",
                        str(trained["mobilenet_v3_small"]), "--input", "3x32x32", "--write", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert "--weights" in p.stderr and not out.exists()
