"""The functional API: ``ukd_loss`` (its home is :mod:`ukd.op.functional`)."""

from ukd.op.functional import COMPONENTS, ukd_loss

__all__ = ["COMPONENTS", "ukd_loss"]
