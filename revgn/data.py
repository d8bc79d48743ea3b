"""Real datasets as tensors: the files of `revgn.download` (fetched and verified there), parsed and loaded.

Datasets: ``"mnist"`` (the four official IDX files), ``"cifar10"`` (the official *binary* archive, never the
pickled one) and ``"cifar10-subset"`` (the first 4,000 training and 1,000 test images of CIFAR-10, in the same
binary record format: records 0-3,999 of ``data_batch_1.bin`` and 0-999 of ``test_batch.bin``). `load` draws a
seeded subset and normalises it; the readers refuse a malformed file with a `DataError` that names it.
"""
from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .download import DataError, cifar10_member, fetch
from .utils import check_int

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MNIST_CLASSES = tuple(str(i) for i in range(10))
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


# ------------------------------------------------------------------------------------------------ readers
def read_idx(path: Path) -> np.ndarray:
    """Parse a (gzipped) IDX file: magic 0x0000 08 NDIM, NDIM big-endian uint32 sizes, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path} is not a readable IDX file: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise DataError(f"{path}: header says shape {shape} but the file holds {len(raw) - header} data bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_cifar_records(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read CIFAR-10 binary records (1 label byte + 3,072 pixel bytes, R then G then B, each 32x32).

    Returns images (N, 3, 32, 32) uint8 and labels (N,) uint8.
    """
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % 3073:
        raise DataError(f"{path}: {raw.size} bytes is not a whole number of 3,073-byte CIFAR-10 records")
    rec = raw.reshape(-1, 3073)
    labels = rec[:, 0]
    if labels.max() > 9:
        raise DataError(f"{path}: label byte {labels.max()} is out of range 0..9")
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels


# ------------------------------------------------------------------------------------------------ datasets
@dataclass(frozen=True)
class Dataset:
    """A labelled dataset held in memory.

    x: (N, D) when flattened, else (N, C, H, W); y: (N,) int64 class labels.
    """

    name: str
    split: str
    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def label_counts(self) -> list[int]:
        return torch.bincount(self.y, minlength=self.num_classes).tolist()


def _raw_mnist(split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "test"
    images = read_idx(fetch(f"mnist/{prefix}-images", download=download))
    labels = read_idx(fetch(f"mnist/{prefix}-labels", download=download))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"MNIST {split}: images {images.shape} and labels {labels.shape} do not match")
    return images[:, None], labels


def _raw_cifar10(split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    parts = [read_cifar_records(cifar10_member(name, download)) for name in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _raw_cifar10_subset(split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    return read_cifar_records(fetch(f"cifar10-subset/{split}", download=download))


_DATASETS = {
    "mnist": (_raw_mnist, MNIST_CLASSES, MNIST_MEAN, MNIST_STD),
    "cifar10": (_raw_cifar10, CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD),
    "cifar10-subset": (_raw_cifar10_subset, CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD),
}
DATASETS = tuple(_DATASETS)


def load(name: str, split: str = "train", *, n: int | None = None, seed: int = 0, flatten: bool = True,
         normalize: bool = True, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
         download: bool = True) -> Dataset:
    """Load a dataset split as tensors.

    Args:
        name: one of ``DATASETS``.
        split: "train" or "test".
        n: keep a random subset of this many examples, drawn without replacement by `seed` (same `seed`,
            same subset); None keeps all, in the original order.
        flatten: images as (N, D) rows (D = 784 or 3072) instead of (N, C, H, W).
        normalize: scale to [0, 1], then subtract the standard per-channel mean and divide by the std.
        download: fetch missing files from the official URLs into the cache.
    """
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    seed = check_int("seed", seed, 0)
    n = None if n is None else check_int("n", n)
    reader, classes, mean, std = _DATASETS[name]
    images, labels = reader(split, download)
    if n is not None:
        if not 0 < n <= len(labels):
            raise ValueError(f"n={n} is outside 1..{len(labels)} for {name} {split}")
        idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n].sort().values.numpy()
        images, labels = images[idx], labels[idx]
    x = torch.from_numpy(np.array(images)).to(torch.float64) / 255.0
    if normalize:
        x = (x - torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)) / torch.tensor(
            std, dtype=torch.float64).view(1, -1, 1, 1)
    if flatten:
        x = x.reshape(len(x), -1)
    y = torch.from_numpy(labels.astype(np.int64))
    return Dataset(name, split, x.to(dtype=dtype, device=device), y.to(device), classes)


# ------------------------------------------------------------------------------------------------ synthetic
@dataclass(frozen=True)
class TeacherStudent:
    """Data from a two-layer ReLU teacher f*(x) = sum_j s_j relu(a*_j . x) (Chizat et al. 2019, Sec. 3).

    teacher: (m0, d) unit-norm input weights a*_j; signs: (m0,) output weights s_j = +-1; inputs uniform on
    the unit sphere. train, test: (x (n, d), y (n, 1)) pairs, float64.
    """

    teacher: torch.Tensor
    signs: torch.Tensor
    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]


def teacher_student(d: int, m0: int = 3, n_train: int = 1000, n_test: int = 1000, seed: int = 0) -> TeacherStudent:
    g = torch.Generator().manual_seed(seed)
    sphere = lambda n: torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    teacher = sphere(m0)
    signs = torch.tensor([(-1.0) ** j for j in range(m0)], dtype=torch.float64)
    label = lambda x: (torch.relu(x @ teacher.T) @ signs)[:, None]
    x, xt = sphere(n_train), sphere(n_test)
    return TeacherStudent(teacher, signs, (x, label(x)), (xt, label(xt)))
