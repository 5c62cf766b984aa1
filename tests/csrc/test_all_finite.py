"""``torch.ops.ukd.all_finite`` (the fused path's one-call check of its outputs) against ``torch.isfinite``."""

import pytest
import torch

from ukd.op.backends import cpp

pytestmark = pytest.mark.skipif(cpp.unavailable_reason("cpu") is not None, reason="C++ extension not built")

LENGTHS = [1, 31, 64, 65, 1000, 4097]  # below, at and past the 64-lane blocks, with tails


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", LENGTHS)
def test_every_position_and_kind_of_non_finite_is_found(dtype, n):
    finite = torch.randn(n, dtype=torch.float64).mul(1e3).to(dtype)
    assert torch.ops.ukd.all_finite([finite])
    for bad in (float("nan"), float("inf"), float("-inf")):
        for pos in sorted({0, n // 2, n - 1, max(n - 2, 0)}):
            t = finite.clone()
            t[pos] = bad
            expected = bool(torch.isfinite(t).all())
            assert torch.ops.ukd.all_finite([t]) is expected is False, (bad, pos)
            assert torch.ops.ukd.all_finite([finite, t]) is False  # found in a later tensor of the list


def test_extreme_finite_values_pass():
    big = torch.tensor([torch.finfo(torch.float32).max, -torch.finfo(torch.float32).max, 1e-45, 0.0, -0.0])
    assert torch.ops.ukd.all_finite([big.repeat(40)])
    huge = torch.tensor([torch.finfo(torch.float64).max, torch.finfo(torch.float64).tiny], dtype=torch.float64)
    assert torch.ops.ukd.all_finite([huge.repeat(100)])


def test_non_contiguous_empty_and_integer_tensors():
    t = torch.randn(40, 70)[:, ::3]
    assert not t.is_contiguous() and torch.ops.ukd.all_finite([t])
    t[5, 7] = float("nan")
    assert not torch.ops.ukd.all_finite([t])
    assert torch.ops.ukd.all_finite([torch.empty(0), torch.arange(5)])
