"""The DataLoader builder of ukd: train/test loaders of the data sets of :mod:`ukd.data`, reproducible under a seed.

:func:`build_loaders` is the one place where DataLoaders are made; the trainer's
:func:`ukd.train.data.build_train_loaders` maps a run's ``data`` configuration onto it. Every random stream of the input
pipeline derives from the seed through :func:`ukd.data.seeding.rank_seed`:

* the training order: a :class:`~torch.utils.data.RandomSampler` on the training loader's generator (single process),
  or a :class:`~torch.utils.data.distributed.DistributedSampler` seeded with the seed itself (shared by the ranks,
  reshuffled by ``set_epoch``);
* the augmentation: the training set's own generator (used directly when ``num_workers == 0``; with workers,
  :func:`~ukd.data.seeding.seed_worker` reseeds each worker from a seed drawn from the loader's generator).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler
from torch.utils.data.distributed import DistributedSampler

from .cifar import CIFAR10_FOLDER, CIFAR100_FOLDER, cifar_class_names, find_cifar_folder, load_cifar10, load_cifar100
from .dataset import TensorImageDataset
from .errors import DatasetNotFoundError
from .fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist_auto
from .imagefolder import load_image_folder
from .seeding import rank_seed, seed_worker
from .transforms import DATASET_STATS, eval_transform, train_transform

__all__ = [
    "DATASET_NAMES",
    "ShardSampler",
    "balanced_subset",
    "build_datasets",
    "LoaderSet",
    "build_loader_set",
    "build_loaders",
    "seed_worker",
    "split_validation",
    "validation_count",
]

PathLike = str | os.PathLike[str]

#: Names accepted by :func:`build_loaders`.
DATASET_NAMES: tuple[str, ...] = ("fashion_mnist", "cifar10", "cifar100", "imagefolder")


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, rank + 2·world, ...`` of a data set, in order, without padding."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


def balanced_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Sorted indices of ``size`` items drawn without replacement, as evenly over the classes as possible.

    Each class gets ``size // n_classes`` items (the first ``size % n_classes`` classes one more), capped by what the
    class has; the draw within a class is a permutation from a generator seeded with ``seed``.
    """
    n = labels.numel()
    if size >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    classes = torch.unique(labels)
    base, extra = divmod(size, len(classes))
    picked = []
    for i, c in enumerate(classes.tolist()):
        members = torch.nonzero(labels == c).flatten()
        take = min(members.numel(), base + (1 if i < extra else 0))
        picked.append(members[torch.randperm(members.numel(), generator=gen)[:take]])
    return torch.sort(torch.cat(picked)).values


def _subset(dataset: TensorImageDataset, size: int | None, seed: int, stream_seed: int | None) -> TensorImageDataset:
    """``dataset`` itself, or a class-balanced subset of ``size`` items (augmentation seeded with ``stream_seed``)."""
    if size is None or size >= len(dataset):
        return dataset
    idx = balanced_subset(dataset.labels, size, seed)
    return TensorImageDataset(
        dataset.images[idx], dataset.labels[idx], dataset.transform, dataset.classes, seed=stream_seed
    )


def validation_count(val_size: int | float, train_size: int) -> int:
    """The number of images ``val_size`` holds out of ``train_size``: an int is a count, a float in (0, 1) a fraction
    (rounded, at least 1).

    Raises:
        ValueError: ``val_size`` is not a positive int or a float in (0, 1), or leaves no training image.
    """
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise ValueError(f"val_size: expected an image count or a fraction in (0, 1), got {val_size!r}")
    if isinstance(val_size, float):
        if not 0 < val_size < 1:
            raise ValueError(f"val_size: expected a fraction in (0, 1) (or an int count), got {val_size!r}")
        n = max(1, round(val_size * train_size))
    else:
        if val_size < 1:
            raise ValueError(f"val_size: expected a positive image count or a fraction in (0, 1), got {val_size!r}")
        n = val_size
    if n >= train_size:
        raise ValueError(
            f"val_size: {val_size!r} holds out {n} of {train_size} training images, leaving none to train on"
        )
    return n


def split_validation(
    train_set: TensorImageDataset, val_size: int | float, seed: int, eval_transform: object
) -> tuple[TensorImageDataset, TensorImageDataset]:
    """Hold a class-balanced validation set out of ``train_set``: ``(the rest, validation set)``, disjoint.

    The validation images are drawn with :func:`balanced_subset` (``seed``) and get ``eval_transform`` (no
    augmentation); the rest keeps the training transform and its augmentation stream.
    """
    n = validation_count(val_size, len(train_set))
    val_idx = balanced_subset(train_set.labels, n, seed)
    keep = torch.ones(len(train_set), dtype=torch.bool)
    keep[val_idx] = False
    rest = TensorImageDataset(
        train_set.images[keep], train_set.labels[keep], train_set.transform, train_set.classes, seed=None
    )
    rest.generator = train_set.generator
    val = TensorImageDataset(train_set.images[val_idx], train_set.labels[val_idx], eval_transform, train_set.classes)
    return rest, val


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


def _resolve_replicas(distributed: bool, num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """``(num_replicas, rank)``: ``(1, 0)`` in a single process, else the given ones or the process group's."""
    if not distributed:
        return 1, 0
    if num_replicas is None or rank is None:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError(
                "distributed=True needs an initialised torch.distributed process group, or num_replicas= and rank="
            )
        num_replicas = torch.distributed.get_world_size() if num_replicas is None else num_replicas
        rank = torch.distributed.get_rank() if rank is None else rank
    return num_replicas, rank


class LoaderSet(NamedTuple):
    """The loaders of :func:`build_loader_set`: training, test, the data set's info, and validation (or None)."""

    train: DataLoader
    test: DataLoader
    info: dict[str, Any]
    val: DataLoader | None


def build_loaders(*args: Any, **kwargs: Any) -> tuple[DataLoader, DataLoader, dict[str, Any]]:
    """``(train_loader, test_loader, info)``: :func:`build_loader_set` with the same arguments, without validation."""
    loaders = build_loader_set(*args, **kwargs)
    return loaders.train, loaders.test, loaders.info


def build_loader_set(
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
    train_subset: int | None = None,
    test_subset: int | None = None,
    subset_seed: int = 0,
    exact_test_shards: bool = False,
    test_seed: int | None = None,
    val_size: int | float | None = None,
) -> LoaderSet:
    """Build the training, test and (optionally) validation DataLoaders of a data set.

    Args:
        name: ``"fashion_mnist"``, ``"cifar10"``, ``"cifar100"`` or ``"imagefolder"``.
        data_dir: see :func:`build_datasets`.
        batch_size: training batch size (64 = the CIFAR-100 recipe of SPEC §1).
        num_workers: DataLoader worker processes (0 = load in the main process).
        seed: makes the run reproducible: the shuffling order, each worker's RNG and the augmentations are all drawn
            from it. Two loaders built with the same arguments yield the same batches, epoch after epoch.
        distributed: shard both sets with :class:`~torch.utils.data.distributed.DistributedSampler` (training shuffled
            with ``seed``, test in order; the test shard is padded with repeats to equal length, unless
            ``exact_test_shards``). Call ``train_loader.sampler.set_epoch(epoch)`` at each epoch.
        eval_batch_size: test batch size; default ``batch_size``.
        augment: random crop + flip on the training set.
        drop_last: drop the last incomplete training batch.
        pin_memory, persistent_workers: passed to both DataLoaders (``persistent_workers`` only with workers).
        num_replicas, rank: for ``distributed``; default: from the initialised process group.
        warn: let the Fashion-MNIST fallback warn.
        image_mode, image_size: image-folder only, see :func:`build_datasets`.
        train_subset, test_subset: keep only a class-balanced subset of that many items (:func:`balanced_subset`,
            drawn with ``subset_seed`` and ``subset_seed + 1``); None keeps the whole set.
        exact_test_shards: shard the test set with :class:`ShardSampler` (in order, no padding), so that counts
            summed over the ranks are exact.
        test_seed: seed of the test loader's own generator (it draws the test workers' seeds); None: the test
            loader shares the training loader's generator, so iterating it moves the training stream on.
        val_size: hold a class-balanced validation set out of the training images (after ``train_subset``): an int
            count or a float fraction (:func:`validation_count`), drawn with ``subset_seed + 2``, not augmented,
            sharded like the test set; None: no validation set.

    Returns:
        :class:`LoaderSet` ``(train, test, info, val)``. Batches are ``(images, labels)``: ``float32 (B, C, H, W)``
        normalised and ``int64 (B,)``. ``info`` has ``name``, ``num_classes``, ``in_channels``, ``image_size``
        ``(H, W)``, ``source`` (``"debian"``, ``"embedded"`` or ``"data_dir"``), ``data_dir``, ``classes``, ``mean``,
        ``std``, ``train_size``, ``test_size``, ``val_size`` (after subsetting and the split), ``distributed``,
        ``rank``, ``num_replicas``. The training loader's ``generator`` orders the training set (single process) and
        draws its workers' seeds.
    """
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
    num_replicas, rank = _resolve_replicas(distributed, num_replicas, rank)
    # Each rank gets its own augmentation and worker streams; the sampler's shuffling seed is shared by all ranks.
    stream_seed = rank_seed(seed, rank)
    train_set, test_set, info = build_datasets(
        name, data_dir, seed=stream_seed, augment=augment, warn=warn, image_mode=image_mode, image_size=image_size
    )
    train_set = _subset(train_set, train_subset, subset_seed, stream_seed)
    test_set = _subset(test_set, test_subset, subset_seed + 1, None)
    val_set = None
    if val_size is not None:
        train_set, val_set = split_validation(train_set, val_size, subset_seed + 2, test_set.transform)
    info.update(train_size=len(train_set), test_size=len(test_set), val_size=len(val_set) if val_set else 0)

    generator = torch.Generator()
    generator.manual_seed(stream_seed)
    if distributed:
        train_sampler: Sampler[int] = DistributedSampler(
            train_set, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=drop_last
        )
    else:
        train_sampler = RandomSampler(train_set, generator=generator)
    test_generator = generator if test_seed is None else torch.Generator().manual_seed(test_seed)
    common: dict[str, Any] = dict(
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=seed_worker,
        persistent_workers=persistent_workers and num_workers > 0,
    )
    train_loader = DataLoader(
        train_set, batch_size=batch_size, sampler=train_sampler, drop_last=drop_last, generator=generator, **common
    )

    def evaluation_loader(dataset: TensorImageDataset) -> DataLoader:
        """In order; sharded exactly (no padding) or padded per rank as the test set is."""
        sampler: Sampler[int] | None = None
        if exact_test_shards:
            sampler = ShardSampler(len(dataset), rank, num_replicas)
        elif distributed:
            sampler = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=eval_batch_size or batch_size,
            sampler=sampler,
            shuffle=False,
            generator=test_generator,
            **common,
        )

    test_loader = evaluation_loader(test_set)
    val_loader = evaluation_loader(val_set) if val_set is not None else None
    info.update(distributed=distributed, rank=rank, num_replicas=num_replicas)
    return LoaderSet(train_loader, test_loader, info, val_loader)
