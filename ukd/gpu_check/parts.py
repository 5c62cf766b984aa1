"""The work of each gpu_check part. Each ``run_*`` fills a :class:`~ukd.gpu_check.report.PartResult` in place,
check by check, and calls ``ctx.save()`` after each one, so that a part killed at its time limit still reports what
it did. Nothing here touches CUDA until a part is run; :mod:`ukd.gpu_check.worker` runs one part per process.

Parts:

* ``build`` — the C++/CUDA extension through the project's JIT path (:mod:`ukd.op.backends.cpp`: ninja,
  ``torch.utils.cpp_extension.load``) into a fresh ``TORCH_EXTENSIONS_DIR``, timed;
* ``correctness`` — each backend on :data:`~ukd.gpu_check.cases.CORRECTNESS_CASES` against the float64 reference;
* ``step`` — a training step (student convs + ``UnifiedDistillLoss`` with default options + SGD): no host
  synchronisation under ``torch.cuda.set_sync_debug_mode("error")``, capture in ``torch.cuda.graph``, replay equal
  to eager;
* ``timing`` — forward+backward of eager / compiled reference and the fused backends at
  :data:`~ukd.gpu_check.cases.TIMING_SHAPES`, against a copy of the bytes that must move; peak memory;
* ``compile-step`` — (optional) the same training step with the student and loss under
  ``torch.compile(mode="reduce-overhead")``.
"""

from __future__ import annotations

import copy
import math
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ukd.gpu_check.cases import CIFAR, CORRECTNESS_CASES, TIMING_SHAPES, CaseSpec, TimingShape, build_timing_case
from ukd.gpu_check.compare import Verdict, check_spec
from ukd.gpu_check.report import Check, PartResult
from ukd.gpu_check.timing import (
    Deadline,
    copy_step,
    measure_interleaved,
    must_move_bytes,
    peak_memory_bytes,
    synchronize,
    train_step,
)
from ukd.testing import rel_err

__all__ = ["PARTS", "Context", "run_build", "run_compile_step", "run_correctness", "run_step", "run_timing"]

TIMING_WARMUP, TIMING_REPS = 3, 50
STEP_TOL = 1e-4  # graph replay against eager: the same kernels on the same data, up to atomics' order


@dataclass
class Context:
    """What a part is given: the device, its deadline, the backends to check and how to save progress."""

    device: torch.device
    deadline: Deadline
    backends: tuple[str, ...] = ("triton", "cuda")
    skip: dict[str, str] = field(default_factory=dict)  # backend -> why it is not run (e.g. the build failed)
    backend: str = "auto"  # the step parts' UnifiedDistillLoss backend
    save: Callable[[], None] = lambda: None


def _elapsed(t0: float) -> float:
    return time.perf_counter() - t0


def _free(device: torch.device) -> None:
    """Hand cached blocks back between cases (a large case's buffers are not needed by the next)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ build
def run_build(result: PartResult, ctx: Context) -> None:
    """JIT-build the extension with ninja (the prebuilt ``ukd._C``, if any, is blocked by the worker) and time it."""
    from torch.utils.cpp_extension import CUDA_HOME

    from ukd.op import backends
    from ukd.op.backends import cpp

    sources = sorted(p.name for p in cpp.CSRC.glob("*.c*")) if cpp.CSRC.exists() else []
    result.data.update(
        cuda_home=CUDA_HOME,
        extensions_dir=os.environ.get("TORCH_EXTENSIONS_DIR"),
        arch_list=os.environ.get("TORCH_CUDA_ARCH_LIST") or "the visible GPU's (TORCH_CUDA_ARCH_LIST unset)",
        sources=sources,
    )
    t0 = time.perf_counter()
    reason = cpp.unavailable_reason("cpu")  # builds (or fails to) once; the reason says why
    build_s = _elapsed(t0)
    result.data["build_s"] = round(build_s, 2)
    if reason is None:
        detail = f"{build_s:.1f} s; sources {', '.join(sources)}"
    else:  # the compiler's output goes to the part's error (a code block in gpu_check.md), one line here
        result.error = reason[-8000:]
        detail = f"failed after {build_s:.1f} s: {reason.strip().splitlines()[0][:300] if reason.strip() else '?'}"
    result.checks.append(
        Check(
            "extension built by torch.utils.cpp_extension.load (ninja, fresh build directory)",
            reason is None,
            detail,
            data={"build_s": round(build_s, 2)},
        )
    )
    ctx.save()
    cuda_reason = cpp.unavailable_reason("cuda") if reason is None else reason
    result.checks.append(
        Check(
            "CUDA kernels registered (ukd::fused_forward has a CUDA kernel)",
            cuda_reason is None,
            "yes" if cuda_reason is None else cuda_reason[:300] + ("" if CUDA_HOME else " (CUDA_HOME not found)"),
        )
    )
    try:
        resolved = backends.resolve("cuda", ctx.device)
        result.checks.append(Check("backend='cuda' resolves on a CUDA tensor", resolved == "cuda", resolved))
    except Exception as exc:
        result.checks.append(Check("backend='cuda' resolves on a CUDA tensor", False, f"{type(exc).__name__}: {exc}"))
    ctx.save()


# ------------------------------------------------------------------------------------------------ correctness
def _case_margin(spec: CaseSpec) -> float:
    """Seconds a case may need (building on the host dominates the large ones)."""
    return 3.0 + spec.feature_elements() / 2e7


def run_correctness(result: PartResult, ctx: Context, cases: Sequence[CaseSpec] = CORRECTNESS_CASES) -> None:
    """Every backend on every case against the float64 reference (value, components, every gradient)."""
    result.data["cases"] = {spec.name: spec.describe() for spec in cases}
    run = [b for b in ctx.backends if b not in ctx.skip]
    for spec in cases:
        if ctx.deadline.expired(_case_margin(spec)):
            for backend in ctx.backends:
                result.checks.append(Check(f"{spec.name} / {backend}", None, "not run: out of time"))
            continue
        t0 = time.perf_counter()
        try:
            verdicts = check_spec(spec, run, ctx.device) if run else []
        except Exception as exc:  # building the case or the reference failed: every backend fails this case
            verdicts = [Verdict(spec.name, backend, (), f"the case could not be run: {_exc(exc)}") for backend in run]
        seconds = _elapsed(t0)
        for v in verdicts:
            worst = v.worst()
            result.checks.append(
                Check(
                    f"{spec.name} / {v.backend}",
                    v.passed,
                    v.summary(),
                    data={
                        "case": spec.describe(),
                        "seconds": round(seconds, 2),
                        "quantities": len(v.quantities),
                        "worst": None if worst is None else worst._asdict(),
                        "failures": [q._asdict() for q in v.failures()],
                        "error": v.error,
                    },
                )
            )
        for backend in ctx.backends:
            if backend in ctx.skip:
                result.checks.append(Check(f"{spec.name} / {backend}", None, f"not run: {ctx.skip[backend]}"))
        _free(ctx.device)
        ctx.save()


# ------------------------------------------------------------------------------------------------ step
STEP_BATCH, STEP_K = 64, 100


class _Student(nn.Module):
    """Per stage a 1×1 conv + ReLU over a static input map; logits from the last stage's pooled features."""

    def __init__(self, stages: Sequence[tuple[int, int, int]], k: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, c, 1) for c, _, _ in stages)
        self.fc = nn.Linear(stages[-1][0], k)

    def forward(self, images: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        feats = [torch.relu(conv(x)) for conv, x in zip(self.convs, images)]
        return self.fc(feats[-1].mean((2, 3))), feats


class StepInputs(NamedTuple):
    """A batch of the step: per-stage input maps ``(B, C, H, W)``, frozen teacher features and logits, targets."""

    images: list[Tensor]
    teacher_feats: list[Tensor]
    teacher_logits: Tensor  # (B, K)
    target: Tensor  # (B,) int64

    def copy_(self, other: StepInputs) -> None:
        for mine, theirs in zip(self._tensors(), other._tensors()):
            mine.copy_(theirs)

    def _tensors(self) -> list[Tensor]:
        return [*self.images, *self.teacher_feats, self.teacher_logits, self.target]


def step_inputs(seed: int, device: torch.device, stages=CIFAR, batch: int = STEP_BATCH, k: int = STEP_K) -> StepInputs:
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen).to(device)

    return StepInputs(
        [randn(batch, *st) for st in stages],
        [randn(batch, *st) + 0.5 for st in stages],
        randn(batch, k) * 3,
        torch.randint(0, k, (batch,), generator=gen).to(device),
    )


class Trainer:
    """A student, ``UnifiedDistillLoss`` (default options but ``backend``) and SGD with momentum over both."""

    def __init__(self, backend: str, device: torch.device, seed: int = 0, stages=CIFAR, k: int = STEP_K) -> None:
        from ukd import UnifiedDistillLoss

        torch.manual_seed(seed)
        channels = [c for c, _, _ in stages]
        self.student = _Student(stages, k).to(device)
        self.crit = UnifiedDistillLoss(channels, channels, k, backend=backend).to(device)
        self.opt = torch.optim.SGD([*self.student.parameters(), *self.crit.parameters()], lr=0.05, momentum=0.9)

    def loss(self, inp: StepInputs) -> Tensor:
        logits, feats = self.student(inp.images)
        return F.cross_entropy(logits, inp.target) + self.crit(feats, inp.teacher_feats, logits, inp.teacher_logits)

    def body(self, inp: StepInputs) -> Tensor:
        """Forward, backward, optimiser step (the gradients must have been reset): what a graph captures."""
        loss = self.loss(inp)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def step(self, inp: StepInputs) -> Tensor:
        self.opt.zero_grad(set_to_none=True)
        return self.body(inp)

    def parameters(self) -> list[Tensor]:
        return [*self.student.parameters(), *self.crit.parameters()]

    def clone(self) -> Trainer:
        """An independent copy with the same parameters and optimiser state (momentum buffers copied)."""
        other = copy.copy(self)
        other.student, other.crit = copy.deepcopy(self.student), copy.deepcopy(self.crit)
        other.opt = torch.optim.SGD([*other.student.parameters(), *other.crit.parameters()], **self.opt.defaults)
        other.opt.load_state_dict(copy.deepcopy(self.opt.state_dict()))
        return other


def _max_param_err(a: Trainer, b: Trainer) -> float:
    return max(rel_err(p, q) for p, q in zip(a.parameters(), b.parameters()))


def _exc(exc: BaseException) -> str:
    """The exception in one line, with the innermost frame of ukd's own code that raised it (where a sync or an
    uncapturable call happened)."""
    text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:500]
    ours = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if ("/ukd/" in f.filename or "/ukd_kernels/" in f.filename) and "/gpu_check/" not in f.filename
    ]
    if ours:
        f = ours[-1]
        where = "/".join(Path(f.filename).parts[-2:])
        text += f" [at {where}:{f.lineno} in {f.name}: {(f.line or '').strip()[:120]}]"
    return text


def run_step(result: PartResult, ctx: Context) -> None:
    """Eager warm-up; one step under ``set_sync_debug_mode("error")``; capture in a CUDA graph; two replays with new
    static inputs against an eager copy from the same state and RNG seed."""
    from ukd.op import backends

    device = ctx.device
    if ctx.backend in ctx.skip:
        why = f"not run: {ctx.skip[ctx.backend]}"
        result.checks.append(Check(f"training step, backend={ctx.backend!r}", None, why))
        return
    resolved = backends.resolve(ctx.backend, device)
    result.data.update(backend=ctx.backend, resolved=resolved, batch=STEP_BATCH, k=STEP_K, stages=list(CIFAR))
    expected = "triton" if ctx.backend == "auto" else ctx.backend  # README: auto picks triton on CUDA tensors
    result.checks.append(
        Check(f"backend={ctx.backend!r} resolves to {expected!r} on CUDA tensors", resolved == expected, resolved)
    )
    a = Trainer(ctx.backend, device)
    inp = step_inputs(0, device)
    t0 = time.perf_counter()
    losses = [a.step(inp) for _ in range(2)]
    torch.cuda.synchronize(device)
    finite = all(bool(torch.isfinite(x)) for x in losses)
    result.checks.append(
        Check(
            f"eager warm-up (2 steps, backend={ctx.backend!r} → {resolved})",
            finite,
            f"losses {[round(float(x), 4) for x in losses]}, {_elapsed(t0):.1f} s",
        )
    )
    ctx.save()

    name = "no host synchronisation in a step (torch.cuda.set_sync_debug_mode('error'))"
    torch.cuda.set_sync_debug_mode("error")
    try:
        a.step(inp)
        sync = Check(name, True, "forward + backward + SGD step ran with synchronising calls raising")
    except Exception as exc:
        sync = Check(name, False, _exc(exc))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    result.checks.append(sync)
    ctx.save()

    name = "captures in a CUDA graph (torch.cuda.graph, static inputs)"
    graph = torch.cuda.CUDAGraph()
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                a.step(inp)
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        a.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            static_loss = a.body(inp)
        result.checks.append(Check(name, True, "forward + backward + SGD step captured"))
    except Exception as exc:
        result.checks.append(Check(name, False, _exc(exc)))
        result.checks.append(Check("graph replay equals eager", None, "not run: the capture failed"))
        ctx.save()
        return
    ctx.save()

    b = a.clone()
    errors = []
    for round_ in range(2):
        new = step_inputs(100 + round_, device)
        inp.copy_(new)
        torch.cuda.manual_seed(1000 + round_)
        graph.replay()
        torch.cuda.manual_seed(1000 + round_)
        eager_loss = b.step(new)
        torch.cuda.synchronize(device)
        errors.append({"loss": rel_err(static_loss, eager_loss), "params": _max_param_err(a, b)})
    worst = max(max(e.values()) for e in errors)
    result.data["replay_errors"] = errors
    result.checks.append(
        Check(
            "graph replay equals eager (2 steps, new static inputs, same RNG seed)",
            worst <= STEP_TOL,
            f"max rel. error {worst:.2e} over loss and every parameter after the step (tol {STEP_TOL:.0e})",
            data={"errors": errors},
        )
    )
    ctx.save()


def run_compile_step(result: PartResult, ctx: Context) -> None:
    """The training step with student + loss under ``torch.compile(mode="reduce-overhead")`` (CUDA graph trees):
    three steps run, the loss stays finite, no graph break and no skipped CUDA graph (optional checks)."""
    from torch._dynamo.utils import counters

    for backend in ctx.backends:
        name = f"torch.compile(mode='reduce-overhead') step, backend={backend!r}"
        if backend in ctx.skip:
            result.checks.append(Check(name, None, f"not run: {ctx.skip[backend]}", required=False))
            continue
        if ctx.deadline.expired(20):
            result.checks.append(Check(name, None, "not run: out of time", required=False))
            continue
        torch._dynamo.reset()
        counters.clear()
        t0 = time.perf_counter()
        try:
            trainer = Trainer(backend, ctx.device)
            inp = step_inputs(0, ctx.device)
            compiled = torch.compile(trainer.loss, mode="reduce-overhead")
            losses = []
            for _ in range(3):
                torch.compiler.cudagraph_mark_step_begin()
                trainer.opt.zero_grad(set_to_none=True)
                loss = compiled(inp)
                loss.backward()
                trainer.opt.step()
                losses.append(float(loss.detach()))
            breaks = sum(counters["graph_break"].values())
            skips = counters["inductor"]["cudagraph_skips"]
            ok = all(map(math.isfinite, losses)) and breaks == 0 and skips == 0
            detail = f"losses {[round(x, 4) for x in losses]}, graph breaks {breaks}, cudagraph skips {skips}"
            result.checks.append(Check(name, bool(ok), f"{detail}, {_elapsed(t0):.1f} s", required=False))
        except Exception as exc:
            result.checks.append(Check(name, False, f"after {_elapsed(t0):.1f} s: {_exc(exc)}", required=False))
        ctx.save()


# ------------------------------------------------------------------------------------------------ timing
REFERENCE_VARIANTS = ("eager", "compile")


def _variants(backends: Sequence[str], references: Sequence[str] = REFERENCE_VARIANTS) -> dict[str, Callable]:
    """name → loss of a case: the eager reference (``ukd.testing``'s baseline), its ``torch.compile``
    (:func:`ukd.testing.compiled_reference_loss`), each fused backend."""
    from ukd.testing import compiled_reference_loss, fused_loss, reference_loss

    baselines = {"eager": reference_loss, "compile": compiled_reference_loss}
    out: dict[str, Callable] = {name: baselines[name] for name in references}
    for name in backends:
        out[name] = lambda case, name=name: fused_loss(case, name)
    return out


def _reset_grads(case) -> Callable[[], None]:
    def reset() -> None:
        for t in case.tensors():
            t.grad = None

    return reset


def time_shape(
    shape: TimingShape, ctx: Context, backends: Sequence[str], references: Sequence[str] = REFERENCE_VARIANTS
) -> dict:
    """One timing row: every variant's forward+backward (median of :data:`TIMING_REPS` round-robin steps, CUDA
    events) and the copy of the bytes that must move, in the same rounds; peak memory of one step each."""
    device = ctx.device
    case = build_timing_case(shape, device)
    nbytes = must_move_bytes(case)
    row: dict = {"shape": shape.name, "batch": shape.batch, "bytes": nbytes, "variants": {}}
    steps = {}
    variants = _variants(backends, references)
    for name, fn in variants.items():
        if name == "compile" and ctx.deadline.expired(45 if shape.required else 90):
            row["variants"][name] = {"error": "not timed: too little time left to compile"}
            continue
        step = train_step(fn, case)
        try:
            step()  # the first call compiles (torch.compile, Triton) and shows whether the variant runs at all
            synchronize(device)
            steps[name] = step
        except Exception as exc:
            row["variants"][name] = {"error": _exc(exc)}
    steps["copy"] = copy_step(nbytes, device)
    timings = measure_interleaved(
        steps, device=device, warmup=TIMING_WARMUP, reps=TIMING_REPS, deadline=Deadline(ctx.deadline.at - 10)
    )
    copy_t = timings.pop("copy")
    row["reps"] = len(copy_t.samples_ms)
    row["copy"] = {"median_ms": copy_t.median_ms, "min_ms": copy_t.min_ms, "GBps": nbytes / copy_t.median_ms / 1e6}
    for name, t in timings.items():
        peak = peak_memory_bytes(steps[name], device, reset=_reset_grads(case))
        row["variants"][name] = {
            "median_ms": t.median_ms,
            "min_ms": t.min_ms,
            "max_ms": t.max_ms,
            "reps": len(t.samples_ms),
            "GBps": nbytes / t.median_ms / 1e6,
            "copy_fraction": copy_t.median_ms / t.median_ms,
            "peak_MB": None if peak is None else peak / 2**20,
        }
    for ref in ("eager", "compile"):
        base = row["variants"].get(ref, {}).get("median_ms")
        for v in row["variants"].values():
            if base and v.get("median_ms"):
                v[f"x_{ref}"] = base / v["median_ms"]
    row["variants"] = {k: row["variants"][k] for k in variants if k in row["variants"]}
    return row


def run_timing(
    result: PartResult,
    ctx: Context,
    shapes: Sequence[TimingShape] = TIMING_SHAPES,
    references: Sequence[str] = REFERENCE_VARIANTS,
) -> None:
    """The timing table; one check per shape: every variant was timed."""
    run = [b for b in ctx.backends if b not in ctx.skip]
    result.data["rows"] = []
    result.data["notes"] = [
        f"Forward+backward of the loss (`.backward()`, gradients reset each step): median of up to {TIMING_REPS} "
        f"round-robin steps after {TIMING_WARMUP} warm-ups, timed with CUDA events. GB/s: the bytes that must move "
        "(every feature read once, the student feature gradients written once, both heads read and their "
        "gradients written; `benchmarks/common.py`'s count) over the median time. The copy moves as many bytes "
        "(`dst.copy_(src)`, half read, half written) in the same rounds. Peak: `max_memory_allocated` during one "
        "step above what was allocated before it. × eager / × compile: speed-up over the eager / compiled reference.",
        *(f"Not timed: {b} ({why})." for b, why in ctx.skip.items() if b in ctx.backends),
    ]
    for shape in shapes:
        name = f"{shape.name}: every variant timed"
        if ctx.deadline.expired(15):
            result.checks.append(Check(name, None, "not run: out of time", required=shape.required))
            continue
        try:
            row = time_shape(shape, ctx, run, references)
        except Exception as exc:
            result.checks.append(Check(name, False, _exc(exc), required=shape.required))
            ctx.save()
            continue
        result.data["rows"].append(row)
        errors = {k: v["error"] for k, v in row["variants"].items() if "error" in v}
        timed = ", ".join(
            f"{k} {v['median_ms']:.3f} ms ({v['GBps']:,.0f} GB/s)"
            for k, v in row["variants"].items()
            if "error" not in v
        )
        detail = f"copy {row['copy']['median_ms']:.3f} ms ({row['copy']['GBps']:,.0f} GB/s); {timed}"
        if errors:
            detail += "; errors: " + "; ".join(f"{k}: {e}" for k, e in errors.items())
        result.checks.append(Check(name, not errors, detail, required=shape.required))
        _free(ctx.device)
        ctx.save()


class PartInfo(NamedTuple):
    """A part the command runs: its worker function, title, time cap, the least time worth starting it with."""

    run: Callable[[PartResult, Context], None]
    title: str
    cap_s: float
    min_s: float
    required: bool = True
    backend: str = "auto"


_STEP = "training step with UnifiedDistillLoss defaults"
PARTS: dict[str, PartInfo] = {
    "build": PartInfo(run_build, "JIT build of the C++/CUDA extension (ninja)", 150, 30),
    "correctness": PartInfo(run_correctness, "triton and cuda against the float64 reference", 90, 30),
    "step-auto": PartInfo(run_step, f"{_STEP} (backend='auto')", 40, 20),
    "step-cuda": PartInfo(run_step, f"{_STEP} but backend='cuda'", 40, 20, backend="cuda"),
    "timing": PartInfo(run_timing, "forward+backward timing against the copy floor", 150, 60),
    "compile-step": PartInfo(run_compile_step, f"{_STEP} under torch.compile(mode='reduce-overhead')", 90, 25, False),
}
