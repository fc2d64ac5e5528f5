"""Datasets: MNIST unchanged; a streamed ImageFolder (per-channel normalisation, augmentation,
stratified splits, nothing held in RAM); a user's torch Datasets; bad data refused with one line."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from autocomp.data import IMAGENET_MEAN, SPLIT_SEED, StreamSplit, from_torch, load_dataset
from autocomp.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _folder(root: Path, classes: int = 3, per_class: int = 12, size=(48, 64), mode: str = "RGB") -> Path:
    """Images whose class sets one colour channel high: per-channel statistics differ by class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = rng.integers(0, 60, (*size, 3), dtype=np.uint8)
            a[..., c % 3] += 150
            Image.fromarray(a).convert(mode).save(root / f"c{c}" / f"{i}.png")
    return root


def test_mnist_splits_and_normalisation_unchanged(mnist):
    # the validation split is the same fixed-seed carve of the 60k training images as ever
    from autocomp.resources import cache_dir

    with np.load(cache_dir() / "mnist" / "mnist.npz") as z:
        tx, ty = z["train_x"], z["train_y"]
    perm = np.random.default_rng(SPLIT_SEED).permutation(60000)
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (55000, 5000, 10000)
    assert mnist.input_shape == (1, 28, 28) and mnist.num_classes == 10
    assert (mnist.mean, mnist.std) == (0.1307, 0.3081)
    assert np.array_equal(mnist.val.y, ty[np.sort(perm[:5000])]) and np.array_equal(mnist.train.x[:50, 0], tx[np.sort(perm[5000:])[:50]])
    x, y = next(mnist.batches(mnist.val, 7))
    expect = (torch.as_tensor(mnist.val.x[:7]).float() / 255.0 - 0.1307) / 0.3081
    assert torch.allclose(x, expect) and torch.equal(y, torch.as_tensor(mnist.val.y[:7]))
    # same seed, same shuffled order; another seed, another order
    a = next(mnist.batches(mnist.train, 64, shuffle=True, seed=3))[1]
    assert torch.equal(a, next(mnist.batches(mnist.train, 64, shuffle=True, seed=3))[1])
    assert not torch.equal(a, next(mnist.batches(mnist.train, 64, shuffle=True, seed=4))[1])


def test_imagefolder_streams_with_per_channel_norm_and_augmentation(tmp_path):
    root = _folder(tmp_path / "imgs")
    ds = load_dataset(f"imagefolder:{root}", (3, 32, 32))
    # stratified 80/10/10: every class in every split, nothing shared
    assert (len(ds.train), len(ds.val), len(ds.test)) == (30, 3, 3)
    for s in (ds.train, ds.val, ds.test):
        assert isinstance(s, StreamSplit) and set(s.y.tolist()) == {0, 1, 2}
    assert not set(ds.train.idx) & set(ds.val.idx) and not set(ds.val.idx) & set(ds.test.idx)
    # per-channel statistics were computed; normalised eval batches have mean ~0, std ~1 per channel
    assert len(ds.mean) == 3 and all(0.2 < m < 0.5 for m in ds.mean)
    xs = torch.cat([x for x, _ in ds.batches(ds.train, 8)])
    assert xs.shape == (30, 3, 32, 32)
    assert torch.allclose(xs.mean((0, 2, 3)), torch.zeros(3), atol=0.05)
    assert torch.allclose(xs.std((0, 2, 3)), torch.ones(3), atol=0.05)
    # eval batches are deterministic; training passes augment (random-resized-crop + flip), seeded
    e1, e2 = (torch.cat([x for x, _ in ds.batches(ds.val, 4)]) for _ in range(2))
    assert torch.equal(e1, e2)
    t1, t2, t3 = (torch.cat([x for x, _ in ds.batches(ds.train, 8, shuffle=True, seed=s)]) for s in (1, 1, 2))
    assert torch.equal(t1, t2) and not torch.equal(t1, t3)
    y1 = torch.cat([y for _, y in ds.batches(ds.train, 8, shuffle=True, seed=1)])
    order = np.random.default_rng(1).permutation(30)
    assert torch.equal(y1, torch.as_tensor(ds.train.y[order]))
    ev = torch.cat([x for x, _ in ds.batches(ds.train, 8, shuffle=False)])
    assert not torch.equal(t1, ev[order])  # augmented, not the eval view
    off = load_dataset(f"imagefolder:{root}?augment=0", (3, 32, 32))
    assert torch.equal(torch.cat([x for x, _ in off.batches(off.train, 8, shuffle=True, seed=1)]), ev[order])
    # the dataset holds paths, not pixels: what travels to a trial stays small
    assert len(pickle.dumps(ds)) < 20_000 < 36 * 32 * 32 * 3
    # a subset is a view of the same files
    sub = ds.train.subset(5, seed=0)
    assert len(sub) == 5 and set(sub.idx) <= set(ds.train.idx)


def test_imagefolder_given_norm_grayscale_and_layouts(tmp_path):
    root = _folder(tmp_path / "imgs")
    ds = load_dataset(f"imagefolder:{root}?norm=imagenet", (3, 32, 32))
    assert ds.mean == IMAGENET_MEAN
    ds = load_dataset(f"imagefolder:{root}?mean=0.5&std=0.25", (1, 28, 28))  # grayscale, one value per channel
    assert ds.mean == (0.5,) and next(ds.batches(ds.val, 2))[0].shape == (2, 1, 28, 28)
    # train/ + test/: val carved per class from train/
    tt = tmp_path / "tt"
    _folder(tt / "train", per_class=10)
    _folder(tt / "test", per_class=2)
    ds = load_dataset(f"imagefolder:{tt}", (3, 16, 16))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (27, 3, 6)


@pytest.mark.parametrize("case", ["loop", "corrupt", "tiny", "one_class", "bad_option", "bad_norm"])
def test_imagefolder_bad_input_is_one_line(tmp_path, case):
    root = _folder(tmp_path / "imgs", per_class=4)
    spec = f"imagefolder:{root}"
    if case == "loop":
        os.symlink(root, root / "c0" / "again")
        match = r"symlink loop: .*c0/again"
    elif case == "corrupt":
        (root / "c1" / "2.png").write_bytes(b"\x89PNG not really")
        match = r"c1/2\.png is not a readable image"
    elif case == "tiny":
        for c in ("c0", "c1", "c2"):
            for f in sorted((root / c).iterdir())[1:]:
                f.unlink()
        match = r"class 0 of .* has 1 image\(s\).*at least 3"
    elif case == "one_class":
        for c in ("c1", "c2"):
            for f in (root / c).iterdir():
                f.unlink()
            (root / c).rmdir()
        match = r"1 class folder"
    elif case == "bad_option":
        spec += "?colour=blue"
        match = r"unknown option 'colour=blue'"
    else:
        spec += "?mean=0.5"
        match = r"both mean=a,b,c and std=a,b,c"
    with pytest.raises(UserError, match=match):
        load_dataset(spec, (3, 32, 32))


@pytest.mark.parametrize("workers", [0, 2])
def test_an_image_that_fails_to_decode_is_named(tmp_path, workers):
    """A truncated file passes the header check but not decoding: when the normalisation is computed
    up front, and when a training pass reaches it (in the loader's worker processes or in-process),
    one line names it."""
    root = _folder(tmp_path / "imgs", per_class=4)
    ds = load_dataset(f"imagefolder:{root}?norm=imagenet", (3, 32, 32))
    ds.workers = workers
    bad = root / "c2" / "1.png"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(UserError, match=r"--data: cannot read item \d+ \(.*c2/1\.png\): OSError"):
        for split in (ds.train, ds.val, ds.test):
            for _ in ds.batches(split, 4, shuffle=True):
                pass
    with pytest.raises(UserError, match=r"c2/1\.png\): OSError"):
        load_dataset(f"imagefolder:{root}", (3, 32, 32))


class _Toy(torch.utils.data.Dataset):
    def __init__(self, n: int, classes: int = 2):
        g = torch.Generator().manual_seed(n)
        self.x = torch.randn(n, 1, 8, 8, generator=g)
        self.targets = [i % classes for i in range(n)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i], self.targets[i]


def test_torch_datasets(tmp_path):
    ds = from_torch(_Toy(40), name="toy")
    assert (len(ds.train), len(ds.val), len(ds.test), ds.num_classes, ds.input_shape) == (32, 4, 4, 2, (1, 8, 8))
    x, y = next(ds.batches(ds.test, 10))
    assert torch.equal(x, torch.stack([ds.test.source[int(i)][0] for i in ds.test.idx]))  # user-normalised: passed as is
    ds = from_torch(_Toy(40), test=_Toy(6), name="toy")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (36, 4, 6)
    with pytest.raises(UserError, match=r"items are 1x8x8; expected 3x32x32"):
        from_torch(_Toy(40), input_shape=(3, 32, 32))
    with pytest.raises(UserError, match=r"at least 3 image"):
        from_torch(_Toy(2))
    with pytest.raises(UserError, match=r"was a Python object handed to autocomp.search"):
        load_dataset("python:_Toy")  # a run of the library, replayed from its directory


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ""}
    return subprocess.run([sys.executable, "-m", "autocomp.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_search_refuses_bad_data_before_ray(tmp_path):
    """A 2-image folder and a dataset factory that raises: exit 2, one line, nothing written, no Ray."""
    two = tmp_path / "two"
    _folder(two, classes=2, per_class=1, size=(28, 28), mode="L")
    (tmp_path / "userdata.py").write_text("def make():\n    raise RuntimeError('no such bucket')\n")
    for data, match in ((f"imagefolder:{two}", "has 1 image(s)"), ("userdata:make", "userdata:make() raised RuntimeError: no such bucket")):
        out = tmp_path / f"run-{len(match)}"
        p = _cli(["search", "--budget", "10ms", "--trials", "1", "--data", data, "--out", str(out), "--no-calibrate"], tmp_path)
        assert p.returncode == 2, p.stderr[-2000:]
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and match in lines[0] and "Traceback" not in p.stderr
        assert not out.exists()
