"""The trainer's DataLoaders: a run's ``data`` configuration mapped onto :func:`ukd.data.build_loaders`.

:func:`ukd.data.build_loaders` makes the loaders (class-balanced subsets, samplers, the seeds of every random stream,
see :mod:`ukd.data.loaders`); this module adds what the training loop needs around them: the :class:`Loaders` of a
run, and :func:`loader_state` / :func:`load_loader_state`, which save and restore the generators that decide the next
epoch's batches, so a resumed run sees exactly the batches an uninterrupted one would.

Evaluation is sharded without padding (:class:`~ukd.data.ShardSampler`) so that counts summed over ranks are exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from ukd.data import ShardSampler, balanced_subset, rank_seed
from ukd.data.loaders import build_loader_set

from .config import ConfigError
from .distributed import DistEnv

__all__ = ["Loaders", "ShardSampler", "balanced_subset", "build_train_loaders", "load_loader_state", "loader_state"]

#: Entries of :func:`ukd.data.build_loaders`'s ``info`` that describe this process, not the data; a run's info (saved
#: in its checkpoint and ``summary.json``) has the data's only.
_PROCESS_INFO = ("distributed", "rank", "num_replicas")


@dataclass
class Loaders:
    """The loaders of a run and the generator that orders the training set."""

    train: DataLoader
    test: DataLoader
    info: dict[str, Any]
    train_generator: torch.Generator
    val: DataLoader | None = None  # held out of the training images (data.val_size); None: no validation

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle a distributed sampler for ``epoch`` (the single-process sampler needs nothing)."""
        sampler = self.train.sampler
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)


def build_train_loaders(data_cfg: dict[str, Any], seed: int, env: DistEnv, *, warn: bool = True) -> Loaders:
    """Build the training and test loaders of a run from the ``data`` section of its configuration.

    Args:
        data_cfg: the ``data`` section (see :data:`ukd.train.config.DEFAULTS`); ``batch_size`` is per process.
        seed: the run's seed: shuffling, and the augmentation stream (offset per rank, :func:`ukd.data.rank_seed`).
        env: the process's place in the data-parallel group.
        warn: let the Fashion-MNIST fallback to the embedded subset warn.

    Returns:
        :class:`Loaders`; ``info`` is the data set's info plus ``train_size``/``test_size`` after subsetting.
    """
    try:
        train, test, info, val = build_loader_set(
            data_cfg["name"],
            data_cfg["data_dir"],
            batch_size=data_cfg["batch_size"],
            num_workers=data_cfg["num_workers"],
            seed=seed,
            distributed=env.distributed,
            eval_batch_size=data_cfg["eval_batch_size"],
            augment=data_cfg["augment"],
            pin_memory=env.device.type == "cuda",
            num_replicas=env.world_size,
            rank=env.rank,
            warn=warn,
            train_subset=data_cfg["train_subset"],
            test_subset=data_cfg["test_subset"],
            subset_seed=data_cfg["subset_seed"],
            exact_test_shards=True,
            # The test loader has its own generator, so that evaluating does not move the training stream on.
            test_seed=rank_seed(seed, env.rank) + 1,
            val_size=data_cfg["val_size"],
        )
    except ValueError as exc:
        if str(exc).startswith("val_size:"):
            raise ConfigError(f"data.{exc}") from None
        raise
    info = {k: v for k, v in info.items() if k not in _PROCESS_INFO}
    assert train.generator is not None  # build_loaders always gives the training loader its generator
    return Loaders(train, test, info, train.generator, val)


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
