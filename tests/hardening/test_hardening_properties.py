"""Property-based: every fused backend that runs here agrees with the float64 reference, value and gradients.

Hypothesis draws the shapes (B 1–9, K 2–300, 1–4 stages per network, C 1–40, H·W from 1×1 to 7×7 or pre-pooled
``(B, C)``), each stage's memory format (NCHW, channels_last, or a non-contiguous strided view) and dtype,
the compute dtype of the small tensors, the temperature, the four weights, the log-variance bound and spread
(raw log-variances past the bound), the logit scale, noise on either side, and a frozen or trainable teacher.
The tensors' values come from a drawn seed. The oracle is ``backend="reference"`` on the same values in float64.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import torch
from hardening_support import assert_matches, run_triton_here, tally
from hypothesis import given, note, settings
from hypothesis import strategies as st
from torch import Tensor

from ukd.testing import Case, available_backends, make_case, run_loss

CPU_BACKENDS = [b for b in available_backends("cpu") if b != "triton"]
TRITON_EXAMPLES = max(6, settings().max_examples // 5)  # the interpreter is slow: 6 in the ci profile, 100 in long

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
FEATURE_FAMILIES = {  # the feature dtypes a case may use; "mixed" draws one per stage
    "float64": ["float64"],
    "float32": ["float32"],
    "half": ["bfloat16", "float16"],
    "mixed": list(DTYPES),
}


@dataclass(frozen=True)
class StageSpec:
    channels: int
    hw: tuple[int, int] | None  # None: pre-pooled (B, C)
    layout: str  # "nchw" | "channels_last" | "strided" for maps; "contiguous" | "strided" for (B, C)
    dtype: str


@st.composite
def stage_specs(draw: st.DrawFn, dtypes: list[str]) -> StageSpec:
    channels = draw(st.integers(1, 40))
    dtype = draw(st.sampled_from(dtypes))
    if draw(st.integers(0, 4)) == 0:  # one stage in five is pre-pooled
        return StageSpec(channels, None, draw(st.sampled_from(["contiguous", "strided"])), dtype)
    hw = (draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    return StageSpec(channels, hw, draw(st.sampled_from(["nchw", "channels_last", "strided"])), dtype)


@dataclass(frozen=True)
class CaseSpec:
    batch: int
    k: int
    student: list[StageSpec]
    teacher: list[StageSpec]
    compute: str  # dtype of logits, heads and noise
    noise_s: bool
    noise_t: bool
    frozen_teacher: bool
    logit_scale: float
    logvar_spread: float
    seed: int
    options: dict


weights = st.one_of(st.just(0.0), st.floats(0.05, 3.0))


@st.composite
def case_specs(draw: st.DrawFn, family: str, max_k: int = 300) -> CaseSpec:
    dtypes = FEATURE_FAMILIES[family]
    compute = "float64" if family == "float64" else draw(st.sampled_from(["float32", "float64"]))
    if family == "float32":
        compute = "float32"
    options = {
        "temperature": draw(st.one_of(st.just(4.0), st.floats(0.25, 16.0))),
        "dist_weight": draw(weights),
        "gauss_weight": draw(weights),
        "supp_weight": draw(weights),
        "logit_weight": draw(weights),
        "logvar_bound": draw(st.one_of(st.just(10.0), st.floats(0.5, 20.0))),
    }
    return CaseSpec(
        batch=draw(st.integers(1, 9)),
        k=draw(st.one_of(st.integers(2, 16), st.integers(2, max_k))),
        student=draw(st.lists(stage_specs(dtypes), min_size=1, max_size=4)),
        teacher=draw(st.lists(stage_specs(dtypes), min_size=1, max_size=4)),
        compute=compute,
        noise_s=draw(st.booleans()),
        noise_t=draw(st.booleans()),
        frozen_teacher=draw(st.booleans()),
        logit_scale=draw(st.floats(0.1, 10.0)),
        logvar_spread=draw(st.floats(0.0, 3.0)),
        seed=draw(st.integers(0, 2**31 - 1)),
        options=options,
    )


def _layout(f: Tensor, spec: StageSpec) -> Tensor:
    """``f`` (float64) in the stage's dtype and memory format; the values are the same in every layout."""
    f = f.to(DTYPES[spec.dtype])
    if spec.layout == "channels_last":
        return f.contiguous(memory_format=torch.channels_last)
    if spec.layout == "strided":
        if f.dim() == 2:
            return f.t().contiguous().t()  # (B, C) with strides (1, B)
        wide = torch.zeros(*f.shape[:3], 2 * f.shape[3], dtype=f.dtype)
        wide[..., ::2] = f
        return wide[..., ::2]  # every other column: neither NCHW- nor channels_last-contiguous
    return f.contiguous()


def build(spec: CaseSpec) -> Case:
    """The drawn case: each stage in its own dtype and layout, everything else in the compute dtype (each rounded
    once from the float64 draw), the teacher's features and logits frozen if drawn so."""

    def shapes(stages: list[StageSpec]) -> list[tuple[int, ...]]:
        return [(s.channels,) if s.hw is None else (s.channels, *s.hw) for s in stages]

    drawn = make_case(
        spec.batch,
        spec.k,
        shapes(spec.student),
        shapes(spec.teacher),
        dtype=torch.float64,
        seed=spec.seed,
        logit_scale=spec.logit_scale,
        logvar_spread=spec.logvar_spread,
        **spec.options,
    )
    small = drawn.cast(DTYPES[spec.compute])
    case = replace(
        small,
        student_feats=[_layout(f, s) for f, s in zip(drawn.student_feats, spec.student)],
        teacher_feats=[_layout(f, s) for f, s in zip(drawn.teacher_feats, spec.teacher)],
        noise_s=small.noise_s if spec.noise_s else None,
        noise_t=small.noise_t if spec.noise_t else None,
    )
    frozen = {id(t) for t in [*case.teacher_feats, case.teacher_logits]} if spec.frozen_teacher else set()
    for t in case.tensors():
        t.requires_grad_(id(t) not in frozen)
    return case


def check_backend(spec: CaseSpec, backend: str, *, in_hypothesis: bool = True) -> None:
    if in_hypothesis:
        note(repr(spec))
    case = build(spec)
    want = run_loss(case.exact(), "reference")
    got = run_loss(case, backend)
    assert_matches(got, want, case, what=f"[{backend}]")
    tally(f"{'hypothesis' if in_hypothesis else 'regression'} examples: {backend} vs reference")


# ---------------------------------------------------------------------------------------------------- CPU
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("family", list(FEATURE_FAMILIES))
@given(data=st.data())
def test_cpu_backends_match_reference(backend: str, family: str, data: st.DataObject) -> None:
    check_backend(data.draw(case_specs(family), label="case"), backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(spec=case_specs("mixed"))
def test_module_path_matches_functional(backend: str, spec: CaseSpec) -> None:
    """``UnifiedDistillLoss`` in eval mode (z = μ) with the drawn heads equals ``ukd_loss`` on the same inputs."""
    from ukd import UnifiedDistillLoss

    case = build(spec)
    crit = UnifiedDistillLoss(
        [f.shape[1] for f in case.student_feats],
        [f.shape[1] for f in case.teacher_feats],
        spec.k,
        backend=backend,
        **spec.options,
    ).eval()
    crit = crit.to(case.student_weight.dtype)
    with torch.no_grad():
        for head, w, b in (
            (crit.student_head, case.student_weight, case.student_bias),
            (crit.teacher_head, case.teacher_weight, case.teacher_bias),
        ):
            head.weight.copy_(w)
            head.bias.copy_(b)
    loss = crit(*case.args()[:4])
    case.noise_s = case.noise_t = None
    expected_loss, _, expected_grads = run_loss(case, backend)
    assert torch.equal(loss.detach(), expected_loss.detach())
    grads = torch.autograd.grad(loss, [crit.student_head.weight, crit.teacher_head.bias])
    assert torch.equal(grads[0], expected_grads[-4]) and torch.equal(grads[1], expected_grads[-1])
    tally(f"hypothesis examples: {backend} module vs functional")


# ------------------------------------------------------------------------------------------------- Triton
@settings(max_examples=TRITON_EXAMPLES)
@given(spec=st.sampled_from(list(FEATURE_FAMILIES)).flatmap(case_specs))
def _triton_property(spec: CaseSpec) -> None:
    check_backend(spec, "triton")


def test_triton_matches_reference(request: pytest.FixtureRequest) -> None:
    """The same property for the Triton kernels under ``TRITON_INTERPRET=1`` (a fresh interpreter if Triton was
    imported here without it), with a small example budget."""
    if run_triton_here(request):
        _triton_property()


# ----------------------------------------------------------------------------------- found by hypothesis
def _pooled(dtype: str, *channels: int) -> list[StageSpec]:
    return [StageSpec(c, None, "contiguous", dtype) for c in channels]


_NO_WEIGHTS = {
    "temperature": 4.0,
    "dist_weight": 0.0,
    "gauss_weight": 0.0,
    "supp_weight": 0.0,
    "logit_weight": 0.0,
    "logvar_bound": 10.0,
}


def _found(
    k: int,
    student: list[StageSpec],
    teacher: list[StageSpec],
    compute: str,
    *,
    seed: int,
    noise_t: bool = False,
    logit_scale: float = 1.0,
    logvar_spread: float = 0.0,
    **options: float,
) -> CaseSpec:
    """A case hypothesis found: batch 1, no student noise, a trainable teacher, ``options`` over ``_NO_WEIGHTS``."""
    return CaseSpec(
        batch=1,
        k=k,
        student=student,
        teacher=teacher,
        compute=compute,
        noise_s=False,
        noise_t=noise_t,
        frozen_teacher=False,
        logit_scale=logit_scale,
        logvar_spread=logvar_spread,
        seed=seed,
        options={**_NO_WEIGHTS, **options},
    )


# Each of these failed a pure relative tolerance (on every backend, the float32 reference included): a KL between
# nearly equal or equally saturated softmaxes, or its gradient, is 1e-10..1e-14 while the rounding error of any
# implementation is eps times the log-probabilities it is computed from. They pass on the rounding floor.
FOUND = [
    _found(2, _pooled("float32", 1), _pooled("float32", 1), "float32", seed=0, logit_scale=0.125),
    _found(2, _pooled("float64", 1), _pooled("float64", 1, 1), "float64", seed=1, logit_scale=3.0, temperature=0.25),
    _found(2, _pooled("float64", 1), _pooled("float64", 1), "float64", seed=1, temperature=0.25, logit_weight=1.0),
    _found(
        6,
        _pooled("float32", 15),
        _pooled("float32", 1, 1),
        "float32",
        seed=0,
        noise_t=True,
        logvar_spread=2.0,
        dist_weight=1.0,
    ),
    _found(
        2,
        _pooled("float64", 1),
        _pooled("float64", 1, 1, 1),
        "float64",
        seed=0,
        noise_t=True,
        logit_scale=4.20442682948122,
        logvar_spread=2.6552157710815414,
        dist_weight=3.0,
    ),
    # float16 feature gradient of 196 582 (> 65504): ±inf, as the exact value rounds to float16
    _found(2, _pooled("float16", 2), _pooled("bfloat16", 1), "float32", seed=1, gauss_weight=1.0),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("spec", FOUND, ids=lambda s: f"B{s.batch}K{s.k}-{s.compute}-seed{s.seed}")
def test_found_examples(backend: str, spec: CaseSpec) -> None:
    check_backend(spec, backend, in_hypothesis=False)


def test_found_examples_on_triton(request: pytest.FixtureRequest) -> None:
    if run_triton_here(request):
        for spec in FOUND:
            check_backend(spec, "triton", in_hypothesis=False)
