"""Device-agnostic timing: CUDA events on CUDA, ``time.perf_counter`` on CPU; round-robin medians; the bytes that
must move and the device-to-device copy of as many bytes; peak memory; the deadline every part runs under.

A :class:`Timer` records one sample per ``with timer.region():`` block and hands them back, in order and in ms, from
:meth:`Timer.collect` (which waits for the device). :func:`measure_interleaved` times several steps round-robin, so
that clock or load drift hits every variant alike, as ``benchmarks/common.py`` does on CPU.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple, Protocol

import torch

from ukd.testing import Case

__all__ = [
    "CudaEventTimer",
    "Deadline",
    "Timer",
    "Timing",
    "WallTimer",
    "copy_step",
    "make_timer",
    "measure_interleaved",
    "must_move_bytes",
    "peak_memory_bytes",
    "synchronize",
    "train_step",
]


class Deadline(NamedTuple):
    """An absolute wall-clock time (``time.time()``) by which work must end; shared across processes."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.time() + seconds)

    def remaining(self) -> float:
        return self.at - time.time()

    def expired(self, margin: float = 0.0) -> bool:
        """Whether fewer than ``margin`` seconds are left."""
        return self.remaining() < margin


class Timer(Protocol):
    """Times regions of code on one device, in ms."""

    def region(self) -> contextlib.AbstractContextManager[None]:
        """A block whose duration becomes one sample."""
        ...

    def collect(self) -> list[float]:
        """Every sample so far, in ms, in order (waits for the device's queued work)."""
        ...


class WallTimer:
    """Host wall clock (``time.perf_counter``): for CPU tensors, whose work is done when the call returns."""

    def __init__(self) -> None:
        self._samples: list[float] = []

    @contextlib.contextmanager
    def region(self) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self._samples.append((time.perf_counter() - t0) * 1e3)

    def collect(self) -> list[float]:
        return list(self._samples)


class CudaEventTimer:
    """A pair of CUDA events around each region, on the current stream: the GPU time between them (launch gaps
    included, so a host-bound step is timed as slow as it runs), read once at :meth:`collect`."""

    def __init__(self) -> None:
        self._pairs: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    @contextlib.contextmanager
    def region(self) -> Iterator[None]:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        self._pairs.append((start, end))

    def collect(self) -> list[float]:
        if self._pairs:
            self._pairs[-1][1].synchronize()
        return [start.elapsed_time(end) for start, end in self._pairs]


def make_timer(device: str | torch.device) -> Timer:
    """CUDA events for a CUDA device, the wall clock otherwise."""
    return CudaEventTimer() if torch.device(device).type == "cuda" else WallTimer()


def synchronize(device: str | torch.device) -> None:
    """Wait for the device's queued work (nothing to wait for on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class Timing(NamedTuple):
    """The samples of one step, in ms, in the order they were taken."""

    samples_ms: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms)

    @property
    def max_ms(self) -> float:
        return max(self.samples_ms)


def measure_interleaved(
    steps: dict[str, Callable[[], object]],
    *,
    device: str | torch.device,
    warmup: int = 3,
    reps: int = 30,
    min_reps: int = 5,
    deadline: Deadline | None = None,
) -> dict[str, Timing]:
    """Time each step ``reps`` times, round-robin, after ``warmup`` untimed calls of each.

    Stops early (after at least ``min_reps`` rounds) when ``deadline`` has passed. Returns name → :class:`Timing`.
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
    synchronize(device)
    timers = {name: make_timer(device) for name in steps}
    for i in range(reps):
        for name, step in steps.items():
            with timers[name].region():
                step()
        if deadline is not None and i + 1 >= min_reps and deadline.expired():
            break
    return {name: Timing(tuple(timer.collect())) for name, timer in timers.items()}


def must_move_bytes(case: Case) -> int:
    """The bytes a fused forward+backward must move, counted as ``benchmarks/common.floor_steps`` counts them:
    every feature read once, each feature gradient (of a feature that requires grad) written once, both heads read
    and their gradients written."""
    feats = [*case.student_feats, *case.teacher_feats]
    read = sum(f.numel() * f.element_size() for f in feats)
    write = sum(f.numel() * f.element_size() for f in feats if f.requires_grad)
    heads = 2 * sum(w.numel() * w.element_size() for w in (case.student_weight, case.teacher_weight))
    return read + write + heads


def copy_step(nbytes: int, device: str | torch.device) -> Callable[[], object]:
    """A copy between two preallocated float32 buffers that moves ``nbytes`` (half read, half written), of random
    values (never time zeros)."""
    src = torch.rand(max(nbytes // 8, 1), device=device)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def train_step(fn: Callable[[Case], torch.Tensor], case: Case) -> Callable[[], None]:
    """One forward+backward of ``fn`` on ``case`` (``.backward()``, gradients reset first): what a training step
    asks of the loss."""
    params = [t for t in case.tensors() if t.requires_grad]

    def step() -> None:
        for p in params:
            p.grad = None
        fn(case).backward()

    return step


def peak_memory_bytes(
    step: Callable[[], object], device: str | torch.device, reset: Callable[[], object] | None = None
) -> int | None:
    """Bytes the step allocates at its peak above what was allocated before it (CUDA); ``None`` on other devices.

    ``reset`` runs first, outside the measurement (e.g. dropping the gradients a previous step left, so that the
    ones this step makes count in full).
    """
    if torch.device(device).type != "cuda":
        return None
    if reset is not None:
        reset()
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base
