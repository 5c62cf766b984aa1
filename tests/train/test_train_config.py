"""Configuration layering: defaults ← YAML file ← flags ← --set overrides; errors name the bad key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ukd.cli import build_parser, config_from_args
from ukd.train.config import (
    DEFAULTS,
    ConfigError,
    apply_override,
    available_configs,
    load_config,
    parse_override,
)


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("optim.lr=0.1", "optim.lr", 0.1),
        ("optim.epochs=7", "optim.epochs", 7),
        ("run.quiet=true", "run.quiet", True),
        ("data.train_subset=null", "data.train_subset", None),
        ("optim.milestones=[3, 5]", "optim.milestones", [3, 5]),
        ("distill.ukd.fusion=pool", "distill.ukd.fusion", "pool"),
        ("output_dir=runs/a=b", "output_dir", "runs/a=b"),  # only the first '=' splits
        (" seed = 3", "seed", 3),
    ],
)
def test_parse_override(text: str, key: str, value: object) -> None:
    assert parse_override(text) == (key, value)


def test_override_applies_and_coerces() -> None:
    cfg = apply_override(DEFAULTS, "optim.lr=1")  # an int where a float is expected is accepted
    assert cfg["optim"]["lr"] == 1.0 and isinstance(cfg["optim"]["lr"], float)
    assert DEFAULTS["optim"]["lr"] is None  # the defaults are never mutated
    cfg = apply_override(cfg, "distill.dkd.beta=6")
    assert cfg["distill"]["dkd"]["beta"] == 6.0


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("optim.lrr=0.1", r"unknown configuration key 'optim.lrr'.*lr"),
        ("optim.epochs=two", r"optim.epochs: expected an integer"),
        ("optim.epochs=2.5", r"optim.epochs: expected an integer"),
        ("run.quiet=1", r"run.quiet: expected true or false"),
        ("distill.method=hint9", r"distill.method: expected one of ce, kd, dkd, ukd"),
        ("optim=3", r"optim: expected a mapping"),
        ("noequals", r"expected key=value"),
        ("optim.lr=[1", r"not valid YAML"),
    ],
)
def test_bad_overrides_name_the_key(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        apply_override(DEFAULTS, text)


def test_validate_catches_values() -> None:
    with pytest.raises(ConfigError, match=r"optim\.epochs: expected a positive integer"):
        load_config(None, ["optim.epochs=0"])
    with pytest.raises(ConfigError, match=r"demo\.methods"):
        load_config(None, ["demo.methods=[ce, hint9]"])


@pytest.mark.parametrize(
    ("override", "loss_kwargs"),
    [
        ("distill.ukd.logvar_bound=100", {"logvar_bound": 100.0}),
        ("distill.ukd.logvar_bound=0", {"logvar_bound": 0.0}),
        ("distill.ukd.temperature=0", {"temperature": 0.0}),
        ("distill.ukd.dist_weight=.inf", {"dist_weight": float("inf")}),
    ],
)
def test_distill_ukd_values_follow_the_loss_rules(override: str, loss_kwargs: dict[str, float]) -> None:
    """A value the loss itself refuses is a configuration error naming the key, before any work starts."""
    import ukd

    with pytest.raises(ValueError, match=next(iter(loss_kwargs))):
        ukd.UnifiedDistillLoss(8, 8, 10, **loss_kwargs)
    key = re.escape(override.split("=")[0])
    with pytest.raises(ConfigError, match=rf"^{key}: expected"):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("distill.kd.temperature=0", r"^distill\.kd\.temperature: expected a finite number > 0"),
        ("distill.dkd.warmup=-1", r"^distill\.dkd\.warmup: expected a finite number >= 0"),
        ("distill.ce_weight=-1", r"^distill\.ce_weight: expected a finite number >= 0"),
        ("distill.ukd.backend=gpu", r"^distill\.ukd\.backend: expected one of auto, reference, cpu, cuda, triton"),
    ],
)
def test_distill_values_are_checked(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_yaml_file_then_overrides(tmp_path: Path) -> None:
    f = tmp_path / "run.yaml"
    f.write_text("optim:\n  lr: 0.2\n  epochs: 4\ndistill:\n  method: ukd\n  ukd: {fusion: pool}\n")
    cfg = load_config(f, ["optim.epochs=9"])
    assert cfg["optim"]["lr"] == 0.2 and cfg["optim"]["epochs"] == 9
    assert cfg["distill"]["method"] == "ukd" and cfg["distill"]["ukd"]["fusion"] == "pool"
    assert cfg["distill"]["ukd"]["logit"] == DEFAULTS["distill"]["ukd"]["logit"]  # untouched keys keep defaults
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  learning_rate: 0.2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*optim.learning_rate"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", available_configs())
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(name)
    assert cfg["data"]["name"] in ("fashion_mnist", "cifar100")


def test_shipped_configs_exist() -> None:
    assert {"demo", "fashion_mnist", "cifar100_resnet32x4_resnet8x4"} <= set(available_configs())


def test_cli_layering(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("optim: {epochs: 5, lr: 0.3}\nseed: 4\n")
    args = build_parser().parse_args(
        ["distill", "--config", str(f), "--epochs", "6", "--method", "dkd", "--set", "optim.epochs=7", "-q"]
    )
    cfg = config_from_args(args)
    assert cfg["optim"]["epochs"] == 7  # --set beats the flag, which beats the file
    assert cfg["optim"]["lr"] == 0.3 and cfg["seed"] == 4
    assert cfg["distill"]["method"] == "dkd" and cfg["run"]["quiet"] is True
    assert cfg["output_dir"] == "runs/resnet8_dkd" and cfg["teacher"]["weights"] == "runs/teacher/last.pt"

    cfg = config_from_args(build_parser().parse_args(["train-teacher"]))
    assert cfg["model"]["name"] == "resnet20" and cfg["output_dir"] == "runs/teacher"
    cfg = config_from_args(build_parser().parse_args(["demo", "--methods", "ce,ukd", "--teacher-epochs", "2"]))
    assert cfg["demo"]["methods"] == ["ce", "ukd"] and cfg["demo"]["teacher_epochs"] == 2
    assert cfg["output_dir"] == "runs/demo"


@pytest.mark.parametrize(("model", "lr"), [("resnet8", 0.05), ("MobileNetV2", 0.05), ("ShuffleV1", 0.01)])
def test_model_default_learning_rate(model: str, lr: float) -> None:
    """A null optim.lr is the model's measured default; an explicit one (flag or config) always wins."""
    from ukd.train.config import resolved_lr

    args = build_parser().parse_args(["train-teacher", "--model", model])
    assert resolved_lr(config_from_args(args)) == lr
    args = build_parser().parse_args(["distill", "--config", "demo", "--model", model])
    assert resolved_lr(config_from_args(args)) == lr  # the demo's configuration leaves it to the model
    args = build_parser().parse_args(["train-teacher", "--model", model, "--lr", "0.2"])
    assert resolved_lr(config_from_args(args)) == 0.2
    with pytest.raises(ConfigError, match=r"optim\.lr: expected a number > 0 or null"):
        load_config(None, ["optim.lr=-1"])


def test_factory_student_names_its_default_output_dir_and_lr() -> None:
    from ukd.train.config import resolved_lr

    args = build_parser().parse_args(["distill", "--model", "ShuffleV1", "--set", "model.factory=ukd.models:build"])
    cfg = config_from_args(args)
    assert cfg["output_dir"] == "runs/build_kd"  # the factory's name, not model.name's
    assert resolved_lr(cfg) == 0.05  # model.name's default (ShuffleV1: 0.01) is not the factory network's
