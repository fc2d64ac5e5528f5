"""``--recovery-steps N`` (``autocomp.search(recovery_steps=N)``, config.json ``eval.finetune_steps``):
the recovery of every scored candidate after pruning / skipping / low-rank and BatchNorm
recalibration, before quantization; for a user's network a distillation from the unmodified network.

- N > 0 changes the weights of the model that is scored (and exported); N = 0 leaves the chain as it
  was (the same weights twice);
- the option round-trips through a run's config.json: written by a search, read back by
  ``--resume`` / ``--config`` (a contradicting flag is refused) and by the run's context (export);
- bad values (negative, fractional, text, a bool) exit 2 with one line before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from autocomp.errors import UserError

SHAPE = (3, 32, 32)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for this module's PyTorch passes (small networks; on a busy host two threads
    spin-wait for each other, see tests/test_network.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cli(argv: tuple[str, ...], capsys, monkeypatch) -> tuple[int, str]:
    """(exit code, stderr) of ``autocomp ARGV`` run in-process through the CLI's entry point (the same
    ``run_app`` a shell reaches; one real subprocess case below)."""
    from autocomp.cli import main

    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["autocomp", *argv])
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code, capsys.readouterr().err


def _one_line_exit_2(code: int, err: str, *fragments: str) -> None:
    assert code == 2, (code, err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], lines[0]


# --------------------------------------------------------------------------- the scored model


@pytest.fixture(scope="module")
def rgb(mnist):
    """A few hundred MNIST digits as RGB 3x32x32."""
    from autocomp.data import Dataset, Split

    def conv(split, n, seed):
        s = split.subset(n, seed)
        return Split(np.repeat(np.pad(s.x, ((0, 0), (0, 0), (2, 2), (2, 2))), 3, axis=1), s.y)

    return Dataset("mnist-rgb32", conv(mnist.train, 512, 0), conv(mnist.val, 64, 1), conv(mnist.test, 64, 2), 10,
                   mnist.mean, mnist.std)


def test_recovery_steps_change_the_scored_weights(rgb, tmp_path):
    """resnet18 (the user's weights, a pruned and block-skipped candidate): the scored model with
    N = 0 is the same twice; with N > 0 its weights differ (every trained layer), its architecture does not."""
    import torchvision

    from autocomp.evaluate import EvalSettings, compressed_model
    from autocomp.families.network import derive_space

    torch.manual_seed(0)
    w = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), w)
    sp = derive_space("torchvision:resnet18", str(w), SHAPE, keep_ratio=(1.0, 0.5), rank_ratio=(1.0,), precision=("fp32",))
    big = sp.largest()
    # half the channels of every block, the second block of each stage skipped
    small = sp.smallest("fp32")
    cand = dataclasses.replace(small, stages=tuple(
        dataclasses.replace(st, blocks=tuple(dataclasses.replace(b, keep=0.5) for b in st.blocks)) for st in small.stages))
    assert cand != big and sum(s.depth for s in cand.stages) < sum(s.depth for s in big.stages)
    base = dict(bn_images=64, calib_images=32, batch_size=32, val_size=64, seed=0, train_device="cpu")

    def weights(n: int) -> dict:
        model = compressed_model(cand, sp, rgb, EvalSettings(**base, finetune_steps=n))
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    none, again, recovered = weights(0), weights(0), weights(4)
    assert none.keys() == again.keys() == recovered.keys()
    assert all(torch.equal(none[k], again[k]) for k in none)  # the chain without recovery is deterministic
    assert all(none[k].shape == recovered[k].shape for k in none)  # recovery trains, it does not reshape
    changed = [k for k in none if none[k].is_floating_point() and not torch.equal(none[k], recovered[k])]
    dense = [k for k in none if k.endswith(".weight") and none[k].dim() > 1]  # every convolution and the classifier
    assert dense and set(dense) <= set(changed)


# --------------------------------------------------------------------------- config.json round trip


class RGB32(torch.utils.data.Dataset):
    """A user's Dataset: MNIST digits as normalised RGB 3x32x32."""

    def __init__(self, mnist, n: int, offset: int = 0):
        x = torch.as_tensor(mnist.train.x[offset: offset + n]).float() / 255.0
        self.x = ((torch.nn.functional.pad(x, (2, 2, 2, 2)) - 0.13) / 0.3).expand(-1, 3, -1, -1).contiguous()
        self.targets = mnist.train.y[offset: offset + n].tolist()

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i], self.targets[i]


def test_recovery_steps_round_trip_through_config_json(ray_local, mnist, tmp_path, user_cache, monkeypatch, capsys):
    """A search of the user's network (torchvision:resnet18 + its state_dict, 3x32x32) through the
    library with recovery_steps: config.json holds it, --resume / --config read it back (a
    contradicting flag is refused before Ray starts), exporting the run's winners uses it."""
    import torchvision

    import autocomp
    from autocomp.api import _context_with

    monkeypatch.setenv("AUTOCOMP_CACHE", str(user_cache))
    torch.manual_seed(0)
    w = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), w)
    data = {"train": RGB32(mnist, 400), "test": RGB32(mnist, 64, offset=400)}
    kw = dict(budget="1s", trials=1, seed=0, weights=str(w), input="3x32x32", val_size=32, calibrate=0, concurrency=1,
              verbose=False)
    run = autocomp.search("torchvision:resnet18", data, out=tmp_path / "run", recovery_steps=2, **kw)
    assert run.results["status"].tolist() == ["ok"], run.results["error"].tolist()
    cfg = json.loads((run.dir / "config.json").read_text())
    assert cfg["model"] == "torchvision:resnet18" and cfg["eval"]["finetune_steps"] == 2
    assert _context_with(run.dir, run._space, run._data).settings.finetune_steps == 2  # what Run.export scores with
    # --resume and --config read it back: a contradicting flag is refused before Ray starts
    _one_line_exit_2(*_cli(("search", "--resume", str(run.dir), "--recovery-steps", "4"), capsys, monkeypatch),
                     "--recovery-steps", "4 contradicts 2")
    _one_line_exit_2(*_cli(("search", "--config", str(run.dir / "config.json"), "--out", str(tmp_path / "new"),
                            "--recovery-steps", "5"), capsys, monkeypatch), "--recovery-steps", "5 contradicts 2")
    assert not (tmp_path / "new").exists()
    # the library: resuming with other recovery steps is another configuration; the run is left as it was
    before = (run.dir / "results.csv").read_bytes()
    with pytest.raises(UserError, match="eval"):
        autocomp.search("torchvision:resnet18", data, out=run.dir, recovery_steps=3, resume=True, **kw)
    assert (run.dir / "results.csv").read_bytes() == before


# --------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("value", ["-1", "2.5", "many"])
def test_bad_recovery_steps_flag(value, tmp_path, capsys, monkeypatch):
    _one_line_exit_2(*_cli(("search", "--budget", "5ms", "--out", str(tmp_path / "run"), "--recovery-steps", value),
                           capsys, monkeypatch), "--recovery-steps")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["-1", "2.5", "'3'", "true"])
def test_bad_recovery_steps_in_a_config_file(value, tmp_path, capsys, monkeypatch):
    c = tmp_path / "c.yaml"
    c.write_text(f"budget: 5ms\neval: {{finetune_steps: {value}}}\n")
    _one_line_exit_2(*_cli(("search", "--config", str(c), "--out", str(tmp_path / "run")), capsys, monkeypatch),
                     "eval.finetune_steps", "a whole number of recovery steps")
    assert not (tmp_path / "run").exists()


def test_bad_recovery_steps_as_a_real_command(tmp_path):
    p = subprocess.run([sys.executable, "-m", "autocomp.cli", "search", "--budget", "5ms", "--out", str(tmp_path / "run"),
                        "--recovery-steps", "-3"], capture_output=True, text=True, timeout=300)
    _one_line_exit_2(p.returncode, p.stderr, "--recovery-steps")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", [-1, 2.5, "3", True])
def test_bad_recovery_steps_in_the_library(value, tmp_path):
    import autocomp

    with pytest.raises(UserError, match="recovery_steps.*whole number"):
        autocomp.search("mnist-mbv2", "mnist", budget="5ms", out=tmp_path / "run", recovery_steps=value, verbose=False)
    assert not (tmp_path / "run").exists()
