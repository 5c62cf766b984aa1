"""Seeds: the one rule that gives each rank its own random streams, and the seeding of processes and workers.

* :func:`rank_seed` derives rank ``r``'s seed from a run's seed; the DataLoaders (augmentation, shuffling generator,
  worker seeds) and the trainer's global RNGs (e.g. the UKD noise) all use it, so that every rank draws its own,
  reproducible streams. Rank 0's seed is the run's seed itself.
* :func:`seed_everything` seeds Python's ``random``, numpy and torch in the current process.
* :func:`seed_worker` is the DataLoaders' ``worker_init_fn``: each worker's seed is the one torch already gave it
  (``base_seed + worker_id``, ``base_seed`` drawn from the loader's generator).
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import get_worker_info

__all__ = ["RANK_SEED_STRIDE", "rank_seed", "seed_everything", "seed_worker"]

#: Distance between the seeds of consecutive ranks.
RANK_SEED_STRIDE = 1_000_003


def rank_seed(seed: int, rank: int = 0) -> int:
    """The seed of rank ``rank``'s own random streams in a run seeded with ``seed`` (``seed`` itself for rank 0)."""
    return seed + RANK_SEED_STRIDE * rank


def _seed_python_and_numpy(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy (``seed mod 2**32``) and torch's global generators with ``seed``."""
    _seed_python_and_numpy(seed)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoaders: seed ``random``, numpy and the data set's generator in each worker.

    torch has already seeded the worker's global RNG with ``base_seed + worker_id``, where ``base_seed`` is drawn from
    the DataLoader's generator; that seed is reused here, so every worker of every epoch gets its own stream and the
    whole run is reproducible under the loader's seed.
    """
    seed = torch.initial_seed()
    _seed_python_and_numpy(seed)
    info = get_worker_info()
    dataset = info.dataset if info is not None else None
    if dataset is not None and getattr(dataset, "generator", None) is not None and hasattr(dataset, "reseed"):
        dataset.reseed(seed)
