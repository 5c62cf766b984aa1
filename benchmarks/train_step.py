"""Training-step benchmark: what UKD costs on top of KD in a real distillation step.

    python benchmarks/train_step.py [--batch 64] [--runs 15] [--malloc retain]

resnet32x4 → resnet8x4 on 3×32×32 inputs: teacher forward (no grad), student forward, loss, student backward
(gradients reset each step, no optimiser step). The variants are timed round-robin, so that load from other
processes falls on all of them alike. KD = CE + Hinton KD; UKD = CE + ``UnifiedDistillLoss`` (whose logit
term is the same Hinton KD, plus the distribution terms and the two heads).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MALLOC_MODES, median_ms_interleaved, set_malloc

from ukd import UnifiedDistillLoss
from ukd.losses import kd_loss
from ukd.models import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--malloc", choices=MALLOC_MODES, default="glibc", help="allocator setting (see run.py)")
    args = parser.parse_args()
    set_malloc(args.malloc)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher = build("resnet32x4", num_classes=100).eval().requires_grad_(False)
    student = build("resnet8x4", num_classes=100).train()
    images = torch.randn(args.batch, 3, 32, 32)
    target = torch.randint(0, 100, (args.batch,))
    crits = {
        backend: UnifiedDistillLoss(student.stage_channels, teacher.stage_channels, 100, backend=backend)
        for backend in ("cpu", "reference")
    }
    params = [*student.parameters(), *(p for c in crits.values() for p in c.parameters())]

    def step(method: str) -> None:
        for p in params:
            p.grad = None
        with torch.no_grad():
            t_logits, t_feats = teacher(images)
        s_logits, s_feats = student(images)
        loss = F.cross_entropy(s_logits, target)
        if method == "kd":
            loss = loss + kd_loss(s_logits, t_logits, 4.0)
        elif method.startswith("ukd"):
            loss = loss + crits[method.split(":")[1]](s_feats, t_feats, s_logits, t_logits)
        loss.backward()

    methods = ("ce", "kd", "ukd:cpu", "ukd:reference")
    rows = median_ms_interleaved({m: lambda m=m: step(m) for m in methods}, warmup=1, rounds=args.runs, min_time=0)
    print(f"\nresnet32x4 → resnet8x4, B={args.batch}, 3×32×32, {args.threads} threads, malloc: {args.malloc}")
    print(f"{'step':<15} {'median ms':>10} {'vs KD':>8}")
    for method, ms in rows.items():
        print(f"{method:<15} {ms:>10.1f} {100 * (ms / rows['kd'] - 1):>+7.1f}%")


if __name__ == "__main__":
    main()
