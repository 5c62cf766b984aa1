"""``ukd demo`` without training: one thread count for every run, and what ``comparison.png`` / ``curves.png`` draw.

``ukd.train.demo.train`` is replaced by a fake that records the configuration of each run and returns made-up
metrics, so these tests take seconds; the real demo runs end to end in ``test_train_e2e.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import ukd.train.demo as demo_module
import ukd.train.metrics as metrics_module
from ukd.train.config import load_config
from ukd.train.metrics import comparison_series, plot_comparison, plot_curves
from ukd.train.trainer import RunResult

TEACHER_TOP1 = 91.25


def _records(run_index: int, epochs: int = 3) -> list[dict[str, Any]]:
    """Per-epoch records of a fake run: train_loss and test_loss differ, epoch 2 has no test evaluation."""
    records = []
    for epoch in range(1, epochs + 1):
        tested = epoch != 2
        records.append(
            {
                "epoch": epoch,
                "lr": 0.05,
                "train_loss": 10.0 * run_index + epoch,  # a method's objective: not what the left panel shows
                "train_top1": 50.0 + epoch,
                "train_top5": 90.0,
                "test_loss": 1.0 / (run_index + epoch) if tested else None,
                "test_top1": 60.0 + run_index + epoch if tested else None,
                "test_top5": 95.0 if tested else None,
            }
        )
    return records


class FakeTrain:
    """Stands in for :func:`ukd.train.trainer.train`: records ``(method, run.threads)`` and returns fake records."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def __call__(self, cfg: dict[str, Any], *, method: str | None = None, warn_data: bool = True) -> RunResult:
        run_index = len(self.calls)
        Path(cfg["output_dir"]).mkdir(parents=True)  # as a real run does (and one directory per run)
        self.calls.append((method or cfg["distill"]["method"], cfg["run"]["threads"]))
        records = _records(run_index)
        final = dict(records[-1])
        if run_index == 0:  # the teacher
            final["test_top1"] = TEACHER_TOP1
        return RunResult(Path(cfg["output_dir"]), None, None, records, final, wall_time=1.0 + run_index)  # type: ignore[arg-type]


def _demo_config(tmp_path: Path, *overrides: str) -> dict[str, Any]:
    return load_config("demo", [f"output_dir={tmp_path / 'demo'}", "run.quiet=true", *overrides])


def test_demo_resolves_threads_once_and_every_run_uses_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """``run.threads: null`` used to be resolved by each run at its start (1 thread for one, 2 for the others)."""
    resolutions: list[int | None] = []

    def idle_cores_change_between_calls(requested: int | None, local_world_size: int = 1) -> int:
        resolutions.append(requested)
        return 2 if len(resolutions) == 1 else 1  # a later resolution would give another answer

    fake_train = FakeTrain()
    monkeypatch.setattr(demo_module, "set_threads", idle_cores_change_between_calls)
    monkeypatch.setattr(demo_module, "train", fake_train)
    summary = demo_module.run_demo(_demo_config(tmp_path, "run.plot=false"))

    assert resolutions == [None]  # resolved once, from the configured null
    assert fake_train.calls == [("ce", 2), ("ce", 2), ("kd", 2), ("ukd", 2)]  # teacher, then each method
    assert summary["threads"] == 2
    assert summary["table"].endswith("Every run: 2 compute thread(s).")
    assert "Every run: 2 compute thread(s)." in (tmp_path / "demo" / "results.md").read_text()


def test_demo_keeps_an_explicit_thread_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_train = FakeTrain()
    monkeypatch.setattr(demo_module, "set_threads", lambda requested, local_world_size=1: requested or 99)
    monkeypatch.setattr(demo_module, "train", fake_train)
    demo_module.run_demo(_demo_config(tmp_path, "run.threads=3", "run.plot=false", "demo.methods=[ce, ukd]"))
    assert [threads for _, threads in fake_train.calls] == [3, 3, 3]


def test_format_table_footer_names_threads_and_processes() -> None:
    row = {"run": "student", "model": "resnet8", "method": "kd", "top1": 85.0, "top5": 99.5, "time": 12.3}
    assert "thread" not in demo_module.format_table([row])
    assert demo_module.format_table([row], 2, world_size=2).endswith(
        "Every run: 2 compute thread(s) per process x 2 processes."
    )


def test_comparison_series_is_test_loss_and_teacher_top1() -> None:
    runs = {"ce": _records(1), "ukd": _records(2)}
    series = comparison_series(runs, teacher_top1=TEACHER_TOP1)
    assert list(series.runs) == ["ce", "ukd"]
    for label, records in runs.items():
        tested = [r for r in records if r["test_top1"] is not None]
        assert series.runs[label].epochs == [1, 3]
        assert series.runs[label].test_loss == [r["test_loss"] for r in tested]
        assert series.runs[label].test_top1 == [r["test_top1"] for r in tested]
    assert series.teacher_top1 == TEACHER_TOP1
    assert comparison_series(runs).teacher_top1 is None


class CapturedFigures:
    """Replaces ``metrics._save_png``: keeps each figure (and writes nothing) so a test can read what was drawn."""

    def __init__(self) -> None:
        self.figures: list[Any] = []

    def __call__(self, fig: Any, path: Any) -> None:
        self.figures.append(fig)


def _integer_ticks(ax: Any) -> bool:
    return all(float(tick).is_integer() for tick in ax.get_xticks())


def test_demo_comparison_plot_draws_test_loss_and_the_teacher_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's comparison.png: left panel each method's test cross-entropy, right panel a teacher line."""
    fake_train = FakeTrain()
    captured = CapturedFigures()
    monkeypatch.setattr(demo_module, "set_threads", lambda requested, local_world_size=1: 1)
    monkeypatch.setattr(demo_module, "train", fake_train)
    monkeypatch.setattr(metrics_module, "_save_png", captured)
    demo_module.run_demo(_demo_config(tmp_path, "run.plot=true"))

    (figure,) = captured.figures
    ax_loss, ax_acc = figure.axes
    loss_lines = {line.get_label(): list(line.get_ydata()) for line in ax_loss.get_lines()}
    for run_index, method in enumerate(["ce", "kd", "ukd"], start=1):
        expected = [r["test_loss"] for r in _records(run_index) if r["test_loss"] is not None]
        assert loss_lines[method] == pytest.approx(expected)
    assert "cross-entropy" in ax_loss.get_ylabel()
    (teacher_line,) = [line for line in ax_acc.get_lines() if line.get_label().startswith("teacher")]
    assert list(teacher_line.get_ydata()) == [TEACHER_TOP1, TEACHER_TOP1]
    assert "91.25" in teacher_line.get_label()
    assert _integer_ticks(ax_loss) and _integer_ticks(ax_acc)


@pytest.mark.parametrize("epochs", [1, 3, 8])
def test_plots_have_integer_epoch_ticks(epochs: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3-epoch run used to get ticks at 1.25, 1.5, ... on its epoch axes (a 1-epoch run at 0.96, 0.975, ...)."""
    captured = CapturedFigures()
    monkeypatch.setattr(metrics_module, "_save_png", captured)
    plot_curves(_records(0, epochs), tmp_path / "curves.png", f"{epochs} epochs")
    plot_comparison({"ce": _records(0, epochs)}, tmp_path / "comparison.png", teacher_top1=TEACHER_TOP1)
    axes = [ax for figure in captured.figures for ax in figure.axes]
    assert len(axes) == 4
    for ax in axes:
        ax.figure.canvas.draw()
        assert _integer_ticks(ax), list(ax.get_xticks())


def test_comparison_png_is_written(tmp_path: Path) -> None:
    path = tmp_path / "comparison.png"
    plot_comparison({"ce": _records(1), "kd": _records(2)}, path, "title", teacher_top1=TEACHER_TOP1)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
