"""The command: ``python -m ukd.gpu_check OUT_DIR [--budget SECONDS] [--parts a,b]``.

Before any work: OUT_DIR must be a writable directory or creatable (nothing is created yet), and a CUDA device must
be visible; either problem is one line on stderr and exit status 2, with nothing written. Then the parts of
:data:`ukd.gpu_check.parts.PARTS` run in order, each in a worker process (:mod:`ukd.gpu_check.worker`) killed at its
time box; the boxes are cut so that the whole run ends within ``--budget`` seconds (default 330, so that the command
finishes within 6 minutes), keeping each later required part's least time in reserve. One progress line per part
goes to stderr; ``OUT_DIR/gpu_check.json`` and ``gpu_check.md`` are rewritten after every part. Exit status: 0 when
every required check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from ukd.gpu_check import EXIT_FAILED, EXIT_NOT_CHECKED, EXIT_OK
from ukd.gpu_check.report import PartResult, Report, write_reports

__all__ = [
    "cuda_problem",
    "main",
    "out_dir_problem",
    "parse_nvcc_version",
    "plan_timeout",
    "run_worker",
]

PROG = "ukd gpu_check"
DEFAULT_BUDGET_S = 330.0
BACKENDS = ("triton", "cuda")
_ROOT = Path(__file__).resolve().parents[2]  # the directory holding the ukd package (a checkout's root)


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------ before any work
def out_dir_problem(path: Path) -> str | None:
    """Why ``path`` cannot receive the reports (None when it can), without creating anything."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            return f"OUT_DIR {path} exists and is not a directory"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"OUT_DIR {path} is not writable"
        return None
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"OUT_DIR {path} cannot be created: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"OUT_DIR {path} cannot be created: {parent} is not writable"
    return None


def cuda_problem() -> str | None:
    """Why there is no CUDA device to check (None when there is one), in a phrase."""
    import torch

    if torch.version.cuda is None:
        return f"no CUDA device (torch {torch.__version__} is a build without CUDA)"
    with warnings.catch_warnings(record=True) as caught:  # a driver problem warns; it goes into the one line
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if not available:
        why = f": {str(caught[0].message).splitlines()[0]}" if caught else ""
        return f"no CUDA device (torch {torch.__version__}: torch.cuda.is_available() is False{why})"
    return None


# ------------------------------------------------------------------------------------------ the environment
def parse_nvcc_version(text: str) -> str | None:
    """``"13.0 (V13.0.88)"`` from ``nvcc --version`` output."""
    m = re.search(r"release\s+([\d.]+),\s*V([\w.]+)", text)
    return f"{m.group(1)} (V{m.group(2)})" if m else None


def _run_text(cmd: Sequence[str], timeout: float = 20) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _nvcc_version() -> str | None:
    from torch.utils.cpp_extension import CUDA_HOME

    nvcc = Path(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else None
    text = _run_text([str(nvcc) if nvcc and nvcc.exists() else "nvcc", "--version"])
    return parse_nvcc_version(text) if text else None


def collect_environment() -> dict:
    """Machine, GPU and versions (torch, its CUDA, Triton, nvcc, Python, ukd and the checkout's commit)."""
    import torch

    import ukd

    props = torch.cuda.get_device_properties(0)
    driver = _run_text(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    try:
        triton_version = metadata.version("triton")
    except metadata.PackageNotFoundError:
        triton_version = None
    commit = _run_text(["git", "-C", str(_ROOT), "rev-parse", "--short", "HEAD"], timeout=5)
    return {
        "machine": {"hostname": socket.gethostname(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "gpu": {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_GiB": props.total_memory / 2**30,
            "multiprocessors": props.multi_processor_count,
            "count": torch.cuda.device_count(),
            "driver": driver.strip().splitlines()[0] if driver else None,
        },
        "versions": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "triton": triton_version,
            "nvcc": _nvcc_version(),
            "python": platform.python_version(),
            "ukd": ukd.__version__,
            "git": commit.strip() if commit else None,
        },
        "env": {k: os.environ[k] for k in ("TRITON_INTERPRET", "TORCH_CUDA_ARCH_LIST", "CUDA_HOME") if k in os.environ},
    }


def _tool(name: str, env: dict[str, str]) -> str | None:
    """Where the workers will find ``name`` (on their PATH)."""
    return shutil.which(name, path=env.get("PATH"))


# ------------------------------------------------------------------------------------------ running the parts
def plan_timeout(remaining: float, cap: float, min_s: float, reserve: float) -> float | None:
    """A part's time box: at most ``cap``, leaving ``reserve`` seconds for the parts after it; None when less than
    ``min_s`` would be left for it (then it is skipped)."""
    box = min(cap, remaining - reserve)
    return box if box >= min_s else None


def _read_result(path: Path) -> PartResult | None:
    try:
        return PartResult.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def run_worker(
    name: str,
    title: str,
    cmd: Sequence[str],
    timeout: float,
    result_path: Path,
    *,
    env: dict[str, str] | None = None,
    required: bool = True,
) -> PartResult:
    """Run ``cmd`` (a worker that writes a PartResult to ``result_path``) with a hard time box; a crash, a non-zero
    exit, a missing result or the time box running out become the part's ``error``, with the output's tail."""
    result_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the worker's own session: ninja and nvcc go with it
        except ProcessLookupError:
            pass
        out, _ = proc.communicate()
    elapsed = time.perf_counter() - t0
    tail = out.decode("utf-8", errors="replace")[-3000:] if out else ""
    result = _read_result(result_path)
    problem = None
    if timed_out:
        problem = f"timed out after {timeout:.0f} s (the part's time box); the worker was killed"
    elif proc.returncode != 0:
        problem = f"the worker exited with status {proc.returncode}"
    elif result is None:
        problem = "the worker wrote no result"
    if result is None:
        result = PartResult(name, title, required=required)
    if problem is not None:
        result.error = "\n".join(x for x in (result.error, problem, tail.strip() and f"output:\n{tail}") if x)
    result.elapsed_s = elapsed
    result.required = required
    return result


def _worker_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the point is compiled kernels on the GPU
    env["TORCH_EXTENSIONS_DIR"] = str(tmp / "torch_extensions")  # a fresh build, timed in full
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    # pip's ninja (and other console scripts) live beside this interpreter, which may not be on PATH in a venv
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH", "")) if p)
    return env


def run_parts(out_dir: Path, budget: float, names: Sequence[str]) -> int:
    from ukd.gpu_check.parts import PARTS
    from ukd.gpu_check.timing import Deadline

    t_start = time.perf_counter()
    deadline = Deadline.after(budget)
    try:
        env = collect_environment()
    except Exception as exc:  # the run goes on; the report says what could not be read
        env = {"error": f"{type(exc).__name__}: {exc}", "gpu": {}, "versions": {}, "machine": {}}
    report = Report(environment=env, parts=[], started=_now(), budget_s=budget)
    versions = env["versions"]
    _say(
        f"{env['gpu'].get('name')}, torch {versions.get('torch')}, Triton {versions.get('triton')}, "
        f"nvcc {versions.get('nvcc')}; "
        f"{len(names)} part{'s' if len(names) != 1 else ''} within {budget:.0f} s -> {out_dir}"
    )
    written = True
    skip: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="ukd_gpu_check_") as tmp:
        worker_env = _worker_env(Path(tmp))
        env["tools"] = {name: _tool(name, worker_env) for name in ("ninja", "nvcc", "c++")}
        for i, name in enumerate(names):
            info = PARTS[name]
            reserve = sum(PARTS[n].min_s for n in names[i + 1 :] if PARTS[n].required)
            box = plan_timeout(deadline.remaining(), info.cap_s, info.min_s, reserve)
            if box is None:
                why = f"{max(deadline.remaining(), 0):.0f} s of the budget left"
                result = PartResult(name, info.title, skipped=why, required=info.required)
            else:
                path = Path(tmp) / f"{name}.json"
                cmd = [sys.executable, "-m", "ukd.gpu_check.worker", name, str(path)]
                cmd += ["--deadline", f"{time.time() + box - 5:.3f}", "--backends", ",".join(BACKENDS)]
                cmd += [f"--skip={b}={why}" for b, why in skip.items()]
                result = run_worker(name, info.title, cmd, box, path, env=worker_env, required=info.required)
            if name == "build" and result.status != "pass":
                skip["cuda"] = "the build part failed"
            report.parts.append(result)
            report.elapsed_s = time.perf_counter() - t_start
            written = _write(report, out_dir) and written
            status = result.status if result.required else f"{result.status} (optional)"
            _say(f"[{i + 1}/{len(names)}] {name}: {status} in {result.elapsed_s:.0f} s; {result.summary()[:160]}")
    report.finished = _now()
    report.elapsed_s = time.perf_counter() - t_start
    written = _write(report, out_dir) and written
    verdict = "PASS" if report.ok else "FAIL"
    _say(f"{verdict} in {report.elapsed_s:.0f} s; wrote {out_dir / 'gpu_check.json'} and gpu_check.md")
    return EXIT_OK if report.ok and written else EXIT_FAILED


def _write(report: Report, out_dir: Path) -> bool:
    try:
        write_reports(report, out_dir)
    except OSError as exc:
        _say(f"error: cannot write the reports into {out_dir}: {exc}")
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    from ukd.gpu_check.parts import PARTS

    parser = argparse.ArgumentParser(
        prog="python -m ukd.gpu_check",
        description="Validate ukd's GPU backends on this machine's CUDA device (docs/gpu.md).",
        epilog="Exit status: 0 every check passed, 1 a check failed, 2 nothing was checked.",
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="where gpu_check.json and gpu_check.md go")
    parser.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET_S,
        help=f"seconds all parts together may take (default {DEFAULT_BUDGET_S:.0f}: the run ends within 6 minutes)",
    )
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of: {', '.join(PARTS)}")
    args = parser.parse_args(argv)
    names = [n for n in args.parts.split(",") if n]
    unknown = [n for n in names if n not in PARTS]
    if unknown or not names:
        _say(f"error: --parts: unknown part(s) {unknown or names}; choose from {', '.join(PARTS)}")
        return EXIT_NOT_CHECKED
    if not args.budget > 0:
        _say(f"error: --budget: expected a positive number of seconds, got {args.budget}")
        return EXIT_NOT_CHECKED
    problem = out_dir_problem(args.out_dir)
    if problem is not None:
        _say(f"error: {problem}; nothing was checked")
        return EXIT_NOT_CHECKED
    problem = cuda_problem()
    if problem is not None:
        _say(f"error: {problem}; nothing was checked")
        return EXIT_NOT_CHECKED
    try:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _say(f"error: cannot create OUT_DIR {args.out_dir}: {exc}; nothing was checked")
        return EXIT_NOT_CHECKED
    return run_parts(args.out_dir, args.budget, [n for n in PARTS if n in names])
