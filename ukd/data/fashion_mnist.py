"""Fashion-MNIST (Zalando SE, MIT licence): 60000 training and 10000 test images, 28×28 grey, 10 classes.

Three places can provide the four standard IDX files, tried in this order by :func:`find_fashion_mnist`:

1. a directory the caller names (``data_dir``);
2. Debian's package ``dataset-fashion-mnist``, which installs them in :data:`DEBIAN_FASHION_MNIST_DIR`;
3. a balanced subset shipped inside this package (:data:`EMBEDDED_SUBSET_DIR`, made by
   ``scripts/make_fashion_mnist_subset.py``), with a warning, so that examples and tests run anywhere.

Nothing is ever downloaded.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal, NamedTuple

import torch

from .errors import DatasetFormatError, DatasetNotFoundError
from .idx import read_idx

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "EMBEDDED_SUBSET_DIR",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FILES",
    "EmbeddedSubsetWarning",
    "FashionMNISTSource",
    "find_fashion_mnist",
    "load_embedded_subset_indices",
    "load_fashion_mnist",
    "load_fashion_mnist_auto",
]

PathLike = str | os.PathLike[str]
Split = Literal["train", "test"]

#: Where Debian's ``dataset-fashion-mnist`` puts the IDX files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: The balanced subset shipped with this package (same file names as the full set).
EMBEDDED_SUBSET_DIR = Path(__file__).resolve().parent / "fashion_mnist_subset"
#: split -> (images file, labels file), the standard names.
FASHION_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
#: split -> file of the embedded subset holding, for each of its images, the index in the full split (int32 IDX).
EMBEDDED_INDEX_FILES: dict[str, str] = {"train": "train-indices-idx1-int.gz", "test": "t10k-indices-idx1-int.gz"}
#: Class names, in label order.
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_IMAGES_MAGIC = 2051  # uint8, 3 dims
_LABELS_MAGIC = 2049  # uint8, 1 dim
_INSTALL_HINT = "apt-get install dataset-fashion-mnist"


class EmbeddedSubsetWarning(UserWarning):
    """Issued when Fashion-MNIST falls back to the small subset embedded in the package."""


class FashionMNISTSource(NamedTuple):
    """Where Fashion-MNIST was found.

    Attributes:
        directory: the directory holding the IDX files.
        kind: ``"data_dir"`` (given by the caller), ``"debian"`` (the Debian package's files) or ``"embedded"`` (the
            subset shipped in the package).
    """

    directory: Path
    kind: Literal["data_dir", "debian", "embedded"]


def _check_split(split: str) -> None:
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


_ALL_FILES = tuple(name for pair in FASHION_MNIST_FILES.values() for name in pair)


def _missing_files(directory: Path) -> list[str]:
    return [name for name in _ALL_FILES if not (directory / name).is_file()]


def load_fashion_mnist(data_dir: PathLike | None = None, split: Split = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of Fashion-MNIST from the standard IDX ``.gz`` files in a directory.

    Args:
        data_dir: directory holding the files; default :data:`DEBIAN_FASHION_MNIST_DIR`. No fallback happens here;
            :func:`load_fashion_mnist_auto` is the one that falls back to the embedded subset.
        split: ``"train"`` (files ``train-*``) or ``"test"`` (files ``t10k-*``).

    Returns:
        ``images``: ``torch.uint8`` of shape ``(N, 1, 28, 28)``, values 0-255; ``labels``: ``torch.int64`` of shape
        ``(N,)``, values 0-9. ``N`` is 60000/10000 for the full set.

    Raises:
        DatasetNotFoundError: the directory or a file is missing; the message names them and the Debian package.
        IDXFormatError: a file is truncated or corrupted.
        DatasetFormatError: images and labels disagree in count, or a label is out of range.
    """
    _check_split(split)
    directory = Path(data_dir) if data_dir is not None else DEBIAN_FASHION_MNIST_DIR
    image_name, label_name = FASHION_MNIST_FILES[split]
    if not directory.is_dir():
        raise DatasetNotFoundError(
            f"Fashion-MNIST directory not found: {directory} (missing file: {image_name}). Install the Debian "
            f"package with `{_INSTALL_HINT}` (files go to {DEBIAN_FASHION_MNIST_DIR}), or pass data_dir= a "
            "directory holding the four IDX .gz files."
        )
    for name in (image_name, label_name):
        if not (directory / name).is_file():
            raise DatasetNotFoundError(
                f"Fashion-MNIST file missing: {name} not found in directory {directory}. Install the Debian package "
                f"with `{_INSTALL_HINT}` (files go to {DEBIAN_FASHION_MNIST_DIR}), or pass data_dir= a directory "
                "holding the four IDX .gz files."
            )
    images = read_idx(directory / image_name, expected_magic=_IMAGES_MAGIC, expected_shape=(None, 28, 28))
    labels = read_idx(directory / label_name, expected_magic=_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DatasetFormatError(
            f"{directory}: {image_name} holds {images.shape[0]} images but {label_name} holds {labels.shape[0]} labels"
        )
    if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise DatasetFormatError(f"{directory / label_name}: label {int(labels.max())} out of range 0-9")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).to(torch.int64)


def find_fashion_mnist(data_dir: PathLike | None = None, *, warn: bool = True) -> FashionMNISTSource:
    """Choose where to read Fashion-MNIST from.

    ``data_dir`` given → that directory (checked, no fallback); else Debian's directory when all four files are there;
    else the embedded subset, with an :class:`EmbeddedSubsetWarning` that says so (unless ``warn=False``).

    Raises:
        DatasetNotFoundError: ``data_dir`` is given but lacks a file, or (broken install) the embedded subset is gone.
    """
    if data_dir is not None:
        directory = Path(data_dir)
        missing = _missing_files(directory)
        if missing:
            where = "directory not found" if not directory.is_dir() else f"missing file: {missing[0]}"
            raise DatasetNotFoundError(
                f"Fashion-MNIST data_dir {directory}: {where} (all of {', '.join(_ALL_FILES)} are needed)"
                f". Install the Debian package with `{_INSTALL_HINT}` to get them in "
                f"{DEBIAN_FASHION_MNIST_DIR}."
            )
        return FashionMNISTSource(directory, "data_dir")
    debian_dir = DEBIAN_FASHION_MNIST_DIR
    missing = _missing_files(debian_dir)
    if not missing:
        return FashionMNISTSource(debian_dir, "debian")
    embedded_missing = _missing_files(EMBEDDED_SUBSET_DIR)
    if embedded_missing:
        raise DatasetNotFoundError(
            f"Fashion-MNIST not found: {debian_dir} lacks {missing[0]} (install with `{_INSTALL_HINT}`), and the "
            f"subset embedded in the package is incomplete ({EMBEDDED_SUBSET_DIR} lacks {embedded_missing[0]})."
        )
    if warn:
        reason = "directory not found" if not debian_dir.is_dir() else f"missing file: {missing[0]}"
        warnings.warn(
            f"Fashion-MNIST: using the small balanced subset embedded in ukd ({EMBEDDED_SUBSET_DIR}), NOT the full "
            f"data set: {debian_dir}: {reason}. Install the full set with `{_INSTALL_HINT}` or pass data_dir=.",
            EmbeddedSubsetWarning,
            stacklevel=2,
        )
    return FashionMNISTSource(EMBEDDED_SUBSET_DIR, "embedded")


def load_fashion_mnist_auto(
    data_dir: PathLike | None = None, split: Split = "train", *, warn: bool = True
) -> tuple[torch.Tensor, torch.Tensor, FashionMNISTSource]:
    """Load a split from the source :func:`find_fashion_mnist` picks.

    Returns:
        ``(images, labels, source)``: ``uint8 (N, 1, 28, 28)``, ``int64 (N,)`` and the :class:`FashionMNISTSource`
        used (``source.kind`` says which: ``"data_dir"``, ``"debian"`` or ``"embedded"``).
    """
    _check_split(split)
    source = find_fashion_mnist(data_dir, warn=warn)
    images, labels = load_fashion_mnist(source.directory, split)
    return images, labels, source


def load_embedded_subset_indices(split: Split = "train") -> torch.Tensor:
    """For each image of the embedded subset's ``split``, its index in the full split: ``int64 (N,)``, increasing."""
    _check_split(split)
    indices = read_idx(EMBEDDED_SUBSET_DIR / EMBEDDED_INDEX_FILES[split], expected_magic=0x0C01)
    return torch.from_numpy(indices).to(torch.int64)
