"""ukd: Unified Knowledge Distillation (UniKD, ECCV 2024) with fused kernels.

``UnifiedDistillLoss`` is the drop-in module; ``ukd.functional.ukd_loss`` the functional form.
"""

from ukd.functional import ukd_loss
from ukd.op.module import UnifiedDistillLoss

__version__ = "0.1.0"
__all__ = ["UnifiedDistillLoss", "ukd_loss", "__version__"]
