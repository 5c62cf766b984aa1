"""``ukd distill --config unikd_paper`` from a teacher as mdistiller/CRD ship it, on a CIFAR-100-format folder and on
the default Fashion-MNIST data; ``ukd evaluate`` of such a teacher; one-line errors for a teacher that does not fit."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ukd.cli import main
from ukd.models import build
from ukd.models.weights import mdistiller_names
from ukd.train.checkpoint import load_checkpoint, save_checkpoint
from ukd.train.config import load_config
from ukd.train.data import build_train_loaders
from ukd.train.distributed import init_distributed
from ukd.train.metrics import read_metrics
from ukd.train.trainer import evaluate

QUIET = ["--set", "run.quiet=true", "--set", "run.threads=1", "--set", "data.num_workers=0"]


def write_cifar100(root: Path, n_train: int, n_test: int) -> None:
    """A CIFAR-100 python-format folder (``cifar-100-python/{train,test}``) of random images and labels."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        labels = [int(v) for v in rng.integers(0, 100, n)]
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"fine_labels": labels,
            b"coarse_labels": labels,
        }
        (folder / name).write_bytes(pickle.dumps(batch))


def save_mdistiller_checkpoint(name: str, path: Path, num_classes: int, in_channels: int = 3) -> torch.nn.Module:
    """A random ``name`` saved as mdistiller/CRD ship their teachers: ``{"model": state dict in their names, ...}``."""
    torch.manual_seed(1)
    model = build(name, num_classes=num_classes, in_channels=in_channels).eval()
    names = mdistiller_names(model)
    assert names is not None
    state = {names[k]: v for k, v in model.state_dict().items()}
    torch.save({"model": state, "epoch": 240, "best_acc": 79.4}, path)
    return model


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, torch.nn.Module]:
    root = tmp_path_factory.mktemp("paper")
    write_cifar100(root / "data", n_train=32, n_test=16)
    teacher = save_mdistiller_checkpoint("resnet32x4", root / "ckpt_epoch_240.pth", 100)
    return root / "data", root / "ckpt_epoch_240.pth", teacher


def test_unikd_paper_distils_from_an_mdistiller_teacher_on_cifar100(
    cifar: tuple[Path, Path, torch.nn.Module], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data, ckpt, _ = cifar
    out = tmp_path / "run"
    args = ["distill", "--config", "unikd_paper", "--teacher-weights", str(ckpt), "--data-dir", str(data)]
    assert main([*args, "--epochs", "1", "--batch-size", "16", "-o", str(out), *QUIET]) == 0
    (record,) = read_metrics(out / "metrics.jsonl")
    assert {"train_ce", "train_dkd", "train_ukd", "train_ukd_dist", "train_ukd_supp"} <= set(record)
    assert record["train_images"] == 32 and record["lr"] == 0.05
    # the authors' heads: the student's fused map and the teacher's first stage both have resnet32x4's C_t1 = 64
    heads = load_checkpoint(out / "last.pt")["extra"]["ukd"]
    assert heads["student_head.weight"].shape == (200, 64) and heads["teacher_head.weight"].shape == (200, 64)
    assert heads["fusion.lateral.3.weight"].shape == (256, 256, 1, 1)  # the pooled vector: the deepest level
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher"] == "resnet32x4" and summary["config"]["distill"]["ukd"]["temperature"] == 1.0


def test_evaluate_an_mdistiller_checkpoint(cifar: tuple[Path, Path, torch.nn.Module], capsys) -> None:
    data, ckpt, teacher = cifar
    capsys.readouterr()
    args = ["evaluate", str(ckpt), "--model", "resnet32x4", "--data", "cifar100", "--data-dir", str(data), "--json"]
    assert main([*args, "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "resnet32x4" and result["test_size"] == 16
    # the loaded weights are the saved ones: the in-memory teacher scores the same on the same test set
    cfg = load_config(None, ["data.name=cifar100", f"data.data_dir={data}"])
    loaders = build_train_loaders(cfg["data"], 0, init_distributed("cpu"), warn=False)
    direct = evaluate(teacher, loaders.test, torch.device("cpu"))
    assert result["test_loss"] == pytest.approx(direct["test_loss"], rel=1e-5)
    assert result["test_top1"] == direct["test_top1"]
    assert main(["evaluate", str(ckpt), "--data", "cifar100", "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ukd evaluate: error:") and "--model" in err and len(err.splitlines()) == 1


def test_unikd_paper_on_fashion_mnist_with_a_named_teacher(tmp_path: Path) -> None:
    ckpt = tmp_path / "teacher.pth"
    save_mdistiller_checkpoint("resnet20", ckpt, 10, in_channels=1)
    out = tmp_path / "run"
    args = ["distill", "--config", "unikd_paper", "--data", "fashion_mnist", "--teacher", "resnet20"]
    args += ["--teacher-weights", str(ckpt), "--model", "resnet8", "--epochs", "1", "-o", str(out), *QUIET]
    args += ["--train-subset", "48", "--set", "data.test_subset=40", "--batch-size", "16"]
    assert main(args) == 0
    (record,) = read_metrics(out / "metrics.jsonl")
    assert record["train_images"] == 48 and "train_ukd_supp" in record
    heads = load_checkpoint(out / "last.pt")["extra"]["ukd"]
    assert heads["teacher_head.weight"].shape == (20, 16)  # resnet20's first stage: 16 channels


@pytest.mark.parametrize(
    ("teacher", "expect"),
    [("resnet32x4", "resnet32x4"), ("resnet56", "resnet56")],  # 100 classes vs 10; another architecture
)
def test_a_teacher_that_does_not_fit_is_a_one_line_error(
    cifar: tuple[Path, Path, torch.nn.Module], tmp_path: Path, capsys, teacher: str, expect: str
) -> None:
    _, ckpt, _ = cifar  # resnet32x4 weights for 100 classes, 3 input channels
    args = ["distill", "--method", "kd", "--teacher", teacher, "--teacher-weights", str(ckpt), "-o", str(tmp_path)]
    capsys.readouterr()
    assert main([*args, "--train-subset", "48", *QUIET]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ukd distill: error:") and str(ckpt) in err and expect in err


def test_teacher_file_errors_are_one_line(cifar: tuple[Path, Path, torch.nn.Module], tmp_path: Path, capsys) -> None:
    _, ckpt, _ = cifar
    damaged = tmp_path / "damaged.pt"
    save_checkpoint(damaged, {"model": {"name": "resnet8"}})
    damaged.write_bytes(damaged.read_bytes()[:-10])
    cases = [
        (["-t", str(tmp_path / "missing.pt")], "missing.pt: file not found"),
        (["--teacher-weights", str(ckpt)], "not a ukd checkpoint, so the architecture must be named"),
        (["-t", str(damaged)], "damaged.pt: truncated"),
    ]
    for flags, message in cases:
        capsys.readouterr()
        assert main(["distill", "--method", "kd", *flags, "-o", str(tmp_path / "o"), *QUIET]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("ukd distill: error:") and message in err and len(err.splitlines()) == 1, err
