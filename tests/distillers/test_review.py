"""``reviewkd`` against ReviewKD written here from its definition (mdistiller's ``ReviewKD.py``): the ABF chain deepest
first (1×1 conv + BatchNorm, attention fusion with the nearest-upsampled residual, nearest resize to the teacher's
size, 3×3 conv + BatchNorm, the resized map as the next residual), the hierarchical context loss with its
halving weights over 4×4, 2×2, 1×1 average pools, the weight and the warm-up, in float64."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from ukd.cli import main
from ukd.distillers import ReviewKD, build_distiller
from ukd.distillers.review import hcl_loss
from ukd.distillers.settings import DistillSettings, ReviewKDSettings, SettingsError
from ukd.models import build
from ukd.train.checkpoint import load_checkpoint
from ukd.train.config import ConfigError, load_config

K = 10


# ---------------------------------------------------------------- the definitions, written independently
def adaptive_avg_pool(x: Tensor, size: int) -> Tensor:
    """Average pool to ``size × size``: cell ``(i, j)`` averages rows ``floor(i·H/s) .. ceil((i+1)·H/s) − 1``."""
    h, w = x.shape[-2:]
    rows = []
    for i in range(size):
        r0, r1 = (i * h) // size, math.ceil((i + 1) * h / size)
        cols = []
        for j in range(size):
            c0, c1 = (j * w) // size, math.ceil((j + 1) * w / size)
            cols.append(x[:, :, r0:r1, c0:c1].mean(dim=(2, 3)))
        rows.append(torch.stack(cols, dim=-1))
    return torch.stack(rows, dim=-2)


def hcl(fs: list[Tensor], ft: list[Tensor]) -> Tensor:
    """Σ over levels of [MSE + Σ_k 2^-k MSE of the k-th pooled pair] / (1 + Σ_k 2^-k), pools 4, 2, 1 below H."""
    total = torch.zeros((), dtype=fs[0].dtype)
    for a, b in zip(fs, ft):
        terms, weights = [((a - b) ** 2).mean()], [1.0]
        for size in [s for s in (4, 2, 1) if s < a.shape[2]]:
            weights.append(weights[-1] / 2)
            terms.append(((adaptive_avg_pool(a, size) - adaptive_avg_pool(b, size)) ** 2).mean())
        total = total + sum(w * t for w, t in zip(weights, terms)) / sum(weights)
    return total


def batch_norm_train(z: Tensor, bn: torch.nn.BatchNorm2d) -> Tensor:
    mean = z.mean(dim=(0, 2, 3), keepdim=True)
    var = ((z - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    return (z - mean) / torch.sqrt(var + bn.eps) * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]


def nearest(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest resize: output pixel ``(i, j)`` takes input ``(floor(i·H/h), floor(j·W/w))``."""
    h, w = x.shape[-2:]
    rows = torch.tensor([(i * h) // size[0] for i in range(size[0])])
    cols = torch.tensor([(j * w) // size[1] for j in range(size[1])])
    return x[:, :, rows][:, :, :, cols]


def review_chain(student_feats: list[Tensor], teacher_sizes: list[tuple[int, int]], abfs) -> list[Tensor]:
    """The ABF chain; ``abfs`` deepest first (mdistiller's order), ``student_feats`` and the sizes shallow first."""
    outputs, residual = [], None
    for abf, x, size in zip(abfs, student_feats[::-1], teacher_sizes[::-1]):
        x = batch_norm_train(F.conv2d(x, abf.conv1[0].weight), abf.conv1[1])
        if residual is not None:
            r = nearest(residual, tuple(x.shape[-2:]))
            att = torch.sigmoid(F.conv2d(torch.cat([x, r], 1), abf.att_conv[0].weight, abf.att_conv[0].bias))
            x = x * att[:, :1] + r * att[:, 1:]
        if tuple(x.shape[-2:]) != size:
            x = nearest(x, size)
        residual = x
        outputs.append(batch_norm_train(F.conv2d(x, abf.conv2[0].weight, padding=1), abf.conv2[1]))
    return outputs[::-1]


def reference_loss(distiller: ReviewKD, x: Tensor, epoch: int) -> tuple[Tensor, Tensor]:
    """``(weight · min(epoch / warmup, 1) · Σ HCL, Σ HCL)``, the teacher's inputs pre-activation plus pooled."""
    r = distiller.settings.reviewkd
    s_out = distiller.student.forward_all(x)
    with torch.no_grad():
        t_out = distiller.teacher.forward_all(x)
    s_feats = [*(s_out.preact_stages if r.student_preact else s_out.stages), s_out.pooled[:, :, None, None]]
    t_feats = [*t_out.preact_stages, t_out.pooled[:, :, None, None]]
    outs = review_chain(s_feats, [tuple(t.shape[-2:]) for t in t_feats], distiller.fusion.abfs)
    value = hcl(outs, t_feats)
    warm = min(epoch / r.warmup, 1.0) if r.warmup else 1.0
    return r.weight * warm * value, value


# ---------------------------------------------------------------- helpers
def zoo_pair(student: str = "resnet8", teacher: str = "resnet14"):
    torch.manual_seed(0)
    s = build(student, num_classes=K, in_channels=1).double()
    t = build(teacher, num_classes=K, in_channels=1).double()
    x = torch.randn(6, 1, 16, 16, dtype=torch.float64)
    y = torch.tensor([0, 3, 9, 3, 5, 1])
    return s, t, x, y


def settings(**review) -> DistillSettings:
    return DistillSettings(ce_weight=0.5, reviewkd=ReviewKDSettings(**review))


# ---------------------------------------------------------------- the loss
@pytest.mark.parametrize("h", [1, 2, 3, 4, 7, 8])
def test_hcl_matches_the_definition(h: int) -> None:
    a, b = torch.randn(3, 2, h, h, dtype=torch.float64), torch.randn(3, 2, h, h, dtype=torch.float64)
    torch.testing.assert_close(hcl_loss([a], [b]), hcl([a], [b]), rtol=1e-12, atol=1e-14)
    pairs = [torch.randn(2, c, s, s, dtype=torch.float64) for c, s in ((3, 8), (4, 4), (5, 1))]
    others = [torch.randn_like(p) for p in pairs]
    torch.testing.assert_close(hcl_loss(pairs, others), hcl(pairs, others), rtol=1e-12, atol=1e-14)


def test_hcl_weights_by_size() -> None:
    # a constant offset d gives MSE d² on every pooled view, so each level's HCL is d² whatever its weights
    a = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    assert hcl_loss([a], [a + 3.0]).item() == pytest.approx(9.0)
    # a ±1 checkerboard vanishes in every pool (4×4, 2×2, 1×1): only the full view, weight 1 of 1 + 1/2 + 1/4 + 1/8
    pattern = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64).repeat(4, 4)[None, None]
    assert hcl_loss([pattern], [a]).item() == pytest.approx(1.0 / 1.875)
    # at 4×4 the pools are 2×2 and 1×1: weights 1, 1/2, 1/4
    assert hcl_loss([pattern[..., :4, :4]], [a[..., :4, :4]]).item() == pytest.approx(1.0 / 1.75)


def test_hcl_gradcheck() -> None:
    a = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    c = torch.randn(2, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, v: hcl_loss([u, v], [b, torch.zeros_like(v)]), (a, c))


@pytest.mark.parametrize("student_preact", [False, True])
def test_reviewkd_matches_the_definition(student_preact: bool) -> None:
    student, teacher, x, y = zoo_pair()
    distiller = build_distiller("reviewkd", student, teacher, settings(student_preact=student_preact), K).double()
    assert isinstance(distiller, ReviewKD)
    logits, losses = distiller(x, y, 30)
    assert set(losses) == {"loss_ce", "loss_reviewkd"}
    expected, value = reference_loss(distiller, x, 30)
    torch.testing.assert_close(losses["loss_reviewkd"], expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(distiller.last_terms["reviewkd_hcl"], value.detach(), rtol=1e-10, atol=1e-12)
    assert not distiller.last_terms["reviewkd_hcl"].requires_grad
    torch.testing.assert_close(losses["loss_ce"], 0.5 * F.cross_entropy(logits, y))
    assert distiller.coherence_groups() is None


def test_reviewkd_with_resizing_levels(tiny_net) -> None:
    # student levels 8, 4, 1 against teacher levels 16, 6, 1: every fused map is resized to the teacher's size
    student = tiny_net([3, 4], [8, 4]).double()
    teacher = tiny_net([5, 6], [16, 6]).double()
    distiller = build_distiller("reviewkd", student, teacher, settings(max_mid_channel=3), 5).double()
    assert distiller.fusion.mid_channels == 3  # min(max_mid_channel, C_pool = 4)
    x = torch.randn(4, 1, 20, 20, dtype=torch.float64)
    _, losses = distiller(x, torch.tensor([0, 1, 2, 3]), 40)
    torch.testing.assert_close(losses["loss_reviewkd"], reference_loss(distiller, x, 40)[0], rtol=1e-10, atol=1e-12)


def test_chain_gradcheck(tiny_net) -> None:
    distiller = build_distiller("reviewkd", tiny_net([2, 3], [4, 2]), tiny_net([2, 2], [4, 4]), settings(), 5)
    fusion = distiller.fusion.double()
    feats = [torch.randn(3, c, s, s, dtype=torch.float64, requires_grad=True) for c, s in ((2, 4), (3, 2), (3, 1))]
    sizes = [(4, 4), (4, 4), (1, 1)]
    targets = [torch.randn(3, c, *s, dtype=torch.float64) for c, s in zip((2, 2, 2), sizes)]
    assert torch.autograd.gradcheck(lambda *f: hcl_loss(fusion(list(f), sizes), targets), tuple(feats))


def test_mdistiller_defaults_and_warmup() -> None:
    s = ReviewKDSettings()
    # configs/cifar100/reviewkd.yaml: REVIEWKD_WEIGHT 5; cfg.py: WARMUP_EPOCHS 20, MAX_MID_CHANNEL 512, STU_PREACT off
    assert (s.weight, s.warmup, s.max_mid_channel, s.student_preact) == (5.0, 20, 512, False)
    student, teacher, x, y = zoo_pair()
    distiller = build_distiller("reviewkd", student, teacher, settings(weight=2.0, warmup=8), K).double()
    full = distiller(x, y, 8)[1]["loss_reviewkd"]
    for epoch in (1, 3, 8, 9, 50):
        got = distiller(x, y, epoch)[1]["loss_reviewkd"]
        torch.testing.assert_close(got, min(epoch / 8, 1.0) * full, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(full, reference_loss(distiller, x, 8)[0], rtol=1e-10, atol=1e-12)
    off = build_distiller("reviewkd", student, teacher, settings(weight=2.0, warmup=0), K).double()
    off.load_extra_state(distiller.extra_state())
    torch.testing.assert_close(off(x, y, 1)[1]["loss_reviewkd"], full, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- the extras
def test_abf_layout_is_mdistillers() -> None:
    student, teacher, *_ = zoo_pair("resnet8", "resnet32x4")
    fusion = build_distiller("reviewkd", student, teacher, settings(), K).fusion
    abfs = fusion.abfs  # deepest first: the pooled level (64 → 256), then stages 3, 2, 1
    assert fusion.mid_channels == 64 and len(abfs) == 4
    assert [a.conv1[0].in_channels for a in abfs] == [64, 64, 32, 16]
    assert [a.conv2[0].out_channels for a in abfs] == [256, 256, 128, 64]
    assert abfs[0].att_conv is None and all(a.att_conv[0].out_channels == 2 for a in abfs[1:])
    assert [type(m).__name__ for m in abfs[1].conv1] == ["Conv2d", "BatchNorm2d"]
    assert abfs[1].conv1[0].bias is None and abfs[1].conv2[0].bias is None and abfs[1].att_conv[0].bias is not None
    keys = set(fusion.state_dict())
    assert {"abfs.0.conv1.0.weight", "abfs.0.conv2.1.running_var", "abfs.1.att_conv.0.bias"} <= keys
    assert not any(k.startswith("abfs.0.att_conv") for k in keys)


def test_gradients_reach_the_student_and_the_fusion_not_the_teacher() -> None:
    student, teacher, x, y = zoo_pair()
    distiller = build_distiller("reviewkd", student, teacher, settings(), K).double()
    distiller.train()
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    fusion = list(distiller.fusion.parameters())
    assert {id(p) for p in distiller.get_learnable_parameters()} == {id(p) for p in [*student.parameters(), *fusion]}
    assert distiller.get_extra_parameters() == sum(p.numel() for p in fusion) > 0
    _, losses = distiller(x, y, 20)
    names, params = zip(*student.named_parameters())
    grads = torch.autograd.grad(losses["loss_reviewkd"], params, allow_unused=True, retain_graph=True)
    # the pooled level reaches the whole backbone, but not the classifier
    assert all((g is None) == n.startswith("fc.") for n, g in zip(names, grads))
    sum(losses.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fusion)
    assert all(p.grad is None for p in teacher.parameters())


def test_fusion_round_trips_through_extra_state() -> None:
    student, teacher, x, y = zoo_pair()
    trained = build_distiller("reviewkd", student, teacher, settings(), K).double()
    opt = torch.optim.SGD(trained.get_learnable_parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        sum(trained(x, y, 20)[1].values()).backward()
        opt.step()
    state = trained.extra_state()
    assert set(state) == {"reviewkd"}
    fresh = build_distiller("reviewkd", student, teacher, settings(), K).double()
    fresh.load_extra_state(state)
    for key, value in trained.fusion.state_dict().items():
        assert torch.equal(fresh.fusion.state_dict()[key], value), key
    torch.testing.assert_close(fresh(x, y, 20)[1]["loss_reviewkd"], trained(x, y, 20)[1]["loss_reviewkd"])
    with pytest.raises(KeyError, match="no 'reviewkd' state"):
        fresh.load_extra_state({"fitnet": {}})


# ---------------------------------------------------------------- settings, errors, CLI
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("weight", -1.0, "expected a finite number >= 0"),
        ("weight", float("nan"), "expected a finite number >= 0"),
        ("warmup", -1, "expected a finite number >= 0"),
        ("max_mid_channel", 0, "expected an int >= 1"),
        ("max_mid_channel", 8.0, "expected an int >= 1"),
        ("student_preact", "yes", "expected true or false"),
    ],
)
def test_settings_rules_name_the_key(field: str, value: object, message: str) -> None:
    with pytest.raises(SettingsError, match=rf"^reviewkd\.{field}: {message}"):
        ReviewKDSettings(**{field: value})


def test_config_keys_and_their_rules() -> None:
    cfg = load_config(None, ["distill.method=reviewkd", "distill.reviewkd.weight=1.0", "distill.reviewkd.warmup=1"])
    assert cfg["distill"]["reviewkd"] == {"weight": 1.0, "warmup": 1, "max_mid_channel": 512, "student_preact": False}
    with pytest.raises(ConfigError, match=r"distill\.reviewkd\.max_mid_channel: expected an int >= 1"):
        load_config(None, ["distill.reviewkd.max_mid_channel=0"])


def test_networks_with_different_stage_counts_are_refused() -> None:
    student, teacher = build("resnet8", K, 1), build("vgg8", K, 1)
    with pytest.raises(ValueError, match="the student has 3 stages, the teacher 4"):
        build_distiller("reviewkd", student, teacher, DistillSettings(), K)
    with pytest.raises(ValueError, match="method 'reviewkd' needs a teacher"):
        build_distiller("reviewkd", student, None, DistillSettings(), K)


def test_cli_distills(teacher_ckpt: Path, tmp_path: Path, cli_small: list[str]) -> None:
    out = tmp_path / "reviewkd"
    args = ["distill", "--method", "reviewkd", "--epochs", "1", "-t", str(teacher_ckpt), "-o", str(out), *cli_small]
    assert main(args) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"train_ce", "train_reviewkd", "train_reviewkd_hcl"} <= set(record) and record["train_images"] == 256
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["method"] == "reviewkd" and set(ckpt["extra"]) == {"reviewkd"}
    assert ckpt["extra"]["reviewkd"]["abfs.0.conv1.0.weight"].shape == (64, 64, 1, 1)
