"""Metrics: top-k counts, the per-epoch JSON-lines log, and PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "ComparisonSeries",
    "RunSeries",
    "comparison_series",
    "mean_std",
    "plot_comparison",
    "plot_curves",
    "read_metrics",
    "topk_correct",
    "truncate_metrics",
    "write_metrics",
]


def topk_correct(logits: Tensor, target: Tensor, ks: Sequence[int] = (1, 5)) -> list[int]:
    """How many rows of ``logits`` (B, K) have ``target`` among their top-k, for each k (capped at K)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top.eq(target.view(-1, 1))
    return [int(hits[:, : min(k, kmax)].any(dim=1).sum()) for k in ks]


def write_metrics(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Append one JSON object as a line to ``path`` (flushed and fsync'ed, so a crash loses at most that line)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (a torn last line, from a crash mid-write, is skipped)."""
    out = []
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_metrics(path: str | os.PathLike[str], last_epoch: int) -> None:
    """Keep only the records of epochs ``<= last_epoch`` (used on resume, so a log never repeats an epoch)."""
    p = Path(path)
    if not p.is_file():
        return
    kept = [r for r in read_metrics(p) if int(r.get("epoch", 0)) <= last_epoch]
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    os.replace(tmp, p)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _integer_epoch_ticks(*axes: Any) -> None:
    """Put the x-axis ticks of each matplotlib axis on whole epochs (a 3-epoch run otherwise shows 1.5, 2.5, ...).

    ``min_n_ticks=1``: with the default (2), a 1-epoch run, whose axis spans less than one epoch, gets fractions.
    """
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def plot_curves(records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], title: str = "") -> None:
    """Plot loss (train and test) and accuracy (train top-1, test top-1 and top-5) against the epoch to a PNG."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [r["epoch"] for r in records]
    ax_loss.plot(epochs, [r["train_loss"] for r in records], "o-", label="train (total objective)")
    test = [r for r in records if r.get("test_top1") is not None]
    if test:
        ax_loss.plot([r["epoch"] for r in test], [r["test_loss"] for r in test], "s-", label="test (CE)")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_acc.plot(epochs, [r["train_top1"] for r in records], "o-", label="train top-1")
    if test:
        ax_acc.plot([r["epoch"] for r in test], [r["test_top1"] for r in test], "s-", label="test top-1")
        ax_acc.plot([r["epoch"] for r in test], [r["test_top5"] for r in test], "^--", label="test top-5")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.legend()
    ax_acc.grid(alpha=0.3)
    _integer_epoch_ticks(ax_loss, ax_acc)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save_png(fig, path)
    plt.close(fig)


class RunSeries(NamedTuple):
    """The test-set curves of one run, at the epochs it was evaluated (``run.eval_every``) — one entry per epoch.

    Attributes:
        epochs: the evaluated epochs (ints, increasing).
        test_loss: the test-set cross-entropy at those epochs (the same quantity for every method).
        test_top1: the test top-1 accuracy (%) at those epochs.
    """

    epochs: list[int]
    test_loss: list[float]
    test_top1: list[float]


class ComparisonSeries(NamedTuple):
    """What :func:`plot_comparison` draws.

    Attributes:
        runs: label → :class:`RunSeries`, in the order given (left panel: ``test_loss``; right: ``test_top1``).
        teacher_top1: the teacher's test top-1 (%), drawn as a horizontal line on the accuracy panel; None: no line.
    """

    runs: dict[str, RunSeries]
    teacher_top1: float | None


def comparison_series(
    runs: Mapping[str, Sequence[Mapping[str, Any]]], teacher_top1: float | None = None
) -> ComparisonSeries:
    """The series of :func:`plot_comparison`: each run's test cross-entropy and test top-1 against the epoch.

    Args:
        runs: label → the run's per-epoch records (``metrics.jsonl``); epochs without a test evaluation
            (``test_top1`` None) are left out.
        teacher_top1: the teacher's final test top-1 (%), or None.
    """
    series = {}
    for label, records in runs.items():
        tested = [r for r in records if r.get("test_top1") is not None]
        series[label] = RunSeries(
            [int(r["epoch"]) for r in tested],
            [float(r["test_loss"]) for r in tested],
            [float(r["test_top1"]) for r in tested],
        )
    return ComparisonSeries(series, None if teacher_top1 is None else float(teacher_top1))


def plot_comparison(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | os.PathLike[str],
    title: str = "",
    *,
    teacher_top1: float | None = None,
) -> None:
    """Plot the test cross-entropy and test top-1 of several runs (label → records) against the epoch to one PNG.

    The left panel compares the same quantity for every method (the test-set cross-entropy, not each method's
    training objective, whose terms differ); ``teacher_top1`` adds a labelled horizontal line to the right panel.
    The plotted data is :func:`comparison_series`.
    """
    data = comparison_series(runs, teacher_top1)
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for label, run in data.runs.items():
        ax_loss.plot(run.epochs, run.test_loss, "o-", label=label)
        ax_acc.plot(run.epochs, run.test_top1, "s-", label=label)
    if data.teacher_top1 is not None:
        ax_acc.axhline(data.teacher_top1, color="black", linestyle=":", label=f"teacher ({data.teacher_top1:.2f}%)")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("test cross-entropy")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test top-1 (%)")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend()
    _integer_epoch_ticks(ax_loss, ax_acc)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save_png(fig, path)
    plt.close(fig)


def _save_png(fig: Any, path: str | os.PathLike[str]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, p)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    t = torch.tensor(list(values), dtype=torch.float64)
    return float(t.mean()), float(t.std()) if t.numel() > 1 else 0.0
