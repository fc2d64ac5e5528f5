"""Weight-sharing supernet: extraction, training step, committed checkpoint, teacher loading."""

from __future__ import annotations

import random
import sys

import pytest
import torch
from torch import nn

from autocomp.data import load_dataset
from autocomp.errors import UserError
from autocomp.models import mbv2
from autocomp.models import supernet as S
from autocomp.models.teacher import check_teacher, load_teacher
from autocomp.space import SearchSpace, get_space

TINY = SearchSpace.model_validate({
    "name": "tiny-test",
    "input": {"channels": 1, "height": 28, "width": 28},
    "num_classes": 10,
    "stem": {"width": [4, 8]},
    "stages": [
        {"stride": 1, "depth": [1, 2], "width": [4, 8], "kernel": [3, 5, 7], "expand": [1, 2]},
        {"stride": 2, "depth": [1, 2, 3], "width": [8, 12], "kernel": [3, 5], "expand": [2, 3]},
    ],
    "head": {"width": [16, 32]},
})
SUPERNET_TYPES = (S.SuperNet, S.ElasticBlock, S.ElasticBN, S.ElasticDepthwise, S.ElasticPointwise, S.ElasticStem)


@pytest.fixture(scope="module")
def data():
    return load_dataset("mnist")


def _randomise(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial weights everywhere (BN statistics, zero-initialised gammas, kernel transforms)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(net.named_parameters()) + list(net.named_buffers()):
            if t.is_floating_point():
                r = torch.rand(t.shape, generator=g)
                if "running_var" in name:
                    t.copy_(0.5 + r)
                elif "ktm" in name:
                    t.add_(0.1 * (r - 0.5))
                elif "bn.weight" in name:
                    t.copy_(0.5 + r)
                else:
                    t.copy_(0.4 * (r - 0.5))
    return net.eval()


def _cands(space, n, seed=0):
    rng = random.Random(seed)
    return [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(n)]


def test_extract_is_a_plain_net_with_the_built_shapes():
    sup = _randomise(S.SuperNet(TINY))
    for c in _cands(TINY, 4):
        net = S.extract(c, TINY, sup)
        assert type(net) is mbv2.Net
        assert not any(isinstance(m, SUPERNET_TYPES) for m in net.modules())
        ref = mbv2.build(c, TINY)
        assert repr(net) == repr(ref)
        assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
        assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_extracted_subnets_reproduce_the_supernet_forward():
    sup = _randomise(S.SuperNet(TINY), seed=1)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        for c in _cands(TINY, 4, seed=1):
            net = S.extract(c, TINY, sup)
            torch.testing.assert_close(net(x), sup(x, c), rtol=1e-4, atol=1e-5)


def test_trained_state_dict_roundtrips_through_checkpoint(data, tmp_path):
    sd = S.train_supernet(TINY, data, steps=2, seed=0, progress=False, batch_size=16)
    path = S.save_checkpoint(tmp_path / "tiny.pt", TINY, sd, {"seed": 0, "steps": 2})
    ck = torch.load(path, weights_only=True)
    assert ck["schema_version"] == S.SCHEMA_VERSION and ck["space"] == "tiny-test"
    sup = S.as_supernet(TINY, sd)
    x = data.normalise(data.test.x[:8])
    with torch.no_grad():
        largest = TINY.largest()
        torch.testing.assert_close(S.extract(largest, TINY, sd)(x), sup(x, largest), rtol=1e-4, atol=1e-5)
        # fp16 storage in the checkpoint: same predictions within fp16 rounding
        torch.testing.assert_close(S.extract(largest, TINY, path)(x), sup(x, largest), rtol=0.05, atol=0.05)
    with pytest.raises(UserError):
        S.extract(largest, get_space("mnist-mbv2").model_copy(update={"name": "tiny-test"}), path)


def test_committed_checkpoint_scores_well_above_chance(data):
    space = get_space("mnist-mbv2")
    path = S.default_checkpoint(space.name)
    assert path is not None and path.name == "mnist-mbv2.pt"
    ck = torch.load(path, weights_only=True)
    assert ck["schema_version"] == 1 and ck["space"] == "mnist-mbv2"
    for key in ("command", "seed", "steps", "wall_time_s"):
        assert key in ck["meta"]
    test = data.test.subset(1000, seed=0)
    rng = random.Random(0)
    cheap = sorted((space.sample(rng) for _ in range(20)), key=lambda c: mbv2.count_params(mbv2.build(c, space)))[:1]
    for c in [space.smallest()] + cheap:
        net = S.extract(c, space, path, data, bn_batches=2, bn_batch_size=128)
        assert S.accuracy(net, data, test) > 0.5  # chance is 0.1


# --------------------------------------------------------------------------- teacher


def wrong_classes_teacher() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 7))


def not_a_module():
    return 42


def test_teacher_spec_errors(data, tmp_path):
    me = __name__
    assert sys.modules[me]
    with pytest.raises(UserError, match="cannot import module"):
        load_teacher("no_such_pkg.sub:make")
    with pytest.raises(UserError, match="no callable"):
        load_teacher(f"{me}:no_such_factory")
    with pytest.raises(UserError, match="module:factory"):
        load_teacher("just_a_name")
    with pytest.raises(UserError, match="returned int"):
        load_teacher(f"{me}:not_a_module")
    with pytest.raises(UserError, match="outputs 7 classes"):
        check_teacher(load_teacher(f"{me}:wrong_classes_teacher"), data)
    with pytest.raises(UserError, match="needs weights"):
        load_teacher("torchvision:resnet18", data=data)
    with pytest.raises(UserError, match="unknown torchvision model"):
        load_teacher("torchvision:no_such_net", tmp_path / "w.pt", data=data)
    bad = tmp_path / "bad.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(UserError, match="do not fit"):
        load_teacher(f"{me}:wrong_classes_teacher", bad)
    with pytest.raises(UserError, match="no trained supernet"):
        load_teacher(None, space=TINY, data=data)


def test_teacher_input_mismatch_and_good_teacher(data, tmp_path):
    import torchvision

    w = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), w)
    t = load_teacher("torchvision:resnet18", w, data=data)  # RGB network vs 1-channel MNIST
    with pytest.raises(UserError, match="input of shape 1x28x28"):
        check_teacher(t, data)
    sup = _randomise(S.SuperNet(TINY))
    check_teacher(load_teacher(None, S.make_checkpoint(TINY, sup.state_dict(), {}), space=TINY, data=data, bn_batches=1), data)


def test_cli_bad_input_raises_user_error():
    from typer.testing import CliRunner

    from autocomp.models.cli import app

    r = CliRunner().invoke(app, ["train", "--steps", "0"])
    assert isinstance(r.exception, UserError) and "--steps" in str(r.exception)
    r = CliRunner().invoke(app, ["train", "--space", "no-such-space", "--steps", "1"])
    assert isinstance(r.exception, UserError)


def test_sort_channels_keeps_the_largest_function():
    sup = _randomise(S.SuperNet(TINY), seed=2)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        before = sup(x, TINY.largest())
        S.sort_channels(sup)
        torch.testing.assert_close(sup(x, TINY.largest()), before, rtol=1e-4, atol=1e-5)
    imp = sup.stages[1][0].project.conv.weight.abs().sum((0, 2, 3))
    assert bool((imp[:-1] >= imp[1:]).all())
