"""Training device selection and the training loop: the CPU path computes what it always did, CUDA
is refused with one line where there is none, Tune trials ask for GPUs only where there are some."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from autocomp.errors import UserError
from autocomp.training import check_train_device, gpus_per_trial, resolve_device, train

NO_GPU = not torch.cuda.is_available()


def _reference_train(model, data, steps, batch_size, lr, seed):
    """The loop autocomp.evaluate.train ran before the training module (CPU only)."""
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    step, epoch = 0, 0
    while step < steps:
        for x, y in data.batches(data.train, batch_size, shuffle=True, seed=seed + epoch):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step >= steps:
                break
        epoch += 1
    return model.eval()


def test_cpu_training_is_unchanged(mnist):
    from autocomp.data import Dataset
    from autocomp.models.mbv2 import build
    from autocomp.space import get_space

    space = get_space("mnist-mbv2")
    small = Dataset("mnist-2k", mnist.train.subset(2000, seed=0), mnist.val, mnist.test, 10, mnist.mean, mnist.std)
    torch.manual_seed(0)
    init = build(space.smallest(), space, 10).state_dict()
    got, ref = build(space.smallest(), space, 10), build(space.smallest(), space, 10)
    got.load_state_dict(init)
    ref.load_state_dict(init)
    got = train(got, small, 6, 64, 3e-3, 1, device="cpu")
    _reference_train(ref, small, 6, 64, 3e-3, 1)
    assert all(p.device.type == "cpu" for p in got.parameters()) and not got.training
    assert any(not torch.equal(v, init[k]) for k, v in got.state_dict().items())  # it trained
    for (k, v), w in zip(got.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(v, w), k  # bit for bit: the CPU path is the loop it replaced


def test_device_selection():
    assert check_train_device("CPU") == "cpu" and check_train_device("auto") == "auto"
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if not NO_GPU else "cpu")
    with pytest.raises(UserError, match=r"--train-device: unknown training device 'tpu'"):
        check_train_device("tpu")
    if NO_GPU:
        with pytest.raises(UserError, match=r"--train-device: 'cuda' but this machine has no CUDA GPU"):
            check_train_device("cuda")
        with pytest.raises(UserError, match=r"no CUDA GPU"):
            check_train_device("cuda:0")


def test_gpus_per_trial():
    assert gpus_per_trial(0, 4, "auto") == 0.0  # no GPU on the cluster: trials ask for none
    assert gpus_per_trial(8, 4, "cpu") == 0.0  # training on the CPU: none either
    assert gpus_per_trial(1, 4, "auto") == 0.25  # four trials in flight share one GPU
    assert gpus_per_trial(8, 4, "cuda") == 1.0  # at most one each


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
@pytest.mark.parametrize("argv", [["search", "--budget", "10ms", "--train-device", "cuda"],
                                  ["supernet", "train", "--train-device", "cuda", "--steps", "1"]])
def test_cuda_without_gpu_exits_2_with_one_line(argv, tmp_path, monkeypatch, capsys):
    from autocomp import cli

    out = tmp_path / "out"
    argv = argv + (["--out", str(out)] if argv[0] == "search" else ["--out", str(out / "s.pt")])
    monkeypatch.setattr(sys, "argv", ["autocomp", *argv])
    monkeypatch.setenv("RAY_ADDRESS", "")
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "--train-device" in err[0] and "no CUDA GPU" in err[0]
    assert not out.exists()


def test_supernet_training_takes_the_device(tiny_yaml, tmp_path, mnist):
    from autocomp.models.supernet import train_supernet
    from autocomp.space import load_space

    p = tmp_path / "t.yaml"
    p.write_text(tiny_yaml("train-dev").replace("height: 8, width: 8", "height: 28, width: 28"))
    sd = train_supernet(load_space(p), mnist, 2, seed=0, progress=False, batch_size=16, device="cpu", threads=None)
    assert sd and all(v.device.type == "cpu" for v in sd.values())
    if NO_GPU:
        with pytest.raises(UserError, match="no CUDA GPU"):
            train_supernet(load_space(p), mnist, 2, seed=0, progress=False, batch_size=16, device="cuda")
