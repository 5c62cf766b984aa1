"""Determinism of the CPU backend: loss, components and every gradient, bit for bit, across repeated runs and
across thread counts (each count in its own process: OpenMP and MKL size their pools once).

Findings (docs/reliability.md has the table):

* Repeated runs in one process: bit-identical, always.
* The C++ kernels (pooling and the row pass, ``ukd::fused_forward``) are thread-count invariant, as
  csrc/ukd_cpu.cpp promises: shown on inputs whose head GEMMs are exact (dyadic values), so that nothing but
  the kernels can differ. (The feature gradients are broadcast views of the pooled gradient, ``dp / (H·W)``,
  made by torch ops in ``ukd.op.autograd``: no kernel of ours writes them.)
* The head GEMMs are MKL's (``at::addmm`` in forward, ``torch.mm`` in backward). With MKL's defaults, a GEMM
  whose row count is odd can round its last row differently at 1 and 2 threads (``torch.addmm`` alone shows it),
  so the loss and gradients of such batches may differ by a few ulps between thread counts — and only then.
  ``MKL_CBWR=AUTO`` (or ``AUTO,STRICT``) in the environment makes them bit-identical across thread counts too,
  but for one entry: the float64 odd batch's feature gradients (``dp = g·dy W``, the ``torch.mm`` of
  ``ukd.op.backends.cpp.backward``, since the feature gradients are views of it) still differ, by half an ulp.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hardening_support import REPO, tally

from ukd import UnifiedDistillLoss
from ukd.testing import Case, available_backends, make_case, run_loss

pytestmark = pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="the C++ extension is not built")

# name -> (batch, k, student stages, teacher stages, dtype, feature dtype, channels_last)
_IMAGENET = ([(64, 7, 7), (128, 7, 7), (512, 7, 7)], [(128, 7, 7), (512, 7, 7)])
_CIFAR = ([(64, 8, 8), (128, 4, 4), (256, 2, 2)], [(64, 8, 8), (256, 2, 2)])
_ODD = ([(40, 7, 7), (33,), (5, 1, 1)], [(17, 3, 5), (8,)])
CASES = {
    "imagenet-f32-cl": (32, 1000, *_IMAGENET, "float32", "float32", True),
    "cifar-f32": (64, 100, *_CIFAR, "float32", "float32", False),
    "odd-batch-f32": (9, 300, *_ODD, "float32", "float32", True),
    "odd-batch-f64": (9, 300, *_ODD, "float64", "float64", True),
    "bf16-feats": (16, 257, [(96, 8, 8), (48,)], [(64, 8, 8)], "float32", "bfloat16", True),
    "f16-feats-B5": (5, 33, [(7, 5, 3)], [(9, 2, 2)], "float32", "float16", False),
}


def case_of(name: str) -> Case:
    b, k, s, t, dtype, feat_dtype, cl = CASES[name]
    case = make_case(b, k, s, t, channels_last=cl, seed=len(name), gauss_weight=0.5)
    return case.cast(getattr(torch, dtype)).cast(getattr(torch, feat_dtype), feats_only=True).requires_grad_()


def dyadic_case(batch: int, k: int) -> Case:
    """Features, heads and biases on a coarse dyadic grid, H·W a power of two: every pooled value and every
    entry of p Wᵀ + b is exact in float32, whatever order a GEMM sums in."""
    gen = torch.Generator().manual_seed(batch * k)

    def grid(*shape: int, scale: float) -> torch.Tensor:
        return torch.randint(-8, 9, shape, generator=gen).float() * scale

    case = make_case(batch, k, [(6, 4, 4), (5,)], [(7, 2, 4)], dtype=torch.float32, gauss_weight=0.5)
    case.student_feats = [
        grid(batch, 6, 4, 4, scale=0.25).contiguous(memory_format=torch.channels_last),
        grid(batch, 5, scale=0.25),
    ]
    case.teacher_feats = [grid(batch, 7, 2, 4, scale=0.25)]
    case.student_weight, case.teacher_weight = grid(2 * k, 11, scale=0.125), grid(2 * k, 7, scale=0.125)
    case.student_bias, case.teacher_bias = grid(2 * k, scale=0.5), grid(2 * k, scale=0.5)
    return case


def results() -> dict[str, list[torch.Tensor]]:
    """Everything to compare: per case (loss, components, every gradient); a seeded module training step; and the
    C++ kernels' own outputs (``ukd::fused_forward``: loss, components, pooled features, d loss / d [μ; r] and
    d loss / d logits) on dyadic inputs."""
    out: dict[str, list[torch.Tensor]] = {}
    for name in CASES:
        loss, comps, grads = run_loss(case_of(name), "cpu")
        out[name] = [loss.detach(), *comps.values(), *(g.contiguous() for g in grads)]
    torch.manual_seed(7)
    crit = UnifiedDistillLoss([64, 128], [32], 100, gauss_weight=0.2, backend="cpu")
    feats_s = [torch.randn(8, 64, 6, 6), torch.randn(8, 128, 3, 3)]
    loss = crit(feats_s, [torch.randn(8, 32, 6, 6)], torch.randn(8, 100), torch.randn(8, 100))
    loss.backward()
    out["module-train-step"] = [loss.detach(), *(p.grad for p in crit.parameters())]
    for batch, k in ((5, 33), (9, 300), (32, 1000)):
        case = dyadic_case(batch, k)
        op = torch.ops.ukd.fused_forward(*case.args(), case.noise_s, case.noise_t, 4.0, 1.0, 0.5, 1.0, 1.0, 10.0, True)
        out[f"kernels-only/B{batch}K{k}"] = list(op)
    return out


_CHILD = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(int(sys.argv[1]))
    sys.path.insert(0, sys.argv[2])
    import ukd.op.backends.cpp as cpp
    assert cpp.unavailable_reason("cpu") is None
    from test_hardening_determinism import results
    torch.save({"threads": torch.get_num_threads(), "results": results()}, sys.argv[3])
    """
)


def run_children(settings: list[tuple[int, str | None]], tmp_path: Path) -> dict[tuple[int, str | None], dict]:
    """One process per (threads, MKL_CBWR), run side by side."""
    here = str(Path(__file__).resolve().parent)
    procs = {}
    for threads, cbwr in settings:
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_CBWR")}
        if cbwr:
            env["MKL_CBWR"] = cbwr
        path = tmp_path / f"{threads}-{cbwr}.pt"
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(threads), here, str(path)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs[(threads, cbwr)] = (path, proc)
    out = {}
    for key, (path, proc) in procs.items():
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err
        saved = torch.load(path)
        assert saved["threads"] == key[0]
        out[key] = saved["results"]
    return out


def compare(a: dict[str, list[torch.Tensor]], b: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """Per entry that is not bit-identical: its largest difference, in ulps of the tensor's largest value."""
    differing = {}
    for name, tensors in a.items():
        worst = 0.0
        for x, y in zip(tensors, b[name]):
            assert x.dtype == y.dtype and x.shape == y.shape, name
            if torch.equal(x, y):
                continue
            x64, y64 = x.double(), y.double()
            ulp = torch.finfo(x.dtype).eps * max(x64.abs().max().item(), torch.finfo(x.dtype).tiny)
            worst = max(worst, (x64 - y64).abs().max().item() / ulp)
        if worst:
            differing[name] = round(worst, 2)
    return differing


def test_repeated_runs_are_bit_identical() -> None:
    first = results()
    assert compare(first, results()) == {}
    tally("determinism: entries compared bit for bit across repeated runs", len(first))


def test_thread_counts(tmp_path: Path) -> None:
    """1 vs 2 threads, under MKL's defaults and under ``MKL_CBWR=AUTO``."""
    runs = run_children([(1, None), (2, None), (1, "AUTO"), (2, "AUTO")], tmp_path)
    entries = len(runs[(1, None)])
    for cbwr in (None, "AUTO"):
        differing = compare(runs[(1, cbwr)], runs[(2, cbwr)])
        label = f"MKL_CBWR={cbwr}" if cbwr else "MKL defaults"
        print(f"\n1 vs 2 threads, {label}: {len(differing)} of {entries} entries differ (ulps of max): {differing}")
        # the C++ kernels: thread-count invariant, bit for bit, always
        assert not [n for n in differing if n.startswith("kernels-only")], differing
        # what differs is MKL's GEMM rounding: a few ulps of the tensor's scale, never more
        assert all(ulps <= 16 for ulps in differing.values()), differing
        tally(f"determinism: entries compared across 1 vs 2 threads ({label})", entries)
        tally(f"determinism: of those, not bit-identical ({label})", len(differing))


@pytest.mark.slow
def test_thread_counts_four(tmp_path: Path) -> None:
    """4 threads on 2 cores (oversubscribed) against 1: the same bounds."""
    runs = run_children([(1, None), (4, None)], tmp_path)
    differing = compare(runs[(1, None)], runs[(4, None)])
    assert not [n for n in differing if n.startswith("kernels-only")], differing
    assert all(ulps <= 16 for ulps in differing.values()), differing
