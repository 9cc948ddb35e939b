"""Gradient transformations built on the norms: directions, step sizes, the modular step."""

from normtx.transforms.dualize import ScaleByDualNormState, dualize, scale_by_dual_norm
from normtx.transforms.escape_velocity import (
    EscapeVelocityState,
    ProdigyMomentsState,
    escape_velocity_lr,
)
from normtx.transforms.modular import (
    ModularNormPartitionState,
    RoleModular,
    modular_norm,
    modular_norm_partition,
)
from normtx.transforms.orthogonalize import orthogonalize_newton_schulz

__all__ = [
    "EscapeVelocityState",
    "ModularNormPartitionState",
    "ProdigyMomentsState",
    "RoleModular",
    "ScaleByDualNormState",
    "dualize",
    "escape_velocity_lr",
    "modular_norm",
    "modular_norm_partition",
    "orthogonalize_newton_schulz",
    "scale_by_dual_norm",
]
