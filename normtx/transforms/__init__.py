"""Gradient transformations built on the norms: directions, step sizes, the modular step."""

from normtx.transforms.dualize import ScaleByDualNormState, dualize, scale_by_dual_norm

__all__ = ["ScaleByDualNormState", "dualize", "scale_by_dual_norm"]
