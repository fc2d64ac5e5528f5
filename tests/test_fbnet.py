"""The fbnet family: FBNet's search space (22 searchable layers x 9 ops) at 224x224 and 32x32."""

from __future__ import annotations

import random

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from autocomp.compress import compress
from autocomp.errors import UserError
from autocomp.export import to_onnx
from autocomp.families import get_family
from autocomp.families import fbnet as F
from autocomp.space import Candidate, get_space, load_space

# FBNet-A as the paper reports it (its ir_k5_s2 written k5_e1_g2 here)
FBNET_A = ["skip",
           "k3_e3", "k3_e1", "skip", "skip",
           "k5_e6", "k3_e3", "k5_e1", "k3_e3",
           "k5_e6", "k5_e3", "k5_e1_g2", "k5_e6",
           "k3_e6", "k5_e1_g2", "k5_e1", "k3_e1_g2",
           "k5_e6", "k5_e6", "k5_e3", "k5_e6",
           "k5_e6"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine two threads spin against each other (10x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def s224():
    return get_space("fbnet-224")


@pytest.fixture(scope="module")
def s32():
    return get_space("fbnet-32")


def test_architecture_round_trips_as_22_op_names(s224, s32):
    assert get_family(s224).name == "fbnet"
    c = F.from_ops(FBNET_A, s224)
    assert F.ops(c) == FBNET_A
    assert F.ops(Candidate.from_json(c.to_json())) == FBNET_A
    assert Candidate.from_json(c.to_json()).id == c.id
    rng = random.Random(0)
    seen = set()
    for _ in range(40):
        cand = s224.sample(rng)
        names = F.ops(cand)
        assert len(names) == 22 and set(names) <= set(F.OPS)
        seen |= set(names)
        back = F.from_ops(names, s224)
        assert F.ops(back) == names
        s224.validate_candidate(cand)
    assert seen == set(F.OPS)  # every op is reachable by sampling
    # the same architecture reads into the 32x32 variant: same 22 layers, same op list
    assert F.ops(F.from_ops(FBNET_A, s32)) == FBNET_A
    assert F.ops(s224.largest()) == ["k5_e6"] * 22 and F.ops(s224.smallest()) == ["skip"] * 22
    with pytest.raises(UserError, match="22"):
        F.from_ops(FBNET_A[:-1], s224)
    with pytest.raises(UserError, match="k4_e1"):
        F.from_ops(["k4_e1"] + FBNET_A[1:], s224)


def test_unknown_op_in_a_space_yaml_is_one_line(tmp_path):
    text = get_space("fbnet-32").model_dump_json()
    import json

    d = json.loads(text)
    d["stages"][0]["ops"] = ["k3_e1", "k7_e0"]
    p = tmp_path / "bad.yaml"
    import yaml

    p.write_text(yaml.safe_dump(d))
    with pytest.raises(UserError, match=r"stages\[0\]\.ops.*k7_e0"):
        load_space(p)


def _sizes(model, x):
    """Spatial size after the stem and after every searchable layer."""
    out = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: out.append(o.shape[-1])) for m in [model.stem, *model.blocks]]
    with torch.no_grad():
        y = model(x)
    for h in hooks:
        h.remove()
    return y, out


@pytest.mark.parametrize("name, stem, stages", [
    ("fbnet-224", 112, [112, 56, 28, 14, 14, 7, 7]),
    ("fbnet-32", 32, [32, 32, 16, 8, 8, 4, 4]),
])
def test_build_shapes_and_stage_strides(name, stem, stages):
    space = get_space(name)
    fam = get_family(space)
    depths = [1, 4, 4, 4, 4, 4, 1]
    assert [st.depth for st in space.stages] == [[d] for d in depths]
    assert [st.width[0] for st in space.stages] == [16, 24, 32, 64, 112, 184, 352]
    assert space.head.width == [1504] and space.stem.width == [16]
    for cand in (F.from_ops(FBNET_A, space), space.largest()):
        model = fam.build(cand, space).eval()
        y, sizes = _sizes(model, torch.randn(1, 3, space.input.height, space.input.width))
        assert y.shape == (1, space.num_classes)
        want = [stem] + [s for s, d in zip(stages, depths) for _ in range(d)]
        assert sizes == want
        # the layer table knows the same resolutions without building anything
        table = fam.layer_table(cand, space)
        assert table[0].out_hw == stem * stem and table[-2].out_hw == stages[-1] ** 2


def test_grouped_layer_prunes_exactly(s32):
    """Pruning a k5_e1_g2 layer (1x1 group convs + shuffle) = the full layer with the removed
    channels' project weights zeroed: the kept cells still meet the same groups after the shuffle."""
    torch.manual_seed(0)
    for op, keep in (("k5_e1_g2", 0.5), ("k3_e1_g2", 0.75), ("k3_e6", 0.5)):
        block = F.make_op(op, 24, 24, 1)
        for m in block.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
                m.weight.data.normal_()
                m.bias.data.normal_()
        block.eval()
        full = F.make_op(op, 24, 24, 1).eval()
        full.load_state_dict(block.state_dict())
        F.prune_layer(block, keep)
        n, hidden, g = block.dw[0].out_channels, full.dw[0].out_channels, full.groups
        assert n == F.kept_hidden(hidden, keep, g) < hidden
        # which full-layer (post-shuffle) channels survived: match the depthwise filters
        kept = [int(torch.nonzero((full.dw[0].weight == block.dw[0].weight[j]).flatten(1).all(1))[0]) for j in range(n)]
        drop = sorted(set(range(hidden)) - set(kept))
        w = full.project[0].weight.data
        for j in drop:
            q = j // (hidden // g)
            w[q * 24 // g:(q + 1) * 24 // g, j - q * (hidden // g)] = 0
        x = torch.randn(2, 24, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(block(x), full(x), atol=1e-5, rtol=1e-5)


def test_compressed_candidate_exports_and_matches_its_layer_table(s32, tmp_path):
    fam = get_family(s32)
    names = FBNET_A
    cand = F.from_ops(names, s32, keep=0.5, rank=0.5, precision="fp32")
    # mixed precision: some layer groups int8, some fp16
    d = cand.to_dict()
    blocks = [b for st in d["stages"] for b in st["blocks"]]
    for i, b in enumerate(blocks):
        b["precision"] = ("fp32", "int8", "fp16")[i % 3]
    d["head_precision"] = "int8"
    cand = Candidate.from_dict(d)
    s32.validate_candidate(cand)
    torch.manual_seed(0)
    model = fam.build(cand, s32).eval()
    calib = [torch.randn(4, 3, 32, 32)]
    with torch.no_grad():
        model = compress(model, cand, None, s32, calib)
        ref = model(calib[0][:1])
    path = to_onnx(model, tmp_path / "m.onnx", (3, 32, 32))
    graph = onnx.load(str(path)).graph
    table = fam.layer_table(cand, s32)
    n_conv = sum(n.op_type == "Conv" for n in graph.node)
    assert n_conv == sum(r.op == "conv" for r in table)
    assert sum(n.op_type == "Gemm" for n in graph.node) == sum(r.op == "gemm" for r in table) == 1
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) > 0  # int8 groups stay int8 in the export
    # low-rank and pruning happened: more convs than the uncompressed network, fewer hidden channels
    plain = fam.layer_table(F.from_ops(names, s32), s32)
    assert sum(r.op == "conv" for r in plain) < n_conv
    assert sum(r.params for r in table) < sum(r.params for r in plain)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": calib[0][:1].numpy()})[0]
    assert out.shape == (1, 100)
    np.testing.assert_allclose(out, ref.numpy(), atol=0.05 * float(np.abs(ref.numpy()).max()) + 1e-3)
    # the predictor's features read the same table (any non-mbv2 family is analysed from it)
    from autocomp.predictor.features import network_feature_names, network_features

    x = network_features([cand, F.from_ops(names, s32)], s32)
    assert x.shape == (2, len(network_feature_names(s32))) and np.isfinite(x).all()
    assert not np.allclose(x[0], x[1])


def test_channel_shuffles_are_the_move_rows_of_the_layer_table(s32, tmp_path):
    """Every ``_g2`` layer's channel shuffle is one ``move`` row of the layer table: the exported
    graph has one shuffle Transpose per such row, moving exactly the row's elements (read from the
    exported model run once), in float, fp16 and int8 layers and after pruning; the predictor's
    features count those moves and elements (``moves``, ``move_elems``)."""
    from onnx import TensorProto, helper, shape_inference

    from autocomp.predictor.features import n_levels_of, table_acc

    d = F.from_ops(FBNET_A, s32).to_dict()
    blocks = [b for st in d["stages"] for b in st["blocks"]]
    grouped = [i for i, op in enumerate(FBNET_A) if op.endswith("_g2")]
    for i, b in enumerate(blocks):  # the grouped layers get int8, fp32 and fp16, the first and the last pruned
        b["precision"] = ("int8", "fp32", "fp16")[grouped.index(i) if i in grouped else i % 3]
        b["keep"] = 0.5 if i in (grouped[0], grouped[-1]) else 1.0
    cand = Candidate.from_dict(d)
    s32.validate_candidate(cand)
    table = get_family(s32).layer_table(cand, s32)
    moves = [r for r in table if r.op == "move"]
    assert len(moves) == sum(op.endswith("_g2") for op in FBNET_A) == 3
    assert {r.precision for r in moves} == {"int8", "fp32", "fp16"}
    assert all(r.macs == 0 and r.params == 0 for r in moves)
    torch.manual_seed(0)
    with torch.no_grad():
        model = compress(get_family(s32).build(cand, s32).eval(), cand, None, s32, [torch.randn(4, 3, 32, 32)])
    path = to_onnx(model, tmp_path / "m.onnx", (3, 32, 32))
    m = shape_inference.infer_shapes(onnx.load(str(path)))
    types = {v.name: v.type.tensor_type.elem_type for v in m.graph.value_info}
    shuffles = [n.output[0] for n in m.graph.node if n.op_type == "Transpose" and "shuffle" in n.name]
    assert len(shuffles) == len(moves)
    for name in shuffles:
        m.graph.output.append(helper.make_tensor_value_info(name, types.get(name, TensorProto.FLOAT), None))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = sess.run(shuffles, {"input": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)})
    assert sorted(o.size for o in outs) == sorted(int(r.cout * r.out_hw) for r in moves)
    acc = table_acc([table, get_family(s32).layer_table(F.from_ops(FBNET_A, s32), s32)], n_levels_of(s32))
    assert acc.moves[0] == len(moves) and acc.move_elems[0] == sum(o.size for o in outs)
    assert acc.move_elems[1] > acc.move_elems[0]  # unpruned: the shuffles move more


def test_supernet_trains_and_extracts_a_candidates_weights(s32):
    # the 32x32 space with a few of its ops (plain, grouped, skip) and a narrow head: the same code path, cheaper
    few = ["k3_e1_g2", "k5_e6", "skip"]
    space = s32.model_copy(update={"stages": [st.model_copy(update={"ops": few}) for st in s32.stages],
                                   "head": s32.head.model_copy(update={"width": [64]})})
    torch.manual_seed(0)
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))) for _ in range(2)]
    sd = F.train_supernet(space, None, steps=2, seed=0, batches=batches, paths=1, progress=False, device="cpu")
    torch.manual_seed(0)
    sup = F.SuperNet(space)  # the same initial weights as train_supernet's
    assert sd.keys() == sup.state_dict().keys()
    assert any(not torch.equal(sd[k], v) for k, v in sup.state_dict().items() if k.endswith("weight"))  # it trained
    sup.load_state_dict(sd)
    sup.eval()
    names = ["k3_e1_g2", "k5_e6", "skip", "skip"] + ["k5_e6", "k3_e1_g2"] * 9
    cand = F.from_ops(names, space)
    net = F.extract(cand, space, {"state_dict": sd})  # no data: the supernet's BN statistics are kept
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), sup(x, cand))
    torch.testing.assert_close(net.blocks[4].pw[0].weight, sd["blocks.4.k5_e6.pw.0.weight"])
    torch.testing.assert_close(net.blocks[0].pw[0].weight, sd["blocks.0.k3_e1_g2.pw.0.weight"])
