"""autocomp.search on a user's nn.Module *object* (a small residual CNN defined here, trained briefly
on real MNIST) with torch Datasets (TensorDataset / Subset of MNIST tensors): the network family
derives the space from the object, Ray ships the object to the trial workers (real Ray, ONNX
Runtime), the object itself is never changed, and a run of an object resumes from Python only."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import autocomp
from autocomp.errors import UserError


class Block(nn.Module):
    """A basic residual block (a 1x1 projection where the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return torch.relu(self.short(x) + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = nn.Sequential(Block(16, 16), Block(16, 16))
        self.layer2 = nn.Sequential(Block(16, 32, 2), Block(32, 32))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x):
        return self.head(self.layer2(self.layer1(self.stem(x))))


N_TRIALS, OPTS = 2, dict(budget="50ms", trials=2, seed=2, calibrate=0, concurrency=2, verbose=False)


@pytest.fixture(scope="module")
def user(mnist):
    """The user's objects: a SmallCNN trained briefly, MNIST tensors as torch Datasets."""
    torch.manual_seed(0)
    x = mnist.normalise(mnist.train.x[:2300])
    y = torch.as_tensor(mnist.train.y[:2300]).long()
    full = torch.utils.data.TensorDataset(x, y)
    train, test = torch.utils.data.Subset(full, range(2000)), torch.utils.data.Subset(full, range(2000, 2300))
    net = SmallCNN()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for step in range(80):
        i = torch.randint(0, 2000, (64,))
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[i]), y[i]).backward()
        opt.step()
    net.train()  # the user's object stays as the user left it: in training mode
    with torch.no_grad():
        acc = (net.eval()(x[2000:]).argmax(1) == y[2000:]).float().mean().item()
    net.train()
    return net, train, test, acc


@pytest.fixture(scope="module")
def module_run(ray_local, user, tmp_path_factory, user_cache):
    net, train, test, _ = user
    before = {k: v.clone() for k, v in net.state_dict().items()}
    tmp = tmp_path_factory.mktemp("api-module")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOCOMP_CACHE", str(user_cache))
        run = autocomp.search(net, (train, test), out=tmp / "run", **OPTS)  # input inferred from the data
    return run, before, user_cache


def test_search_on_a_module_object(module_run, user):
    run, before, _ = module_run
    net, _, _, net_acc = user
    assert net_acc > 0.7  # the user's network learnt something: its candidates' accuracies mean something
    df = run.results
    assert len(df) == N_TRIALS and set(df["status"]) == {"ok"}, df["error"].tolist()
    assert (df["latency_ms"] > 0).all() and df["accuracy"].between(0, 1).all() and df["accuracy"].max() > 0.5
    # the candidates are the network family's, of the space derived from this object
    from autocomp.families.network import LiveNetwork, live_space, state_sha256
    from autocomp.space import Candidate

    space = run._space
    assert space.family == "network" and isinstance(space.network, LiveNetwork)
    assert space.name.startswith("SmallCNN-") and space.name.endswith("-1x28x28") and len(space.stages) == 2
    for policy, cid in zip(df["policy"], df["id"]):
        cand = Candidate.from_json(policy)
        space.validate_candidate(cand)
        assert cand.id == cid and cand.space == space.name
    assert run.front and {r["id"] for r in run.front} <= set(df["id"])
    # the winners were re-scored here, in this process (the object, no Ray worker)
    assert run.summary["confirmed"] and all(0 <= c["accuracy"] <= 1 for c in run.summary["confirmed"])
    # the user's object is as it was: same tensors, same mode
    after = net.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert net.training
    cfg = json.loads((run.dir / "config.json").read_text())
    assert cfg["model"] == "python:SmallCNN" and cfg["model_sha256"] == state_sha256(net) and cfg["input"] == "1x28x28"
    assert cfg["data"] == "python:Subset" and cfg["space"] == space.name
    # nothing in the run directory is a pickle (the object travelled through Ray's object store only)
    for f in run.dir.rglob("*"):
        if f.is_file():
            assert not f.read_bytes()[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"), f
    # the object went to the workers through Ray's object store, put there once for the run
    import pickle

    handle = space.network._handle
    ref = handle._ref
    assert ref is not None and pickle.loads(pickle.dumps(space)).network._handle._ref == ref and handle._ref is ref
    # the same object gives the same space (the same candidates again: a run replays)
    assert live_space(net, (1, 28, 28)).model_dump() == space.model_dump()


def test_a_module_run_resumes_from_python_only(module_run, user):
    run, _, user_cache = module_run
    net, train, test, _ = user
    results = run.dir / "results.csv"
    text = results.read_text()
    # the command line cannot rebuild the object: one line, exit 2, nothing changed
    p = subprocess.run([sys.executable, "-m", "autocomp.cli", "search", "--resume", str(run.dir)], capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "autocomp.search(model" in p.stderr and "resume=True" in p.stderr
    # other weights: refused before anything runs
    other = copy.deepcopy(net)
    with torch.no_grad():
        other.head[2].bias.add_(1.0)
    with pytest.raises(UserError, match=r"^model: .*sha256"):
        autocomp.search(other, (train, test), out=run.dir, resume=True, **OPTS)
    assert results.read_text() == text
    # the same object continues a run killed after two rows: those are kept, the third runs again
    lines = text.splitlines(keepends=True)
    results.write_text("".join(lines[:-1]))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOCOMP_CACHE", str(user_cache))
        again = autocomp.search(net, (train, test), out=run.dir, resume=True, **OPTS)
    new = results.read_text().splitlines(keepends=True)
    assert new[: len(lines) - 1] == lines[:-1] and len(new) == len(lines)
    assert again.summary["replayed"] == N_TRIALS - 1 and list(again.results["id"]) == list(run.results["id"])


def test_bad_module_input_is_refused_before_ray(user, tmp_path):
    net, train, test, _ = user
    out = tmp_path / "r"
    with pytest.raises(UserError, match=r"^model: python:SmallCNN fails on input 3x28x28"):
        autocomp.search(net, "mnist", input="3x28x28", out=out, **OPTS)
    with pytest.raises(UserError, match=r"^model: .*no blocks found"):
        autocomp.search(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), (train, test), out=out, **OPTS)
    with pytest.raises(UserError, match=r"^weights: "):
        autocomp.search(net, (train, test), weights="w.pt", out=out, **OPTS)
    with pytest.raises(UserError, match=r"items are 1x28x28; expected 1x32x32"):
        autocomp.search(net, (train, test), input="1x32x32", out=out, **OPTS)
    with pytest.raises(UserError, match=r"^input: "):
        autocomp.search(net, "imagefolder:/nonexistent", out=out, **OPTS)
    assert not out.exists()
