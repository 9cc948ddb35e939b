"""Gradient transformations built on the norms: directions, step sizes, the modular step."""

from normtx.transforms.dualize import ScaleByDualNormState, dualize, scale_by_dual_norm
from normtx.transforms.escape_velocity import (
    EscapeVelocityState,
    ProdigyMomentsState,
    escape_velocity_lr,
)

__all__ = [
    "EscapeVelocityState",
    "ProdigyMomentsState",
    "ScaleByDualNormState",
    "dualize",
    "escape_velocity_lr",
    "scale_by_dual_norm",
]
