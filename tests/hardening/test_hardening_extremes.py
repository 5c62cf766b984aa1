"""Numerical extremes: a finite result matching the float64 reference, or a clear ``FloatingPointError`` where the
true result does not fit the compute dtype (SPEC §2: a non-finite input or result is a clear error, never a silent
NaN). Every case states the outcome it expects from each backend; docs/reliability.md tabulates them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest
import torch
from hardening_support import assert_matches, run_triton_here, tally
from torch import Tensor

from ukd.testing import Case, available_backends, make_case, run_loss

BACKENDS = ["reference", *available_backends("cpu")]  # "triton" is listed when its interpreter is on here
CPU_SIDE = [b for b in BACKENDS if b != "triton"]

OVERFLOW = r"every input is finite but the loss or its gradient overflowed"
REFERENCE_NONFINITE = r"every input is finite but the loss is (nan|inf)"


@dataclass(frozen=True)
class Extreme:
    """One extreme input. ``expect`` maps a backend to "match" or the regex of its ``FloatingPointError``."""

    name: str
    make: Callable[[], Case]
    expect: dict[str, str] = field(default_factory=dict)
    slow_on: tuple[str, ...] = ()  # backends for which the case is @slow (the Triton interpreter at K = 32000)

    def outcome(self, backend: str) -> str:
        return self.expect.get(backend, "match")


def base(
    batch: int = 3,
    k: int = 50,
    *,
    dtype: torch.dtype = torch.float32,
    feat_dtype: torch.dtype | None = None,
    noise: bool = True,
    seed: int = 0,
    **options,
) -> Case:
    """A random case: features in ``feat_dtype`` (default ``dtype``), everything else in ``dtype``, each rounded
    once from the float64 draw."""
    case = make_case(batch, k, [(5, 3, 3), (4,)], [(6, 2, 2)], channels_last=True, noise=noise, seed=seed, **options)
    feats = case.cast(feat_dtype or dtype, feats_only=True)
    return replace(case.cast(dtype), student_feats=feats.student_feats, teacher_feats=feats.teacher_feats)


def with_logits(case: Case, peak: float) -> Case:
    """Logits rescaled so that their largest magnitude is ``peak`` (both signs present)."""
    for t in (case.student_logits, case.teacher_logits):
        t.mul_(peak / t.abs().max())
    return case


def with_feats(case: Case, peak: float) -> Case:
    """Features rescaled (in float64, then rounded to their dtype) so that their largest magnitude is ``peak``."""

    def scale(feats: list[Tensor]) -> list[Tensor]:
        out = []
        for f in feats:
            fmt = torch.channels_last if f.dim() == 4 and not f.is_contiguous() else torch.contiguous_format
            g = f.double() * (peak / f.double().abs().max())
            out.append(g.to(f.dtype).contiguous(memory_format=fmt) if f.dim() == 4 else g.to(f.dtype))
        return out

    case.student_feats, case.teacher_feats = scale(case.student_feats), scale(case.teacher_feats)
    return case


def with_raw_logvar(case: Case, student: Tensor | float, teacher: Tensor | float) -> Case:
    """Raw log-variances r = b (the head's ℓ rows zeroed): any value, far past the bound if asked."""
    k = case.student_logits.shape[1]
    heads = ((case.student_weight, case.student_bias, student), (case.teacher_weight, case.teacher_bias, teacher))
    for w, b, value in heads:
        w[k:] = 0.0
        b[k:] = value
    return case


def alternating(k: int, value: float) -> Tensor:
    return torch.tensor([value if i % 2 else -value for i in range(k)], dtype=torch.float64)


EXTREMES: list[Extreme] = []
for dtype, tag in ((torch.float32, "f32"), (torch.float64, "f64")):
    EXTREMES += [
        Extreme(f"logits ±1e4 T=4 {tag}", lambda d=dtype: with_logits(base(dtype=d, gauss_weight=0.5), 1e4)),
        Extreme(
            f"logits ±1e4 T=0.05 {tag}",
            lambda d=dtype: with_logits(base(dtype=d, temperature=0.05, gauss_weight=0.5), 1e4),
        ),
        Extreme(f"logits ±1e4 T=100 {tag}", lambda d=dtype: with_logits(base(dtype=d, temperature=100.0), 1e4)),
        Extreme(f"T=0.05 {tag}", lambda d=dtype: base(dtype=d, temperature=0.05, gauss_weight=0.5)),
        Extreme(f"T=100 {tag}", lambda d=dtype: base(dtype=d, temperature=100.0, gauss_weight=0.5)),
        Extreme(
            f"raw log-variance ±1e4 {tag}",
            lambda d=dtype: with_raw_logvar(
                base(dtype=d, gauss_weight=1.0), alternating(50, 1e4), -alternating(50, 1e4)
            ),
        ),
        # ℓ = ±80: the (unused) Gaussian term e^{ℓ_t − ℓ_s} ~ e^{160} overflows float32; weight 0 keeps it out
        Extreme(
            f"raw log-variance ±1e4, bound 80, gauss off {tag}",
            lambda d=dtype: with_raw_logvar(
                base(dtype=d, logvar_bound=80.0), alternating(50, 1e4), -alternating(50, 1e4)
            ),
            expect={"reference": REFERENCE_NONFINITE} if dtype == torch.float32 else {},
        ),
        Extreme(f"K=2 B=1 {tag}", lambda d=dtype: base(1, 2, dtype=d, gauss_weight=0.5)),
        Extreme(
            f"K=2 B=1, logits ±1e4, T=0.05 {tag}",
            lambda d=dtype: with_logits(base(1, 2, dtype=d, temperature=0.05, gauss_weight=0.5), 1e4),
        ),
        Extreme(f"K=32000 B=1 {tag}", lambda d=dtype: base(1, 32000, dtype=d, gauss_weight=0.5), slow_on=("triton",)),
    ]
EXTREMES += [
    # ℓ_t = +80, ℓ_s = −80: the Gaussian KL is e^{160}/2 ≈ 1e69, which float32 cannot hold.
    Extreme(
        "bound 80, ℓ_t − ℓ_s = 160, gauss on f32",
        lambda: with_raw_logvar(base(gauss_weight=1.0, logvar_bound=80.0), -1e4, 1e4),
        expect={b: OVERFLOW for b in ("cpu", "triton")} | {"reference": REFERENCE_NONFINITE},
    ),
    Extreme(
        "bound 80, ℓ_t − ℓ_s = 160, gauss on f64",
        lambda: with_raw_logvar(base(dtype=torch.float64, gauss_weight=1.0, logvar_bound=80.0), -1e4, 1e4),
    ),
    # Features ~1e30: μ ~ 1e30 and (μ_t − μ_s)² ~ 1e60 overflows float32 in the Gaussian term only. With its
    # weight 0 (the default) the loss is finite; SPEC's formula, evaluated as written in float32, is 0·inf = NaN.
    Extreme(
        "features ~1e30, default weights f32",
        lambda: with_feats(base(), 1e30),
        expect={"reference": REFERENCE_NONFINITE},
    ),
    Extreme(
        "features ~1e30, gauss on f32",
        lambda: with_feats(base(gauss_weight=0.5), 1e30),
        expect={b: OVERFLOW for b in ("cpu", "triton")} | {"reference": REFERENCE_NONFINITE},
    ),
    Extreme("features ~1e30, gauss on f64", lambda: with_feats(base(dtype=torch.float64, gauss_weight=0.5), 1e30)),
    Extreme(
        "bfloat16 features ~1e30, default weights",
        lambda: with_feats(base(feat_dtype=torch.bfloat16), 1e30),
        expect={"reference": REFERENCE_NONFINITE},
    ),
    # float16 features at its largest finite values (max 65504): pooled and accumulated in float32.
    Extreme("float16 features ~6e4, default weights", lambda: with_feats(base(feat_dtype=torch.float16), 6.0e4)),
    # With the Gaussian term on, d loss / d feature exceeds 65504: it comes back ±inf, the value rounded to
    # float16, as autograd's own cast gives it (no error: GradScaler relies on seeing it).
    Extreme(
        "float16 features ~6e4, gauss on", lambda: with_feats(base(feat_dtype=torch.float16, gauss_weight=0.5), 6.0e4)
    ),
    Extreme(
        "float16 features ~6e4, float64 heads",
        lambda: with_feats(base(dtype=torch.float64, feat_dtype=torch.float16, gauss_weight=0.5), 6.0e4),
    ),
]


def check(extreme: Extreme, backend: str) -> None:
    case = extreme.make().requires_grad_()
    outcome = extreme.outcome(backend)
    if outcome != "match":
        with pytest.raises(FloatingPointError, match=outcome) as info:
            run_loss(case, backend)
        assert str(info.value)  # a message, not a bare exception
        tally(f"extreme inputs x backend: clear FloatingPointError ({backend})")
        return
    got = run_loss(case, backend)
    assert math.isfinite(got[0].item()), f"{extreme.name} [{backend}]: loss {got[0].item()}"
    want = run_loss(case.exact(), "reference")
    assert_matches(got, want, case, what=f"{extreme.name} [{backend}]")
    tally(f"extreme inputs x backend: finite and matching float64 ({backend})")


def _params(backends: list[str]) -> list:
    return [
        pytest.param(e, b, id=f"{e.name}-{b}", marks=[pytest.mark.slow] if b in e.slow_on else [])
        for e in EXTREMES
        for b in backends
    ]


@pytest.mark.parametrize(("extreme", "backend"), _params(CPU_SIDE))
def test_extreme(extreme: Extreme, backend: str) -> None:
    check(extreme, backend)


def test_extremes_on_triton(request: pytest.FixtureRequest) -> None:
    """Every extreme but K = 32000 on the interpreted Triton kernels (that one is ``test_triton_k32000``, slow)."""
    if not run_triton_here(request):
        return
    for extreme in EXTREMES:
        if "triton" not in extreme.slow_on:
            check(extreme, "triton")


@pytest.mark.slow
@pytest.mark.parametrize("tag", ["f32", "f64"])
def test_triton_k32000(request: pytest.FixtureRequest, tag: str) -> None:
    if run_triton_here(request):
        check(next(e for e in EXTREMES if e.name == f"K=32000 B=1 {tag}"), "triton")


# ----------------------------------------------------------------------------------------- the clamp
@pytest.mark.parametrize("backend", CPU_SIDE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clamp_bound_is_exact_and_inclusive(backend: str, dtype: torch.dtype) -> None:
    """ℓ = clamp(r, −L, L): r at ±L gets gradient, r past it gets exactly none (torch.clamp), with the Gaussian term
    and the noise on; raw values of ±1e4 give exactly the loss of ±L."""
    k, bound = 8, 10.0
    raw = torch.tensor([bound, -bound, bound + 1e-3, -bound - 1e-3, 1e4, -1e4, 0.5, -3.0], dtype=torch.float64)
    case = with_raw_logvar(base(2, k, dtype=dtype, gauss_weight=1.0), raw, raw.flip(0)).requires_grad_()
    loss, _, grads = run_loss(case, backend)
    grad_bias_s, grad_bias_t = grads[-3], grads[-1]
    outside = torch.tensor([False, False, True, True, True, True, False, False])
    assert (grad_bias_s[k:][outside] == 0).all() and (grad_bias_s[k:][~outside] != 0).all()
    assert (grad_bias_t[k:][outside.flip(0)] == 0).all() and (grad_bias_t[k:][~outside.flip(0)] != 0).all()
    clamped = with_raw_logvar(
        base(2, k, dtype=dtype, gauss_weight=1.0), raw.clamp(-bound, bound), raw.flip(0).clamp(-bound, bound)
    )
    assert torch.equal(run_loss(clamped, backend)[0].detach(), loss.detach())
    tally("extreme inputs x backend: clamp bound exact and inclusive", 1)


def test_logvar_bound_range_is_validated() -> None:
    """L must be in (0, 80]: past 80, e^{±ℓ} itself no longer fits comfortably in float32."""
    case = base()
    for bad in (0.0, -1.0, 80.5, math.inf, math.nan):
        with pytest.raises(ValueError, match=re.escape("logvar_bound: expected a number in (0, 80]")):
            run_loss(case, "reference", logvar_bound=bad)
    run_loss(case, "reference", logvar_bound=80.0)
