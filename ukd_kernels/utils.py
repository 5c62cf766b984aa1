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


# Host copies made while a CUDA graph was being captured: the graph replays their copy, so they must live as long as
# the process (a handful per captured graph).
_CAPTURED_HOST_COPIES: list[torch.Tensor] = []


def to_device_async(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``host`` (a small CPU tensor: a stage table, the loss parameters) on ``device`` without a host
    synchronisation: on CUDA through pinned memory and a non-blocking copy (a pageable copy waits for the stream)."""
    if device.type != "cuda":
        return host.to(device)
    pinned = host.pin_memory()
    if torch.cuda.is_current_stream_capturing():
        _CAPTURED_HOST_COPIES.append(pinned)
    return pinned.to(device, non_blocking=True)


def precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: fp32 GEMM tiles use tf32x3 (tensor cores, fp32-level accuracy), fp64 "ieee"."""
    return "ieee" if dtype == torch.float64 else "tf32x3"
