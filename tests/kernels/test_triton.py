"""The Triton backend (``ukd_kernels.unified_loss``) against the float64 reference, on CPU tensors.

``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` before anything imports Triton, so the kernels run under the
interpreter in this process. Cases come from :func:`ukd.testing.make_case`; per-stage layouts or dtypes are made by
converting a case's tensors. The oracle is :func:`ukd.op.reference.unified_loss` in float64 under autograd.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from torch import Tensor
from triton.runtime.interpreter import InterpretedFunction

from ukd.op import reference
from ukd.op.options import ForwardOutputs, Head, HeadGrads, LossOptions, Network
from ukd.testing import OPTION_NAMES, Case, make_case, rel_err, run_loss
from ukd_kernels import head, head_backward, pool
from ukd_kernels import unified_loss as U

OPTIONS = {"temperature": 4.0, "dist_weight": 1.0, "gauss_weight": 0.25, "supp_weight": 0.7, "logit_weight": 1.3}
STAGES_S = [(5, 4, 3), (7, 2, 2), (3, 1, 1)]
STAGES_T = [(6, 3, 3), (9,)]
CL_S = (1,)  # student stage 1 channels_last, the others NCHW (mixed layouts in one launch)


# ------------------------------------------------------------------------------------------------ helpers
def channels_last(feats: list[Tensor], stages: tuple[int, ...]) -> list[Tensor]:
    """The same features with the stages listed converted to channels_last."""
    return [f.contiguous(memory_format=torch.channels_last) if i in stages else f for i, f in enumerate(feats)]


def case_of(batch: int, k: int, student=STAGES_S, teacher=STAGES_T, cl_s=CL_S, **kwargs) -> Case:
    """``make_case`` in float32 with :data:`OPTIONS`, student stages ``cl_s`` converted to channels_last."""
    kwargs = {"dtype": torch.float32, **OPTIONS, **kwargs}
    case = make_case(batch, k, student, teacher, **kwargs)
    case.student_feats = channels_last(case.student_feats, cl_s)
    return case


def loss_kwargs(case: Case) -> dict:
    return {name: value for name, value in case.options.items() if name in OPTION_NAMES}


def networks(case: Case) -> tuple[Network, Network]:
    return (
        Network(case.student_feats, case.student_logits, Head(case.student_weight, case.student_bias), case.noise_s),
        Network(case.teacher_feats, case.teacher_logits, Head(case.teacher_weight, case.teacher_bias), case.noise_t),
    )


def oracle(case: Case) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Reference loss, components and gradients in float64 (autograd), the gradients in ``case.tensors()`` order
    with every feature gradient summed over H·W: the pooled gradient ``dp`` of that stage's columns."""
    exact = case.exact()
    leaves = [t.requires_grad_() for t in exact.tensors()]
    loss, comps = reference.unified_loss(
        *exact.args(), noise_s=exact.noise_s, noise_t=exact.noise_t, **loss_kwargs(case)
    )
    grads = list(torch.autograd.grad(loss, leaves))
    n_feats = len(case.student_feats) + len(case.teacher_feats)
    grads[:n_feats] = [g.sum(dim=(2, 3)) if g.dim() == 4 else g for g in grads[:n_feats]]
    return loss.detach(), torch.stack([comps[n] for n in ("dist", "gauss", "supp", "logit")]).detach(), grads


def run_kernels(case: Case, grad_loss: float = 1.0) -> tuple[ForwardOutputs, HeadGrads, HeadGrads, list[Tensor]]:
    """``U.forward`` then ``U.backward`` per network, every gradient requested; the gradients also as a list in
    ``case.tensors()`` order (a feature's entry: its columns of dp)."""
    student, teacher = networks(case)
    out = U.forward(student, teacher, LossOptions(**case.options), True)
    g = torch.tensor(grad_loss, dtype=case.student_logits.dtype)
    gs = U.backward(g, out.student, case.student_weight, True)
    gt = U.backward(g, out.teacher, case.teacher_weight, True)
    split_s = gs.pooled.split([f.shape[1] for f in case.student_feats], dim=1)
    split_t = gt.pooled.split([f.shape[1] for f in case.teacher_feats], dim=1)
    flat = [*split_s, *split_t, gs.logits, gt.logits, gs.weight, gs.bias, gt.weight, gt.bias]
    return out, gs, gt, flat


def check_against_oracle(case: Case, tol: float) -> None:
    ref_loss, ref_comps, ref_grads = oracle(case)
    out, gs, gt, grads = run_kernels(case)
    dtype = case.student_logits.dtype
    assert out.loss.dtype == dtype and out.loss.shape == () and out.components.shape == (4,)
    assert rel_err(out.loss, ref_loss) <= tol, (out.loss.item(), ref_loss.item())
    assert rel_err(out.components, ref_comps) <= tol, (out.components, ref_comps)
    batch = case.student_logits.shape[0]
    assert gs.pooled.shape == (batch, sum(f.shape[1] for f in case.student_feats))
    assert gt.pooled.shape == (batch, sum(f.shape[1] for f in case.teacher_feats))
    for name, got, want in zip(case.names(), grads, ref_grads):
        assert got.dtype == dtype and got.shape == want.shape, name
        err = rel_err(got, want)
        assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e}"


def count_launches(kernel, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts ``kernel[grid](...)`` launches (each goes through ``kernel.run``); returns a 1-element counter."""
    counter = [0]
    run = kernel.run

    def counting_run(*args, **kwargs):
        counter[0] += 1
        return run(*args, **kwargs)

    monkeypatch.setattr(kernel, "run", counting_run)
    return counter


def test_kernels_run_interpreted_in_process() -> None:
    """conftest set TRITON_INTERPRET=1 before Triton was imported, so every kernel is an interpreted function."""
    assert os.environ.get("TRITON_INTERPRET") == "1"
    kernels = [pool._pool_fwd_kernel, head._head_fwd_kernel, head._row_stats_kernel, head._finalize_kernel]
    kernels += [head._head_grad_kernel, head_backward._head_wgrad_kernel, head_backward._head_pgrad_kernel]
    assert all(isinstance(k, InterpretedFunction) for k in kernels)


# ------------------------------------------------------------------------------------------------ pooling
# (stages, the stages converted to channels_last)
POOL_SPECS = {
    "nchw-odd": ([(5, 4, 3), (3, 5, 7)], ()),
    "channels_last": ([(7, 3, 3), (33, 2, 5)], (0, 1)),
    "hw1-and-pooled": ([(3, 1, 1), (5, 1, 1), (4,)], (1,)),
    "mixed-large-hw": ([(2, 20, 20), (3, 9, 9), (70,)], (1,)),
}


def pool_feats(layout: str, dtype: torch.dtype, seed: int) -> list[Tensor]:
    stages, cl = POOL_SPECS[layout]
    return channels_last(make_case(3, 2, stages, [(1,)], dtype=dtype, seed=seed).student_feats, cl)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layout", sorted(POOL_SPECS))
def test_pool_one_launch_matches_reference(layout: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    feats = pool_feats(layout, dtype, seed=1)
    launches = count_launches(pool._pool_fwd_kernel, monkeypatch)
    pooled = pool.pool(feats, compute)
    assert launches == [1]
    assert pooled.dtype == compute
    expected = reference.pool_stages([f.to(torch.float64) for f in feats])
    assert rel_err(pooled, expected) <= (1e-12 if compute == torch.float64 else 1e-6)


def test_pool_mixed_dtypes_one_launch_per_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    feats = make_case(2, 2, [(3, 4, 4), (5, 2, 2)], [(1,)], dtype=torch.float32, seed=4).student_feats
    feats[0] = feats[0].half()
    launches = count_launches(pool._pool_fwd_kernel, monkeypatch)
    pooled = pool.pool(feats, torch.float32)
    assert launches == [2]
    assert rel_err(pooled, reference.pool_stages([f.double() for f in feats])) <= 1e-6


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_pool_int64_offsets_past_2_31(layout: str, tmp_path: Path) -> None:
    """A batch stride of 2³¹+16 elements (a batch-strided view of a sparse, memory-mapped 4 GiB file): the second
    sample lives past element 2³¹, so 32-bit offsets would read the wrong memory."""
    n = 2**31 + 64
    path = tmp_path / "sparse.bin"
    with open(path, "wb") as fh:
        fh.truncate(n * 2)
    storage = torch.from_file(str(path), shared=True, size=n, dtype=torch.float16)
    strides = (2**31 + 16, 4, 2, 1) if layout == "nchw" else (2**31 + 16, 1, 6, 3)
    feat = torch.as_strided(storage, (2, 3, 2, 2), strides)
    feat.copy_(make_case(2, 2, [(3, 2, 2)], [(1,)], dtype=torch.float16, seed=5).student_feats[0])
    assert pool.is_nchw_branch(feat) is (layout == "nchw")  # used as is, not copied
    pooled = pool.pool([feat], torch.float32)
    assert rel_err(pooled, reference.pool_stages([feat.double()])) <= 1e-6
    del feat, storage


# ------------------------------------------------------------------------------------ forward / backward
@pytest.mark.parametrize("k", [2, 10, 100, 1000])
@pytest.mark.parametrize("noise", [True, False], ids=["noise", "means"])
def test_forward_backward_float32(k: int, noise: bool) -> None:
    check_against_oracle(case_of(3, k, noise=noise, seed=k), tol=1e-4)


def test_k_above_tiles_float32() -> None:
    assert 5000 > 4 * head.HEAD_FWD_CONFIGS["b16"].BLOCK_K * head.ROW_STATS_CONFIG["BLOCK_T"]
    check_against_oracle(case_of(2, 5000, [(3, 2, 2)], [(4,)], cl_s=(), seed=5), tol=1e-4)


@pytest.mark.parametrize("k", [10, 1000])
def test_forward_backward_float64(k: int) -> None:
    check_against_oracle(case_of(2, k, dtype=torch.float64, seed=6), tol=1e-10)


@pytest.mark.parametrize("batch", [1, 17], ids=["B1", "B17-two-row-tiles"])
def test_batch_edges(batch: int) -> None:
    check_against_oracle(case_of(batch, 37, seed=7), tol=1e-4)


@pytest.mark.parametrize("feat_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("noise", [True, False], ids=["noise", "means"])
def test_half_precision_features(feat_dtype: torch.dtype, noise: bool) -> None:
    case = case_of(3, 50, noise=noise, seed=8).cast(feat_dtype, feats_only=True)
    assert all(f.dtype == feat_dtype for f in case.student_feats) and case.student_logits.dtype == torch.float32
    assert case.student_feats[1].is_contiguous(memory_format=torch.channels_last)
    check_against_oracle(case, tol=1e-4)


def test_only_prepooled_inputs() -> None:
    check_against_oracle(case_of(4, 20, [(7,), (5,)], [(11,)], cl_s=(), seed=9), tol=1e-4)


def test_one_noise_missing() -> None:
    case = case_of(3, 30, seed=10)
    case.noise_t = None
    check_against_oracle(case, tol=1e-4)


def test_clamp_bounds_are_inclusive() -> None:
    """r exactly at ±L gets gradient, r beyond gets none (torch.clamp semantics), with the Gaussian term on."""
    case = case_of(2, 8, [(4,)], [(3,)], cl_s=(), dtype=torch.float64, logvar_bound=10.0, seed=11)
    bound = case.options["logvar_bound"]
    for h in (0, 1):
        weight, bias = (case.student_weight, case.student_bias) if h == 0 else (case.teacher_weight, case.teacher_bias)
        weight[8:] = 0.0
        bias[8:] = torch.tensor([bound, -bound, bound + 0.5, -bound - 0.5, 0.1, -0.3, bound - 1e-3, 2.0])
    check_against_oracle(case, tol=1e-10)
    out, _, _, _ = run_kernels(case)
    for saved in (out.student, out.teacher):
        grad_r = saved.grad_y[:, 8:]
        assert (grad_r[:, 2:4] == 0).all()
        assert (grad_r[:, :2] != 0).all()


@pytest.mark.parametrize(("dtype", "scale", "tol"), [(torch.float32, 300, 1e-3), (torch.float64, 1000, 1e-9)])
def test_large_logits_are_stable(dtype: torch.dtype, scale: float, tol: float) -> None:
    """Logits/T up to ~±250 (float32) or ~±1000 (float64): exp overflows either without the max subtraction of
    the online LSE. The teacher-logit gradient is tiny here (~1e-8, or ~1e-300): its p·(log p_a − log p_c − KL_row)
    cancels below the dtype's resolution (the float32 reference is off by 100% too), so gradients are compared
    with an absolute floor of 1 on the scale."""
    case = case_of(2, 300, [(4,)], [(3,)], cl_s=(), dtype=dtype, logit_scale=3.0 * scale, seed=12)
    ref_loss, ref_comps, ref_grads = oracle(case)
    out, _, _, grads = run_kernels(case)
    assert rel_err(out.loss, ref_loss) <= tol and rel_err(out.components, ref_comps) <= tol
    for name, got, want in zip(case.names(), grads, ref_grads):
        assert torch.isfinite(got).all(), name
        assert (got.double() - want).abs().max().item() <= tol * max(want.abs().max().item(), 1.0), name


def test_deterministic_and_no_grad_outputs() -> None:
    case = case_of(5, 130, seed=13)
    first, _, _, grads_1 = run_kernels(case)
    second, _, _, grads_2 = run_kernels(case)
    for a, b in zip(
        [first.loss, first.components, *first.student, *first.teacher, *grads_1],
        [second.loss, second.components, *second.student, *second.teacher, *grads_2],
    ):
        assert torch.equal(a, b)
    out = U.forward(*networks(case), LossOptions(**case.options), False)
    assert torch.equal(out.loss, first.loss) and torch.equal(out.components, first.components)
    empties = [*out.student, *out.teacher]
    assert all(t.numel() == 0 for t in empties)
    everything = [out.loss, out.components, *empties]
    assert len({id(t) for t in everything}) == len(everything), "no output may be another output"
    storages = [t.untyped_storage().data_ptr() for t in everything if t.numel()]
    assert len(set(storages)) == len(storages)
    full = [first.loss, first.components, *first.student, *first.teacher]
    assert len({t.untyped_storage().data_ptr() for t in full}) == len(full), "no output may alias another"


def test_grad_loss_scales_everything() -> None:
    case = case_of(2, 12, seed=14)
    _, _, _, ones = run_kernels(case, grad_loss=1.0)
    _, _, _, scaled = run_kernels(case, grad_loss=-2.5)
    for a, b in zip(ones, scaled):
        assert rel_err(b, -2.5 * a.double()) <= 1e-6


def test_pooled_gradient_only_when_asked() -> None:
    case = case_of(2, 12, seed=15)
    out = U.forward(*networks(case), LossOptions(**case.options), True)
    g = torch.tensor(1.0)
    without = U.backward(g, out.teacher, case.teacher_weight, False)
    with_dp = U.backward(g, out.teacher, case.teacher_weight, True)
    assert without.pooled is None and with_dp.pooled is not None
    for a, b in zip(without[1:], with_dp[1:]):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------- weight 0, 1e30
# the switched-off or overflowing intermediate values are expected: numpy warns about them under the interpreter
overflow_expected = pytest.mark.filterwarnings(
    "ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning"
)


def finite_or_raises(loss: Tensor, grads: list[Tensor]) -> bool:
    return math.isfinite(loss.item()) and all(bool(torch.isfinite(g).all()) for g in grads)


@overflow_expected
@pytest.mark.parametrize("noise", [True, False], ids=["noise", "means"])
def test_weight_zero_switches_an_overflowing_term_off(noise: bool) -> None:
    """Features ~1e18 in float32: the Gaussian term's (μ_t − μ_s)²·e^{−ℓ_s} overflows to inf. With its weight 0
    the loss is the finite sum of the other terms and every gradient is exact (no 0·inf = NaN)."""
    case = case_of(3, 70, gauss_weight=0.0, noise=noise, seed=16, dtype=torch.float64)
    for f in (*case.student_feats, *case.teacher_feats):
        f.mul_(1e18)
    case = case.cast(torch.float32)  # layouts kept
    ref_loss, ref_comps, ref_grads = oracle(case)
    out, _, _, grads = run_kernels(case)
    assert math.isinf(out.components[1].item()), "the switched-off term does overflow in float32"
    others = torch.stack([out.components[i] for i in (0, 2, 3)])
    weights = torch.tensor([case.options[n] for n in ("dist_weight", "supp_weight", "logit_weight")])
    assert out.loss.item() == pytest.approx((weights * others).sum().item(), rel=1e-6)
    assert rel_err(out.loss, ref_loss) <= 1e-5
    assert rel_err(others, ref_comps[[0, 2, 3]]) <= 1e-5
    for name, got, want in zip(case.names(), grads, ref_grads):
        assert torch.isfinite(got).all(), name
        assert rel_err(got, want) <= 1e-4, f"{name}: {rel_err(got, want):.2e}"


@pytest.mark.parametrize("k", [10, 300], ids=["one-tile", "five-tiles"])
@overflow_expected
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_features_1e30_match_float64_or_are_non_finite(dtype: torch.dtype, k: int) -> None:
    """Features ~1e30 (Gaussian term off): the softmaxes of z ~1e29 are one-hot and the KL rows ~1e29. A finite
    result must match the float64 reference; a non-finite one makes the caller raise. A finite but wrong gradient
    (the teacher bias' O(1) gradient once came out ~5e22, from cancelling separately rounded ~1e29 log-sum-exps)
    is the failure this guards against."""
    case = case_of(3, k, gauss_weight=0.0, seed=17, dtype=torch.float64)
    for f in (*case.student_feats, *case.teacher_feats):
        f.mul_(1e30)
    case = case.cast(dtype)  # layouts kept
    ref_loss, ref_comps, ref_grads = oracle(case)
    out, _, _, grads = run_kernels(case)
    if not finite_or_raises(out.loss, grads):
        pytest.fail("non-finite here would be acceptable to the op, but these kernels are expected to stay finite")
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert rel_err(out.loss, ref_loss) <= tol
    assert rel_err(out.components[[0, 2, 3]], ref_comps[[0, 2, 3]]) <= tol
    for name, got, want in zip(case.names(), grads, ref_grads):
        err = rel_err(got, want)
        assert err <= tol, f"{name}: relative error {err:.2e} (max |ref| {want.abs().max().item():.3g})"


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("k", [10, 1000])
def test_ukd_loss_triton_matches_reference(k: int) -> None:
    """Through ``ukd.functional.ukd_loss`` (the autograd op, broadcast feature gradients), a bf16 teacher stage."""
    case = case_of(3, k, seed=18)
    case.teacher_feats[0] = case.teacher_feats[0].to(torch.bfloat16)
    ref_loss, ref_comps, ref_grads = run_loss(case.exact().requires_grad_(), "reference")
    loss, comps, grads = run_loss(case.requires_grad_(), "triton")
    assert rel_err(loss, ref_loss) <= 1e-4
    for name in ref_comps:
        assert rel_err(comps[name], ref_comps[name]) <= 1e-4, name
    for name, tensor, got, want in zip(case.names(), case.tensors(), grads, ref_grads):
        assert got is not None and got.dtype == tensor.dtype and got.shape == want.shape, name
        limit = 1.6e-2 if got.dtype in (torch.float16, torch.bfloat16) else 1e-4
        assert rel_err(got, want) <= limit, (name, rel_err(got, want))


# ---------------------------------------------------------------------------------------- configuration
def test_every_launcher_choice_is_a_listed_config() -> None:
    """aot_report compiles the configuration tables; the heuristics must never pick anything else."""
    shapes = [
        ([(64, 32, 32)], ()),
        ([(512, 7, 7)], ()),
        ([(3, 1, 1)], ()),
        ([(8,)], ()),
        ([(16, 5, 5)], (0,)),
        ([(4, 100, 100), (2, 3, 3)], (0,)),
    ]
    for stages, cl in shapes:
        feats = channels_last(make_case(1, 2, stages, [(1,)], dtype=torch.float32).student_feats, cl)
        assert pool.pool_config(feats) in pool.POOL_CONFIGS
    for batch in (1, 16, 17, 4096):
        assert head.head_config(batch) in head.HEAD_FWD_CONFIGS
