"""ukd: Unified Knowledge Distillation (UniKD, ECCV 2024) with fused kernels.

``UnifiedDistillLoss`` is the drop-in module; ``ukd.functional.ukd_loss`` the functional form.
"""

import torch as _torch

from ukd._torch_version import check_torch as _check_torch

_check_torch(_torch.__version__)

from ukd.functional import ukd_loss  # noqa: E402
from ukd.op.module import UnifiedDistillLoss  # noqa: E402

__version__ = "0.1.0"
__all__ = ["UnifiedDistillLoss", "ukd_loss", "__version__"]
