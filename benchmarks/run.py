"""Kernel benchmark: one table, ``benchmarks/results/<machine>.json`` and a PNG plot.

    python benchmarks/run.py                 # both shapes + the batch sweep, under both allocator settings
    python benchmarks/run.py --quick         # fewer runs, no sweep
    python benchmarks/run.py --malloc retain # one allocator setting only

Per shape and variant: median time of forward and forward+backward (``.backward()``, gradients reset each step),
the ratio to eager and to ``torch.compile`` of the reference, the peak memory the loss's forward+backward
allocates (``torch.autograd.grad`` of the loss w.r.t. its inputs: what the loss hands to the rest of the graph),
and the floor, timed round-robin with the variants in the same run (see :func:`common.floor_steps`).

Each allocator setting runs in its own process: ``glibc`` (the defaults: feature-sized gradients come from fresh,
page-faulted memory every step) and ``retain`` (freed memory stays in the heap, as the floor's preallocated
buffers do). See :func:`common.set_malloc`.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    MALLOC_MODES,
    floor_from,
    floor_steps,
    make_step,
    median_ms_interleaved,
    peak_bytes,
    set_malloc,
    variants,
)

from ukd.testing import BENCH_SHAPES, bench_case

RESULTS = Path(__file__).resolve().parent / "results"


def grad_step(fn, case):
    wrt = [t for t in case.tensors() if t.requires_grad]
    return lambda: torch.autograd.grad(fn(case), wrt)


def measure_shape(name: str, batch: int | None, quick: bool) -> dict:
    case = bench_case(name, batch=batch)
    fns = variants()
    runs = {"rounds": 5 if quick else 15, "min_time": 0.3 if quick else 2.0}
    fwd = median_ms_interleaved({label: make_step(fn, case, "fwd") for label, fn in fns.items()}, **runs)
    steps = {label: make_step(fn, case, "fwd+bwd") for label, fn in fns.items()}
    floor, nbytes = floor_steps(case)
    fwd_bwd = median_ms_interleaved({**steps, **floor}, **runs)
    rows = {}
    for label in steps:
        peak = peak_bytes(grad_step(fns[label], case))
        rows[label] = {"fwd_ms": fwd[label], "fwd_bwd_ms": fwd_bwd[label], "peak_MB": peak / 2**20}
    for row in rows.values():
        row["x_eager"] = rows["eager"]["fwd_bwd_ms"] / row["fwd_bwd_ms"]
        row["x_compile"] = rows["compile"]["fwd_bwd_ms"] / row["fwd_bwd_ms"]
        row["mem_vs_eager"] = row["peak_MB"] / max(rows["eager"]["peak_MB"], 1e-9)
    floor = floor_from(fwd_bwd, nbytes)
    return {"shape": name, "batch": case.student_logits.shape[0], "variants": rows, "floor": floor}


def print_table(result: dict) -> None:
    floor = result["floor"]
    print(
        f"\n{result['shape']} B={result['batch']}: floor {floor['floor_ms']:.2f} ms "
        f"= {floor['bytes'] / 1e6:.1f} MB at {floor['bandwidth_GBps']:.1f} GB/s ({floor['bytes_ms']:.2f} ms) "
        f"+ head GEMMs {floor['gemm_ms']:.2f} ms"
    )
    print(
        f"{'variant':<10} {'fwd ms':>8} {'fwd+bwd ms':>11} {'×eager':>7} {'×compile':>9} {'/floor':>7} "
        f"{'peak MB':>8} {'mem/eager':>9}"
    )
    for label, row in result["variants"].items():
        print(
            f"{label:<10} {row['fwd_ms']:>8.2f} {row['fwd_bwd_ms']:>11.2f} {row['x_eager']:>7.2f} "
            f"{row['x_compile']:>9.2f} {row['fwd_bwd_ms'] / floor['floor_ms']:>7.2f} {row['peak_MB']:>8.1f} "
            f"{row['mem_vs_eager']:>9.2f}"
        )


def plot(runs: dict[str, dict], path: Path) -> None:
    """One panel of time/floor bars per allocator setting, and the batch sweep of the last setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = next((run["sweep"] for run in reversed(runs.values()) if run["sweep"]), [])
    panels = len(runs) + bool(sweep)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), squeeze=False)
    for ax, (mode, run) in zip(axes[0], runs.items()):
        results = run["shapes"]
        labels = list(results[0]["variants"])
        width = 0.8 / len(labels)
        for i, label in enumerate(labels):
            ys = [r["variants"][label]["fwd_bwd_ms"] / r["floor"]["floor_ms"] for r in results]
            ax.bar([j + i * width for j in range(len(results))], ys, width, label=label)
        ax.axhline(1.0, color="k", lw=1, ls="--", label="floor")
        ax.axhline(1.3, color="grey", lw=1, ls=":", label="1.3 × floor")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(results))], [r["shape"] for r in results])
        ax.set_ylabel("forward+backward time / measured floor")
        ax.set_title(f"UKD loss, forward+backward (malloc: {mode})")
        ax.legend(fontsize=8)
    if sweep:
        ax = axes[0][-1]
        for label in sweep[0]["variants"]:
            ax.plot([r["batch"] for r in sweep], [r["variants"][label]["fwd_bwd_ms"] for r in sweep], "o-", label=label)
        ax.plot([r["batch"] for r in sweep], [r["floor"]["floor_ms"] for r in sweep], "k--", label="floor")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size (cifar shape)")
        ax.set_ylabel("ms")
        ax.set_title(f"batch sweep (malloc: {list(runs)[-1]})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def print_sweep(sweep: list[dict]) -> None:
    print("\nbatch sweep (cifar shape), forward+backward ms:")
    print(f"{'B':>4} " + " ".join(f"{label:>10}" for label in sweep[0]["variants"]) + f" {'floor':>8}")
    for r in sweep:
        cells = " ".join(f"{v['fwd_bwd_ms']:>10.2f}" for v in r["variants"].values())
        print(f"{r['batch']:>4} {cells} {r['floor']['floor_ms']:>8.2f}")


def measure_all(quick: bool) -> dict:
    shapes = [measure_shape(name, None, quick) for name in BENCH_SHAPES]
    sweep = [] if quick else [measure_shape("cifar", batch, quick=True) for batch in (8, 16, 32, 64, 128, 256)]
    return {"shapes": shapes, "sweep": sweep}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer runs and no batch sweep")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--machine", default=socket.gethostname().split(".")[0] or "machine")
    parser.add_argument(
        "--malloc",
        choices=(*MALLOC_MODES, "both"),
        default="both",
        help="allocator setting; 'both' runs each in its own process (default)",
    )
    parser.add_argument("--part", type=Path, help=argparse.SUPPRESS)  # internal: a child writes its results here
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.part is not None:  # one allocator setting, in a process of its own
        set_malloc(args.malloc)
        torch.manual_seed(0)
        args.part.write_text(json.dumps(measure_all(args.quick)))
        return
    runs = {}
    for mode in MALLOC_MODES if args.malloc == "both" else (args.malloc,):
        with tempfile.TemporaryDirectory() as tmp:
            part = Path(tmp) / "part.json"
            cmd = [sys.executable, __file__, "--malloc", mode, "--threads", str(args.threads), "--part", str(part)]
            subprocess.run(cmd + (["--quick"] if args.quick else []), check=True)
            runs[mode] = json.loads(part.read_text())
        print(f"\n=== malloc: {mode} ===")
        for r in runs[mode]["shapes"]:
            print_table(r)
        if runs[mode]["sweep"]:
            print_sweep(runs[mode]["sweep"])
    RESULTS.mkdir(exist_ok=True)
    meta = {
        "machine": args.machine,
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
    out = RESULTS / f"{args.machine}.json"
    out.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    plot(runs, RESULTS / f"{args.machine}.png")
    print(f"\nwrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
