"""What the op's Python glue costs: the autograd path of ``ukd/op/autograd.py`` against the kernels alone.

    python benchmarks/dispatch.py [--threads 2]

At a tiny shape (B=4, K=10, three small stages) the kernels take a few µs, so the differences between the rows are
the glue: validation, ``autograd.Function.apply``, the registered ops' Python dispatch, and the finite check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_step, median_ms_interleaved

from ukd.op import autograd, backends
from ukd.op.validation import prepare
from ukd.testing import fused_loss, make_case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    case = make_case(4, 10, [(8, 4, 4), (16, 2, 2), (32,)], [(8, 4, 4)], dtype=torch.float32).requires_grad_()
    backends.resolve("cpu", torch.device("cpu"))
    from ukd.op.functional import Head, LossOptions

    def prepared():
        heads = (Head(case.student_weight, case.student_bias), Head(case.teacher_weight, case.teacher_bias))
        return prepare(*case.args()[:4], *heads, (case.noise_s, case.noise_t), LossOptions(), "cpu")

    p = prepared()
    flat = autograd._forward_args(p.student, p.teacher, p.options, True, "cpu")
    steps = {
        "C++ kernel alone (fwd)": lambda: backends.get("cpu").forward(p.student, p.teacher, p.options, True),
        "registered op (fwd)": lambda: torch.ops.ukd.unified_loss(*flat),
        "validation": prepared,
        "ukd_loss fwd, no grad": make_step(lambda c: fused_loss(c, "cpu"), case, "fwd"),
        "ukd_loss fwd+bwd": make_step(lambda c: fused_loss(c, "cpu"), case, "fwd+bwd"),
        "reference fwd+bwd": make_step(lambda c: fused_loss(c, "reference"), case, "fwd+bwd"),
    }
    times = median_ms_interleaved(steps, rounds=300, min_time=2.0)
    print(f"tiny shape, {args.threads} threads (median of interleaved rounds)")
    for name, ms in times.items():
        print(f"{name:<26} {ms * 1e3:8.1f} µs")


if __name__ == "__main__":
    main()
