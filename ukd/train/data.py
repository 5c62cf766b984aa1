"""The trainer's DataLoaders: :func:`ukd.data.build_datasets`, optional class-balanced subsets, resumable sampling.

Everything random in the input pipeline draws from generators this module creates and :func:`loader_state` /
:func:`load_loader_state` save and restore, so a resumed run sees exactly the batches an uninterrupted one would:

* the training order: a :class:`~torch.utils.data.RandomSampler` on ``train_generator`` (single process), or a
  :class:`~torch.utils.data.distributed.DistributedSampler` (seeded, reshuffled by ``set_epoch``);
* the augmentation: the training set's own generator (used directly when ``num_workers == 0``; with workers,
  :func:`ukd.data.seed_worker` reseeds each worker from a seed drawn from ``train_generator``).

Evaluation is sharded without padding (:class:`ShardSampler`) so that counts summed over ranks are exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler
from torch.utils.data.distributed import DistributedSampler

from ukd.data import TensorImageDataset, build_datasets, seed_worker

from .distributed import DistEnv

__all__ = ["Loaders", "ShardSampler", "balanced_subset", "build_train_loaders", "load_loader_state", "loader_state"]


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
    if size is None or size >= len(dataset):
        return dataset
    idx = balanced_subset(dataset.labels, size, seed)
    return TensorImageDataset(
        dataset.images[idx], dataset.labels[idx], dataset.transform, dataset.classes, seed=stream_seed
    )


@dataclass
class Loaders:
    """The loaders of a run and the generator that orders the training set."""

    train: DataLoader
    test: DataLoader
    info: dict[str, Any]
    train_generator: torch.Generator

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle a distributed sampler for ``epoch`` (the single-process sampler needs nothing)."""
        sampler = self.train.sampler
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)


def build_train_loaders(data_cfg: dict[str, Any], seed: int, env: DistEnv, *, warn: bool = True) -> Loaders:
    """Build the training and test loaders of a run from the ``data`` section of its configuration.

    Args:
        data_cfg: the ``data`` section (see :data:`ukd.train.config.DEFAULTS`); ``batch_size`` is per process.
        seed: the run's seed: shuffling, and the augmentation stream (offset per rank).
        env: the process's place in the data-parallel group.
        warn: let the Fashion-MNIST fallback to the embedded subset warn.

    Returns:
        :class:`Loaders`; ``info`` is the data set's info plus ``train_size``/``test_size`` after subsetting.
    """
    stream_seed = seed + 1_000_003 * env.rank
    train_set, test_set, info = build_datasets(
        data_cfg["name"], data_cfg["data_dir"], seed=stream_seed, augment=data_cfg["augment"], warn=warn
    )
    train_set = _subset(train_set, data_cfg["train_subset"], data_cfg["subset_seed"], stream_seed)
    test_set = _subset(test_set, data_cfg["test_subset"], data_cfg["subset_seed"] + 1, None)
    info = dict(info, train_size=len(train_set), test_size=len(test_set))

    train_gen = torch.Generator().manual_seed(stream_seed)
    if env.distributed:
        train_sampler: Sampler[int] = DistributedSampler(
            train_set, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=seed
        )
    else:
        train_sampler = RandomSampler(train_set, generator=train_gen)
    workers = data_cfg["num_workers"]
    pin = env.device.type == "cuda"
    train = DataLoader(
        train_set,
        batch_size=data_cfg["batch_size"],
        sampler=train_sampler,
        num_workers=workers,
        worker_init_fn=seed_worker,
        generator=train_gen,
        pin_memory=pin,
    )
    test = DataLoader(
        test_set,
        batch_size=data_cfg["eval_batch_size"],
        sampler=ShardSampler(len(test_set), env.rank, env.world_size),
        num_workers=workers,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(stream_seed + 1),
        pin_memory=pin,
    )
    return Loaders(train, test, info, train_gen)


def loader_state(loaders: Loaders) -> dict[str, Any]:
    """The generator states that decide the next epoch's batches (order and augmentation)."""
    dataset = loaders.train.dataset
    aug = getattr(dataset, "generator", None)
    return {
        "train_generator": loaders.train_generator.get_state(),
        "augment_generator": aug.get_state() if aug is not None else None,
    }


def load_loader_state(loaders: Loaders, state: dict[str, Any]) -> None:
    """Restore what :func:`loader_state` returned."""
    loaders.train_generator.set_state(state["train_generator"])
    aug = getattr(loaders.train.dataset, "generator", None)
    if aug is not None and state.get("augment_generator") is not None:
        aug.set_state(state["augment_generator"])
