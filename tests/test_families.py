"""Model families: the registry, the mbv2 family pinned to the figures it gave before families
existed, and the layer table agreeing with the predictor's vectorised analysis and with the
compressed network itself."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from autocomp.errors import UserError
from autocomp.families import Family, get_family, group_of_path, list_families, module_path
from autocomp.space import get_space, load_space

ROOT = Path(__file__).resolve().parents[1]
# recorded on the default space before the refactor into families (commit 477abc0)
PINNED_IDS = ["4d48f3b6712b", "baa7995f8727", "894f1600865c", "02996a8b1259", "c823f724b5f1", "98ed58c74594",
              "c488982c364e", "913b5f1e9691"]
PINNED_FEATURE_SUMS = [135.581784, 130.0937, 35.047016, 148.6957, 115.124628, 111.3809, 174.1347, 110.812132]
PINNED_PREDICTED_MS = [5.83929, 3.92289, 1.28489, 8.48993, 6.31923, 2.76165, 3.88897, 7.07129]
# the AVX2 host's sum+gbm predictor as it was then (fit before the channel-padding features existed:
# it also shows that an older predictor loads and predicts what it did)
PINNED_PREDICTOR = ROOT / "tests/fixtures/predictor-before-padding"


def _seed0(n: int = 8):
    space = get_space("mnist-mbv2")
    rng = random.Random(0)
    return space, [space.sample(rng) for _ in range(n)]


def test_registry():
    assert {"mbv2", "network"} <= set(list_families())
    assert isinstance(get_family("mbv2"), Family) and get_family("mbv2") is get_family(get_space("mnist-mbv2"))
    assert get_space("mnist-mbv2").family == "mbv2"  # the default of a space without the key
    with pytest.raises(UserError, match="unknown model family"):
        get_family("nope")


def test_space_yaml_family_key(tmp_path):
    text = (ROOT / "search_spaces/mnist-mbv2.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("name: mnist-mbv2", "name: x\nfamily: nope"))
    with pytest.raises(UserError, match="family"):
        load_space(bad)
    net = tmp_path / "net.yaml"
    net.write_text(text.replace("name: mnist-mbv2", "name: x\nfamily: network"))
    with pytest.raises(UserError, match="network"):  # family network names its network
        load_space(net)


def test_mbv2_family_gives_the_figures_of_before():
    """Same candidate ids for seed 0, same latency features (those that existed then), same predicted
    latency."""
    from autocomp.predictor.features import group_feature_names, group_features
    from autocomp.predictor.model import Predictor

    space, cands = _seed0()
    assert [c.id for c in cands] == PINNED_IDS
    then = [not n.startswith("pad_macs_") for n in group_feature_names()]  # the channel-padding MACs came later
    np.testing.assert_allclose(group_features(cands, space)[:, then].sum(1), PINNED_FEATURE_SUMS, rtol=1e-6)
    pred = Predictor.load(PINNED_PREDICTOR).predict(cands)
    np.testing.assert_allclose(pred, PINNED_PREDICTED_MS, rtol=1e-5)


@pytest.mark.parametrize("block", [8, 16])
def test_layer_table_is_the_vectorised_analysis(block):
    """Analysed from its layer table, an mbv2 candidate gives every feature of the vectorised path:
    the table path that analyses any other family is the one the built-in family is filtered with."""
    from autocomp.predictor.features import analyse, n_levels_of, table_acc

    space = get_space("mnist-mbv2")
    rng = random.Random(7)
    cands = [space.sample(rng) for _ in range(120)]
    fam = get_family(space)
    vec = analyse(cands, space, block=block)
    tab = table_acc([fam.layer_table(c, space) for c in cands], n_levels_of(space), block)
    np.testing.assert_array_equal(vec.v, tab.v)


def test_layer_table_macs_are_the_compressed_models():
    from autocomp.compress import compress
    from autocomp.models.mbv2 import count_macs

    space = get_space("mnist-mbv2")
    fam = get_family(space)
    rng = random.Random(3)
    for _ in range(2):
        c = space.sample(rng)
        model = compress(fam.build(c, space).eval(), c, fam, space, precision="none")
        assert count_macs(model, (1, 28, 28)) == int(sum(layer.macs for layer in fam.layer_table(c, space)))


def test_groups_name_every_exported_node(tmp_path):
    """The family's layer groups are what inspect reads an exported model with: every compute node
    of an mbv2 candidate (int8, fp16, low-rank pairs) belongs to its group, at its precision."""
    from autocomp.compress import compress
    from autocomp.compress.inspect import check_placement, layer_precisions, owners_of
    from autocomp.export import to_onnx

    space, cands = _seed0(4)
    fam = get_family(space)
    for c in cands[:1]:
        torch.manual_seed(0)
        model = compress(fam.build(c, space).eval(), c, fam, space, [torch.randn(8, 1, 28, 28)])
        path = to_onnx(model, tmp_path / f"{c.id}.onnx", (1, 28, 28))
        assert check_placement(path, c) == []
        owners = owners_of(c)
        assert all(lp.group is not None for lp in layer_precisions(path, owners))


def test_module_path_of_onnx_node_names():
    assert module_path("/features/features.1/block/block.0/block.0.0/Conv") == "features.1.block.0.0"
    assert module_path("/layer1/layer1.0/conv1/Conv") == "layer1.0.conv1"
    owners = {"layer1.0": "layer1.0", "fc": "head"}
    assert group_of_path("layer1.0.conv1", owners) == "layer1.0"
    assert group_of_path("fc.layer", owners) == "head"
    assert group_of_path("layer2.0.conv1", owners) is None
