"""The trainer's loaders: the ``data`` configuration mapped onto ukd.data.build_loaders, and their saved state."""

from __future__ import annotations

import copy

import torch

from ukd.data import EMBEDDED_SUBSET_DIR, ShardSampler, rank_seed
from ukd.train.config import DEFAULTS
from ukd.train.data import build_train_loaders, load_loader_state, loader_state
from ukd.train.distributed import DistEnv


def _data_cfg(**changes: object) -> dict:
    cfg = copy.deepcopy(DEFAULTS["data"])
    cfg.update(data_dir=str(EMBEDDED_SUBSET_DIR), train_subset=40, test_subset=30, batch_size=8, eval_batch_size=7)
    cfg.update(changes)
    return cfg


def test_train_loaders_follow_the_config() -> None:
    loaders = build_train_loaders(_data_cfg(), seed=3, env=DistEnv(rank=1, world_size=2), warn=False)
    assert loaders.info["train_size"] == 40 and loaders.info["test_size"] == 30
    assert not {"distributed", "rank", "num_replicas"} & set(loaders.info)  # the data's info only
    assert loaders.train.batch_size == 8 and loaders.test.batch_size == 7
    assert loaders.train_generator is loaders.train.generator
    assert loaders.test.generator is not loaders.train.generator  # evaluating leaves the training stream alone
    assert torch.equal(
        loaders.test.generator.get_state(), torch.Generator().manual_seed(rank_seed(3, 1) + 1).get_state()
    )
    sampler = loaders.test.sampler
    assert isinstance(sampler, ShardSampler) and list(sampler) == list(range(1, 30, 2))


def test_loader_state_restores_the_next_epoch() -> None:
    loaders = build_train_loaders(_data_cfg(), seed=0, env=DistEnv(), warn=False)
    state = loader_state(loaders)
    first = [torch.cat([x.flatten(), y.float()]) for x, y in loaders.train]  # order and augmentation
    load_loader_state(loaders, state)
    again = [torch.cat([x.flatten(), y.float()]) for x, y in loaders.train]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
