"""Tests of ``ukd.models.load_weights`` / ``build(..., weights=...)``: every zoo model that mdistiller defines loads an
mdistiller-layout checkpoint strictly and reproduces mdistiller's float64 eval-mode logits, ``feats[1:]``,
``preact_feats[1:]`` and ``pooled_feat`` (fixtures made by ``scripts/make_mdistiller_fixtures.py`` from mdistiller's
own model code; see ``mdistiller_fixtures.py``); the accepted file formats; and the errors."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import torch
from mdistiller_fixtures import (
    EXPECTED_FILE,
    FIXTURES,
    MDISTILLER_MODELS,
    REAL_FILES,
    check_outputs,
    fixture_input,
    synthetic_state_dict,
)

from ukd.models import WeightsError, available, build, load_weights
from ukd.models.weights import LAYOUT_MDISTILLER, LAYOUT_UKD, LAYOUT_UKD_CHECKPOINT, mdistiller_names
from ukd.train.checkpoint import save_checkpoint

RTOL = 1e-10
Reference = tuple[dict[str, torch.Tensor], torch.Tensor]  # (a state dict, the logits it gives on the input)
RESNET8 = FIXTURES / "resnet8_mdistiller.pth"  # a committed mdistiller-style checkpoint, 10 classes


@pytest.fixture(scope="module")
def expected() -> dict[str, Any]:
    return torch.load(FIXTURES / EXPECTED_FILE, map_location="cpu", weights_only=True)


def _mdistiller_file(name: str, entry: dict[str, Any], tmp_path: Path) -> Path:
    """The mdistiller-layout checkpoint of ``name``: the committed file, or one written from the regenerated weights."""
    if entry["weights_file"] is not None:
        return FIXTURES / entry["weights_file"]
    spec = [(key, tuple(shape)) for key, shape in entry["keys"]]
    path = tmp_path / f"{name}_ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": synthetic_state_dict(spec), "accuracy": 0.0}, path)
    return path


def _logits(model: torch.nn.Module, channels: int = 3) -> torch.Tensor:
    model = model.double().eval()
    with torch.no_grad():
        return model(fixture_input(channels))[0]


def test_fixtures_cover_every_mdistiller_model(expected: dict[str, Any]) -> None:
    assert list(expected["models"]) == MDISTILLER_MODELS
    assert set(MDISTILLER_MODELS) <= set(available())
    assert set(REAL_FILES) <= set(MDISTILLER_MODELS)
    assert expected["meta"]["dtype"] == "float64"


@pytest.mark.parametrize("name", MDISTILLER_MODELS)
def test_mdistiller_checkpoint_reproduces_mdistiller(name: str, expected: dict[str, Any], tmp_path: Path) -> None:
    entry = expected["models"][name]
    path = _mdistiller_file(name, entry, tmp_path)
    model = build(name, num_classes=entry["num_classes"])
    assert load_weights(model, path) == LAYOUT_MDISTILLER  # strict: every key and shape checked
    model = model.double().eval()
    with torch.no_grad():
        out = model.forward_all(fixture_input())
    check_outputs(name, out.logits, out.stages, out.preact_stages, out.pooled, entry["expected"], RTOL)
    if entry["expected"]["preact_stages"] is None:  # mdistiller's MobileNetV2 has no preact_feats
        assert all(a is b for a, b in zip(out.preact_stages, out.stages, strict=True))


@pytest.mark.parametrize("name", MDISTILLER_MODELS)
def test_mdistiller_names_are_a_bijection_onto_their_keys(name: str, expected: dict[str, Any]) -> None:
    entry = expected["models"][name]
    if entry["keys"] is not None:
        theirs = [key for key, _ in entry["keys"]]
    else:
        theirs = list(torch.load(FIXTURES / entry["weights_file"], weights_only=True)["model"])
    names = mdistiller_names(build(name, num_classes=entry["num_classes"]))
    assert names is not None
    assert sorted(names.values()) == sorted(theirs)


# ---------------------------------------------------------------------------------------------------------------------
# File formats, on resnet8 (a committed mdistiller file).
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet8() -> Reference:
    """(resnet8's mdistiller-layout state dict, the logits it gives on the fixture input)."""
    state = torch.load(RESNET8, weights_only=True)["model"]
    model = build("resnet8", num_classes=10, weights=RESNET8)
    return dict(state), _logits(model)


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


@pytest.mark.parametrize(
    "wrap",
    ["model", "state_dict", "bare", "module_prefix", "crd_last", "no_num_batches_tracked"],
)
def test_mdistiller_formats_load(wrap: str, resnet8: Reference, tmp_path: Path) -> None:
    state, want = resnet8
    obj: object
    if wrap == "model":
        obj = {"epoch": 240, "model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 0.05}]}}
    elif wrap == "state_dict":
        obj = {"state_dict": state}
    elif wrap == "bare":
        obj = state
    elif wrap == "module_prefix":  # nn.DataParallel / DDP
        obj = {"model": {f"module.{k}": v for k, v in state.items()}}
    elif wrap == "crd_last":  # CRD's *_last.pth keep the argparse options beside the weights
        obj = {"opt": argparse.Namespace(model="resnet8", epochs=240), "model": state}
    else:  # checkpoints of PyTorch < 0.4.1 have no num_batches_tracked
        obj = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = _save(obj, tmp_path / "ckpt.pth")
    model = build("resnet8", num_classes=10)
    assert load_weights(model, path) == LAYOUT_MDISTILLER
    assert torch.equal(_logits(model), want)


def test_ukd_state_dict_and_checkpoint_load(resnet8: Reference, tmp_path: Path) -> None:
    _, want = resnet8
    source = build("resnet8", num_classes=10, weights=RESNET8)
    bare = _save(source.state_dict(), tmp_path / "ukd_state.pth")
    model = build("resnet8", num_classes=10)
    assert load_weights(model, bare) == LAYOUT_UKD
    assert torch.equal(_logits(model), want)
    prefixed = _save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "ukd_dp.pth")
    assert load_weights(build("resnet8", num_classes=10), prefixed) == LAYOUT_UKD

    ckpt = tmp_path / "run" / "last.ckpt"
    ckpt.parent.mkdir()
    save_checkpoint(ckpt, {"model": source.state_dict(), "arch": {"name": "resnet8"}, "epoch": 3})
    model = build("resnet8", num_classes=10)
    assert load_weights(model, ckpt) == LAYOUT_UKD_CHECKPOINT
    assert torch.equal(_logits(model), want)
    assert torch.equal(_logits(build("resnet8", num_classes=10, weights=ckpt)), want)


def test_weights_work_for_one_channel_models(tmp_path: Path) -> None:
    source = build("wrn_16_1", num_classes=10, in_channels=1)
    path = _save(source.state_dict(), tmp_path / "fmnist.pth")
    model = build("wrn_16_1", num_classes=10, in_channels=1, weights=path)
    assert torch.equal(_logits(model, 1), _logits(source, 1))


# ---------------------------------------------------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------------------------------------------------
def test_wrong_class_count_is_named_plainly() -> None:
    path = RESNET8
    with pytest.raises(WeightsError) as info:
        build("resnet8", num_classes=100, weights=path)
    message = str(info.value)
    assert str(path) in message and "resnet8" in message and "'mdistiller'" in message
    assert "10-class classifier but the model has 100 classes" in message
    assert "fc.weight: file (10, 64) vs model (100, 64)" in message
    assert isinstance(info.value, ValueError)


def test_wrong_input_channels_are_named_plainly() -> None:
    with pytest.raises(WeightsError, match="takes 3 input channels, the model's 1"):
        build("resnet8", num_classes=10, in_channels=1, weights=RESNET8)


def test_wrong_architecture_lists_missing_and_unexpected_keys() -> None:
    path = RESNET8
    with pytest.raises(WeightsError) as info:
        build("resnet14", num_classes=10, weights=path)  # resnet8 has one block per stage, resnet14 two
    message = str(info.value)
    assert str(path) in message and "resnet14" in message and "'mdistiller'" in message
    assert "missing keys: layer1.1.conv1.weight" in message
    with pytest.raises(WeightsError) as info:
        build("wrn_16_1", num_classes=10, weights=path)  # another family: few keys in common
    assert str(path) in str(info.value) and "wrn_16_1" in str(info.value) and "unexpected keys" in str(info.value)
    with pytest.raises(WeightsError, match="layout unrecognised: no key matches"):
        build("vgg8", num_classes=10, weights=path)  # no key in common at all


def test_ukd_checkpoint_of_another_architecture(tmp_path: Path) -> None:
    ckpt = tmp_path / "last.ckpt"
    save_checkpoint(ckpt, {"model": build("resnet8").state_dict(), "arch": {"name": "resnet8"}})
    with pytest.raises(WeightsError) as info:
        build("resnet14", weights=ckpt)
    message = str(info.value)
    assert str(ckpt) in message and "'resnet8'" in message and "'resnet14'" in message
    assert "'ukd-checkpoint'" in message


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint at all" * 10)
    with pytest.raises(WeightsError, match=r"garbage\.pth") as info:
        build("resnet8", weights=garbage)
    assert "torch.load" in str(info.value)
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match=r"nope\.pth: not found"):
        build("resnet8", weights=missing)
    for bad in ([1, 2, 3], {"epoch": 3, "model": {"fc": 1.0}}, {}):
        path = _save(bad, tmp_path / "not_a_state_dict.pth")
        with pytest.raises(WeightsError, match=r"not_a_state_dict\.pth: not a state dict"):
            build("resnet8", weights=path)
    broken = tmp_path / "broken.ckpt"
    save_checkpoint(broken, {"model": build("resnet8").state_dict(), "arch": {"name": "resnet8"}})
    broken.write_bytes(broken.read_bytes()[:-10])  # truncated ukd checkpoint
    with pytest.raises(WeightsError, match=r"broken\.ckpt.*truncated"):
        build("resnet8", weights=broken)
