"""Where the time of one forward+backward of the loss goes: a torch.profiler table per step, next to the floor.

    python benchmarks/profile_step.py [--shape cifar] [--variant cpu] [--malloc retain] [--steps 20]

Runs the step of ``benchmarks/run.py`` (``.backward()``, gradients reset first) under ``torch.profiler`` and prints
the operators by self CPU time, in ms per step, beside the two parts of the floor measured in the same process:
reading every feature once and writing the student feature gradients once (``floor:bytes``), and the head GEMMs
(``floor:gemm``). ``aten::copy_`` of feature-sized tensors is autograd materialising a leaf's ``.grad`` from the
broadcast view; ``ukd::fused_forward`` is pooling plus the row pass; ``aten::mm``/``addmm`` are the head GEMMs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MALLOC_MODES, floor_from, floor_steps, make_step, median_ms_interleaved, set_malloc, variants

from ukd.testing import BENCH_SHAPES, bench_case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(BENCH_SHAPES), default="cifar")
    parser.add_argument("--batch", type=int, default=None, help="override the shape's batch size")
    parser.add_argument("--variant", default="cpu", help="eager, compile, or a fused backend (default: cpu)")
    parser.add_argument("--malloc", choices=MALLOC_MODES, default="retain", help="allocator setting (see run.py)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rows", type=int, default=15, help="operators to show")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    set_malloc(args.malloc)
    torch.set_num_threads(args.threads)
    fns = variants()
    if args.variant not in fns:
        raise SystemExit(f"--variant: expected one of {sorted(fns)} (the ones that run here), got {args.variant!r}")
    case = bench_case(args.shape, batch=args.batch)
    step = make_step(fns[args.variant], case, "fwd+bwd")
    floor, nbytes = floor_steps(case)
    times = median_ms_interleaved({"step": step, **floor}, rounds=args.steps)
    for _ in range(3):
        step()
    with profile() as prof:
        for _ in range(args.steps):
            step()
    f = floor_from(times, nbytes)
    print(
        f"{args.shape} B={case.student_logits.shape[0]}, {args.variant}, {args.threads} threads, malloc {args.malloc}"
    )
    print(
        f"step {times['step']:.2f} ms (median, unprofiled); floor {f['floor_ms']:.2f} ms = "
        f"bytes {f['bytes_ms']:.2f} ms ({nbytes / 1e6:.1f} MB at {f['bandwidth_GBps']:.1f} GB/s) "
        f"+ GEMMs {f['gemm_ms']:.2f} ms\n"
    )
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) / args.steps / 1e3
    print(f"{'operator':<48} {'self ms/step':>12} {'calls/step':>10}")
    for e in events[: args.rows]:
        print(f"{e.key[:48]:<48} {e.self_cpu_time_total / args.steps / 1e3:>12.3f} {e.count / args.steps:>10.1f}")
    print(f"{'all operators (profiled)':<48} {total:>12.3f}")


if __name__ == "__main__":
    main()
