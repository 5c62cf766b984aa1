"""End to end on a few dozen Fashion-MNIST images: train-teacher, distill, evaluate, demo, exact resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tiny_run import TINY, TINY_ARGS

from ukd.cli import main
from ukd.train.checkpoint import CheckpointError, load_checkpoint
from ukd.train.config import load_config
from ukd.train.metrics import read_metrics
from ukd.train.trainer import lr_factor, train


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    rc = main(["train-teacher", "--model", "resnet8", "--epochs", "1", "-o", str(out), *TINY_ARGS])
    assert rc == 0
    return out / "last.pt"


def test_train_teacher_writes_its_files(teacher_ckpt: Path) -> None:
    out = teacher_ckpt.parent
    assert {"last.pt", "metrics.jsonl", "curves.png", "summary.json"} <= {p.name for p in out.iterdir()}
    records = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1]
    for key in ("train_loss", "train_top1", "test_loss", "test_top1", "test_top5", "lr", "epoch_time"):
        assert key in records[0]
    assert 0 <= records[0]["test_top1"] <= records[0]["test_top5"] <= 100
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = load_checkpoint(teacher_ckpt)
    assert ckpt["epoch"] == 1 and ckpt["method"] == "ce" and ckpt["arch"]["name"] == "resnet8"
    for key in ("optimizer", "scheduler", "rank_states", "config", "extra"):
        assert key in ckpt
    rng = ckpt["rank_states"][0]
    assert {"torch", "numpy", "python"} <= set(rng["rng"]) and rng["loader"]["train_generator"] is not None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["final"]["test_top1"] == records[-1]["test_top1"]


@pytest.mark.parametrize("method", ["ukd", "dkd"])
def test_distill_and_evaluate(method: str, teacher_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / method
    args = ["distill", "--method", method, "-t", str(teacher_ckpt), "--epochs", "2", "-o", str(out), *TINY_ARGS]
    assert main([*args, "--set", "distill.ukd.fusion=abf"]) == 0
    records = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"train_ce", "train_dkd"} <= set(records[0])  # dkd is also ukd's logit term
    ckpt = load_checkpoint(out / "last.pt")
    if method == "ukd":
        assert {"train_ukd_dist", "train_ukd_supp", "train_ukd"} <= set(records[0])
        heads = ckpt["extra"]["ukd"]  # the UKD heads and fusion are saved with the student
        assert heads["student_head.weight"].shape[0] == 20 and any(k.startswith("fusion.") for k in heads)
    else:
        assert ckpt["extra"] == {}
    capsys.readouterr()
    assert main(["evaluate", str(out / "last.pt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_size"] == 40 and result["epoch"] == 2
    assert result["test_top1"] == pytest.approx(records[-1]["test_top1"])


def _state(path: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(path)
    flat = {f"model.{k}": v for k, v in ckpt["model"].items()}
    flat.update({f"extra.{k}": v for k, v in ckpt["extra"].get("ukd", {}).items()})
    for pid, st in ckpt["optimizer"]["state"].items():
        flat[f"momentum.{pid}"] = st["momentum_buffer"]
    return flat


def test_resume_is_bit_exact(teacher_ckpt: Path, tmp_path: Path) -> None:
    """ukd (noise sampling, heads, fusion) with augmentation: stop after epoch 1 of 3 and resume == straight run."""
    common = [*TINY, f"teacher.weights={teacher_ckpt}", "distill.method=ukd", "distill.ukd.fusion=abf"]
    common += ["optim.epochs=3", "optim.schedule=step", "optim.milestones=[2]", "distill.dkd.warmup=3"]
    straight = train(load_config(None, [*common, f"output_dir={tmp_path / 'a'}"]))
    assert straight.finished

    part = train(load_config(None, [*common, f"output_dir={tmp_path / 'b'}", "run.stop_after=1"]))
    assert not part.finished and load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    resumed = train(load_config(None, [*common, f"output_dir={tmp_path / 'b'}", "run.resume=true"]))
    assert resumed.finished

    a, b = _state(tmp_path / "a" / "last.pt"), _state(tmp_path / "b" / "last.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bit-identical, not merely close
    ra, rb = read_metrics(tmp_path / "a" / "metrics.jsonl"), read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["epoch"] for r in rb] == [1, 2, 3]
    for x, y in zip(ra, rb):
        assert x["train_loss"] == y["train_loss"] and x["test_top1"] == y["test_top1"]

    # resuming a finished run trains nothing and reports the same result
    again = train(load_config(None, [*common, f"output_dir={tmp_path / 'b'}", "run.resume=true"]))
    assert again.final["test_top1"] == resumed.final["test_top1"]
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 3


def test_resume_from_damaged_checkpoint_fails_loudly(
    teacher_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    cfg = load_config(None, [*TINY, "optim.epochs=2", "run.stop_after=1", f"output_dir={out}"])
    train(cfg, method="ce")
    ckpt = out / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:-100])  # truncated, as by a crash during a non-atomic copy
    with pytest.raises(CheckpointError, match=r"last\.pt: truncated"):
        train(load_config(None, [*TINY, "optim.epochs=2", "run.resume=true", f"output_dir={out}"]), method="ce")
    capsys.readouterr()
    rc = main(["train-teacher", "--model", "resnet8", "--epochs", "2", "-o", str(out), "--resume", *TINY_ARGS])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(ckpt) in err and "truncated" in err
    assert ckpt.stat().st_size > 0  # the damaged file is left for inspection, not overwritten by a fresh start


def test_resume_refuses_another_runs_checkpoint(teacher_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(teacher_ckpt.read_bytes())
    cfg = load_config(None, [*TINY, "model.name=resnet14", "run.resume=true", f"output_dir={out}"])
    with pytest.raises(CheckpointError, match="model 'resnet8' vs 'resnet14'"):
        train(cfg, method="ce")


def test_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    args = ["demo", "-o", str(out), "--teacher-model", "resnet8", "--teacher-epochs", "1", "--epochs", "1", *TINY_ARGS]
    assert main(args) == 0
    printed = capsys.readouterr().out
    for method in ("ce", "kd", "ukd"):
        assert f"| student | resnet8 | {method} |" in printed
        assert (out / method / "last.pt").is_file()
    assert "| teacher | resnet8 | ce |" in printed and "Total wall time" in printed
    assert (out / "comparison.png").is_file() and (out / "results.md").is_file()
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["ce", "ce", "kd", "ukd"]


def test_extending_a_run_on_resume_follows_the_new_schedule(tmp_path: Path) -> None:
    """2 cosine epochs, then --epochs 4 --resume: epochs 3-4 run on the 4-epoch schedule, never at lr 0."""
    common = [*TINY, "optim.schedule=cosine", f"output_dir={tmp_path}"]
    train(load_config(None, [*common, "optim.epochs=2"]), method="ce")
    train(load_config(None, [*common, "optim.epochs=4", "run.resume=true"]), method="ce")
    lrs = [r["lr"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    expected = [0.02 * (1 + math.cos(math.pi * done / total)) / 2 for done, total in ((0, 2), (1, 2), (2, 4), (3, 4))]
    assert lrs == pytest.approx(expected, rel=1e-12) and min(lrs) > 0


@pytest.mark.parametrize("schedule", ["cosine", "step", "constant"])
def test_lr_schedule_equals_torchs_schedulers(schedule: str) -> None:
    """The closed-form schedule against torch's own CosineAnnealingLR / MultiStepLR stepped epoch by epoch."""
    cfg = {"schedule": schedule, "epochs": 7, "milestones": [2, 5], "gamma": 0.3}
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    if schedule == "cosine":
        ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7)
    else:
        ref = torch.optim.lr_scheduler.MultiStepLR(opt, [2, 5] if schedule == "step" else [], gamma=0.3)
    for done in range(7):
        assert 0.1 * lr_factor(done, cfg) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        opt.step()
        ref.step()
