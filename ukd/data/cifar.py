"""CIFAR-10 and CIFAR-100 from their standard "python version" folders (no download).

Layouts read::

    cifar-10-batches-py/   data_batch_1 ... data_batch_5, test_batch, batches.meta (optional)
    cifar-100-python/      train, test, meta (optional)

Each batch file is a pickled dict with ``b"data"``, a ``uint8`` array ``(N, 3072)`` (1024 red, 1024 green, 1024 blue
values per image, rows in order), and ``b"labels"`` (CIFAR-10) or ``b"fine_labels"``/``b"coarse_labels"`` (CIFAR-100).
The files are unpickled with an allow-list that admits only numpy's array reconstruction, so a tampered file cannot run
code.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .errors import DatasetFormatError, DatasetNotFoundError

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_FOLDER",
    "CIFAR100_FOLDER",
    "cifar_class_names",
    "find_cifar_folder",
    "load_cifar10",
    "load_cifar100",
]

PathLike = str | os.PathLike[str]
Split = Literal["train", "test"]

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_FOLDER = "cifar-100-python"
_CIFAR10_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_CIFAR100_FILES = {"train": ("train",), "test": ("test",)}
#: Class names of CIFAR-10, in label order (the same as in ``batches.meta``).
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 1.26
        from numpy.core import multiarray  # type: ignore[no-redef]
    return multiarray


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals needed to rebuild numpy arrays and bytes."""

    def find_class(self, module: str, name: str) -> Any:
        multiarray = _numpy_reconstruct()
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            return getattr(multiarray, name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "_codecs" and name == "encode":  # bytes pickled by Python 3 at protocol <= 2
            import codecs

            return codecs.encode
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch file")


def _unpickle(path: Path) -> dict[bytes, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetNotFoundError(f"CIFAR file missing: {path}") from None
    try:
        obj = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # pickle raises many kinds on bad input
        raise DatasetFormatError(f"{path}: not a readable CIFAR batch file ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{path}: a CIFAR batch file must hold a dict, found {type(obj).__name__}")
    # Files pickled by Python 3 with str keys still work.
    return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}


def find_cifar_folder(root: PathLike | None, folder: str, dataset: str) -> Path:
    """The CIFAR folder: ``root`` itself when it is named ``folder`` or holds its files, else ``root / folder``.

    Raises:
        DatasetNotFoundError: no such folder; the message names the paths tried and the expected layout.
    """
    if root is None:
        raise DatasetNotFoundError(
            f"{dataset} needs data_dir=: a directory that contains {folder}/ (or is it). Nothing is downloaded; get "
            f"the 'python version' archive of {dataset} and unpack it there."
        )
    root = Path(root)
    files = _CIFAR10_FILES if folder == CIFAR10_FOLDER else _CIFAR100_FILES
    if root.name == folder or (root / files["test"][0]).is_file():
        candidate = root
    else:
        candidate = root / folder
    if not candidate.is_dir():
        raise DatasetNotFoundError(
            f"{dataset} folder not found: {candidate} (looked for {folder}/ under {root}). Expected the unpacked "
            f"'python version' layout {folder}/{{{', '.join(files['train'] + files['test'])}}}; nothing is downloaded."
        )
    return candidate


def _load(
    root: PathLike | None, split: str, folder: str, dataset: str, label_key: bytes
) -> tuple[torch.Tensor, torch.Tensor]:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    directory = find_cifar_folder(root, folder, dataset)
    names = (_CIFAR10_FILES if folder == CIFAR10_FOLDER else _CIFAR100_FILES)[split]
    for name in names:
        if not (directory / name).is_file():
            raise DatasetNotFoundError(f"{dataset} file missing: {name} not found in {directory}")
    images, labels = [], []
    for name in names:
        path = directory / name
        batch = _unpickle(path)
        for key in (b"data", label_key):
            if key not in batch:
                found = ", ".join(repr(k) for k in batch)
                raise DatasetFormatError(f"{path}: key {key!r} missing (found {found})")
        data = np.asarray(batch[b"data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DatasetFormatError(
                f"{path}: b'data' must be uint8 of shape (N, 3072), found {data.dtype} {tuple(data.shape)}"
            )
        target = np.asarray(batch[label_key], dtype=np.int64)
        if target.shape != (data.shape[0],):
            raise DatasetFormatError(
                f"{path}: {data.shape[0]} images but {label_key!r} has shape {tuple(target.shape)}"
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(target)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def load_cifar10(root: PathLike | None, split: Split = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Load CIFAR-10 from ``root/cifar-10-batches-py`` (or ``root`` itself when it is that folder).

    Returns:
        ``images``: ``torch.uint8 (N, 3, 32, 32)`` RGB; ``labels``: ``torch.int64 (N,)`` in 0-9. ``N`` = 50000 for
        ``"train"`` (``data_batch_1..5`` concatenated in order) and 10000 for ``"test"`` (``test_batch``).

    Raises:
        DatasetNotFoundError: the folder or a batch file is missing.
        DatasetFormatError: a file is unreadable or lacks ``b"data"``/``b"labels"``.
    """
    return _load(root, split, CIFAR10_FOLDER, "CIFAR-10", b"labels")


def load_cifar100(
    root: PathLike | None, split: Split = "train", *, label_kind: Literal["fine", "coarse"] = "fine"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load CIFAR-100 from ``root/cifar-100-python`` (or ``root`` itself when it is that folder).

    Args:
        label_kind: ``"fine"`` (100 classes, ``b"fine_labels"``) or ``"coarse"`` (20 super-classes).

    Returns:
        ``images``: ``torch.uint8 (N, 3, 32, 32)``; ``labels``: ``torch.int64 (N,)``. ``N`` = 50000 / 10000.
    """
    if label_kind not in ("fine", "coarse"):
        raise ValueError(f"label_kind must be 'fine' or 'coarse', got {label_kind!r}")
    return _load(root, split, CIFAR100_FOLDER, "CIFAR-100", f"{label_kind}_labels".encode())


def cifar_class_names(root: PathLike | None, dataset: Literal["cifar10", "cifar100"]) -> tuple[str, ...]:
    """Class names from the folder's meta file (``batches.meta`` / ``meta``), with a fallback when it is absent.

    CIFAR-10 falls back to :data:`CIFAR10_CLASSES`, CIFAR-100 to ``"class_0" ... "class_99"``.
    """
    if dataset == "cifar10":
        folder, meta_name, key, fallback = CIFAR10_FOLDER, "batches.meta", b"label_names", CIFAR10_CLASSES
    elif dataset == "cifar100":
        fallback = tuple(f"class_{i}" for i in range(100))
        folder, meta_name, key = CIFAR100_FOLDER, "meta", b"fine_label_names"
    else:
        raise ValueError(f"dataset must be 'cifar10' or 'cifar100', got {dataset!r}")
    meta = find_cifar_folder(root, folder, "CIFAR-10" if dataset == "cifar10" else "CIFAR-100") / meta_name
    if not meta.is_file():
        return fallback
    names = _unpickle(meta).get(key)
    if not isinstance(names, (list, tuple)) or len(names) != len(fallback):
        return fallback
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
