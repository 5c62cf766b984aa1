"""What the benchmark scripts share: the variants to time, timing, peak-memory tracking and the measured floor.

The variants come from :mod:`ukd.testing`, the module the tests use, so a benchmark times what a test checks.
"""

from __future__ import annotations

import statistics
import time
import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ukd.gpu_check.timing import must_move_bytes, train_step
from ukd.testing import Case, available_backends, compiled_reference_loss, fused_loss, reference_loss


def variants(device: str = "cpu") -> dict[str, Callable[[Case], torch.Tensor]]:
    """name → loss function: eager reference, compiled reference, and every fused backend that runs here."""
    out: dict[str, Callable[[Case], torch.Tensor]] = {"eager": reference_loss, "compile": compiled_reference_loss}
    for name in available_backends(device):
        out[name] = lambda case, name=name: fused_loss(case, name)
    return out


def make_step(fn: Callable[[Case], torch.Tensor], case: Case, mode: str) -> Callable[[], None]:
    """One forward (no grad) or forward+backward (``.backward()``, gradients reset first) of ``fn`` on ``case``."""
    if mode == "fwd":

        def step() -> None:
            with torch.no_grad():
                fn(case)

        return step
    return train_step(fn, case)


def median_ms_interleaved(
    steps: dict[str, Callable[[], None]], *, warmup: int = 3, rounds: int = 15, min_time: float = 1.0
) -> dict[str, float]:
    """Median ms of each step, timed round-robin so that load from other processes hits every variant alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    start = time.perf_counter()
    while len(next(iter(times.values()))) < rounds or time.perf_counter() - start < min_time:
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
        if len(times[name]) >= 200:
            break
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


class _LiveBytes(TorchDispatchMode):
    """Tracks bytes of tensor storages created by aten ops while active (views and aliases are not new bytes)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, int] = {}

    def _release(self, ptr: int, nbytes: int) -> None:
        self._refs[ptr] -= 1
        if self._refs[ptr] == 0:
            del self._refs[ptr]
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            storage = t.untyped_storage()
            ptr, nbytes = storage.data_ptr(), storage.nbytes()
            if ptr == 0:
                continue
            if ptr not in self._refs:
                self._refs[ptr] = 0
                self.live += nbytes
                self.peak = max(self.peak, self.live)
            self._refs[ptr] += 1
            weakref.finalize(t, self._release, ptr, nbytes)
        return out


def peak_bytes(step: Callable[[], None]) -> int:
    """Peak bytes of storages the step allocates through aten ops (C++ scratch inside the fused op excluded).

    The fused op's own temporaries — [μ; r] for both heads and a (B, 4) row buffer, O(B·K) — are not aten-op
    outputs and are not seen; they are a few hundred KB at the benchmark shapes.
    """
    step()
    tracker = _LiveBytes()
    with tracker:
        step()
    return tracker.peak


def floor_steps(case: Case) -> tuple[dict[str, Callable[[], None]], int]:
    """Steps that time the floor of a fused forward+backward, to run interleaved with the variants.

    ``floor:bytes`` copies between preallocated buffers so that exactly the bytes that must move are moved (half
    read, half written): every feature read once, each student feature gradient written once, the heads read and
    their gradients written. ``floor:gemm`` runs the head GEMMs as same-size ``torch.mm`` calls: forward, the two
    projections; backward, the two weight gradients and the student pooled gradient. Returns the steps and the bytes.
    """
    nbytes = must_move_bytes(case)
    src = torch.ones(nbytes // 8)  # float32: nbytes/2 read + nbytes/2 written
    dst = torch.empty_like(src)
    batch = case.student_logits.shape[0]
    ws, wt = case.student_weight.detach(), case.teacher_weight.detach()
    gen = torch.Generator().manual_seed(0)
    p_s, p_t = (torch.randn(batch, w.shape[1], generator=gen, dtype=w.dtype) for w in (ws, wt))
    dy_s, dy_t = (torch.randn(batch, w.shape[0], generator=gen, dtype=w.dtype) for w in (ws, wt))

    def gemms() -> None:
        torch.mm(p_s, ws.t()), torch.mm(p_t, wt.t())  # projections
        torch.mm(dy_s.t(), p_s), torch.mm(dy_t.t(), p_t)  # weight gradients
        torch.mm(dy_s, ws)  # student pooled gradient

    return {"floor:bytes": lambda: dst.copy_(src), "floor:gemm": gemms}, nbytes


def floor_from(times: dict[str, float], nbytes: int) -> dict[str, float]:
    """The floor in ms from the interleaved timings of :func:`floor_steps`."""
    bytes_ms, gemm_ms = times["floor:bytes"], times["floor:gemm"]
    return {
        "bytes": nbytes,
        "bandwidth_GBps": nbytes / bytes_ms / 1e6,
        "bytes_ms": bytes_ms,
        "gemm_ms": gemm_ms,
        "floor_ms": bytes_ms + gemm_ms,
    }


# glibc returns freed blocks above its mmap threshold to the kernel, so a step that allocates feature-sized
# gradients takes fresh zeroed pages (page faults) every time; "retain" keeps freed memory in the heap.
MALLOC_MODES = ("glibc", "retain")
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def set_malloc(mode: str) -> None:
    """``glibc``: the defaults. ``retain``: every block comes from the heap (no mmap) and freed memory is kept."""
    if mode == "glibc":
        return
    import ctypes

    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallopt"):
        raise SystemExit(f"--malloc {mode}: this C library has no mallopt (glibc only)")
    if not (libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)):
        raise SystemExit(f"--malloc {mode}: mallopt refused the thresholds")
