"""``ukd demo``: train a teacher on Fashion-MNIST, distil one student with several methods, print a table.

Layout of the output directory (default ``runs/demo``)::

    teacher/          the teacher's run (last.pt, metrics.jsonl, curves.png, summary.json)
    <method>/         one run per method (ce, kd, ukd by default), distilled from teacher/last.pt
    comparison.png    test cross-entropy and test top-1 of every method against the epoch, the teacher's top-1 as a line
    results.json      the table below, machine-readable (with the thread count every run used)
    results.md        the table below, as Markdown

Every run (the teacher and each method) uses the same number of compute threads, resolved once when the demo starts
(``run.threads``, or the idle cores then), so the time column compares like with like.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

from . import distributed as dist_utils
from .config import set_value
from .metrics import plot_comparison
from .trainer import CHECKPOINT_NAME, RunResult, set_threads, train

__all__ = ["format_table", "resolve_threads", "run_demo"]


def format_table(rows: list[dict[str, Any]], threads: int | None = None, world_size: int = 1) -> str:
    """A Markdown table of ``rows`` (``run``, ``model``, ``method``, ``top1``, ``top5``, ``time``).

    With ``threads``, a footer line says how many compute threads (per process, and processes) every run used.
    """
    lines = [
        "| run | network | method | top-1 (%) | top-5 (%) | time (s) |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['model']} | {r['method']} | {r['top1']:.2f} | {r['top5']:.2f} | {r['time']:.0f} |"
        )
    if threads is not None:
        per_process = f" per process x {world_size} processes" if world_size > 1 else ""
        lines.extend(["", f"Every run: {threads} compute thread(s){per_process}."])
    return "\n".join(lines)


def resolve_threads(cfg: dict[str, Any], local_world_size: int = 1) -> dict[str, Any]:
    """``cfg`` with ``run.threads`` fixed to one number, for every run of the demo.

    ``run.threads: null`` lets :func:`~ukd.train.trainer.set_threads` pick the cores idle at the start of each run,
    so on a shared machine one run could get 1 thread and the next 2; resolving it once here (the same rule, applied
    when the demo starts) makes the time column comparable. An explicit ``run.threads`` is kept.
    """
    threads = set_threads(cfg["run"]["threads"], local_world_size)
    return set_value(cfg, "run.threads", threads)


def _row(run: str, result: RunResult, method: str, model: str) -> dict[str, Any]:
    return {
        "run": run,
        "model": model,
        "method": method,
        "top1": result.final.get("test_top1", float("nan")),
        "top5": result.final.get("test_top5", float("nan")),
        "time": result.wall_time,
        "epochs": result.records[-1]["epoch"] if result.records else None,
    }


def run_demo(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run the demo described by ``cfg`` (its ``demo`` section names the teacher and the methods).

    The teacher is ``demo.teacher`` trained for ``demo.teacher_epochs`` epochs with cross-entropy; each method of
    ``demo.methods`` then trains ``model.name`` for ``optim.epochs`` epochs. Everything else (data subset, optimiser,
    distillation settings, and the thread count, resolved once by :func:`resolve_threads`) is shared. With
    ``run.resume`` finished runs are reused and interrupted ones continued.

    Returns:
        ``{"rows": [...], "table": str, "threads": int, "wall_time": float, "output_dir": str}``.
    """
    start = time.perf_counter()
    out = Path(cfg["output_dir"])
    demo = cfg["demo"]
    env = dist_utils.init_distributed(cfg["run"]["device"])
    cfg = resolve_threads(cfg, env.local_world_size)
    threads = cfg["run"]["threads"]

    teacher_cfg = copy.deepcopy(cfg)
    teacher_cfg = set_value(teacher_cfg, "model.name", demo["teacher"])
    teacher_cfg = set_value(teacher_cfg, "optim.epochs", demo["teacher_epochs"])
    teacher_cfg = set_value(teacher_cfg, "output_dir", str(out / "teacher"))
    teacher = train(teacher_cfg, method="ce")
    rows = [_row("teacher", teacher, "ce", demo["teacher"])]

    student_records: dict[str, list[dict[str, Any]]] = {}
    for method in demo["methods"]:
        run_cfg = set_value(cfg, "distill.method", method)
        run_cfg = set_value(run_cfg, "output_dir", str(out / method))
        run_cfg = set_value(run_cfg, "teacher.weights", str(out / "teacher" / CHECKPOINT_NAME))
        result = train(run_cfg, method=method, warn_data=False)  # the teacher's run already warned
        rows.append(_row("student", result, method, cfg["model"]["name"]))
        student_records[method] = result.records

    wall = time.perf_counter() - start
    table = format_table(rows, threads, env.world_size)
    summary = {"rows": rows, "table": table, "threads": threads, "wall_time": wall, "output_dir": str(out)}
    if env.is_main:
        if cfg["run"]["plot"]:
            plot_comparison(
                student_records,
                out / "comparison.png",
                f"{cfg['model']['name']} distilled from {demo['teacher']} on {cfg['data']['name']}",
                teacher_top1=teacher.final.get("test_top1"),
            )
        (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        (out / "results.md").write_text(table + f"\n\nTotal wall time: {wall:.0f} s\n", encoding="utf-8")
    return summary
