"""The trainer's ``unikd_paper`` objective equals the authors' UniLogitsKD objective, written here independently.

The reference follows docs/recipe.md (FabienCode/mdistiller @ 89a96f8): the student's maps (mdistiller's feats) and its
pooled vector as a 1×1 map go deepest first through ReviewKD's ABF chain (per level a 1×1 conv + ReLU, attention
fusion with the upsampled residual, a resize to the teacher's size of that level, a 3×3 conv + ReLU; only the
shallowest output is used); the teacher's first-stage pre-activation map goes alone into the teacher's featPro head
(average pool, one linear layer for μ and one for log σ², one reparameterised sample); the losses are mdistiller's
``kd_loss`` (``F.kl_div`` form) at SUPP_T = 1 and mdistiller's DKD (the ``−1000·mask`` form) at T = 4 with its
warm-up. Every term and every gradient is compared in float64 with the same weights and the same noise.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ukd.distillers import build_distiller
from ukd.distillers.settings import DistillSettings
from ukd.models import build
from ukd.train.config import load_config

K = 100


# ---------------------------------------------------------------- the authors' objective, independently
def kd_loss(logits_student, logits_teacher, temperature):
    log_pred_student = F.log_softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    return F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean() * temperature**2


def dkd_loss(logits_student, logits_teacher, target, alpha, beta, temperature):
    gt = torch.zeros_like(logits_student).scatter_(1, target[:, None], 1).bool()
    other = ~gt
    p_s = F.softmax(logits_student / temperature, dim=1)
    p_t = F.softmax(logits_teacher / temperature, dim=1)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * other).sum(1)], dim=1)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * other).sum(1)], dim=1)
    tckd = F.kl_div(torch.log(b_s), b_t, reduction="sum") * temperature**2 / target.shape[0]
    log_p_s2 = F.log_softmax(logits_student / temperature - 1000.0 * gt, dim=1)
    p_t2 = F.softmax(logits_teacher / temperature - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_p_s2, p_t2, reduction="sum") * temperature**2 / target.shape[0]
    return alpha * tckd + beta * nckd


def abf_chain(inputs_deep_first, out_shapes, conv1, att, conv2_shallowest):
    """ReviewKD's ABF chain as the authors call it; returns the shallowest level's output."""
    x = F.relu(F.conv2d(inputs_deep_first[0], conv1[0]))
    if x.shape[-1] != out_shapes[0]:
        x = F.interpolate(x, (out_shapes[0], out_shapes[0]), mode="nearest")
    residual = x
    for level in range(1, len(inputs_deep_first)):
        feat = inputs_deep_first[level]
        n, _, h, w = feat.shape
        x = F.relu(F.conv2d(feat, conv1[level]))
        y = F.interpolate(residual, (h, w), mode="nearest")
        z = torch.sigmoid(F.conv2d(torch.cat([x, y], dim=1), att[level][0], att[level][1]))
        x = x * z[:, 0].view(n, 1, h, w) + y * z[:, 1].view(n, 1, h, w)
        if x.shape[-1] != out_shapes[level]:
            x = F.interpolate(x, (out_shapes[level], out_shapes[level]), mode="nearest")
        residual = x
    return F.relu(F.conv2d(residual, conv2_shallowest, padding=1))


def feat_pro(x, fc_mu, fc_var, eps):
    pooled = F.avg_pool2d(x, (x.shape[-2], x.shape[-1])).reshape(x.shape[0], -1)
    mu = F.linear(pooled, *fc_mu)
    log_var = F.linear(pooled, *fc_var)
    return eps * torch.exp(log_var / 2) + mu


def authors_objective(student, teacher, params, image, target, epoch, eps_s, eps_t, beta):
    """The four loss terms of UniLogitsKD.forward_train, from the networks and the extra parameters ``params``."""
    s = student.forward_all(image)
    with torch.no_grad():
        t = teacher.forward_all(image)
    inputs = [*s.stages, s.pooled[:, :, None, None]][::-1]
    out_shapes = [1, *[f.shape[-1] for f in t.stages[::-1]]]  # the config's OUT_SHAPES: the teacher's sides
    f_s = abf_chain(inputs, out_shapes, params["conv1"], params["att"], params["conv2"])
    f_t = t.preact_stages[0]
    z_s = feat_pro(f_s, params["s_mu"], params["s_var"], eps_s)
    z_t = feat_pro(f_t, params["t_mu"], params["t_var"], eps_t)
    return s.logits, {
        "loss_ce": F.cross_entropy(s.logits, target),
        "loss_logits": min(epoch / 20, 1.0) * dkd_loss(s.logits, t.logits, target, 1.0, beta, 4.0),
        "loss_feature": kd_loss(z_s, z_t, 1.0),
        "loss_supp_feat2pro": kd_loss(z_s, s.logits, 1.0) + kd_loss(z_t, t.logits, 1.0),
    }


def extra_params(distiller):
    """The distiller's fusion and head parameters in the authors' arrangement (deepest level first)."""
    fusion, ukd = distiller.ukd.fusion, distiller.ukd
    levels = len(fusion.lateral)
    att = [None] + [(fusion.attention[i].weight, fusion.attention[i].bias) for i in range(levels - 2, -1, -1)]
    sw, sb, tw, tb = ukd.student_head.weight, ukd.student_head.bias, ukd.teacher_head.weight, ukd.teacher_head.bias
    return {
        "conv1": [fusion.lateral[i].weight for i in range(levels - 1, -1, -1)],
        "att": att,
        "conv2": fusion.output.weight,
        "s_mu": (sw[:K], sb[:K]),
        "s_var": (sw[K:], sb[K:]),
        "t_mu": (tw[:K], tb[:K]),
        "t_var": (tw[K:], tb[K:]),
    }


# ---------------------------------------------------------------- the test
PAIRS = [("resnet32x4", "resnet8x4", "unikd_paper"), ("resnet32x4", "ShuffleV1", "unikd_paper_resnet32x4_ShuffleV1")]


@pytest.mark.parametrize(("teacher_name", "student_name", "preset"), PAIRS)
def test_unikd_paper_objective_equals_the_authors(teacher_name: str, student_name: str, preset: str) -> None:
    cfg = load_config(preset)
    assert (cfg["teacher"]["name"], cfg["model"]["name"]) == (teacher_name, student_name)
    torch.manual_seed(0)
    student = build(student_name, num_classes=K).double().train()
    teacher = build(teacher_name, num_classes=K).double()
    with torch.no_grad():  # non-trivial BN statistics for the frozen teacher
        for name, buf in teacher.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    distiller = build_distiller("ukd", student, teacher, DistillSettings.from_config(cfg["distill"]), K).double()
    distiller.train()
    assert not teacher.training
    image = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    target = torch.tensor([3, 41, 99])
    epoch = 5  # inside DKD's 20-epoch warm-up

    torch.manual_seed(7)
    logits, losses = distiller(image, target, epoch)
    total = sum(losses.values())
    learnable = distiller.get_learnable_parameters()
    grads = torch.autograd.grad(total, learnable, allow_unused=True)

    torch.manual_seed(7)
    eps_s = torch.randn(3, K, dtype=torch.float64)  # the authors' featPro draws the student's sample first
    eps_t = torch.randn(3, K, dtype=torch.float64)
    ref_logits, ref = authors_objective(
        student, teacher, extra_params(distiller), image, target, epoch, eps_s, eps_t, cfg["distill"]["dkd"]["beta"]
    )
    ref_total = sum(ref.values())
    ref_grads = torch.autograd.grad(ref_total, learnable, allow_unused=True)

    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)
    assert set(losses) == {"loss_ce", "loss_dkd", "loss_ukd"}
    torch.testing.assert_close(losses["loss_ce"], ref["loss_ce"], rtol=1e-12, atol=0)
    torch.testing.assert_close(losses["loss_dkd"], ref["loss_logits"], rtol=1e-10, atol=1e-14)
    dist, supp = distiller.last_terms["ukd_dist"], distiller.last_terms["ukd_supp"]
    torch.testing.assert_close(dist, ref["loss_feature"].detach(), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(supp, ref["loss_supp_feat2pro"].detach(), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(losses["loss_ukd"], ref["loss_feature"] + ref["loss_supp_feat2pro"], rtol=1e-10, atol=0)
    torch.testing.assert_close(total, ref_total, rtol=1e-11, atol=0)
    names = [n for n, p in distiller.named_parameters() if p.requires_grad]
    assert len(names) == len(learnable)
    for name, g, ref_g in zip(names, grads, ref_grads, strict=True):
        if ref_g is None:  # only parameters the authors' objective does not reach may go without a gradient
            assert g is None or not g.any(), name
            continue
        assert g is not None, name
        torch.testing.assert_close(g, ref_g, rtol=1e-9, atol=1e-12 * ref_g.abs().max().item(), msg=name)
    assert all(p.grad is None for p in teacher.parameters())


def test_paper_preset_settings_match_the_recipe() -> None:
    """The preset's values are the recipe's (docs/recipe.md), read back through the settings object."""
    cfg = load_config("unikd_paper")
    s = DistillSettings.from_config(cfg["distill"])
    assert (s.ukd.temperature, s.dkd.temperature, s.dkd.alpha, s.dkd.beta, s.dkd.warmup) == (1.0, 4.0, 1.0, 8.0, 20)
    assert (s.ukd.student_preact, s.ukd.student_pooled, s.ukd.teacher_preact, s.ukd.teacher_stages) == (
        False,
        True,
        True,
        "first",
    )
    assert (s.ukd.dist_weight, s.ukd.supp_weight, s.ukd.gauss_weight, s.ukd.weight, s.ce_weight) == (1, 1, 0, 1, 1)
    o = cfg["optim"]
    assert (o["epochs"], o["lr"], o["milestones"], o["gamma"], o["weight_decay"], o["momentum"]) == (
        240,
        0.05,
        [150, 180, 210],
        0.1,
        5e-4,
        0.9,
    )
    assert cfg["data"]["batch_size"] == 64


@pytest.mark.parametrize(
    ("preset", "teacher", "student", "beta", "lr"),
    [
        ("unikd_paper_resnet56_resnet20", "resnet56", "resnet20", 2.0, 0.05),
        ("unikd_paper_resnet110_resnet32", "resnet110", "resnet32", 2.0, 0.05),
        ("unikd_paper_wrn_40_2_wrn_16_2", "wrn_40_2", "wrn_16_2", 6.0, 0.05),
        ("unikd_paper_wrn_40_2_wrn_40_1", "wrn_40_2", "wrn_40_1", 6.0, 0.05),
        ("unikd_paper_vgg13_vgg8", "vgg13", "vgg8", 6.0, 0.05),
        ("unikd_paper_resnet32x4_ShuffleV1", "resnet32x4", "ShuffleV1", 8.0, 0.01),
        ("unikd_paper_resnet32x4_ShuffleV2", "resnet32x4", "ShuffleV2", 8.0, 0.01),
        ("unikd_paper_wrn_40_2_ShuffleV1", "wrn_40_2", "ShuffleV1", 8.0, 0.01),
        ("unikd_paper_vgg13_MobileNetV2", "vgg13", "MobileNetV2", 6.0, 0.01),
        ("unikd_paper_ResNet50_MobileNetV2", "ResNet50", "MobileNetV2", 8.0, 0.01),
        ("unikd_paper_resnet32x4_resnet8x4", "resnet32x4", "resnet8x4", 8.0, 0.05),
    ],
)
def test_pair_presets(preset: str, teacher: str, student: str, beta: float, lr: float) -> None:
    """Each pair's file extends the preset with the pair's networks, DKD β and lr (mdistiller's per-pair configs)."""
    cfg, paper = load_config(preset), load_config("unikd_paper")
    assert (cfg["teacher"]["name"], cfg["model"]["name"]) == (teacher, student)
    assert (cfg["distill"]["dkd"]["beta"], cfg["optim"]["lr"]) == (beta, lr)
    assert cfg["distill"]["ukd"] == paper["distill"]["ukd"]
    assert {k: v for k, v in cfg["optim"].items() if k != "lr"} == {
        k: v for k, v in paper["optim"].items() if k != "lr"
    }


# ---------------------------------------------------------------- the project's default ukd method
def small_nets() -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    student = build("resnet8", num_classes=10, in_channels=1)
    teacher = build("resnet14", num_classes=10, in_channels=1)
    return student, teacher, torch.randn(6, 1, 12, 12), torch.tensor([0, 3, 9, 3, 5, 1])


@pytest.mark.parametrize("logit", ["dkd", "kd", "none"])
def test_default_ukd_losses_are_ce_logit_and_the_fused_loss(logit: str) -> None:
    """Pool fusion: each loss against CE, the logit term and ukd_loss called directly with the same noise."""
    from ukd.distillers.settings import DKDSettings, UKDSettings
    from ukd.functional import ukd_loss
    from ukd.losses import dkd_loss, kd_loss

    student, teacher, x, y = small_nets()
    u = UKDSettings(
        logit=logit, fusion="pool", supp_weight=0.7, gauss_weight=0.3, weight=1.5, warmup=4, backend="reference"
    )
    settings = DistillSettings(dkd=DKDSettings(beta=2.0, warmup=2), ukd=u)
    distiller = build_distiller("ukd", student, teacher, settings, 10)
    assert distiller.ukd.logit_weight == 0.0 and distiller.ukd.temperature == 4.0
    torch.manual_seed(123)
    _, losses = distiller(x, y, 1)

    torch.manual_seed(123)
    s_logits, s_feats = student(x)
    t_logits, t_feats = teacher(x)
    noise_s, noise_t = torch.randn(6, 10), torch.randn(6, 10)  # drawn by the module in this order
    hs, ht = distiller.ukd.student_head, distiller.ukd.teacher_head
    ref, comps = ukd_loss(
        s_feats,
        t_feats,
        s_logits,
        t_logits,
        hs.weight,
        hs.bias,
        ht.weight,
        ht.bias,
        noise_s=noise_s,
        noise_t=noise_t,
        gauss_weight=0.3,
        supp_weight=0.7,
        logit_weight=0.0,
        backend="reference",
        return_components=True,
    )
    expected = {"loss_ce": F.cross_entropy(s_logits, y), "loss_ukd": 1.5 * (1 / 4) * ref}
    if logit == "dkd":
        expected["loss_dkd"] = 0.5 * dkd_loss(s_logits, t_logits, y, 1.0, 2.0, 4.0)
    elif logit == "kd":
        expected["loss_kd"] = kd_loss(s_logits, t_logits, 4.0)
    assert set(losses) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value, rtol=1e-5, atol=1e-6, msg=name)
    for name in ("dist", "gauss", "supp"):
        torch.testing.assert_close(distiller.last_terms[f"ukd_{name}"], comps[name], rtol=1e-5, atol=1e-6)


def test_default_ukd_abf_trains_student_heads_and_fusion_not_teacher() -> None:
    student, teacher, x, y = small_nets()
    distiller = build_distiller("ukd", student, teacher, DistillSettings(), 10)
    assert distiller.ukd.fusion is not None
    _, losses = distiller(x, y, 30)
    sum(losses.values()).backward()
    for p in distiller.get_learnable_parameters():
        assert p.grad is not None  # student, both heads and the fusion all get gradients
    assert all(p.grad is None for p in teacher.parameters())
    assert distiller.get_extra_parameters() == sum(p.numel() for p in distiller.ukd.parameters())
    names = set(distiller.extra_state()["ukd"])
    assert {"student_head.weight", "teacher_head.weight"} <= names and any(n.startswith("fusion.") for n in names)
