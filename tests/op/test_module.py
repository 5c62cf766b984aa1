"""UnifiedDistillLoss: heads, sampling, components, stage checks, and torch.compile."""

import pytest
import torch

from ukd import UnifiedDistillLoss
from ukd.testing import make_case, module_reference, rel_err

STUDENT, TEACHER, K = [4, 6], [5, 3], 7


def _inputs(batch=3, dtype=torch.float32):
    case = make_case(batch, K, [(4, 3, 3), (6, 2, 2)], [(5, 3, 3), (3,)], dtype=dtype)
    return case.student_feats, case.teacher_feats, case.student_logits, case.teacher_logits


def test_heads_and_init():
    crit = UnifiedDistillLoss(STUDENT, TEACHER, K)
    assert crit.student_head.weight.shape == (2 * K, 10) and crit.student_head.bias.shape == (2 * K,)
    assert crit.teacher_head.weight.shape == (2 * K, 8) and crit.teacher_head.bias.shape == (2 * K,)
    assert crit.student_head.bias[K:].abs().sum() == 0  # log-variance starts at 0: unit variance
    bound = 1 / 10**0.5
    assert crit.student_head.weight.abs().max() <= bound


def test_eval_uses_means_and_matches_reference(fused_backend):
    crit = UnifiedDistillLoss(STUDENT, TEACHER, K, gauss_weight=0.5, backend=fused_backend).double().eval()
    inputs = _inputs(dtype=torch.float64)
    loss = crit(*inputs)
    expected, comps = module_reference(crit, *inputs)
    assert rel_err(loss, expected) <= 1e-10
    for name, value in comps.items():
        assert rel_err(crit.last_components[name], value) <= 1e-10


def test_train_mode_samples_with_torch_rng(fused_backend):
    crit = UnifiedDistillLoss(STUDENT, TEACHER, K, backend=fused_backend).double().train()
    inputs = _inputs(dtype=torch.float64)
    torch.manual_seed(123)
    loss = crit(*inputs)
    torch.manual_seed(123)
    noise_s = torch.randn(3, K, dtype=torch.float64)
    noise_t = torch.randn(3, K, dtype=torch.float64)
    expected, _ = module_reference(crit, *inputs, noise_s, noise_t)
    assert rel_err(loss, expected) <= 1e-10
    assert rel_err(loss, crit.eval()(*inputs)) > 1e-6  # the sample really moved z


def test_stage_channel_mismatch_names_the_stage():
    crit = UnifiedDistillLoss(STUDENT, TEACHER, K)
    fs, ft, ls, lt = _inputs()
    with pytest.raises(ValueError, match=r"student_feats\[1\]: expected 6 channels \(student_channels\[1\]\), got 5"):
        crit([fs[0], fs[1][:, :5]], ft, ls, lt)
    with pytest.raises(ValueError, match=r"teacher_feats: expected 2 stages \(teacher_channels=\[5, 3\]\), got 1"):
        crit(fs, ft[:1], ls, lt)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="student_channels: expected a positive int or a non-empty list"):
        UnifiedDistillLoss([], TEACHER, K)
    with pytest.raises(ValueError, match="num_classes: expected a positive int, got 0"):
        UnifiedDistillLoss(STUDENT, TEACHER, 0)


def test_training_step_moves_heads(fused_backend):
    crit = UnifiedDistillLoss(STUDENT, TEACHER, K, backend=fused_backend)
    opt = torch.optim.SGD(crit.parameters(), lr=0.1)
    before = crit.student_head.weight.detach().clone()
    fs, ft, ls, lt = _inputs()
    crit(fs, ft, ls, lt).backward()
    opt.step()
    assert not torch.equal(before, crit.student_head.weight)


def test_torch_compile_matches_reference(fused_backend):
    torch._dynamo.reset()
    crit = UnifiedDistillLoss(STUDENT, TEACHER, K, gauss_weight=0.3, backend=fused_backend).eval()
    compiled = torch.compile(crit, fullgraph=True)
    fs, ft, ls, lt = _inputs()
    fs = [f.requires_grad_() for f in fs]
    ls.requires_grad_()
    loss = compiled(fs, ft, ls, lt)
    grads = torch.autograd.grad(loss, [*fs, ls, *crit.parameters()])
    fs64 = [f.detach().double().requires_grad_() for f in fs]
    ls64 = ls.detach().double().requires_grad_()
    ref = crit.double()
    expected, _ = module_reference(ref, fs64, [f.double() for f in ft], ls64, lt.double())
    ref_grads = torch.autograd.grad(expected, [*fs64, ls64, *ref.parameters()])
    assert rel_err(loss, expected) <= 2e-4
    for g, r in zip(grads, ref_grads):
        assert rel_err(g, r) <= 2e-4


def test_torch_compile_dynamic_shapes(fused_backend):
    # One graph for several batch sizes: the op's fake implementation handles symbolic shapes.
    torch._dynamo.reset()
    crit = UnifiedDistillLoss(STUDENT, TEACHER, K, backend=fused_backend).eval()
    compiled = torch.compile(crit, dynamic=True, fullgraph=True)
    for batch in (2, 5):
        inputs = _inputs(batch=batch)
        expected, _ = module_reference(crit, *inputs)
        assert rel_err(compiled(*inputs), expected) <= 2e-4
