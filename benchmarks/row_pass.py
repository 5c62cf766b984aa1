"""Why the fused forward computes the row gradients at once instead of recomputing them in backward.

    python benchmarks/row_pass.py [--threads 1]

Times the C++ forward on pooled (B, C) inputs, so the B×K row pass dominates, with and without its gradients.
Saving the gradients costs 6·B·K numbers (d/d[μ; r] for both heads, d/dlogits for both); recomputing in backward
would save [μ; r] and the noise instead — also 6·B·K — and redo the whole pass. Same memory, more time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_ms_interleaved

from ukd.op.backends import cpp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if cpp.unavailable_reason("cpu"):
        raise SystemExit(f"the C++ extension is needed: {cpp.unavailable_reason('cpu')}")
    print(f"{'B':>4} {'K':>6} {'loss only ms':>13} {'+ gradients ms':>15} {'recompute would add':>20}")
    op = torch.ops.ukd.fused_forward
    for batch, k in ((64, 100), (32, 1000), (256, 1000), (8, 32000)):
        gen = torch.Generator().manual_seed(0)
        shapes = [(batch, k), (batch, k), (2 * k, 8), (2 * k,), (2 * k, 8), (2 * k,), (batch, k), (batch, k)]
        small = [torch.randn(*shape, generator=gen) for shape in shapes]
        feats = [torch.randn(batch, 8, generator=gen)]
        inputs = (feats, feats, *small, 4.0, 1.0, 0.5, 1.0, 1.0, 10.0)
        times = median_ms_interleaved(
            {"loss": lambda inputs=inputs: op(*inputs, False), "grads": lambda inputs=inputs: op(*inputs, True)}
        )
        print(f"{batch:>4} {k:>6} {times['loss']:>13.3f} {times['grads']:>15.3f} {times['loss']:>17.3f} ms")


if __name__ == "__main__":
    main()
