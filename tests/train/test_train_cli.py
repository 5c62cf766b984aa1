"""The ``ukd`` command line: help for every subcommand, errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ukd.cli import main

SUBCOMMANDS = ["train-teacher", "distill", "evaluate", "export", "demo"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: ukd {command}")
    if command not in ("evaluate", "export"):
        for flag in ("--config", "--set", "--resume", "--quiet", "--epochs", "--output-dir"):
            assert flag in out
    if command in ("train-teacher", "distill"):
        from ukd.models import available

        listed = " ".join(out.split("Models:")[1].split("\n\n")[0].split())  # the paragraph, unwrapped
        assert listed.split(" Methods:")[0].split(", ") == available()
    if command == "distill":
        from ukd.train.config import METHODS

        assert "{" + ",".join(METHODS) + "}" in out and "--teacher" in out
        methods = " ".join(out.split("Methods:")[1].split())
        assert methods.startswith(", ".join(METHODS) + " ")


def test_top_level_help_via_python_m() -> None:
    proc = subprocess.run([sys.executable, "-m", "ukd", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for command in SUBCOMMANDS:
        assert command in proc.stdout


def test_missing_subcommand_and_bad_option(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["distill", "--method", "hint9"])
    assert "invalid choice" in capsys.readouterr().err


def test_config_errors_are_reported_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["distill", "--set", "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ukd distill: error: unknown configuration key 'optim.lrr'") and "Traceback" not in err
    assert main(["evaluate", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt: file not found" in capsys.readouterr().err


def test_unknown_model_names_are_one_line_errors_before_any_work(capsys: pytest.CaptureFixture) -> None:
    for flags, key in (
        (["--model", "resnet9000"], "model.name"),
        (["--set", "teacher.name=resnet9000"], "teacher.name"),
    ):
        capsys.readouterr()
        assert main(["distill", "--method", "kd", *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"ukd distill: error: {key}: unknown model 'resnet9000'; valid names are: resnet8,")
        assert len(err.splitlines()) == 1


@pytest.mark.parametrize(("stop_epoch", "expected"), [(1, "nothing was saved"), (2, "last.pt holds epoch 1")])
def test_sigint_message_says_what_was_saved(
    stop_epoch: int, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in epoch 1 saved nothing; in epoch 2, last.pt holds epoch 1 — the message says which, and it is true."""
    import ukd.train.trainer as trainer
    from ukd.train.checkpoint import load_checkpoint

    real_step = trainer._train_step

    def step(run, images, target, epoch, index):
        if epoch == stop_epoch:
            raise KeyboardInterrupt
        return real_step(run, images, target, epoch, index)

    monkeypatch.setattr(trainer, "_train_step", step)
    out = tmp_path / "run"
    args = ["train-teacher", "--model", "resnet8", "--epochs", "3", "-o", str(out), "--train-subset", "32", "-q"]
    capsys.readouterr()
    assert main([*args, "--set", "data.test_subset=20", "--threads", "1"]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ukd train-teacher: interrupted during epoch {stop_epoch}; ") and expected in err
    if stop_epoch == 1:
        assert not (out / "last.pt").exists()
    else:
        assert load_checkpoint(out / "last.pt")["epoch"] == 1
