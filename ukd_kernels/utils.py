"""Small host-side helpers shared by the launchers of :mod:`ukd_kernels`."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

import torch

V = TypeVar("V")

CACHE_SIZE = 32


def cached(cache: OrderedDict, key: tuple, build: Callable[[], V]) -> V:
    """``cache[key]``, built on a miss; the least recently used entry goes once the cache holds ``CACHE_SIZE``."""
    hit = cache.get(key)
    if hit is None:
        hit = cache[key] = build()
        if len(cache) > CACHE_SIZE:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return hit


def precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: fp32 GEMM tiles use tf32x3 (tensor cores, fp32-level accuracy), fp64 "ieee"."""
    return "ieee" if dtype == torch.float64 else "tf32x3"
