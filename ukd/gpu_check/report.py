"""The result records of a gpu_check run and their two renderings, ``gpu_check.json`` and ``gpu_check.md``.

A run is a :class:`Report`: the environment (machine, GPU, versions) and one :class:`PartResult` per part, each a
list of :class:`Check` (pass / fail / not run) plus free-form figures in ``data``. A part fails when it raised,
crashed, ran out of time or was skipped, or when one of its required checks did not pass; the run passes when every
required part does. The timing part's ``data["rows"]`` is the timing table (:func:`timing_table`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = [
    "SCHEMA",
    "Check",
    "PartResult",
    "Report",
    "render_markdown",
    "timing_table",
    "write_reports",
]

SCHEMA = "ukd.gpu_check/1"
JSON_NAME, MARKDOWN_NAME = "gpu_check.json", "gpu_check.md"


@dataclass
class Check:
    """One verdict: ``passed`` is None when the check could not run (which fails a required check)."""

    name: str
    passed: bool | None
    detail: str = ""  # the figures, one line
    required: bool = True
    data: dict = field(default_factory=dict)

    @property
    def outcome(self) -> str:
        if self.passed:
            return "pass"
        if self.passed is None:
            return "not run" if self.required else "not run (optional)"
        return "FAIL" if self.required else "fail (optional)"

    @property
    def ok(self) -> bool:
        return bool(self.passed) or not self.required


@dataclass
class PartResult:
    """One part of the run (a process of its own): its checks, figures, and what went wrong if anything did."""

    name: str
    title: str
    checks: list[Check] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    error: str | None = None  # exception text, crash output or "timed out after N s"
    skipped: str | None = None  # why it did not run at all
    elapsed_s: float = 0.0
    required: bool = True

    @property
    def status(self) -> str:
        """``"skipped"``, ``"fail"`` (it raised, crashed, timed out, checked nothing, or a check did not pass — an
        optional one too) or ``"pass"``."""
        if self.skipped is not None:
            return "skipped"
        if self.error is not None or not self.checks or not all(c.passed for c in self.checks):
            return "fail"
        return "pass"

    @property
    def ok(self) -> bool:
        """Whether the run can pass with this part: it is optional, or it ran and every required check passed."""
        if not self.required:
            return True
        return self.skipped is None and self.error is None and bool(self.checks) and all(c.ok for c in self.checks)

    def summary(self) -> str:
        if self.skipped is not None:
            return f"skipped: {self.skipped}"
        passed = sum(bool(c.passed) for c in self.checks)
        text = f"{passed}/{len(self.checks)} checks passed"
        bad = [c.name for c in self.checks if not c.ok]
        if bad:
            text += "; failed: " + ", ".join(bad[:3]) + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else "")
        if self.error is not None:
            last = self.error.strip().splitlines()[-1][:200] if self.error.strip() else "?"
            text += f"; error: {last}"
        return text

    def to_dict(self) -> dict:
        return {**asdict(self), "status": self.status}

    @classmethod
    def from_dict(cls, d: dict) -> PartResult:
        checks = [Check(**c) for c in d.get("checks", [])]
        names = {"name", "title", "data", "error", "skipped", "elapsed_s", "required"}
        return cls(checks=checks, **{k: v for k, v in d.items() if k in names})


@dataclass
class Report:
    """A whole run; ``finished`` is None while it is still under way (the files are rewritten after each part)."""

    environment: dict
    parts: list[PartResult]
    started: str
    finished: str | None = None
    elapsed_s: float = 0.0
    budget_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.finished is not None and bool(self.parts) and all(p.ok for p in self.parts)

    def to_dict(self) -> dict:
        timing = next((p for p in self.parts if p.name == "timing"), None)
        return {
            "schema": SCHEMA,
            "ok": self.ok,
            "started": self.started,
            "finished": self.finished,
            "elapsed_s": round(self.elapsed_s, 1),
            "budget_s": self.budget_s,
            "environment": self.environment,
            "parts": [p.to_dict() for p in self.parts],
            "timings": timing.data.get("rows", []) if timing is not None else [],
        }


# ------------------------------------------------------------------------------------------------ markdown
def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _environment_rows(env: dict) -> list[tuple[str, str]]:
    machine, gpu, versions = env.get("machine", {}), env.get("gpu", {}), env.get("versions", {})
    gpu_text = gpu.get("name", "?")
    extras = [
        f"sm_{gpu['capability'].replace('.', '')}" if gpu.get("capability") else None,
        f"{gpu['memory_GiB']:.1f} GiB" if gpu.get("memory_GiB") else None,
        f"{gpu['multiprocessors']} SMs" if gpu.get("multiprocessors") else None,
        f"driver {gpu['driver']}" if gpu.get("driver") else None,
    ]
    gpu_text += "".join(f", {e}" for e in extras if e)
    ukd_text = str(versions.get("ukd", "?")) + (f" (git {versions['git']})" if versions.get("git") else "")
    return [
        ("machine", f"{machine.get('hostname', '?')}: {machine.get('platform', '?')}, {machine.get('cpus', '?')} CPUs"),
        ("GPU", gpu_text),
        ("torch", f"{versions.get('torch', '?')} (CUDA runtime {versions.get('cuda', '?')})"),
        ("Triton", str(versions.get("triton", "?"))),
        ("nvcc", str(versions.get("nvcc", "?"))),
        ("Python", str(versions.get("python", "?"))),
        ("ukd", ukd_text),
    ]


def timing_table(rows: list[dict]) -> list[str]:
    """The timing rows (the timing part's ``data["rows"]``) as markdown lines."""
    lines = [
        "| shape | variant | median ms | min ms | GB/s | copy time / variant time | peak MB | × eager | × compile |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        copy = row.get("copy") or {}
        lines.append(
            f"| {_cell(row['shape'])} | copy of {row['bytes'] / 1e6:.1f} MB | {_fmt(copy.get('median_ms'), '.3f')} "
            f"| {_fmt(copy.get('min_ms'), '.3f')} | {_fmt(copy.get('GBps'), ',.0f')} | 1.00 | — | — | — |"
        )
        for name, v in row.get("variants", {}).items():
            if v.get("error"):
                lines.append(f"| {_cell(row['shape'])} | {name} | error: {_cell(v['error'][:160])} |  |  |  |  |  |  |")
                continue
            cells = [
                _fmt(v.get("median_ms"), ".3f"),
                _fmt(v.get("min_ms"), ".3f"),
                _fmt(v.get("GBps"), ",.0f"),
                _fmt(v.get("copy_fraction"), ".2f"),
                _fmt(v.get("peak_MB"), ",.1f"),
                _fmt(v.get("x_eager"), ".2f"),
                _fmt(v.get("x_compile"), ".2f"),
            ]
            lines.append(f"| {_cell(row['shape'])} | {name} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(report: Report) -> str:
    """``gpu_check.md``: the environment, the parts, every check with its figures, and the timing table."""
    verdict = "PASS" if report.ok else ("INCOMPLETE" if report.finished is None else "FAIL")
    lines = [f"# ukd gpu_check: {verdict}", "", "| | |", "| --- | --- |"]
    lines.append(f"| date | {report.started} (UTC) |")
    lines += [f"| {k} | {_cell(v)} |" for k, v in _environment_rows(report.environment)]
    lines.append(f"| run | {report.elapsed_s:.0f} s of a {report.budget_s:.0f} s budget |")
    lines += ["", "## Parts", "", "| part | status | time | summary |", "| --- | --- | ---: | --- |"]
    for p in report.parts:
        status = p.status if p.required else f"{p.status} (optional)"
        lines.append(f"| {p.name} | {status} | {p.elapsed_s:.1f} s | {_cell(p.summary())} |")
    for p in report.parts:
        lines += ["", f"## {p.name}: {p.title}", ""]
        if p.skipped is not None:
            lines.append(f"Skipped: {p.skipped}")
            continue
        if p.checks:
            lines += ["| check | result | figures |", "| --- | --- | --- |"]
            lines += [f"| {_cell(c.name)} | {c.outcome} | {_cell(c.detail)} |" for c in p.checks]
        if p.error:
            lines += ["", "Error:", "", "```text", p.error.strip()[-4000:], "```"]
        if p.name == "timing" and p.data.get("rows"):
            lines += ["", *p.data.get("notes", []), "", *timing_table(p.data["rows"])]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _strict(value: object) -> object:
    """``value`` with non-finite floats as strings ("nan", "inf"): strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def write_reports(report: Report, out_dir: Path) -> tuple[Path, Path]:
    """Write ``gpu_check.json`` and ``gpu_check.md`` into ``out_dir`` (each replaced atomically)."""
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / JSON_NAME, out_dir / MARKDOWN_NAME
    text = json.dumps(_strict(report.to_dict()), indent=1, default=str, allow_nan=False)
    _write_atomic(json_path, text + "\n")
    _write_atomic(md_path, render_markdown(report))
    return json_path, md_path
