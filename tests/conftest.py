import os

# Triton kernels run on CPU tensors under the interpreter in tests; it must be on before triton is first imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from ukd.testing import available_backends

FUSED_CPU = [b for b in available_backends("cpu") if b != "triton"]  # triton has its own interpreter tests


@pytest.fixture(params=FUSED_CPU or [pytest.param("cpu", marks=pytest.mark.skip(reason="no fused backend built"))])
def fused_backend(request) -> str:
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
