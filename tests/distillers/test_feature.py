"""``fitnet`` and ``fitnet_kd`` against FitNet's hint and Hinton KD written here from their definitions (mdistiller's
``FitNet.py`` / ``ConvReg``: conv by the spatial sizes, BatchNorm with batch statistics, ReLU, mean squared error;
KD: ``T² · mean_b KL(softmax(l_t/T) ‖ softmax(l_s/T))``), in float64."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from ukd.cli import main
from ukd.distillers import FitNet, FitNetKD, build_distiller
from ukd.distillers.settings import DistillSettings, FitNetSettings, KDSettings, SettingsError, UKDSettings
from ukd.models import build
from ukd.train.checkpoint import load_checkpoint
from ukd.train.config import ConfigError, load_config

K = 10


# ---------------------------------------------------------------- the definitions, written independently
def batch_norm_train(z: Tensor, gamma: Tensor, beta: Tensor, eps: float = 1e-5) -> Tensor:
    """BatchNorm in training mode: per channel, the batch mean and the biased variance over (B, H, W)."""
    n = z.shape[0] * z.shape[2] * z.shape[3]
    mean = z.sum(dim=(0, 2, 3), keepdim=True) / n
    var = ((z - mean) ** 2).sum(dim=(0, 2, 3), keepdim=True) / n
    return (z - mean) / torch.sqrt(var + eps) * gamma[None, :, None, None] + beta[None, :, None, None]


def regress(x: Tensor, conv: torch.nn.Module, bn: torch.nn.Module, geometry: str) -> Tensor:
    """mdistiller's ConvReg with explicit geometry: ``stride2`` (3×3, stride 2, pad 1), ``transposed`` (4×4
    transposed, stride 2, pad 1) or ``valid`` (no padding, stride 1), then BN, then ReLU."""
    if geometry == "stride2":
        z = F.conv2d(x, conv.weight, conv.bias, stride=2, padding=1)
    elif geometry == "transposed":
        z = F.conv_transpose2d(x, conv.weight, conv.bias, stride=2, padding=1)
    else:
        z = F.conv2d(x, conv.weight, conv.bias)
    return torch.clamp(batch_norm_train(z, bn.weight, bn.bias), min=0)


def mse(a: Tensor, b: Tensor) -> Tensor:
    return ((a - b) ** 2).sum() / a.numel()


def hinton_kd(ls: Tensor, lt: Tensor, temperature: float) -> Tensor:
    def softmax(z: Tensor) -> Tensor:
        e = torch.exp(z - z.max(dim=1, keepdim=True).values)
        return e / e.sum(dim=1, keepdim=True)

    p_s, p_t = softmax(ls / temperature), softmax(lt / temperature)
    return (p_t * (torch.log(p_t) - torch.log(p_s))).sum(dim=1).mean() * temperature**2


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    log_z = torch.log(torch.exp(logits - logits.max(1, keepdim=True).values).sum(1)) + logits.max(1).values
    return (log_z - logits[torch.arange(len(y)), y]).mean()


# ---------------------------------------------------------------- helpers
def zoo_pair() -> tuple[torch.nn.Module, torch.nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    student = build("resnet8", num_classes=K, in_channels=1).double()
    teacher = build("resnet14", num_classes=K, in_channels=1).double()
    x = torch.randn(6, 1, 12, 12, dtype=torch.float64)
    y = torch.tensor([0, 3, 9, 3, 5, 1])
    return student, teacher, x, y


def settings(**fitnet) -> DistillSettings:
    return DistillSettings(ce_weight=0.7, fitnet=FitNetSettings(**fitnet), kd=KDSettings(temperature=3.0, weight=2.0))


def reference_hint(distiller: FitNet, x: Tensor, geometry: str) -> Tensor:
    index = distiller.settings.fitnet.hint_layer - 1
    f_s = distiller.student.forward_all(x).stages[index]
    with torch.no_grad():
        f_t = distiller.teacher.forward_all(x).stages[index]
    reg = distiller.regressor
    return distiller.settings.fitnet.weight * mse(regress(f_s, reg.conv, reg.bn, geometry), f_t)


# ---------------------------------------------------------------- fitnet
@pytest.mark.parametrize("hint_layer", [1, 2, 3])
def test_fitnet_losses_match_the_definition(hint_layer: int) -> None:
    student, teacher, x, y = zoo_pair()
    distiller = build_distiller("fitnet", student, teacher, settings(hint_layer=hint_layer, weight=3.0), K).double()
    assert isinstance(distiller, FitNet) and not isinstance(distiller, FitNetKD)
    logits, losses = distiller(x, y, 1)
    assert set(losses) == {"loss_ce", "loss_fitnet"}
    c_s, c_t = student.stage_channels[hint_layer - 1], teacher.stage_channels[hint_layer - 1]
    assert distiller.regressor.conv.weight.shape == (c_t, c_s, 1, 1)  # same sizes: a 1×1 conv
    torch.testing.assert_close(logits, student.forward_all(x).logits, rtol=0, atol=0)
    torch.testing.assert_close(losses["loss_ce"], 0.7 * cross_entropy(logits, y))
    expected = reference_hint(distiller, x, "valid")
    torch.testing.assert_close(losses["loss_fitnet"], expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(distiller.last_terms["fitnet_mse"], expected.detach() / 3.0, rtol=1e-10, atol=1e-12)
    assert not distiller.last_terms["fitnet_mse"].requires_grad
    assert distiller.coherence_groups() is None


def test_mdistiller_defaults() -> None:
    s = FitNetSettings()
    assert (s.hint_layer, s.weight, s.input_size) == (2, 100.0, 32)  # CFG.FITNET: HINT_LAYER, FEAT_WEIGHT, INPUT_SIZE
    assert DistillSettings().ce_weight == 1.0  # CFG.FITNET.LOSS.CE_WEIGHT


@pytest.mark.parametrize(
    ("s_size", "t_size", "geometry", "kernel"),
    [(16, 8, "stride2", (3, 3)), (8, 16, "transposed", (4, 4)), (10, 8, "valid", (3, 3)), (8, 8, "valid", (1, 1))],
)
def test_regressor_maps_the_spatial_sizes_as_mdistiller(s_size, t_size, geometry, kernel, tiny_net) -> None:
    student = tiny_net([3, 4], [12, s_size]).double()
    teacher = tiny_net([5, 6], [12, t_size]).double()
    distiller = build_distiller("fitnet", student, teacher, settings(hint_layer=2), 5).double()
    conv = distiller.regressor.conv
    assert tuple(conv.kernel_size) == kernel
    assert isinstance(conv, torch.nn.ConvTranspose2d) == (geometry == "transposed")
    x = torch.randn(4, 1, 20, 20, dtype=torch.float64)
    _, losses = distiller(x, torch.tensor([0, 1, 2, 3]), 1)
    torch.testing.assert_close(losses["loss_fitnet"], reference_hint(distiller, x, geometry), rtol=1e-10, atol=1e-12)


def test_sizes_no_regressor_maps_are_refused_naming_the_key(tiny_net) -> None:
    with pytest.raises(SettingsError, match=r"^fitnet\.hint_layer: no hint regressor maps a student map of 4x4"):
        build_distiller("fitnet", tiny_net([3, 4], [8, 4]), tiny_net([5, 6], [8, 16]), settings(), 5)
    with pytest.raises(SettingsError, match=r"^fitnet\.hint_layer: expected 1\.\.3 \(the student has 3 stages\)"):
        build_distiller("fitnet", build("resnet8", 10, 1), build("resnet14", 10, 1), settings(hint_layer=4), K)


def test_images_of_another_size_relation_fail_at_the_first_batch(tiny_net) -> None:
    # sized on 32×32 probes: student 16×16 vs teacher 8×8 (a stride-2 conv); 24×24 images give 12×12 → 6×6 ≠ 8×8
    distiller = build_distiller("fitnet", tiny_net([3, 4], [8, 0.5]), tiny_net([5, 6], [8, 8]), settings(), 5)
    distiller(torch.randn(2, 1, 32, 32), torch.tensor([0, 1]), 1)
    with pytest.raises(ValueError, match=r"sized on 32x32 images \(fitnet\.input_size\)"):
        distiller(torch.randn(2, 1, 24, 24), torch.tensor([0, 1]), 1)


def test_hint_gradcheck(tiny_net) -> None:
    student, teacher = tiny_net([2, 3], [6, 6]).double(), tiny_net([2, 2], [6, 3]).double()
    distiller = build_distiller("fitnet", student, teacher, settings(weight=2.5), 5).double()
    f_t = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    f_s = torch.randn(3, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: distiller.hint_term([f_s, f], [f_t, f_t]), (f_s,))


# ---------------------------------------------------------------- fitnet_kd
def test_fitnet_kd_is_the_hint_plus_hinton_kd() -> None:
    student, teacher, x, y = zoo_pair()
    distiller = build_distiller("fitnet_kd", student, teacher, settings(weight=3.0), K).double()
    assert isinstance(distiller, FitNetKD)
    logits, losses = distiller(x, y, 1)
    assert set(losses) == {"loss_ce", "loss_fitnet", "loss_kd"}
    with torch.no_grad():
        t_logits = teacher.forward_all(x).logits
    torch.testing.assert_close(losses["loss_kd"], 2.0 * hinton_kd(logits, t_logits, 3.0), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(losses["loss_fitnet"], reference_hint(distiller, x, "valid"), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(losses["loss_ce"], 0.7 * cross_entropy(logits, y))
    groups = distiller.coherence_groups()
    assert groups == {"feature": ("loss_fitnet",), "logit": ("loss_kd",)}
    assert all(losses[name].requires_grad for side in groups.values() for name in side)  # undetached


def test_the_two_sides_reach_the_backbone_differently() -> None:
    student, teacher, x, y = zoo_pair()
    distiller = build_distiller("fitnet_kd", student, teacher, settings(hint_layer=2), K).double()
    _, losses = distiller(x, y, 1)
    params = dict(student.named_parameters())
    hint = dict(
        zip(
            params,
            torch.autograd.grad(losses["loss_fitnet"], list(params.values()), allow_unused=True, retain_graph=True),
        )
    )
    kd = dict(zip(params, torch.autograd.grad(losses["loss_kd"], list(params.values()), allow_unused=True)))
    shallow = [n for n in params if n.startswith("conv1") or n.startswith("stages.0")]
    assert shallow and all(hint[n] is not None and kd[n] is not None for n in shallow)
    # the hint is taken at stage 2: the deepest stage and the classifier get nothing from it
    assert all(hint[n] is None for n in params if n.startswith(("stages.2", "fc")))
    assert all(kd[n] is not None for n in params if n.startswith("fc"))


@pytest.mark.parametrize("method", ["fitnet", "fitnet_kd"])
def test_gradients_reach_the_student_and_the_regressor_not_the_teacher(method: str) -> None:
    student, teacher, x, y = zoo_pair()
    distiller = build_distiller(method, student, teacher, settings(), K).double()
    distiller.train()
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    learnable = {id(p) for p in distiller.get_learnable_parameters()}
    reg = list(distiller.regressor.parameters())
    assert learnable == {id(p) for p in [*student.parameters(), *reg]}
    assert distiller.get_extra_parameters() == sum(p.numel() for p in reg) > 0
    assert [m is n for m, n in zip(distiller.trained_modules(), [student, distiller.regressor])] == [True, True]
    _, losses = distiller(x, y, 1)
    sum(losses.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in reg)
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("method", ["fitnet", "fitnet_kd"])
def test_regressor_round_trips_through_extra_state(method: str) -> None:
    student, teacher, x, y = zoo_pair()
    trained = build_distiller(method, student, teacher, settings(), K).double()
    opt = torch.optim.SGD(trained.get_learnable_parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        sum(trained(x, y, 1)[1].values()).backward()
        opt.step()
    state = trained.extra_state()
    assert set(state) == {"fitnet"} and state["fitnet"]["bn.num_batches_tracked"] == 2
    fresh = build_distiller(method, student, teacher, settings(), K).double()
    assert not torch.equal(fresh.regressor.conv.weight, trained.regressor.conv.weight)
    fresh.load_extra_state(state)
    for key, value in trained.regressor.state_dict().items():
        assert torch.equal(fresh.regressor.state_dict()[key], value), key
    trained.eval(), fresh.eval()
    f_s = student.forward_all(x).stages[1]
    torch.testing.assert_close(fresh.regressor(f_s), trained.regressor(f_s), rtol=0, atol=0)
    with pytest.raises(KeyError, match="no 'fitnet' state"):
        fresh.load_extra_state({"ukd": {}})


# ---------------------------------------------------------------- coherence groups of every method
def test_coherence_groups() -> None:
    student, teacher, x, y = zoo_pair()
    for method in ("kd", "dkd", "fitnet", "reviewkd"):
        assert build_distiller(method, student, teacher, DistillSettings(), K).coherence_groups() is None
    for logit in ("dkd", "kd"):
        ukd = build_distiller("ukd", student, teacher, DistillSettings(ukd=UKDSettings(logit=logit)), K).double()
        groups = ukd.coherence_groups()
        assert groups == {"feature": ("loss_ukd",), "logit": (f"loss_{logit}",)}
        losses = ukd(x, y, 1)[1]
        assert all(losses[n].requires_grad for side in groups.values() for n in side)
    none = build_distiller("ukd", student, teacher, DistillSettings(ukd=UKDSettings(logit="none")), K)
    assert none.coherence_groups() is None


# ---------------------------------------------------------------- settings and CLI
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("weight", -1.0, "expected a finite number >= 0"),
        ("weight", float("inf"), "expected a finite number >= 0"),
        ("hint_layer", 0, "expected an int >= 1"),
        ("hint_layer", 1.5, "expected an int >= 1"),
        ("hint_layer", True, "expected an int >= 1"),
        ("input_size", 0, "expected an int >= 1"),
    ],
)
def test_settings_rules_name_the_key(field: str, value: object, message: str) -> None:
    with pytest.raises(SettingsError, match=rf"^fitnet\.{field}: {message}"):
        FitNetSettings(**{field: value})


def test_config_keys_and_their_rules() -> None:
    cfg = load_config(None, ["distill.method=fitnet_kd", "distill.fitnet.hint_layer=3", "distill.fitnet.weight=50"])
    assert cfg["distill"]["fitnet"] == {"hint_layer": 3, "weight": 50.0, "input_size": 32}
    assert DistillSettings.from_config(cfg["distill"]).fitnet == FitNetSettings(3, 50.0, 32)
    with pytest.raises(ConfigError, match=r"distill\.fitnet\.weight: expected a finite number >= 0"):
        load_config(None, ["distill.fitnet.weight=-2"])
    with pytest.raises(ConfigError, match=r"distill\.fitnet\.hint_layer"):
        load_config(None, ["distill.fitnet.hint_layer=0"])


@pytest.mark.parametrize("method", ["fitnet", "fitnet_kd"])
def test_cli_distills(method: str, teacher_ckpt: Path, tmp_path: Path, cli_small: list[str]) -> None:
    out = tmp_path / method
    args = ["distill", "--method", method, "--epochs", "1", "-t", str(teacher_ckpt), "-o", str(out), *cli_small]
    assert main(args) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    expected = {"train_ce", "train_fitnet", "train_fitnet_mse"} | ({"train_kd"} if method == "fitnet_kd" else set())
    assert expected <= set(record) and record["train_images"] == 256
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["method"] == method and set(ckpt["extra"]) == {"fitnet"}
    assert ckpt["extra"]["fitnet"]["conv.weight"].shape == (32, 32, 1, 1)  # resnet8 → resnet8 at stage 2
