"""Summarise a ``scripts/results.sh`` output directory: teacher accuracy and mean ± std of each method over seeds.

    python scripts/results.py runs/results [--wall-time SECONDS]

Prints a Markdown table and writes it to ``<dir>/results.md``, the per-run numbers to ``<dir>/results.json`` and the
seed-0 curves of every method to ``<dir>/comparison.png``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from ukd.train.metrics import mean_std, plot_comparison, read_metrics


def _summary(path: Path) -> dict[str, Any]:
    return json.loads((path / "summary.json").read_text(encoding="utf-8"))


def collect(root: Path) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """The teacher's summary and, per method, the summaries of its seeds (sorted by seed)."""
    teacher = _summary(root / "teacher")
    runs: dict[str, list[dict[str, Any]]] = {}
    for d in sorted(root.iterdir()):
        m = re.fullmatch(r"(\w+?)_seed(\d+)", d.name)
        if m and (d / "summary.json").is_file():
            s = _summary(d)
            if s.get("finished"):
                s["seed"] = int(m.group(2))
                runs.setdefault(m.group(1), []).append(s)
    for v in runs.values():
        v.sort(key=lambda s: s["seed"])
    return teacher, runs


def table(teacher: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown: one row for the teacher, one per method (mean ± std over seeds)."""
    lines = [
        "| network | method | seeds | top-1 (%) mean ± std | top-5 (%) mean ± std | per-seed top-1 | time / run (s) |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: |",
        f"| {teacher['model']} (teacher) | ce | 1 | {teacher['final']['test_top1']:.2f} | "
        f"{teacher['final']['test_top5']:.2f} | — | {teacher['wall_time']:.0f} |",
    ]
    order = [m for m in ("ce", "kd", "dkd", "ukd") if m in runs] + sorted(set(runs) - {"ce", "kd", "dkd", "ukd"})
    for method in order:
        rs = runs[method]
        t1 = mean_std([r["final"]["test_top1"] for r in rs])
        t5 = mean_std([r["final"]["test_top5"] for r in rs])
        per_seed = ", ".join(f"{r['final']['test_top1']:.2f}" for r in rs)
        wall = mean_std([r["wall_time"] for r in rs])[0]
        label = rs[0]["method"]
        if label == "ukd":
            u = rs[0]["config"]["distill"]["ukd"]
            label = f"ukd (logit {u['logit']}, fusion {u['fusion']})"
        lines.append(
            f"| {rs[0]['model']} | {label} | {len(rs)} | {t1[0]:.2f} ± {t1[1]:.2f} | {t5[0]:.2f} ± {t5[1]:.2f} | "
            f"{per_seed} | {wall:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--wall-time", type=float, default=None, help="total wall time to report (seconds)")
    args = parser.parse_args()
    teacher, runs = collect(args.root)
    text = table(teacher, runs)
    total = args.wall_time
    if total is None:
        total = teacher["wall_time"] + sum(r["wall_time"] for rs in runs.values() for r in rs)
    text += f"\n\nTotal wall time: {total:.0f} s ({total / 60:.1f} min)\n"
    print(text)
    (args.root / "results.md").write_text(text, encoding="utf-8")
    (args.root / "results.json").write_text(
        json.dumps(
            {"teacher": teacher["final"], "runs": {m: [r["final"] for r in rs] for m, rs in runs.items()}}, indent=2
        )
        + "\n",
        encoding="utf-8",
    )
    seed0 = {m: read_metrics(args.root / f"{m}_seed{rs[0]['seed']}" / "metrics.jsonl") for m, rs in runs.items()}
    if seed0:
        plot_comparison(seed0, args.root / "comparison.png", "student test top-1 by method (first seed)")


if __name__ == "__main__":
    main()
