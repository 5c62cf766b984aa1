"""The UKD op: its contract (:mod:`~ukd.op.options`), validation, the plain-PyTorch reference, the registered op
with its one autograd path, the backends, and the ``nn.Module`` (with the AFF fusion) that carries the heads.

Everything the training world (``ukd.models``, ``ukd.data``, ``ukd.train``, ``ukd.losses``) uses of the op comes
through :class:`~ukd.op.module.UnifiedDistillLoss` or :func:`~ukd.op.functional.ukd_loss`.
"""
