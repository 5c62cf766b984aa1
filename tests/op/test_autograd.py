"""The one autograd path and the cases it must not get wrong: double backward, noise gradients, autocast, and
saving only what backward needs. The oracle is the float64 reference under plain autograd."""

from __future__ import annotations

import pytest
import torch

from ukd.functional import ukd_loss
from ukd.testing import available_backends, make_case, rel_err, run_loss

# every fused backend that runs on CPU tensors here (triton too, under the interpreter tests/conftest.py turns on)
FUSED = available_backends("cpu")
STUDENT, TEACHER = [(3, 4, 4), (5, 2, 2), (4,)], [(6, 2, 2)]


def _case(dtype=torch.float64, **options):
    # a small log-variance spread keeps the Gaussian term O(1), so finite differences are well conditioned
    return make_case(3, 7, STUDENT, TEACHER, dtype=dtype, gauss_weight=0.4, logvar_spread=0.25, **options)


@pytest.mark.parametrize("backend", FUSED)
def test_double_backward_raises_instead_of_a_wrong_number(backend):
    case = _case().requires_grad_()
    loss = ukd_loss(*case.args(), backend=backend, **case.kwargs())
    with pytest.raises(RuntimeError, match=rf"backend='{backend}' computes first derivatives only.*reference"):
        torch.autograd.grad(loss, case.student_feats, create_graph=True)


def test_double_backward_on_the_reference_matches_finite_differences():
    # d/dW_s of Σ (d loss / d F_s)²: central differences of the first derivative (itself exact autograd).
    case = _case().requires_grad_()

    def grad_norm(weight):
        loss = ukd_loss(*case.args()[:4], weight, *case.args()[5:], backend="reference", **case.kwargs())
        (g,) = torch.autograd.grad(loss, case.student_feats[0], create_graph=True)
        return (g**2).sum()

    (analytic,) = torch.autograd.grad(grad_norm(case.student_weight), case.student_weight)
    step, index = 1e-5, (3, 2)
    plus, minus = case.student_weight.detach().clone(), case.student_weight.detach().clone()
    plus[index] += step
    minus[index] -= step
    numeric = (grad_norm(plus) - grad_norm(minus)) / (2 * step)
    assert abs(analytic[index].item() - numeric.item()) <= 1e-7 * max(1.0, abs(numeric.item()))


@pytest.mark.parametrize("backend", FUSED)
def test_noise_that_requires_grad_is_refused_by_name(backend):
    case = _case()
    case.noise_s.requires_grad_(True)
    with pytest.raises(ValueError, match=r"noise_s: the fused backends treat the noise ε as a constant"):
        ukd_loss(*case.args(), backend=backend, **case.kwargs())
    with torch.no_grad():  # no gradient asked for: nothing to refuse
        ukd_loss(*case.args(), backend=backend, **case.kwargs())


def test_noise_gradient_on_the_reference_is_exact():
    case = _case()

    def loss_of(noise_s, noise_t):
        kwargs = {**case.kwargs(), "noise_s": noise_s, "noise_t": noise_t}
        return ukd_loss(*case.args(), backend="reference", **kwargs)

    inputs = (case.noise_s.clone().requires_grad_(), case.noise_t.clone().requires_grad_())
    assert torch.autograd.gradcheck(loss_of, inputs)


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["reference", *FUSED])
def test_autocast_computes_as_outside_it(backend, autocast_dtype):
    # The loss is made inside the autocast region and differentiated after it, as PyTorch's AMP recipe does.
    case = _case(dtype=torch.float32).requires_grad_()
    expected_loss = ukd_loss(*case.args(), backend=backend, **case.kwargs())
    expected = torch.autograd.grad(expected_loss, case.tensors())
    with torch.autocast("cpu", dtype=autocast_dtype):
        loss = ukd_loss(*case.args(), backend=backend, **case.kwargs())
    grads = torch.autograd.grad(loss, case.tensors())
    assert loss.dtype == torch.float32 and rel_err(loss, expected_loss) <= 1e-6
    for g, e in zip(grads, expected):
        assert g.dtype == e.dtype and rel_err(g, e) <= 1e-6


@pytest.mark.parametrize("backend", ["reference", *FUSED])
def test_autocast_features_from_a_network(backend):
    # Features a network makes under autocast are bfloat16; the loss takes them as they are and returns their
    # gradients in bfloat16, matching the float64 reference on the same bfloat16 values.
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(3, 2, 4, 4)
    case = make_case(3, 7, [(3, 4, 4)], TEACHER, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feat = conv(x)
        assert feat.dtype == torch.bfloat16
        loss = ukd_loss([feat], *case.args()[1:], backend=backend, **case.kwargs())
    (grad,) = torch.autograd.grad(loss, feat)
    exact = case.cast(torch.float64)
    leaf = feat.detach().double().requires_grad_()
    ref = ukd_loss([leaf], *exact.args()[1:], backend="reference", **exact.kwargs())
    (ref_grad,) = torch.autograd.grad(ref, leaf)
    assert grad.dtype == torch.bfloat16 and rel_err(loss, ref) <= 1e-5 and rel_err(grad, ref_grad) <= 1e-2


@pytest.mark.parametrize("backend", FUSED)
def test_inference_mode_teacher_features(backend):
    case = _case()
    with torch.inference_mode():
        teacher = [f.clone() for f in case.teacher_feats]
    for t in [*case.student_feats, case.student_logits, case.student_weight, case.teacher_weight]:
        t.requires_grad_(True)
    loss = ukd_loss(case.student_feats, teacher, *case.args()[2:], backend=backend, **case.kwargs())
    grads = torch.autograd.grad(loss, [*case.student_feats, case.teacher_weight])
    _, _, ref = run_loss(case, "reference")
    wanted = [*ref[: len(case.student_feats)], ref[-2]]
    assert all(rel_err(g, r) <= 1e-12 for g, r in zip(grads, wanted))


@pytest.mark.parametrize("backend", FUSED)
def test_features_modified_in_place_after_the_loss(backend):
    # Plain PyTorch's mean saves no input, so this works there; the op must not be stricter.
    case = _case()
    leaves = [f.clone().requires_grad_() for f in case.student_feats]
    feats = [leaf * 1.0 for leaf in leaves]
    loss = ukd_loss(feats, *case.args()[1:], backend=backend, **case.kwargs())
    for f in feats:
        f.mul_(-3.0)
    grads = torch.autograd.grad(loss, leaves)
    exact = _case()
    for f in exact.student_feats:
        f.requires_grad_(True)
    _, _, ref = run_loss(exact, "reference")
    assert all(rel_err(g, r) <= 1e-12 for g, r in zip(grads, ref))


@pytest.mark.parametrize("backend", FUSED)
def test_nothing_feature_sized_is_saved(backend):
    case = make_case(4, 5, [(8, 16, 16), (16, 8, 8)], [(8, 16, 16)], dtype=torch.float32).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        ukd_loss(*case.args(), backend=backend, **case.kwargs())
    assert saved, "the op saves its head weights and the (B, ·) gradients for backward"
    assert all(len(shape) <= 2 for shape in saved), saved
