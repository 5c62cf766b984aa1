"""Shared by tests and benchmarks: random cases, the backends to compare, and the baselines.

Keeping them here means a benchmark times exactly what a test checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ukd.functional import ukd_loss
from ukd.op import backends
from ukd.op.options import OPTION_NAMES

Stage = tuple[int, ...]  # (C, H, W) for a map, (C,) for a pooled input

# The benchmark shapes (docs/roofline.md): per network, the stages (C, H, W); K; B.
BENCH_SHAPES: dict[str, dict] = {
    "cifar": {
        "batch": 64,
        "k": 100,
        "student": [(64, 32, 32), (128, 16, 16), (256, 8, 8)],
        "teacher": [(64, 32, 32), (128, 16, 16), (256, 8, 8)],
    },
    "imagenet": {
        "batch": 32,
        "k": 1000,
        "student": [(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)],
        "teacher": [(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)],
    },
}

# the positional tensors of ukd_loss after the two feature lists
SMALL_INPUTS = ("student_logits", "teacher_logits", "student_weight", "student_bias", "teacher_weight", "teacher_bias")


@dataclass
class Case:
    """One set of inputs of :func:`ukd.functional.ukd_loss`; ``tensors()`` lists the differentiable ones."""

    student_feats: list[Tensor]
    teacher_feats: list[Tensor]
    student_logits: Tensor
    teacher_logits: Tensor
    student_weight: Tensor
    student_bias: Tensor
    teacher_weight: Tensor
    teacher_bias: Tensor
    noise_s: Tensor | None = None
    noise_t: Tensor | None = None
    options: dict = field(default_factory=dict)

    def _small(self) -> list[Tensor]:
        return [getattr(self, name) for name in SMALL_INPUTS]

    def tensors(self) -> list[Tensor]:
        return [*self.student_feats, *self.teacher_feats, *self._small()]

    def names(self) -> list[str]:
        feats = [f"student_feats[{i}]" for i in range(len(self.student_feats))]
        return [*feats, *(f"teacher_feats[{i}]" for i in range(len(self.teacher_feats))), *SMALL_INPUTS]

    def args(self) -> tuple:
        """The positional arguments of :func:`ukd.functional.ukd_loss`."""
        return (self.student_feats, self.teacher_feats, *self._small())

    def kwargs(self) -> dict:
        return {"noise_s": self.noise_s, "noise_t": self.noise_t, **self.options}

    def cast(self, dtype: torch.dtype, feats_only: bool = False) -> Case:
        """A detached copy with floating tensors in ``dtype`` (features only, if asked), layouts kept."""

        def conv(t: Tensor | None, feat: bool) -> Tensor | None:
            if t is None or (feats_only and not feat):
                return None if t is None else t.detach().clone()
            fmt = torch.channels_last if _is_channels_last(t) else torch.contiguous_format
            return t.detach().to(dtype).contiguous(memory_format=fmt) if t.dim() == 4 else t.detach().to(dtype)

        return Case(
            [conv(f, True) for f in self.student_feats],
            [conv(f, True) for f in self.teacher_feats],
            *(
                conv(t, False)
                for t in (
                    self.student_logits,
                    self.teacher_logits,
                    self.student_weight,
                    self.student_bias,
                    self.teacher_weight,
                    self.teacher_bias,
                    self.noise_s,
                    self.noise_t,
                )
            ),
            options=dict(self.options),
        )

    def compute_dtype(self) -> torch.dtype:
        """float64 when any input is float64, else float32 (what the op computes in)."""
        noise = [n for n in (self.noise_s, self.noise_t) if n is not None]
        return torch.float64 if any(t.dtype == torch.float64 for t in [*self.tensors(), *noise]) else torch.float32

    def exact(self) -> Case:
        """The same values in float64, detached, with the same ``requires_grad`` pattern (the oracle's inputs)."""
        up = self.cast(torch.float64)
        for mine, theirs in zip(self.tensors(), up.tensors()):
            theirs.requires_grad_(mine.requires_grad)
        return up

    def requires_grad_(self) -> Case:
        for t in self.tensors():
            t.requires_grad_(True)
        return self


def _is_channels_last(t: Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def make_case(
    batch: int,
    k: int,
    student: Sequence[Stage],
    teacher: Sequence[Stage],
    *,
    dtype: torch.dtype = torch.float64,
    channels_last: bool = False,
    noise: bool = True,
    seed: int = 0,
    logit_scale: float = 3.0,
    logvar_spread: float = 1.0,
    device: str | torch.device = "cpu",
    **options,
) -> Case:
    """Random inputs: stages given as ``(C, H, W)`` or ``(C,)``; heads scaled so μ has unit-order spread.

    ``logvar_spread`` scales the log-variance bias, so values past ``logvar_bound`` exercise the clamp.
    Extra keyword arguments (temperature, weights, logvar_bound) go to ``ukd_loss``.
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)

    def feats(stages: Sequence[Stage]) -> list[Tensor]:
        out = []
        for st in stages:
            f = randn(batch, *st) + 0.5
            if channels_last and f.dim() == 4:
                f = f.contiguous(memory_format=torch.channels_last)
            out.append(f)
        return out

    c_s, c_t = sum(st[0] for st in student), sum(st[0] for st in teacher)

    def head(c: int) -> tuple[Tensor, Tensor]:
        w = randn(2 * k, c) * (2.0 / c**0.5)
        b = torch.cat([randn(k), randn(k) * logvar_spread * 4.0])
        return w, b

    w_s, b_s = head(c_s)
    w_t, b_t = head(c_t)
    return Case(
        feats(student),
        feats(teacher),
        randn(batch, k) * logit_scale,
        randn(batch, k) * logit_scale,
        w_s,
        b_s,
        w_t,
        b_t,
        randn(batch, k) if noise else None,
        randn(batch, k) if noise else None,
        options=options,
    )


def bench_case(name: str, *, batch: int | None = None, dtype: torch.dtype = torch.float32, seed: int = 0) -> Case:
    """A :data:`BENCH_SHAPES` case in ``dtype`` with every tensor requiring grad but the teacher's features."""
    shape = BENCH_SHAPES[name]
    case = make_case(batch or shape["batch"], shape["k"], shape["student"], shape["teacher"], dtype=dtype, seed=seed)
    for t in [
        *case.student_feats,
        case.student_logits,
        case.student_weight,
        case.student_bias,
        case.teacher_weight,
        case.teacher_bias,
    ]:
        t.requires_grad_(True)
    return case


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The fused backends that can run on ``device`` here (never "reference")."""
    device = torch.device(device)
    out = []
    for name in backends.FUSED:
        try:
            backends.resolve(name, device)
        except backends.BackendUnavailableError:
            continue
        out.append(name)
    return out


def run_loss(case: Case, backend: str, **overrides) -> tuple[Tensor, dict[str, Tensor], list[Tensor | None]]:
    """Loss, components and the gradient of every input of ``case`` that requires grad (else None)."""
    kwargs = {**case.kwargs(), **overrides}
    loss, components = ukd_loss(*case.args(), backend=backend, return_components=True, **kwargs)
    wrt = [t for t in case.tensors() if t.requires_grad]
    grads = list(torch.autograd.grad(loss, wrt, allow_unused=True)) if wrt else []
    it = iter(grads)
    return loss, components, [next(it) if t.requires_grad else None for t in case.tensors()]


def rel_err(actual: Tensor, expected: Tensor) -> float:
    """``max|a − e| / max|e|`` in float64 (absolute when ``e`` is all zeros)."""
    a, e = actual.detach().double(), expected.detach().double()
    scale = e.abs().max().item() if e.numel() else 0.0
    diff = (a - e).abs().max().item() if e.numel() else 0.0
    return diff / scale if scale > 0 else diff


def module_reference(crit, student_feats, teacher_feats, student_logits, teacher_logits, noise_s=None, noise_t=None):
    """The reference loss of a :class:`ukd.UnifiedDistillLoss` (its fusion, heads and options) on given inputs."""
    from ukd.op import reference

    if crit.fusion is not None:
        student_feats = [crit.fusion(student_feats, teacher_feats[0].shape[-2:])]
    heads = (*crit.student_head.parameters(), *crit.teacher_head.parameters())
    opts = {name: getattr(crit.options, name) for name in OPTION_NAMES}
    return reference.unified_loss(
        student_feats, teacher_feats, student_logits, teacher_logits, *heads, noise_s=noise_s, noise_t=noise_t, **opts
    )


# ------------------------------------------------------------------------------ baselines for benchmarks
def reference_loss(case: Case) -> Tensor:
    """Eager PyTorch: what a user writes without ukd's kernels."""
    return ukd_loss(*case.args(), backend="reference", check_finite=False, **case.kwargs())


_compiled: dict = {}


def compiled_reference_loss(case: Case) -> Tensor:
    """``torch.compile`` of the reference as ``ukd_loss(backend="reference")`` runs it: features cast to the compute
    dtype (the logits') first, a no-op for float32 features (compiled once per process)."""
    from ukd.op import reference

    if "fn" not in _compiled:

        def loss(feats_s, feats_t, logits_s, *rest, **kwargs):
            compute = logits_s.dtype
            cast_s, cast_t = [f.to(compute) for f in feats_s], [f.to(compute) for f in feats_t]
            return reference.unified_loss(cast_s, cast_t, logits_s, *rest, **kwargs)[0]

        _compiled["fn"] = torch.compile(loss)
    opts = {k: v for k, v in case.options.items() if k in OPTION_NAMES}
    return _compiled["fn"](*case.args(), noise_s=case.noise_s, noise_t=case.noise_t, **opts)


def fused_loss(case: Case, backend: str) -> Tensor:
    return ukd_loss(*case.args(), backend=backend, **case.kwargs())
