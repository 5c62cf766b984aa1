"""The logit distillers compose as documented: each method's losses are CE and its term, computed directly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ukd.distillers import DISTILLERS, DKD, KD, Vanilla, build_distiller, needs_teacher
from ukd.distillers.settings import SECTIONS, DistillSettings, DKDSettings, KDSettings
from ukd.losses import dkd_loss, dkd_warmup, kd_loss
from ukd.models import build
from ukd.train.config import DEFAULTS, METHODS

K = 10


def nets() -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    student = build("resnet8", num_classes=K, in_channels=1)
    teacher = build("resnet14", num_classes=K, in_channels=1)
    x = torch.randn(6, 1, 12, 12)
    y = torch.tensor([0, 3, 9, 3, 5, 1])
    return student, teacher, x, y


def test_registry_matches_the_config_methods() -> None:
    assert tuple(DISTILLERS) == METHODS
    assert {"fitnet", "fitnet_kd", "reviewkd"} <= set(METHODS)
    for section in SECTIONS:  # the settings objects are built from exactly the config's keys
        assert sorted(DistillSettings.section_keys(section)) == sorted(DEFAULTS["distill"][section])
    assert not needs_teacher("ce") and all(needs_teacher(m) for m in METHODS if m != "ce")


def test_ce_is_cross_entropy_and_eval_returns_logits() -> None:
    student, _, x, y = nets()
    distiller = build_distiller("ce", student, None, DistillSettings(ce_weight=0.5), K)
    assert isinstance(distiller, Vanilla) and distiller.teacher is None
    logits, losses = distiller(x, y, 1)
    ref_logits, _ = student(x)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)
    assert set(losses) == {"loss_ce"}
    torch.testing.assert_close(losses["loss_ce"], 0.5 * F.cross_entropy(ref_logits, y), rtol=0, atol=0)
    distiller.eval()
    torch.testing.assert_close(distiller(x), student(x)[0], rtol=0, atol=0)
    assert distiller.get_learnable_parameters() == list(student.parameters()) and distiller.get_extra_parameters() == 0


def test_kd_and_dkd_losses() -> None:
    student, teacher, x, y = nets()
    settings = DistillSettings(kd=KDSettings(temperature=3.0, weight=2.0), dkd=DKDSettings(0.5, 6.0, 4.0, 4))
    s_logits = student(x)[0]
    t_logits = teacher.eval()(x)[0]
    ce = F.cross_entropy(s_logits, y)

    kd = build_distiller("kd", student, teacher, settings, K)
    assert isinstance(kd, KD)
    _, losses = kd(x, y, 1)
    assert set(losses) == {"loss_ce", "loss_kd"}
    torch.testing.assert_close(losses["loss_ce"], ce, rtol=1e-6, atol=0)
    torch.testing.assert_close(losses["loss_kd"], 2.0 * kd_loss(s_logits, t_logits, 3.0), rtol=1e-6, atol=1e-7)

    dkd = build_distiller("dkd", student, teacher, settings, K)
    assert isinstance(dkd, DKD)
    for epoch in (1, 3, 7):  # warm-up: epoch/4, capped at 1
        _, losses = dkd(x, y, epoch)
        expected = dkd_warmup(epoch, 4) * dkd_loss(s_logits, t_logits, y, 0.5, 6.0, 4.0)
        torch.testing.assert_close(losses["loss_dkd"], expected, rtol=1e-6, atol=1e-7)
    assert dkd_warmup(7, 4) == 1.0


def test_teacher_is_frozen_in_eval_mode_and_not_learnable() -> None:
    student, teacher, x, y = nets()
    distiller = build_distiller("kd", student, teacher, DistillSettings(), K)
    distiller.train()
    assert distiller.training and student.training and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    learnable = {id(p) for p in distiller.get_learnable_parameters()}
    assert learnable == {id(p) for p in student.parameters()}
    running = [b.clone() for n, b in teacher.named_buffers() if "running" in n]
    _, losses = distiller(x, y, 1)
    sum(losses.values()).backward()
    assert all(torch.equal(a, b) for a, b in zip(running, [b for n, b in teacher.named_buffers() if "running" in n]))


def test_errors_name_the_problem() -> None:
    student, teacher, x, _ = nets()
    with pytest.raises(ValueError, match="method 'kd' needs a teacher"):
        build_distiller("kd", student, None, DistillSettings(), K)
    with pytest.raises(ValueError, match="method 'ukd' needs a teacher"):
        build_distiller("ukd", student, None, DistillSettings(), K)
    valid = ", ".join(DISTILLERS)
    with pytest.raises(ValueError, match=f"method: expected one of {valid}, got 'no_such_method'"):
        build_distiller("no_such_method", student, teacher, DistillSettings(), K)
    with pytest.raises(ValueError, match="training mode needs target"):
        build_distiller("kd", student, teacher, DistillSettings(), K)(x)
