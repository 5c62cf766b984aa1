"""Kernel benchmark: one table, ``benchmarks/results/<machine>.json`` and a PNG plot.

    python benchmarks/run.py                 # both shapes + the batch sweep
    python benchmarks/run.py --quick         # fewer runs, no sweep

Per shape and variant: median time of forward and forward+backward (``.backward()``, gradients reset each step),
the ratio to eager and to ``torch.compile`` of the reference, the peak memory the loss's forward+backward
allocates (``torch.autograd.grad`` of the loss w.r.t. its inputs: what the loss hands to the rest of the graph),
and the floor measured in the same run (see :func:`common.floor_ms`).
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import env, floor_ms, make_step, median_ms_interleaved, peak_bytes, variants

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
    if "cpu" in fns:
        dense = make_step(fns["cpu"], case, "fwd+bwd")

        def dense_step() -> None:
            with env("UKD_DENSE_FEATURE_GRADS", "1"):
                dense()

        steps["cpu-dense"] = dense_step
        fwd["cpu-dense"] = fwd["cpu"]
    fwd_bwd = median_ms_interleaved(steps, **runs)
    rows = {}
    for label in steps:
        fn = fns["cpu"] if label == "cpu-dense" else fns[label]
        if label == "cpu-dense":
            with env("UKD_DENSE_FEATURE_GRADS", "1"):
                peak = peak_bytes(grad_step(fn, case))
        else:
            peak = peak_bytes(grad_step(fn, case))
        rows[label] = {"fwd_ms": fwd[label], "fwd_bwd_ms": fwd_bwd[label], "peak_MB": peak / 2**20}
    for row in rows.values():
        row["x_eager"] = rows["eager"]["fwd_bwd_ms"] / row["fwd_bwd_ms"]
        row["x_compile"] = rows["compile"]["fwd_bwd_ms"] / row["fwd_bwd_ms"]
        row["mem_vs_eager"] = row["peak_MB"] / max(rows["eager"]["peak_MB"], 1e-9)
    return {"shape": name, "batch": case.student_logits.shape[0], "variants": rows, "floor": floor_ms(case)}


def print_table(result: dict) -> None:
    floor = result["floor"]
    print(
        f"\n{result['shape']} B={result['batch']}: floor {floor['floor_ms']:.2f} ms "
        f"= {floor['bytes'] / 1e6:.1f} MB at {floor['bandwidth_GBps']:.1f} GB/s ({floor['bytes_ms']:.2f} ms) "
        f"+ head GEMMs {floor['gemm_ms']:.2f} ms"
    )
    print(f"{'variant':<10} {'fwd ms':>8} {'fwd+bwd ms':>11} {'×eager':>7} {'×compile':>9} {'/floor':>7} "
          f"{'peak MB':>8} {'mem/eager':>9}")  # fmt: skip
    for label, row in result["variants"].items():
        print(
            f"{label:<10} {row['fwd_ms']:>8.2f} {row['fwd_bwd_ms']:>11.2f} {row['x_eager']:>7.2f} "
            f"{row['x_compile']:>9.2f} {row['fwd_bwd_ms'] / floor['floor_ms']:>7.2f} {row['peak_MB']:>8.1f} "
            f"{row['mem_vs_eager']:>9.2f}"
        )


def plot(results: list[dict], sweep: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if sweep else 1, figsize=(12 if sweep else 6, 4.2), squeeze=False)
    ax = axes[0][0]
    labels = list(results[0]["variants"])
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        ys = [r["variants"][label]["fwd_bwd_ms"] / r["floor"]["floor_ms"] for r in results]
        ax.bar([j + i * width for j in range(len(results))], ys, width, label=label)
    ax.axhline(1.0, color="k", lw=1, ls="--", label="floor")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(results))], [r["shape"] for r in results])
    ax.set_ylabel("forward+backward time / measured floor")
    ax.set_title("UKD loss, forward+backward")
    ax.legend(fontsize=8)
    if sweep:
        ax = axes[0][1]
        for label in sweep[0]["variants"]:
            ax.plot([r["batch"] for r in sweep], [r["variants"][label]["fwd_bwd_ms"] for r in sweep], "o-", label=label)
        ax.plot([r["batch"] for r in sweep], [r["floor"]["floor_ms"] for r in sweep], "k--", label="floor")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size (cifar shape)")
        ax.set_ylabel("ms")
        ax.set_title("batch sweep")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer runs and no batch sweep")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--machine", default=socket.gethostname().split(".")[0] or "machine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = [measure_shape(name, None, args.quick) for name in BENCH_SHAPES]
    for r in results:
        print_table(r)
    sweep = []
    if not args.quick:
        for batch in (8, 16, 32, 64, 128, 256):
            sweep.append(measure_shape("cifar", batch, quick=True))
        print("\nbatch sweep (cifar shape), forward+backward ms:")
        print(f"{'B':>4} " + " ".join(f"{label:>10}" for label in sweep[0]["variants"]) + f" {'floor':>8}")
        for r in sweep:
            cells = " ".join(f"{v['fwd_bwd_ms']:>10.2f}" for v in r["variants"].values())
            print(f"{r['batch']:>4} {cells} {r['floor']['floor_ms']:>8.2f}")
    RESULTS.mkdir(exist_ok=True)
    meta = {"machine": args.machine, "threads": args.threads, "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "python": platform.python_version()}  # fmt: skip
    out = RESULTS / f"{args.machine}.json"
    out.write_text(json.dumps({"meta": meta, "shapes": results, "sweep": sweep}, indent=1))
    plot(results, sweep, RESULTS / f"{args.machine}.png")
    print(f"\nwrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
