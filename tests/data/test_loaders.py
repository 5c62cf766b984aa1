"""Tests of the one DataLoader builder (subsets, exact test shards, the test loader's stream) and the seed helpers."""

from __future__ import annotations

import gzip
import random
import struct
from pathlib import Path

import numpy as np
import torch

from ukd.data import (
    RANK_SEED_STRIDE,
    ShardSampler,
    balanced_subset,
    build_loaders,
    rank_seed,
    seed_everything,
    seed_worker,
)
from ukd.data import loaders as loaders_module


def _write_fashion_mnist(directory: Path, n_train: int, n_test: int) -> None:
    """Random Fashion-MNIST files in IDX format, labels ``i % 10``."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, array in (
            ("images-idx3", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
            ("labels-idx1", (np.arange(n) % 10).astype(np.uint8)),
        ):
            header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
            (directory / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + array.tobytes()))


def test_rank_seed_and_seed_everything() -> None:
    assert rank_seed(5) == rank_seed(5, 0) == 5 and rank_seed(5, 2) == 5 + 2 * RANK_SEED_STRIDE
    assert len({rank_seed(s, r) for s in (5, 6) for r in range(4)}) == 8
    draws = []
    for _ in range(2):
        seed_everything(rank_seed(3, 1))
        draws.append((torch.rand(3), np.random.rand(), random.random()))
    assert torch.equal(draws[0][0], draws[1][0]) and draws[0][1:] == draws[1][1:]
    assert loaders_module.seed_worker is seed_worker  # ukd.data.loaders still exports it


def test_subsets_and_exact_test_shards(tmp_path: Path) -> None:
    _write_fashion_mnist(tmp_path, n_train=40, n_test=11)
    shards, sizes = [], []
    for rank in range(2):
        train_loader, test_loader, info = build_loaders(
            "fashion_mnist",
            tmp_path,
            batch_size=4,
            seed=1,
            distributed=True,
            num_replicas=2,
            rank=rank,
            train_subset=20,
            test_subset=9,
            subset_seed=3,
            exact_test_shards=True,
        )
        assert info["train_size"] == len(train_loader.dataset) == 20 and info["test_size"] == 9
        assert torch.bincount(train_loader.dataset.labels).tolist() == [2] * 10
        assert torch.equal(
            train_loader.dataset.labels, (torch.arange(40) % 10)[balanced_subset(torch.arange(40) % 10, 20, 3)]
        )
        assert isinstance(test_loader.sampler, ShardSampler)
        shards.append(list(test_loader.sampler))
        sizes.append(sum(len(y) for _, y in test_loader))
    assert sorted(shards[0] + shards[1]) == list(range(9)) and sizes == [5, 4]  # in order, no padding


def test_test_loader_stream(tmp_path: Path) -> None:
    """With ``test_seed`` the test loader has its own generator; without, iterating it moves the training one on."""
    _write_fashion_mnist(tmp_path, n_train=16, n_test=4)
    for test_seed, shared in ((None, True), (7, False)):
        train_loader, test_loader, _ = build_loaders("fashion_mnist", tmp_path, batch_size=4, test_seed=test_seed)
        before = train_loader.generator.get_state()
        list(test_loader)
        assert (test_loader.generator is train_loader.generator) is shared
        assert torch.equal(before, train_loader.generator.get_state()) is not shared
