"""pytest-benchmark microbenchmarks of the op: ``python -m pytest benchmarks --benchmark-columns=median,iqr``.

Every backend that runs here, forward and forward+backward, at the cifar and imagenet shapes, against eager and
``torch.compile`` of the reference (the same baselines as the tests, from :mod:`ukd.testing`), plus a batch sweep.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_step, variants

from ukd.testing import BENCH_SHAPES, bench_case

VARIANTS = variants()


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("shape", list(BENCH_SHAPES))
def test_op(benchmark, shape, variant, mode):
    benchmark.group = f"{shape} {mode}"
    benchmark(make_step(VARIANTS[variant], bench_case(shape), mode))


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("batch", [8, 16, 32, 64, 128, 256])
def test_batch_sweep(benchmark, batch, variant):
    benchmark.group = f"cifar sweep B={batch}"
    benchmark(make_step(VARIANTS[variant], bench_case("cifar", batch=batch), "fwd+bwd"))
