"""The training objectives compose as documented: each method's total equals CE + its terms, computed directly."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ukd.functional import ukd_loss
from ukd.losses import dkd_loss, dkd_warmup, kd_loss
from ukd.models import build
from ukd.train.config import DEFAULTS, set_value
from ukd.train.methods import Objective, build_objective, needs_teacher

K = 10


def _nets() -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    student = build("resnet8", num_classes=K, in_channels=1)
    teacher = build("resnet14", num_classes=K, in_channels=1).eval().requires_grad_(False)
    x = torch.randn(6, 1, 12, 12)
    y = torch.tensor([0, 3, 9, 3, 5, 1])
    return student, teacher, x, y


def _cfg(**overrides: object) -> dict:
    cfg = copy.deepcopy(DEFAULTS)
    for key, value in overrides.items():
        cfg = set_value(cfg, "distill." + key.replace("__", "."), value)
    return cfg["distill"]


def test_ce_is_cross_entropy() -> None:
    student, _, x, y = _nets()
    obj = Objective(student, "ce", _cfg(ce_weight=0.5), K)
    loss, logits, parts = obj(x, y)
    ref_logits, _ = student(x)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)
    torch.testing.assert_close(loss, 0.5 * F.cross_entropy(ref_logits, y), rtol=0, atol=0)
    assert set(parts) == {"ce"}
    assert not needs_teacher("ce") and needs_teacher("kd")


def test_kd_and_dkd_totals() -> None:
    student, teacher, x, y = _nets()
    t_logits, t_feats = teacher(x)
    cfg = _cfg(kd__weight=2.0, kd__temperature=3.0, dkd__alpha=0.5, dkd__beta=6.0, dkd__warmup=4)
    s_logits, _ = student(x)
    ce = F.cross_entropy(s_logits, y)

    loss, _, parts = build_objective(student, "kd", cfg, K, teacher)(x, y, t_logits, t_feats, epoch=1)
    torch.testing.assert_close(loss, ce + 2.0 * kd_loss(s_logits, t_logits, 3.0), rtol=1e-6, atol=1e-7)
    assert set(parts) == {"ce", "logit"}

    for epoch in (1, 3, 7):  # warm-up: epoch/4, capped at 1
        loss, _, parts = build_objective(student, "dkd", cfg, K, teacher)(x, y, t_logits, t_feats, epoch=epoch)
        expected = ce + dkd_warmup(epoch, 4) * dkd_loss(s_logits, t_logits, y, 0.5, 6.0, 4.0)
        torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    assert dkd_warmup(7, 4) == 1.0


@pytest.mark.parametrize("logit", ["dkd", "kd", "none"])
def test_ukd_total_is_ce_plus_logit_plus_ukd_components(logit: str) -> None:
    """Pool fusion: the total against CE + the logit term + ukd_loss called directly with the same noise."""
    student, teacher, x, y = _nets()
    cfg = _cfg(
        ukd__logit=logit,
        ukd__fusion="pool",
        ukd__supp_weight=0.7,
        ukd__gauss_weight=0.3,
        ukd__weight=1.5,
        ukd__warmup=4,
        ukd__backend="reference",
        dkd__beta=2.0,
        dkd__warmup=2,
    )
    obj = build_objective(student, "ukd", cfg, K, teacher)
    assert obj.ukd is not None and obj.ukd.logit_weight == 0.0
    t_logits, t_feats = teacher(x)
    epoch = 1
    torch.manual_seed(123)
    loss, _, parts = obj(x, y, t_logits, t_feats, epoch=epoch)

    torch.manual_seed(123)
    s_logits, s_feats = student(x)
    noise_s, noise_t = torch.randn(6, K), torch.randn(6, K)  # drawn by the module in this order
    head_s, head_t = obj.ukd.student_head, obj.ukd.teacher_head
    u, comps = ukd_loss(
        s_feats,
        t_feats,
        s_logits,
        t_logits,
        head_s.weight,
        head_s.bias,
        head_t.weight,
        head_t.bias,
        noise_s=noise_s,
        noise_t=noise_t,
        temperature=4.0,
        dist_weight=1.0,
        gauss_weight=0.3,
        supp_weight=0.7,
        logit_weight=0.0,
        backend="reference",
        return_components=True,
    )
    ce = F.cross_entropy(s_logits, y)
    if logit == "dkd":
        logit_term = dkd_warmup(epoch, 2) * dkd_loss(s_logits, t_logits, y, 1.0, 2.0, 4.0)
    elif logit == "kd":
        logit_term = kd_loss(s_logits, t_logits, 4.0)
    else:
        logit_term = torch.zeros(())
    scale = 1.5 * dkd_warmup(epoch, 4)
    torch.testing.assert_close(loss, ce + logit_term + scale * u, rtol=1e-5, atol=1e-6)
    # the UKD term is its weighted components, and the logged parts add up to the total
    torch.testing.assert_close(u, comps["dist"] + 0.3 * comps["gauss"] + 0.7 * comps["supp"], rtol=1e-5, atol=1e-6)
    for name in ("dist", "gauss", "supp"):
        torch.testing.assert_close(parts[f"ukd_{name}"], comps[name].detach(), rtol=1e-5, atol=1e-6)
    total_parts = parts["ce"] + parts.get("logit", 0.0) + parts["ukd"]
    torch.testing.assert_close(total_parts, loss.detach(), rtol=1e-5, atol=1e-6)


def test_ukd_abf_trains_heads_and_fusion_not_teacher() -> None:
    student, teacher, x, y = _nets()
    cfg = _cfg(ukd__fusion="abf", ukd__backend="auto")
    obj = build_objective(student, "ukd", cfg, K, teacher)
    assert obj.ukd is not None and obj.ukd.fusion is not None
    t_logits, t_feats = teacher(x)
    loss, _, _ = obj(x, y, t_logits, t_feats, epoch=30)
    loss.backward()
    for name, p in obj.named_parameters():
        assert p.grad is not None, name  # student, both heads and the fusion all get gradients
    assert all(p.grad is None for p in teacher.parameters())
    names = set(obj.extra_state()["ukd"])
    assert {"student_head.weight", "teacher_head.weight"} <= names and any(n.startswith("fusion.") for n in names)


def test_distilling_methods_need_the_teacher() -> None:
    student, teacher, x, y = _nets()
    obj = build_objective(student, "kd", _cfg(), K, teacher)
    with pytest.raises(ValueError, match="teacher"):
        obj(x, y)
    with pytest.raises(ValueError, match="teacher_channels"):
        Objective(student, "ukd", _cfg(), K)
    with pytest.raises(ValueError, match="method"):
        Objective(student, "fitnet", _cfg(), K)
