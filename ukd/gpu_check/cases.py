"""What gpu_check runs: the correctness cases, the timing shapes and the tolerances, as plain data.

Cases are built with :func:`ukd.testing.make_case` (the suite's one case builder) and the tolerances are the test
suite's: ``2e-4`` relative for a float32 computation (``1e-9`` for float64), and for a gradient rounded to a half
dtype two ulps of that dtype (``tests/hardening/hardening_support.py``: ``grad_tol``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ukd.testing import BENCH_SHAPES, Case, Stage, bench_case, make_case

__all__ = [
    "CORRECTNESS_CASES",
    "TIMING_SHAPES",
    "CaseSpec",
    "TimingShape",
    "build_case",
    "build_timing_case",
    "case_to",
    "grad_tolerance",
    "value_tolerance",
]

COMPUTE_TOL = {torch.float64: 1e-9, torch.float32: 2e-4}  # the suite's (tests/hardening/hardening_support.py)

CIFAR = tuple(BENCH_SHAPES["cifar"]["student"])
IMAGENET = tuple(BENCH_SHAPES["imagenet"]["student"])


def value_tolerance(compute: torch.dtype) -> float:
    """Relative tolerance of the loss and its components against the float64 reference."""
    return COMPUTE_TOL[compute]


def grad_tolerance(grad_dtype: torch.dtype, compute: torch.dtype) -> float:
    """A gradient is computed in ``compute`` and rounded once to its input's dtype: two ulps of that dtype."""
    return max(COMPUTE_TOL[compute], 2 * torch.finfo(grad_dtype).eps)


class CaseSpec(NamedTuple):
    """One correctness case: ``make_case(batch, k, student, teacher, ...)`` in float32, the features then cast to
    ``feat_dtype``; every input requires grad (features of both networks, logits, both heads)."""

    name: str
    batch: int
    k: int
    student: tuple[Stage, ...]  # (C, H, W) maps or (C,) pooled inputs
    teacher: tuple[Stage, ...]
    feat_dtype: torch.dtype = torch.float32
    channels_last: bool = False
    noise: bool = True
    options: tuple[tuple[str, float], ...] = ()  # ukd_loss keyword options (temperature, weights, logvar_bound)
    logvar_spread: float = 1.0  # > 2.5 puts log-variances past the default bound (the clamp)
    seed: int = 0

    @property
    def layout(self) -> str:
        return "channels_last" if self.channels_last else "NCHW"

    def feature_elements(self) -> int:
        """Feature elements of both networks (what the case costs to build)."""
        return self.batch * sum(_numel(st) for st in (*self.student, *self.teacher))

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options)
        return (
            f"B={self.batch} K={self.k} S={list(self.student)} T={list(self.teacher)} "
            f"{str(self.feat_dtype).removeprefix('torch.')} features {self.layout}"
            + ("" if self.noise else ", no noise")
            + (f", {opts}" if opts else "")
            + (f", logvar_spread={self.logvar_spread}" if self.logvar_spread != 1.0 else "")
        )


def _numel(stage: Stage) -> int:
    n = 1
    for d in stage:
        n *= d
    return n


_ODD_S = ((3, 5, 7), (17, 3, 3), (5,))
_ODD_T = ((33, 4, 4), (1, 1, 1))
_TERMS = (("temperature", 2.0), ("gauss_weight", 0.25), ("supp_weight", 0.7), ("logit_weight", 1.3))

# Cheap cases first, so that a part that runs out of time has done the most cases it could.
CORRECTNESS_CASES: tuple[CaseSpec, ...] = (
    CaseSpec("k2-b1-odd", 1, 2, ((3, 5, 7), (5, 2, 3)), ((7, 3, 3), (4,)), seed=1),
    CaseSpec("k10-b7-odd-bf16-cl", 7, 10, _ODD_S, _ODD_T, torch.bfloat16, True, seed=2),
    CaseSpec(
        "k37-b5-all-terms-clamp",
        5,
        37,
        ((11, 6, 6), (13, 3, 3)),
        ((9, 5, 5),),
        noise=False,
        options=_TERMS,
        logvar_spread=4.0,
        seed=3,
    ),
    CaseSpec("k2-b256-cl", 256, 2, ((16, 8, 8),), ((24, 8, 8),), channels_last=True, seed=4),
    CaseSpec("cifar-b64-fp32", 64, 100, CIFAR, CIFAR, seed=5),
    CaseSpec("cifar-b64-bf16-cl", 64, 100, CIFAR, CIFAR, torch.bfloat16, True, seed=6),
    CaseSpec("imagenet-b1-cl", 1, 1000, IMAGENET, IMAGENET, channels_last=True, seed=7),
    CaseSpec("imagenet-b32-fp32", 32, 1000, IMAGENET, IMAGENET, seed=8),
    CaseSpec("k5000-b33-odd-cl", 33, 5000, ((31, 9, 9), (65, 5, 5)), ((47, 7, 7), (129,)), channels_last=True, seed=9),
    CaseSpec("k32000-b8-odd", 8, 32000, ((64, 7, 7), (129, 3, 3)), ((96, 7, 7),), seed=10),
    CaseSpec("k32000-b256-bf16-cl", 256, 32000, ((255, 4, 4),), ((257, 4, 4),), torch.bfloat16, True, seed=11),
    CaseSpec("imagenet-b256-fp32", 256, 1000, IMAGENET, IMAGENET, seed=12),
    CaseSpec("imagenet-b256-bf16-cl", 256, 1000, IMAGENET, IMAGENET, torch.bfloat16, True, seed=13),
)


def build_case(spec: CaseSpec, device: str | torch.device = "cpu") -> Case:
    """The inputs of ``spec`` on ``device``, every tensor requiring grad (features ``(B, C, H, W)`` in
    ``spec.feat_dtype`` and layout, or ``(B, C)``; logits ``(B, K)``; heads ``(2K, ΣC)``, ``(2K,)`` in float32)."""
    case = make_case(
        spec.batch,
        spec.k,
        spec.student,
        spec.teacher,
        dtype=torch.float32,
        channels_last=spec.channels_last,
        noise=spec.noise,
        seed=spec.seed,
        logvar_spread=spec.logvar_spread,
        device=device,
        **dict(spec.options),
    )
    if spec.feat_dtype != torch.float32:
        case = case.cast(spec.feat_dtype, feats_only=True)  # layouts kept
    return case.requires_grad_()


class TimingShape(NamedTuple):
    """One row of the timing table: a :data:`ukd.testing.BENCH_SHAPES` shape at a batch, dtype and layout, with
    :func:`ukd.testing.bench_case`'s grad pattern (everything but the teacher's features requires grad)."""

    name: str
    shape: str  # a key of BENCH_SHAPES
    batch: int
    feat_dtype: torch.dtype = torch.float32
    channels_last: bool = False
    required: bool = True  # an optional row that was not timed (out of time) does not fail the run


# The benchmark shapes as benchmarks/run.py runs them, then imagenet at B=256 (docs/roofline.md) in fp32; last, as an
# optional row (torch.compile recompiles for the dtype), bf16 channels_last features as AMP training makes them.
TIMING_SHAPES: tuple[TimingShape, ...] = (
    TimingShape("cifar B=64", "cifar", BENCH_SHAPES["cifar"]["batch"]),
    TimingShape("imagenet B=32", "imagenet", BENCH_SHAPES["imagenet"]["batch"]),
    TimingShape("imagenet B=256", "imagenet", 256),
    TimingShape("imagenet B=256 bf16 channels_last", "imagenet", 256, torch.bfloat16, True, required=False),
)


def case_to(case: Case, device: str | torch.device) -> Case:
    """The same case on ``device``: values, dtypes, layouts and the ``requires_grad`` pattern kept."""

    def move(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        return t.detach().to(device).requires_grad_(t.requires_grad)  # .to keeps channels_last (preserve_format)

    return Case(
        [move(f) for f in case.student_feats],
        [move(f) for f in case.teacher_feats],
        *(
            move(t)
            for t in (
                case.student_logits,
                case.teacher_logits,
                case.student_weight,
                case.student_bias,
                case.teacher_weight,
                case.teacher_bias,
                case.noise_s,
                case.noise_t,
            )
        ),
        options=dict(case.options),
    )


def build_timing_case(shape: TimingShape, device: str | torch.device = "cpu") -> Case:
    """:func:`ukd.testing.bench_case` at ``shape`` on ``device``, features in ``shape.feat_dtype`` and layout."""
    case = bench_case(shape.shape, batch=shape.batch)
    grads = [t.requires_grad for t in case.tensors()]
    if shape.feat_dtype != torch.float32 or shape.channels_last:
        fmt = torch.channels_last if shape.channels_last else torch.contiguous_format
        case = case.cast(shape.feat_dtype, feats_only=True)
        case.student_feats = [f.contiguous(memory_format=fmt) for f in case.student_feats]
        case.teacher_feats = [f.contiguous(memory_format=fmt) for f in case.teacher_feats]
        for t, g in zip(case.tensors(), grads):
            t.requires_grad_(g)
    return case_to(case, device)
