"""Train/test DataLoaders for the data sets of :mod:`ukd.data`, reproducible under a seed."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler, get_worker_info
from torch.utils.data.distributed import DistributedSampler

from .cifar import CIFAR10_FOLDER, CIFAR100_FOLDER, cifar_class_names, find_cifar_folder, load_cifar10, load_cifar100
from .dataset import TensorImageDataset
from .errors import DatasetNotFoundError
from .fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist_auto
from .imagefolder import load_image_folder
from .transforms import DATASET_STATS, eval_transform, train_transform

__all__ = ["DATASET_NAMES", "build_datasets", "build_loaders", "seed_worker"]

PathLike = str | os.PathLike[str]

#: Names accepted by :func:`build_loaders`.
DATASET_NAMES: tuple[str, ...] = ("fashion_mnist", "cifar10", "cifar100", "imagefolder")


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoaders: seed ``random``, numpy and the data set's generator in each worker.

    torch has already seeded the worker's global RNG with ``base_seed + worker_id``, where ``base_seed`` is drawn from
    the DataLoader's generator; that seed is reused here, so every worker of every epoch gets its own stream and the
    whole run is reproducible under the loader's seed.
    """
    seed = torch.initial_seed()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    info = get_worker_info()
    dataset = info.dataset if info is not None else None
    if dataset is not None and getattr(dataset, "generator", None) is not None and hasattr(dataset, "reseed"):
        dataset.reseed(seed)


def _imagefolder_split_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def build_datasets(
    name: str,
    data_dir: PathLike | None = None,
    *,
    seed: int | None = 0,
    augment: bool = True,
    warn: bool = True,
    image_mode: str = "RGB",
    image_size: tuple[int, int] | None = None,
) -> tuple[TensorImageDataset, TensorImageDataset, dict[str, Any]]:
    """Load a data set into a training and a test :class:`TensorImageDataset` with the standard transforms.

    Args:
        name: ``"fashion_mnist"``, ``"cifar10"``, ``"cifar100"`` or ``"imagefolder"``.
        data_dir: where the data is. Fashion-MNIST: optional (see :func:`~ukd.data.find_fashion_mnist`; falls back to
            Debian's files, then the embedded subset with a warning). CIFAR: the directory holding (or being)
            ``cifar-10-batches-py`` / ``cifar-100-python``. Image folder: a directory with ``train/<class>/...`` and
            ``test/<class>/...`` (or ``val/``).
        seed: seed of the training set's augmentation generator (None: torch's global RNG).
        augment: training transform = random crop + flip + normalise; False: normalise only.
        warn: let the Fashion-MNIST fallback warn.
        image_mode, image_size: image-folder only: Pillow mode (``"RGB"``/``"L"``) and an optional ``(H, W)`` resize.

    Returns:
        ``(train_set, test_set, info)``; ``info`` as described in :func:`build_loaders` (without the sampler entries).
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASET_NAMES)}")
    info: dict[str, Any] = {"name": name}
    if name == "fashion_mnist":
        x_train, y_train, source = load_fashion_mnist_auto(data_dir, "train", warn=warn)
        x_test, y_test, _ = load_fashion_mnist_auto(source.directory, "test")
        classes: tuple[str, ...] = FASHION_MNIST_CLASSES
        info.update(source=source.kind, data_dir=str(source.directory))
        mean, std = DATASET_STATS[name]
    elif name in ("cifar10", "cifar100"):
        folder, pretty = (CIFAR10_FOLDER, "CIFAR-10") if name == "cifar10" else (CIFAR100_FOLDER, "CIFAR-100")
        directory = find_cifar_folder(data_dir, folder, pretty)
        load = load_cifar10 if name == "cifar10" else load_cifar100
        x_train, y_train = load(directory, "train")
        x_test, y_test = load(directory, "test")
        classes = cifar_class_names(directory, name)  # type: ignore[arg-type]
        info.update(source="data_dir", data_dir=str(directory))
        mean, std = DATASET_STATS[name]
    else:
        if data_dir is None:
            raise DatasetNotFoundError("imagefolder needs data_dir=: a directory with train/<class>/ and test/<class>/")
        root = Path(data_dir)
        train_dir = _imagefolder_split_dir(root, ("train",))
        test_dir = _imagefolder_split_dir(root, ("test", "val"))
        if train_dir is None or test_dir is None:
            missing = " and ".join(
                what for what, d in (("train/", train_dir), ("test/ (or val/)", test_dir)) if d is None
            )
            raise DatasetNotFoundError(
                f"image folder {root}: {missing} not found; expected {root}/train/<class_name>/*.png|jpg and "
                f"{root}/test/<class_name>/*.png|jpg"
            )
        x_train, y_train, classes = load_image_folder(train_dir, mode=image_mode, size=image_size)
        x_test, y_test, _ = load_image_folder(test_dir, mode=image_mode, size=image_size, classes=classes)
        if x_test.shape[1:] != x_train.shape[1:]:
            raise ValueError(
                f"image folder {root}: train images are {tuple(x_train.shape[1:])} but test images are "
                f"{tuple(x_test.shape[1:])} (C, H, W); pass image_size=(H, W)"
            )
        info.update(source="data_dir", data_dir=str(root))
        pixels = x_train.to(torch.float64).div_(255.0).transpose(0, 1).reshape(x_train.shape[1], -1)
        mean = tuple(pixels.mean(dim=1).tolist())
        std = tuple(max(s, 1e-6) for s in pixels.std(dim=1).tolist())
    _, c, h, w = x_train.shape
    if augment:
        t_train = train_transform(name if name in DATASET_STATS else None, image_size=(h, w), mean=mean, std=std)
    else:
        t_train = eval_transform(mean=mean, std=std)
    train_set = TensorImageDataset(x_train, y_train, t_train, classes, seed=seed)
    test_set = TensorImageDataset(x_test, y_test, eval_transform(mean=mean, std=std), classes)
    info.update(
        num_classes=len(classes),
        in_channels=c,
        image_size=(h, w),
        classes=classes,
        mean=tuple(mean),
        std=tuple(std),
        train_size=len(train_set),
        test_size=len(test_set),
    )
    return train_set, test_set, info


def build_loaders(
    name: str,
    data_dir: PathLike | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    seed: int = 0,
    distributed: bool = False,
    *,
    eval_batch_size: int | None = None,
    augment: bool = True,
    drop_last: bool = False,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    num_replicas: int | None = None,
    rank: int | None = None,
    warn: bool = True,
    image_mode: str = "RGB",
    image_size: tuple[int, int] | None = None,
) -> tuple[DataLoader, DataLoader, dict[str, Any]]:
    """Build the training and test DataLoaders of a data set.

    Args:
        name: ``"fashion_mnist"``, ``"cifar10"``, ``"cifar100"`` or ``"imagefolder"``.
        data_dir: see :func:`build_datasets`.
        batch_size: training batch size (64 = the CIFAR-100 recipe of SPEC §1).
        num_workers: DataLoader worker processes (0 = load in the main process).
        seed: makes the run reproducible: the shuffling order, each worker's RNG and the augmentations are all drawn
            from it. Two loaders built with the same arguments yield the same batches, epoch after epoch.
        distributed: shard both sets with :class:`~torch.utils.data.distributed.DistributedSampler` (training shuffled
            with ``seed``, test in order; the test shard is padded with repeats to equal length). Call
            ``train_loader.sampler.set_epoch(epoch)`` at each epoch.
        eval_batch_size: test batch size; default ``batch_size``.
        augment: random crop + flip on the training set.
        drop_last: drop the last incomplete training batch.
        num_replicas, rank: for ``distributed``; default: from the initialised process group.
        warn: let the Fashion-MNIST fallback warn.
        image_mode, image_size: image-folder only, see :func:`build_datasets`.

    Returns:
        ``(train_loader, test_loader, info)``. Batches are ``(images, labels)``: ``float32 (B, C, H, W)`` normalised
        and ``int64 (B,)``. ``info`` has ``name``, ``num_classes``, ``in_channels``, ``image_size`` ``(H, W)``,
        ``source`` (``"debian"``, ``"embedded"`` or ``"data_dir"``), ``data_dir``, ``classes``, ``mean``, ``std``,
        ``train_size``, ``test_size``, ``distributed``, ``rank``, ``num_replicas``.
    """
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
    if distributed:
        if num_replicas is None or rank is None:
            if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
                raise RuntimeError(
                    "distributed=True needs an initialised torch.distributed process group, or num_replicas= and rank="
                )
            num_replicas = torch.distributed.get_world_size() if num_replicas is None else num_replicas
            rank = torch.distributed.get_rank() if rank is None else rank
    else:
        num_replicas, rank = 1, 0
    # Each rank gets its own augmentation and worker streams; the sampler's shuffling seed is shared by all ranks.
    stream_seed = seed + 1_000_003 * rank
    train_set, test_set, info = build_datasets(
        name, data_dir, seed=stream_seed, augment=augment, warn=warn, image_mode=image_mode, image_size=image_size
    )
    generator = torch.Generator()
    generator.manual_seed(stream_seed)
    if distributed:
        train_sampler: Any = DistributedSampler(
            train_set, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=drop_last
        )
        test_sampler: Any = DistributedSampler(test_set, num_replicas=num_replicas, rank=rank, shuffle=False)
    else:
        train_sampler, test_sampler = RandomSampler(train_set, generator=generator), None
    common: dict[str, Any] = dict(
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=seed_worker,
        generator=generator,
        persistent_workers=persistent_workers and num_workers > 0,
    )
    train_loader = DataLoader(train_set, batch_size=batch_size, sampler=train_sampler, drop_last=drop_last, **common)
    test_loader = DataLoader(
        test_set, batch_size=eval_batch_size or batch_size, sampler=test_sampler, shuffle=False, **common
    )
    info.update(distributed=distributed, rank=rank, num_replicas=num_replicas)
    return train_loader, test_loader, info
