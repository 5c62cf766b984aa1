"""``UnifiedDistillLoss``: the two distribution heads (and optional AFF fusion) as parameters, the loss through the
fused op."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ukd.op.autograd import compute
from ukd.op.fusion import AttentionFusion
from ukd.op.options import COMPONENTS, OPTION_NAMES, Head, LossOptions
from ukd.op.validation import check_options, prepare

__all__ = ["UnifiedDistillLoss"]


def _channel_list(name: str, channels: int | Sequence[int]) -> list[int]:
    out = [channels] if isinstance(channels, int) else list(channels)
    if not out or not all(isinstance(c, int) and c > 0 for c in out):
        raise ValueError(f"{name}: expected a positive int or a non-empty list of positive ints, got {channels!r}")
    return out


class UnifiedDistillLoss(nn.Module):
    """The UKD loss (``docs/loss.md``) with trainable student and teacher distribution heads.

    Each head is an ``nn.Linear(ΣC, 2K)``: ``weight`` is ``(2K, ΣC)``, ``bias`` is ``(2K,)``. Rows ``0..K-1``
    predict the mean μ, rows ``K..2K-1`` the log-variance ℓ; columns follow the stages in the order given.
    Initialisation: PyTorch's ``nn.Linear`` default (uniform in ±1/√ΣC) for the weights and the mean bias,
    and a zero log-variance bias, so every distribution starts near unit variance.

    Args:
        student_channels: channels of each student stage passed at call time, e.g. ``[64, 128, 256]``.
        teacher_channels: channels of each teacher stage.
        num_classes: K.
        temperature, dist_weight, gauss_weight, supp_weight, logit_weight, logvar_bound: the fields of
            :class:`~ukd.op.options.LossOptions` (kept as ``self.options``).
        sample: in training mode draw ε ~ N(0, I) with torch's RNG, fresh for student and teacher;
            in eval mode (or with ``sample=False``) use the means, z = μ.
        backend: "auto", "reference", "cpu", "cuda" or "triton".
        fusion: how the student stages reach the student head.

            * ``"pool"`` (default): every student stage is pooled and the pooled vectors concatenated
              (``docs/loss.md``); the student head is ``(2K, ΣC_s)``.
            * ``"abf"``: the stages go through ``self.fusion``, an :class:`ukd.op.fusion.AttentionFusion` (the AFF
              chain, ``docs/loss.md``), into one map of shape ``(B, C_t0, H_t0, W_t0)`` — the channels and spatial size
              of the teacher's FIRST stage, which must then be a 4-D map — and that map is the single student
              stage of the loss; the student head is ``(2K, C_t0)``. The fusion's parameters are trained with
              the heads. With ``"pool"``, ``self.fusion`` is ``None``.
        check_finite: ``None`` (default): a ``FloatingPointError`` naming the input on CPU, a device-side assertion
            on CUDA (no host synchronisation); ``True``: the named error everywhere; ``False``: no check
            (:class:`~ukd.op.options.LossOptions`).

    Call:
        ``loss = crit(student_feats, teacher_feats, student_logits, teacher_logits)``, with lists of
        ``(B, C_k, H_k, W_k)`` or ``(B, C_k)`` features and ``(B, K)`` logits. Returns a 0-dim tensor; the
        unweighted terms of the last call are in ``crit.last_components`` (detached), for logging.
    """

    def __init__(
        self,
        student_channels: int | Sequence[int],
        teacher_channels: int | Sequence[int],
        num_classes: int,
        *,
        temperature: float = 4.0,
        dist_weight: float = 1.0,
        gauss_weight: float = 0.0,
        supp_weight: float = 1.0,
        logit_weight: float = 1.0,
        sample: bool = True,
        logvar_bound: float = 10.0,
        backend: str = "auto",
        fusion: str = "pool",
        check_finite: bool | None = None,
    ) -> None:
        super().__init__()
        self.student_channels = _channel_list("student_channels", student_channels)
        self.teacher_channels = _channel_list("teacher_channels", teacher_channels)
        if not (isinstance(num_classes, int) and num_classes > 0):
            raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        if fusion not in ("pool", "abf"):
            raise ValueError(f"fusion: expected 'pool' or 'abf', got {fusion!r}")
        self.fusion_mode = fusion
        self.fusion: AttentionFusion | None = None
        head_channels = sum(self.student_channels)
        if fusion == "abf":
            self.fusion = AttentionFusion(self.student_channels, self.teacher_channels[0])
            head_channels = self.teacher_channels[0]
        self.options = LossOptions(
            temperature, dist_weight, gauss_weight, supp_weight, logit_weight, logvar_bound, check_finite
        )
        check_options(self.options)  # a bad option fails here, not at the first call
        self.sample = sample
        self.backend = backend
        self.student_head = nn.Linear(head_channels, 2 * num_classes)
        self.teacher_head = nn.Linear(sum(self.teacher_channels), 2 * num_classes)
        with torch.no_grad():
            self.student_head.bias[num_classes:].zero_()
            self.teacher_head.bias[num_classes:].zero_()
        self.last_components: dict[str, Tensor] = {}

    def forward(
        self,
        student_feats: Sequence[Tensor] | Tensor,
        teacher_feats: Sequence[Tensor] | Tensor,
        student_logits: Tensor,
        teacher_logits: Tensor,
    ) -> Tensor:
        self._check_stages("student", student_feats, self.student_channels)
        self._check_stages("teacher", teacher_feats, self.teacher_channels)
        if self.fusion is not None:
            first = teacher_feats if isinstance(teacher_feats, Tensor) else teacher_feats[0]
            if not (isinstance(first, Tensor) and first.dim() == 4):
                got = tuple(first.shape) if isinstance(first, Tensor) else type(first).__name__
                raise ValueError(
                    f"teacher_feats[0]: fusion='abf' resizes to the teacher's first-stage map and needs it "
                    f"(B, C, H, W), got {got}"
                )
            student_feats = [self.fusion(student_feats, first.shape[-2:])]
        noise_s = noise_t = None
        if self.sample and self.training and isinstance(student_logits, Tensor):
            dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
            noise_s = torch.randn(student_logits.shape, dtype=dtype, device=student_logits.device)
            noise_t = torch.randn(student_logits.shape, dtype=dtype, device=student_logits.device)
        heads = (
            Head(self.student_head.weight, self.student_head.bias),
            Head(self.teacher_head.weight, self.teacher_head.bias),
        )
        noise = (noise_s, noise_t)
        prepared = prepare(
            student_feats, teacher_feats, student_logits, teacher_logits, *heads, noise, self.options, self.backend
        )
        loss, components = compute(prepared)
        self.last_components = dict(zip(COMPONENTS, components.unbind(0), strict=True))
        return loss

    @staticmethod
    def _check_stages(prefix: str, feats: Sequence[Tensor] | Tensor, expected: list[int]) -> None:
        feats = [feats] if isinstance(feats, Tensor) else feats
        if not isinstance(feats, Sequence) or len(feats) != len(expected):
            got = len(feats) if isinstance(feats, Sequence) else type(feats).__name__
            raise ValueError(
                f"{prefix}_feats: expected {len(expected)} stages ({prefix}_channels={expected}), got {got}"
            )
        for i, (f, c) in enumerate(zip(feats, expected)):
            if isinstance(f, Tensor) and f.dim() in (2, 4) and f.shape[1] != c:  # a wrong rank: ukd_loss says so
                raise ValueError(
                    f"{prefix}_feats[{i}]: expected {c} channels ({prefix}_channels[{i}]), got {f.shape[1]}"
                )

    def __getattr__(self, name: str):
        """``crit.temperature``, ``crit.dist_weight``, …: the fields of ``crit.options``."""
        if name in OPTION_NAMES:
            return getattr(self.options, name)
        return super().__getattr__(name)

    def extra_repr(self) -> str:
        return (
            f"student_channels={self.student_channels}, teacher_channels={self.teacher_channels}, "
            f"num_classes={self.num_classes}, options={self.options}, sample={self.sample}, backend={self.backend!r}"
        )
