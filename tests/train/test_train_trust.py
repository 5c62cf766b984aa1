"""What a researcher must be able to trust: no run is lost or overwritten by accident, errors come before any work, the
summary tells the truth, and checkpoints open with plain ``torch.load``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_run import TINY_ARGS

from ukd.cli import main
from ukd.models import build
from ukd.train import trainer as trainer_mod
from ukd.train.metrics import read_metrics


def _train(out: Path, *extra: str, epochs: int = 1) -> int:
    return main(["train-teacher", "--model", "resnet8", "--epochs", str(epochs), "-o", str(out), *TINY_ARGS, *extra])


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    assert _train(out) == 0
    return out


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a run gets as far as loading data and building networks."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the run started work before the error was reported")

    monkeypatch.setattr(trainer_mod, "_setup_run", refuse)


# ---------------------------------------------------------------------------------------------------------------------
# No lost data.
# ---------------------------------------------------------------------------------------------------------------------
def test_an_existing_run_is_refused_without_resume_or_overwrite(
    teacher_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, no_work: None
) -> None:
    before = _snapshot(teacher_run)
    assert _train(teacher_run) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ukd train-teacher: error: output_dir {teacher_run} already holds a run (last.pt")
    assert "--resume" in err and "--overwrite" in err and err.count("\n") == 1
    assert _snapshot(teacher_run) == before
    assert _train(teacher_run, "--resume", "--overwrite") == 2
    assert "choose one" in capsys.readouterr().err


def test_overwrite_keeps_the_old_run_until_the_new_one_saves_an_epoch(
    teacher_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    for p in teacher_run.iterdir():
        if p.is_file():
            (out / p.name).write_bytes(p.read_bytes())
    before = _snapshot(out)

    real_step = trainer_mod._train_step

    def dies(*args: object, **kwargs: object) -> None:
        raise FloatingPointError("the loss is nan at epoch 1, step 0")

    monkeypatch.setattr(trainer_mod, "_train_step", dies)
    with pytest.raises(FloatingPointError):
        _train(out, "--overwrite", "--seed", "7")
    assert _snapshot(out) == before  # nothing of the old run is gone, not even its summary

    monkeypatch.setattr(trainer_mod, "_train_step", real_step)
    assert _train(out, "--overwrite", "--seed", "7", epochs=2) == 0
    records = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]  # the new run's log alone
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["seed"] == 7 and summary["epochs_done"] == 2 and summary["status"] == "finished"


def test_resume_without_a_checkpoint_starts_a_clean_log(teacher_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_bytes((teacher_run / "metrics.jsonl").read_bytes())  # a log, no last.pt
    assert _train(out, "--resume", epochs=2) == 0
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]


def test_summary_tells_the_truth_about_an_unfinished_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    real_step = trainer_mod._train_step

    def interrupt_in_epoch_2(run, images, target, epoch, step):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_step(run, images, target, epoch, step)

    monkeypatch.setattr(trainer_mod, "_train_step", interrupt_in_epoch_2)
    out = tmp_path / "run"
    assert _train(out, epochs=3) == 130
    assert "interrupted during epoch 2" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and not summary["finished"]
    assert summary["epochs_done"] == 1 and summary["epochs"] == 3

    def interrupt_at_once(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod, "_train_step", interrupt_at_once)
    fresh = tmp_path / "fresh"
    assert _train(fresh) == 130
    assert "nothing was saved" in capsys.readouterr().err
    assert not (fresh / "summary.json").exists() and not (fresh / "last.pt").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Errors before any work, one line, exit status 2.
# ---------------------------------------------------------------------------------------------------------------------
def _one_line_error(capsys: pytest.CaptureFixture, command: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"ukd {command}: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_unwritable_output_dir(tmp_path: Path, capsys: pytest.CaptureFixture, no_work: None) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert _train(blocker / "run") == 2
    assert "not writable" in _one_line_error(capsys, "train-teacher")


def test_unwritable_output_dir_permission(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, no_work: None
) -> None:
    def read_only(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(trainer_mod.tempfile, "mkstemp", read_only)  # root ignores chmod, so simulate it
    assert _train(tmp_path / "run") == 2
    assert "not writable (Permission denied)" in _one_line_error(capsys, "train-teacher")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_a_gpu(tmp_path: Path, capsys: pytest.CaptureFixture, no_work: None) -> None:
    assert _train(tmp_path / "run", "--set", "run.device=cuda") == 2
    assert "run.device=cuda: torch" in _one_line_error(capsys, "train-teacher")


def test_backend_that_cannot_run(
    teacher_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, no_work: None
) -> None:
    from ukd.op import backends

    monkeypatch.setattr(backends, "_reason", lambda name, device_type: f"{name} cannot run on {device_type} here")
    args = ["distill", "--method", "ukd", "-t", str(teacher_run / "last.pt"), "-o", str(tmp_path / "run")]
    assert main([*args, *TINY_ARGS, "--set", "distill.ukd.backend=triton"]) == 2
    err = _one_line_error(capsys, "distill")
    assert "distill.ukd.backend=triton on cpu: triton cannot run on cpu here" in err


def test_triton_backend_without_the_interpreter_is_refused(
    teacher_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, no_work: None
) -> None:
    from ukd.op import backends

    monkeypatch.setattr(backends, "_REASONS", {})  # the reasons are cached per process
    monkeypatch.setattr(backends, "_kernels_interpreted", lambda: False)
    args = ["distill", "--method", "ukd", "-t", str(teacher_run / "last.pt"), "-o", str(tmp_path / "run")]
    assert main([*args, *TINY_ARGS, "--set", "distill.ukd.backend=triton"]) == 2
    assert "distill.ukd.backend=triton on cpu: backend='triton' cannot run: " in _one_line_error(capsys, "distill")


def test_loss_rule_is_checked_before_work(tmp_path: Path, capsys: pytest.CaptureFixture, no_work: None) -> None:
    args = ["distill", "--method", "ukd", "-o", str(tmp_path / "run"), "--set", "distill.ukd.logvar_bound=100"]
    assert main([*args, *TINY_ARGS]) == 2
    assert "distill.ukd.logvar_bound: expected a number in (0, 80], got 100" in _one_line_error(capsys, "distill")


def test_missing_teacher_file_before_work(tmp_path: Path, capsys: pytest.CaptureFixture, no_work: None) -> None:
    assert main(["distill", "-t", str(tmp_path / "none.pt"), "-o", str(tmp_path / "run"), *TINY_ARGS]) == 2
    assert "none.pt: file not found" in _one_line_error(capsys, "distill")


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--teacher", "resnet20"], r"a ukd checkpoint of 'resnet8', not of 'resnet20'"),
        (["--data", "cifar10"], r"input channels"),
    ],
)
def test_teacher_that_does_not_fit(
    teacher_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str], match: str
) -> None:
    data = []
    if "--data" in flags:  # a 3-channel data set: CIFAR-10 in its python layout, a few images
        import pickle

        import numpy as np

        root = tmp_path / "cifar-10-batches-py"
        root.mkdir()
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = {b"data": np.zeros((20, 3072), np.uint8), b"labels": list(range(10)) * 2}
            (root / name).write_bytes(pickle.dumps(batch))
        (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [str(i).encode() for i in range(10)]}))
        data = ["--data-dir", str(tmp_path)]
    args = ["distill", "-t", str(teacher_run / "last.pt"), "-o", str(tmp_path / "run"), *flags, *data, *TINY_ARGS]
    if "--teacher" in flags:
        args = [a if a != "-t" else "--teacher-weights" for a in args]
    assert main(args) == 2
    import re

    assert re.search(match, _one_line_error(capsys, "distill"))


def test_resume_with_a_changed_fusion(teacher_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ukd"
    base = ["distill", "--method", "ukd", "-t", str(teacher_run / "last.pt"), "-o", str(out), *TINY_ARGS]
    assert main([*base, "--epochs", "1"]) == 0
    capsys.readouterr()
    from ukd.train.tensorboard import read_scalars

    logged = read_scalars(out / "tensorboard")  # the UKD components beside the totals
    assert {"train/ukd", "train/ukd_dist", "train/ukd_supp", "train/dkd", "lr"} <= set(logged), sorted(logged)
    assert main([*base, "--epochs", "2", "--resume", "--set", "distill.ukd.fusion=pool"]) == 2
    err = _one_line_error(capsys, "distill")
    assert "cannot resume" in err and "distill.ukd.fusion: 'abf' -> 'pool'" in err
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [1]


def test_unknown_option_shows_the_subcommand_usage(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["distill", "--epochz", "3"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ukd distill ") and "ukd distill: error: unrecognized arguments: --epochz 3" in err


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints in torch's format; export.
# ---------------------------------------------------------------------------------------------------------------------
def test_last_pt_opens_with_plain_torch_load(teacher_run: Path) -> None:
    ckpt = torch.load(teacher_run / "last.pt", weights_only=True)
    arch = ckpt["arch"]
    assert arch == {"name": "resnet8", "num_classes": 10, "in_channels": 1}
    model = build(arch["name"], num_classes=arch["num_classes"], in_channels=arch["in_channels"]).eval()
    model.load_state_dict(ckpt["model"])  # strict: every key
    reference, _ = trainer_mod.load_model(teacher_run / "last.pt")
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(model(x)[0], reference(x)[0])


def test_export_writes_a_plain_state_dict(teacher_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "resnet8.pt"
    assert main(["export", str(teacher_run / "last.pt"), str(out)]) == 0
    assert "ukd.models.build('resnet8', num_classes=10, in_channels=1" in capsys.readouterr().out
    state = torch.load(out, weights_only=True)
    saved = torch.load(teacher_run / "last.pt", weights_only=True)["model"]
    assert list(state) == list(saved) and all(torch.equal(state[k], saved[k]) for k in saved)
    model = build("resnet8", num_classes=10, in_channels=1, weights=out)  # the ukd layout, strictly
    assert torch.equal(model.state_dict()["fc.weight"], saved["fc.weight"])
    assert main(["export", str(teacher_run / "last.pt"), str(out)]) == 2
    assert "exists" in _one_line_error(capsys, "export")


# ---------------------------------------------------------------------------------------------------------------------
# best.pt on a validation split; TensorBoard.
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def val_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("val")
    assert _train(out, "--set", "data.val_size=16", epochs=3) == 0
    return out


def test_best_pt_is_the_epoch_with_the_best_validation_top1(val_run: Path) -> None:
    records = read_metrics(val_run / "metrics.jsonl")
    assert all(r["val_top1"] is not None and r["test_top1"] is not None for r in records)
    first_best = max(range(len(records)), key=lambda i: (records[i]["val_top1"], -i))  # the earliest of ties
    best = torch.load(val_run / "best.pt", weights_only=True)
    assert best["epoch"] == records[first_best]["epoch"] and best["kind"] == "best"
    assert best["metrics"]["val_top1"] == records[first_best]["val_top1"]
    model = build("resnet8", num_classes=10, in_channels=1, weights=val_run / "best.pt")
    assert torch.equal(model.state_dict()["fc.weight"], best["model"]["fc.weight"])
    summary = json.loads((val_run / "summary.json").read_text())
    assert summary["best"] == {"epoch": best["epoch"], "val_top1": best["metrics"]["val_top1"]}
    assert summary["data"]["train_size"] == 48 - 16 and summary["data"]["val_size"] == 16


def test_validation_is_held_out_of_the_training_images() -> None:
    from ukd.data.dataset import TensorImageDataset
    from ukd.data.loaders import split_validation

    images = torch.arange(40, dtype=torch.uint8).reshape(40, 1, 1, 1).expand(40, 1, 2, 2).contiguous()
    labels = torch.arange(40) % 4
    rest, val = split_validation(TensorImageDataset(images, labels), 0.25, seed=3, eval_transform=None)
    ids_rest, ids_val = set(rest.images[:, 0, 0, 0].tolist()), set(val.images[:, 0, 0, 0].tolist())
    assert len(ids_val) == 10 and len(ids_rest) == 30 and not ids_rest & ids_val  # disjoint, all kept
    assert torch.bincount(val.labels, minlength=4).tolist() == [3, 3, 2, 2]  # class-balanced
    with pytest.raises(ValueError, match="leaving none to train on"):
        split_validation(TensorImageDataset(images, labels), 40, seed=3, eval_transform=None)


def test_tensorboard_has_every_scalar_of_metrics_jsonl(val_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ukd.train.tensorboard import record_tag

    acc = EventAccumulator(str(val_run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for record in read_metrics(val_run / "metrics.jsonl"):
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                (event,) = [e for e in acc.Scalars(record_tag(key)) if e.step == record["epoch"]]
                assert event.value == pytest.approx(value, rel=1e-6, abs=1e-6), key
    assert {"lr", "train/loss", "val/top1", "test/top1"} <= tags


# ---------------------------------------------------------------------------------------------------------------------
# Gradient coherence of two-sided methods (issue 16).
# ---------------------------------------------------------------------------------------------------------------------
def test_coherence_is_logged_and_does_not_change_training(teacher_run: Path, tmp_path: Path) -> None:
    from ukd.train.tensorboard import read_scalars

    def run(name: str, every: int) -> Path:
        out = tmp_path / name
        args = ["distill", "--method", "fitnet_kd", "-t", str(teacher_run / "last.pt"), "--epochs", "2", "-o", str(out)]
        assert main([*args, *TINY_ARGS, "--set", f"run.coherence_every={every}"]) == 0
        return out

    measured, plain = run("measured", 1), run("plain", 0)
    records = read_metrics(measured / "metrics.jsonl")
    for r in records:
        assert -1.0 <= r["coherence_cos_feature_logit"] <= 1.0
        assert r["coherence_gradnorm_feature"] > 0 and r["coherence_gradnorm_logit"] > 0
    assert "coherence_cos_feature_logit" not in read_metrics(plain / "metrics.jsonl")[0]
    steps = [s for s, _ in read_scalars(measured / "tensorboard" / "steps")["coherence/cos_feature_logit"]]
    assert steps == list(range(6))  # 48 images / batch 16 = 3 steps per epoch, every step measured
    assert (measured / "coherence.png").read_bytes()[:4] == b"\x89PNG"
    a = torch.load(measured / "last.pt", weights_only=True)["model"]
    b = torch.load(plain / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # measuring touches no gradient
