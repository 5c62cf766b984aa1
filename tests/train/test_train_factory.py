"""User networks in the trainer (``model.factory`` / ``teacher.factory`` + layer names, ``ukd.train.factory``).

The networks are written by the tests into a module of their own (``usernets``), not taken from the zoo: a plain CNN
student and a residual teacher with nested ``nn.Sequential`` stages that returns a tuple. The adapter's features are
checked against tensors computed by hand from the parameters, the trainer against its own files and against the
user's plain networks loading the checkpoints, and every configuration error against the one-line CLI contract.
"""

from __future__ import annotations

import json
import math
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from tiny_run import TINY, TINY_ARGS
from torch import Tensor, nn

from ukd.cli import main
from ukd.distillers import DISTILLERS, DistillSettings, build_distiller
from ukd.models.weights import WeightsError, read_weights
from ukd.train import trainer as trainer_mod
from ukd.train.checkpoint import CheckpointError, load_checkpoint
from ukd.train.config import ConfigError, load_config
from ukd.train.factory import (
    FactoryModel,
    FactoryModelError,
    build_network,
    factory_arguments,
    load_network_weights,
    network_arch,
    preact_requirements,
)
from ukd.train.metrics import read_metrics

USERNETS = textwrap.dedent(
    '''
    """Networks of a user of ukd, unknown to its zoo."""

    from torch import nn

    WIDTH = 8  # not a factory: a name that is not callable


    def conv_unit(c_in, c_out, stride):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


    class PlainCNN(nn.Module):
        def __init__(self, num_classes, in_channels, width):
            super().__init__()
            self.body = nn.Sequential(
                conv_unit(in_channels, width, 1), conv_unit(width, 2 * width, 2), conv_unit(2 * width, 4 * width, 2)
            )
            self.fc = nn.Linear(4 * width, num_classes)

        def forward(self, x):
            return self.fc(self.body(x).mean((2, 3)))


    def make_student(num_classes, in_channels, width=8):
        return PlainCNN(num_classes, in_channels, width)


    class Residual(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.branch = nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
                nn.BatchNorm2d(c_out),
            )
            self.shortcut = nn.Sequential()
            if stride != 1 or c_in != c_out:
                self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.branch(x) + self.shortcut(x))


    class ResidualNet(nn.Module):
        def __init__(self, num_classes, in_channels, width):
            super().__init__()
            self.stem = conv_unit(in_channels, width, 1)
            self.stages = nn.Sequential(
                nn.Sequential(Residual(width, width, 1), Residual(width, width, 1)),
                nn.Sequential(Residual(width, 2 * width, 2)),
                nn.Sequential(Residual(2 * width, 4 * width, 2)),
            )
            self.classifier = nn.Linear(4 * width, num_classes)

        def forward(self, x):
            x = self.stages(self.stem(x))
            return self.classifier(x.mean((2, 3))), x  # a tuple: the logits first


    def make_teacher(num_classes, in_channels, width=12):
        return ResidualNet(num_classes, in_channels, width)


    def make_fixed_student(width=8):  # no num_classes parameter: always 7 classes
        return PlainCNN(7, 1, width)
    '''
)

STUDENT_LAYERS = "model.layers=[body.0, body.1, body.2]"
TEACHER_LAYERS = ["stages.0", "stages.1", "stages.2"]
STUDENT = ["--set", "model.factory=usernets:make_student", "--set", STUDENT_LAYERS]
TEACHER = ["--set", "teacher.factory=usernets:make_teacher", "--set", f"teacher.layers=[{', '.join(TEACHER_LAYERS)}]"]
EPOCH = ["--epochs", "1", *TINY_ARGS]


@pytest.fixture(scope="module")
def usernets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The module ``usernets`` (written to a temporary folder put first on ``sys.path``), imported."""
    folder = tmp_path_factory.mktemp("usernets")
    (folder / "usernets.py").write_text(USERNETS, encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        patch.delitem(sys.modules, "usernets", raising=False)
        import usernets as module

        yield module
        sys.modules.pop("usernets", None)


@pytest.fixture(scope="module")
def teacher_ckpt(usernets: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``usernets:make_teacher`` network trained one epoch by ``ukd train-teacher``, with its layers stored."""
    out = tmp_path_factory.mktemp("factory-teacher")
    layers = f"model.layers=[{', '.join(TEACHER_LAYERS)}]"
    args = ["train-teacher", "--set", "model.factory=usernets:make_teacher", "--set", layers, "-o", str(out)]
    assert main([*args, *EPOCH]) == 0
    return out / "last.pt"


@pytest.fixture
def no_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a run gets as far as a training step."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the run reached a training step before the error was reported")

    monkeypatch.setattr(trainer_mod, "_train_step", refuse)


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a run gets as far as loading data and building networks."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the run started work before the error was reported")

    monkeypatch.setattr(trainer_mod, "_setup_run", refuse)


def _one_line_error(capsys: pytest.CaptureFixture, command: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"ukd {command}: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------------------------------------------------
# The adapter against tensors computed by hand.
# ---------------------------------------------------------------------------------------------------------------------
def _randomise_batchnorm(model: nn.Module) -> None:
    """Running statistics and affine parameters away from their defaults, so that BatchNorm does something."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn_like(m.running_mean))
                m.running_var.copy_(0.5 + torch.rand_like(m.running_var))
                m.weight.copy_(1 + 0.2 * torch.randn_like(m.weight))
                m.bias.copy_(0.2 * torch.randn_like(m.bias))


def _bn(x: Tensor, m: nn.BatchNorm2d) -> Tensor:
    """Eval-mode BatchNorm written out: (x - mean) / sqrt(var + eps) * weight + bias, per channel."""
    shape = (1, -1, 1, 1)
    scale = (m.weight / torch.sqrt(m.running_var + m.eps)).view(shape)
    return (x - m.running_mean.view(shape)) * scale + m.bias.view(shape)


def _conv(x: Tensor, conv: nn.Conv2d, stride: int, padding: int) -> Tensor:
    return F.conv2d(x, conv.weight, None, stride, padding)


def _unit_by_hand(x: Tensor, unit: nn.Sequential, stride: int) -> tuple[Tensor, Tensor]:
    """(pre-activation, output) of conv 3x3 → BN → ReLU."""
    pre = _bn(_conv(x, unit[0], stride, 1), unit[1])
    return pre, pre.clamp_min(0)


def _residual_by_hand(x: Tensor, block: nn.Module, stride: int) -> tuple[Tensor, Tensor]:
    """(pre-activation, output) of relu(BN(conv(relu(BN(conv(x))))) + shortcut(x))."""
    branch = block.branch
    h = _bn(_conv(x, branch[0], stride, 1), branch[1]).clamp_min(0)
    h = _bn(_conv(h, branch[3], 1, 1), branch[4])
    shortcut = x if len(block.shortcut) == 0 else _bn(_conv(x, block.shortcut[0], stride, 0), block.shortcut[1])
    pre = h + shortcut
    return pre, pre.clamp_min(0)


def test_student_stages_equal_the_tensors_computed_by_hand(usernets: ModuleType) -> None:
    net = usernets.make_student(5, 2, width=4).double().eval()
    _randomise_batchnorm(net)
    model = FactoryModel(
        net, ["body.0", "body.1", "body.2"], torch.zeros(2, 2, 12, 12, dtype=torch.float64), preact=True
    )
    x = torch.randn(3, 2, 12, 12, dtype=torch.float64)
    out = model.forward_all(x)

    pre, h, stages, preacts = None, x, [], []
    for unit, stride in zip(net.body, (1, 2, 2)):
        pre, h = _unit_by_hand(h, unit, stride)
        preacts.append(pre)
        stages.append(h)
    pooled = h.mean((2, 3))
    logits = pooled @ net.fc.weight.T + net.fc.bias
    assert [tuple(s.shape) for s in out.stages] == [(3, 4, 12, 12), (3, 8, 6, 6), (3, 16, 3, 3)]
    for got, want in zip(
        [*out.stages, *out.preact_stages, out.pooled, out.logits], [*stages, *preacts, pooled, logits]
    ):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert model.stage_channels == [4, 8, 16] and model.pooled_channels == 16 and model.num_classes == 5
    logits_only, stage_list = model(x)  # the zoo's forward: (logits, stages)
    torch.testing.assert_close(logits_only, logits, rtol=1e-12, atol=1e-12)
    assert len(stage_list) == 3


def test_teacher_stages_of_nested_residual_blocks_equal_the_tensors_computed_by_hand(usernets: ModuleType) -> None:
    net = usernets.make_teacher(6, 1, width=4).double().eval()
    _randomise_batchnorm(net)
    model = FactoryModel(net, TEACHER_LAYERS, torch.zeros(2, 1, 12, 12, dtype=torch.float64), preact=True)
    x = torch.randn(2, 1, 12, 12, dtype=torch.float64)
    out = model.forward_all(x)

    _, h = _unit_by_hand(x, net.stem, 1)
    stages, preacts = [], []
    for stage, stride in zip(net.stages, (1, 2, 2)):
        for index, block in enumerate(stage):  # the stage's output is its last block's; its stride is the first's
            pre, h = _residual_by_hand(h, block, stride if index == 0 else 1)
        stages.append(h)
        preacts.append(pre)
    pooled = h.mean((2, 3))
    logits = pooled @ net.classifier.weight.T + net.classifier.bias
    for got, want in zip(
        [*out.stages, *out.preact_stages, out.pooled, out.logits], [*stages, *preacts, pooled, logits]
    ):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert model.stage_channels == [4, 8, 16] and model.pooled_channels == 16


def test_training_mode_features_are_the_networks_own_values(usernets: ModuleType) -> None:
    """In training mode (batch statistics) the deepest stage is the map the teacher returns beside its logits."""
    net = usernets.make_teacher(6, 1, width=4).train()
    model = FactoryModel(net, TEACHER_LAYERS, torch.zeros(2, 1, 12, 12))
    x = torch.randn(4, 1, 12, 12)
    out = model.forward_all(x)
    logits, deepest = net(x)  # batch statistics: the same values again (only the running averages move)
    assert torch.equal(out.stages[2], deepest) and torch.equal(out.logits, logits)
    assert out.stages[2].requires_grad  # the autograd history is kept: the student side can train through it


def test_state_dict_is_the_networks_own_and_hooks_leave_no_trace(usernets: ModuleType) -> None:
    net = usernets.make_student(10, 1)
    keys = list(net.state_dict())
    model = FactoryModel(net, ["body.0", "body.2"], torch.zeros(2, 1, 28, 28))
    assert list(model.state_dict()) == keys
    parent = nn.Module()
    parent.student = model
    assert list(parent.state_dict()) == [f"student.{k}" for k in keys]
    other = usernets.make_student(10, 1)
    model.load_state_dict(other.state_dict())  # the user's plain keys load into the adapter ...
    parent.load_state_dict(parent.state_dict())  # ... and the adapter's keys under a parent's prefix too
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), other.state_dict().values()))
    fresh = usernets.make_student(10, 1)
    fresh.load_state_dict(model.state_dict())  # and back into a plain network
    model.remove_hooks()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_preact_not_captured_and_not_available(usernets: ModuleType) -> None:
    net = usernets.make_student(10, 1)
    model = FactoryModel(net, ["body.0"], torch.zeros(2, 1, 28, 28))
    with pytest.raises(RuntimeError, match=r"pre-activation stages were not captured .*preact=True"):
        list(model.forward_all(torch.zeros(1, 1, 28, 28)).preact_stages)
    fresh = usernets.make_student(10, 1)
    with pytest.raises(FactoryModelError, match=r"^preact: layer 'body\.0\.0' \(Conv2d\): kind='preact'") as info:
        FactoryModel(fresh, ["body.0.0"], torch.zeros(2, 1, 28, 28), preact=True)
    assert info.value.argument == "preact"
    with pytest.raises(
        FactoryModelError, match=r"^forward: one forward of PlainCNN on a \(2, 3, 28, 28\) batch"
    ) as info:
        FactoryModel(fresh, ["body.0"], torch.zeros(2, 3, 28, 28))  # the network takes 1 input channel
    assert info.value.argument == "forward"
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in fresh.modules())  # nothing left behind


def test_pooled_default_custom_and_absent(usernets: ModuleType) -> None:
    net = usernets.make_teacher(10, 1, width=4).eval()
    x = torch.randn(2, 1, 12, 12)
    by_default = FactoryModel(net, [], torch.zeros(2, 1, 12, 12)).forward_all(x).pooled
    torch.testing.assert_close(by_default, net(x)[1].mean((2, 3)))
    as_map = FactoryModel(net, [], torch.zeros(2, 1, 12, 12), pooled="stages").forward_all(x).pooled  # (B, C, H, W)
    torch.testing.assert_close(as_map, by_default)
    headless = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = FactoryModel(headless, ["0"], torch.zeros(2, 1, 8, 8))
    assert model.forward_all(torch.zeros(2, 1, 8, 8)).pooled is None
    with pytest.raises(ValueError, match=r"no nn\.Linear"):
        _ = model.pooled_channels


def test_factory_arguments_add_only_what_the_factory_takes(usernets: ModuleType) -> None:
    assert factory_arguments(usernets.make_student, {"width": 4}, 10, 3) == {
        "width": 4,
        "num_classes": 10,
        "in_channels": 3,
    }
    assert factory_arguments(usernets.make_student, {"num_classes": 7}, 10, 3) == {"num_classes": 7, "in_channels": 3}
    assert factory_arguments(usernets.make_fixed_student, {}, 10, 3) == {}

    def catch_all(**kwargs: object) -> nn.Module:
        raise AssertionError("not called")

    assert factory_arguments(catch_all, {}, 10, 3) == {}


def test_build_network_for_the_data(usernets: ModuleType) -> None:
    info = {"num_classes": 10, "in_channels": 1, "image_size": (28, 28)}
    section = {"name": "resnet8", "factory": "usernets:make_student", "kwargs": {"width": 4}, "layers": ["body.1"]}
    model = build_network(section, info)
    assert isinstance(model, FactoryModel) and model.label == "usernets:make_student"
    assert model.stage_channels == [8] and model.stage_shapes == [(8, 14, 14)] and model.num_classes == 10
    arch = network_arch(section, info)
    assert arch == {
        "name": "usernets:make_student",
        "num_classes": 10,
        "in_channels": 1,
        "factory": "usernets:make_student",
        "kwargs": {"width": 4},
        "layers": ["body.1"],
        "pooled": None,
        "image_size": [28, 28],
    }
    with pytest.raises(ValueError, match=r"^model\.factory=usernets:make_fixed_student: the network outputs 7 logits"):
        build_network({**section, "factory": "usernets:make_fixed_student"}, info)
    with pytest.raises(ValueError, match=r"^teacher\.layers: unknown layer 'body\.9' .*closest valid names"):
        build_network({**section, "layers": ["body.9"]}, info, key="teacher")


# ---------------------------------------------------------------------------------------------------------------------
# Every method on a factory pair, with the pre-activations preact_requirements asks for.
# ---------------------------------------------------------------------------------------------------------------------
SETTINGS = [
    ("ukd", {}),
    ("ukd", {"ukd": {"student_preact": True, "teacher_preact": True, "student_pooled": True}}),
    ("reviewkd", {}),
    ("reviewkd", {"reviewkd": {"student_preact": True}}),
    ("fitnet", {}),
    ("fitnet_kd", {}),
    ("kd", {}),
    ("dkd", {}),
    ("ce", {}),
]


def test_the_settings_table_covers_every_method() -> None:
    assert {method for method, _ in SETTINGS} == set(DISTILLERS)


@pytest.mark.parametrize(("method", "overrides"), SETTINGS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(SETTINGS)])
def test_every_method_runs_on_a_factory_pair(usernets: ModuleType, method: str, overrides: dict) -> None:
    cfg = load_config(None, [f"distill.{s}.{k}={v}".lower() for s, d in overrides.items() for k, v in d.items()])
    settings = DistillSettings.from_config(cfg["distill"])
    needs = preact_requirements(method, settings)
    info = {"num_classes": 10, "in_channels": 1, "image_size": (16, 16)}
    student = build_network(
        {"factory": "usernets:make_student", "layers": ["body.0", "body.1", "body.2"]},
        info,
        preact=needs.get("student"),
    )
    teacher = build_network(
        {"factory": "usernets:make_teacher", "layers": TEACHER_LAYERS}, info, key="teacher", preact=needs.get("teacher")
    )
    distiller = build_distiller(method, student, None if method == "ce" else teacher, settings, 10).train()
    logits, losses = distiller(torch.randn(4, 1, 16, 16), torch.randint(0, 10, (4,)), epoch=1)
    assert logits.shape == (4, 10) and all(math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in student.parameters())
    if "teacher" in needs:  # without the pre-activations it asks for, the method cannot run
        bare = build_network({"factory": "usernets:make_teacher", "layers": TEACHER_LAYERS}, info, key="teacher")
        distiller = build_distiller(method, student, bare, settings, 10).train()
        with pytest.raises(RuntimeError, match="not captured"):
            distiller(torch.randn(4, 1, 16, 16), torch.randint(0, 10, (4,)), epoch=1)


# ---------------------------------------------------------------------------------------------------------------------
# The trainer, end to end through the CLI.
# ---------------------------------------------------------------------------------------------------------------------
def test_train_teacher_stores_what_rebuilds_the_factory_network(usernets: ModuleType, teacher_ckpt: Path) -> None:
    ckpt = load_checkpoint(teacher_ckpt)
    assert ckpt["arch"]["name"] == ckpt["arch"]["factory"] == "usernets:make_teacher"
    assert ckpt["arch"]["layers"] == TEACHER_LAYERS and ckpt["arch"]["kwargs"] == {}
    plain = usernets.make_teacher(10, 1)
    plain.load_state_dict(ckpt["model"])  # the user's own network, no prefix to strip
    summary = json.loads((teacher_ckpt.parent / "summary.json").read_text())
    assert summary["model"] == "usernets:make_teacher"
    rebuilt, _ = trainer_mod.load_model(teacher_ckpt)
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(rebuilt(x)[0], plain.eval()(x)[0])


DISTILL_CASES = [
    ("ukd", TEACHER, "train_ukd"),
    ("fitnet_kd", TEACHER, "train_fitnet"),
    ("reviewkd", TEACHER, "train_reviewkd"),
    ("ukd", [], "train_ukd"),  # the teacher's factory and layers read from its checkpoint
]


@pytest.mark.parametrize(
    ("method", "teacher_args", "feature_term"), DISTILL_CASES, ids=["ukd", "fitnet_kd", "reviewkd", "ukd-stored"]
)
def test_distill_a_factory_student_from_a_factory_teacher(
    usernets: ModuleType,
    teacher_ckpt: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    method: str,
    teacher_args: list[str],
    feature_term: str,
) -> None:
    out = tmp_path / method
    args = ["distill", "--method", method, *STUDENT, *teacher_args, "--set", f"teacher.weights={teacher_ckpt}"]
    assert main([*args, "-o", str(out), *EPOCH]) == 0
    (record,) = read_metrics(out / "metrics.jsonl")
    assert math.isfinite(record[feature_term]) and record[feature_term] > 0  # the feature term was computed
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["arch"]["factory"] == "usernets:make_student" and ckpt["arch"]["layers"] == [
        "body.0",
        "body.1",
        "body.2",
    ]
    usernets.make_student(10, 1).load_state_dict(ckpt["model"])  # loads into the user's plain student
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "usernets:make_student" and summary["teacher"] == "usernets:make_teacher"
    capsys.readouterr()
    assert main(["evaluate", str(out / "last.pt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "usernets:make_student" and result["test_size"] == 40
    assert result["test_top1"] == pytest.approx(record["test_top1"])  # the rebuilt network scores as in the run


def test_evaluate_plain_weights_of_a_factory_network(
    usernets: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    net = usernets.make_student(10, 1)
    path = tmp_path / "student.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)  # DDP-style
    overrides = ["--set", "model.factory=usernets:make_student", "--set", "data.test_subset=40", "--json"]
    assert main(["evaluate", str(path), *overrides]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "usernets:make_student" and result["test_size"] == 40


def test_resume_of_a_factory_run_is_bit_exact(usernets: ModuleType, tmp_path: Path) -> None:
    common = [*TINY, "model.factory=usernets:make_student", STUDENT_LAYERS, "optim.epochs=2"]
    trainer_mod.train(load_config(None, [*common, f"output_dir={tmp_path / 'straight'}"]), method="ce")
    stopped = [*common, f"output_dir={tmp_path / 'resumed'}"]
    trainer_mod.train(load_config(None, [*stopped, "run.stop_after=1"]), method="ce")
    trainer_mod.train(load_config(None, [*stopped, "run.resume=true"]), method="ce")
    straight, resumed = (load_checkpoint(tmp_path / d / "last.pt")["model"] for d in ("straight", "resumed"))
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    changed = load_config(None, [*stopped, "run.resume=true", "model.kwargs={width: 4}", "optim.epochs=3"])
    with pytest.raises(
        CheckpointError, match=r"cannot resume this run from it \(model\.kwargs \{\} vs \{'width': 4\}\)"
    ):
        trainer_mod.train(changed, method="ce")


# ---------------------------------------------------------------------------------------------------------------------
# Errors: one line, exit status 2, before any work (configuration) or any step (networks, weights).
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("usernets", r"model\.factory: expected 'package\.module:function'"),
        ("usernets:make_studnet", r"model\.factory: usernets:make_studnet: usernets has no attribute 'make_studnet'"),
        ("no_such_module_17:make", r"cannot import module 'no_such_module_17' \(ModuleNotFoundError: No module named"),
        ("usernets:WIDTH", r"model\.factory: usernets:WIDTH: not callable \(a int\)"),
    ],
)
@pytest.mark.parametrize("command", ["train-teacher", "distill"])
def test_bad_factory_strings(
    usernets: ModuleType,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    no_work: None,
    command: str,
    factory: str,
    message: str,
) -> None:
    args = [command, "--set", f"model.factory={factory}", "-o", str(tmp_path / "run"), *EPOCH]
    assert main(args) == 2
    assert _one_line_error_matches(capsys, command, message)
    assert not (tmp_path / "run").exists()


def _one_line_error_matches(capsys: pytest.CaptureFixture, command: str, pattern: str) -> bool:
    err = _one_line_error(capsys, command)
    assert re.search(pattern, err), err
    return True


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([*STUDENT, "--set", "model.layers=body.0"], r"model\.layers: expected a list of module names"),
        ([*STUDENT, "--set", "model.layers=[{name: b, kind: pre}]"], r"model\.layers: layer 'b': kind must be one of"),
        ([*STUDENT, "--set", "model.kwargs=3"], r"model\.kwargs: expected a mapping of keyword arguments, got 3"),
        (["--set", "model.layers=[layer1]"], r"model\.layers: only with model\.factory; the zoo model resnet8 brings"),
        ([*TEACHER, "--set", "teacher.name=resnet8"], r"teacher\.name \(resnet8\) and teacher\.factory .* set one"),
        (["--set", "teacher.kwargs={width: 4}"], r"teacher\.kwargs: only with teacher\.factory"),
    ],
    ids=[
        "layers-not-a-list",
        "bad-kind",
        "kwargs-not-a-mapping",
        "layers-of-a-zoo-model",
        "name-and-factory",
        "kwargs",
    ],
)
def test_bad_factory_settings(
    usernets: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture, no_work: None, extra: list, message: str
) -> None:
    assert main(["distill", "--method", "ukd", *extra, "-o", str(tmp_path / "run"), *EPOCH]) == 2
    assert _one_line_error_matches(capsys, "distill", message)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "model.layers=[body.0, body.9]"], r"model\.layers: unknown layer 'body\.9' in PlainCNN; closest"),
        (
            [*TEACHER, "--set", "teacher.layers=[stages.7]"],
            r"teacher\.layers: unknown layer 'stages\.7' in ResidualNet",
        ),
        (
            [*TEACHER, "--set", "teacher.kwargs.width=16"],
            r"cannot load .*last\.pt into usernets:make_teacher: \d+ shape mismatch\(es\): stem\.0\.weight: file "
            r"\(12, 1, 3, 3\) vs model \(16, 1, 3, 3\)",
        ),
        (
            ["--set", "model.layers=[body.0.0, body.1]", "--set", "distill.ukd.student_preact=true"],
            r"distill\.ukd\.student_preact=true needs the pre-activation of every layer of model\.layers: layer "
            r"'body\.0\.0' \(Conv2d\)",
        ),
        (
            ["--set", "teacher.layers=[stages.0.0.branch]", "--set", "distill.method=reviewkd"],
            r"distill\.method=reviewkd .* needs the pre-activation of every layer of teacher\.layers: layer "
            r"'stages\.0\.0\.branch'",
        ),
        (["--set", "teacher.factory=usernets:make_teacher"], r"distill\.method=ukd reads the teacher's stage features"),
        (
            ["--set", "teacher.layers=[stages.0, stages.1]", "--set", "distill.method=reviewkd"],
            r"cannot distil usernets:make_student from usernets:make_teacher: .*student has 3 stages, the teacher 2",
        ),
    ],
    ids=["student-layer", "teacher-layer", "weights-shapes", "student-preact", "teacher-preact", "no-layers", "stages"],
)
def test_networks_that_do_not_fit_fail_before_any_step(
    usernets: ModuleType,
    teacher_ckpt: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    no_step: None,
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "run"
    args = ["distill", "--method", "ukd", *STUDENT, "--set", f"teacher.weights={teacher_ckpt}", *extra]
    assert main([*args, "-o", str(out), *EPOCH]) == 2
    assert _one_line_error_matches(capsys, "distill", message)
    assert not (out / "last.pt").exists()


def test_teacher_weights_of_another_network(
    usernets: ModuleType, teacher_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture, no_step: None
) -> None:
    path = tmp_path / "student-as-teacher.pt"
    torch.save(usernets.make_student(10, 1).state_dict(), path)  # a bare state dict of the wrong network
    args = ["distill", "--method", "kd", *STUDENT, *TEACHER, "--set", f"teacher.weights={path}"]
    assert main([*args, "-o", str(tmp_path / "run"), *EPOCH]) == 2
    err = _one_line_error(capsys, "distill")
    assert f"cannot load {path} into usernets:make_teacher" in err
    assert "missing key(s): stem.0.weight" in err and "unexpected key(s): body.0.0.weight" in err
    with pytest.raises(WeightsError, match="a ukd checkpoint of 'usernets:make_teacher', not of 'usernets:make_s"):
        load_network_weights(usernets.make_student(10, 1), read_weights(teacher_ckpt), "usernets:make_student")


def test_kwargs_merge_like_a_section_and_keep_other_keys(usernets: ModuleType) -> None:
    cfg = load_config(None, ["model.factory=usernets:make_student", "model.kwargs={width: 4, depth: {a: 1, b: 2}}"])
    cfg = load_config(None, ["model.kwargs.depth.b=3"], base=cfg)
    assert cfg["model"]["kwargs"] == {"width": 4, "depth": {"a": 1, "b": 3}}
    with pytest.raises(ConfigError, match=r"unknown configuration key 'model\.kwarg'"):
        load_config(None, ["model.kwarg={width: 4}"])
