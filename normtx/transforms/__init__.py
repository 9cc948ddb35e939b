"""Gradient transformations built on the norms: directions, step sizes, the modular step."""

from normtx.geometry.modular import RoleModular, modular_norm
from normtx.transforms.cautious import (
    CautiousState,
    CautiousWeightDecayState,
    add_cautious_weight_decay,
    cautious,
)
from normtx.transforms.dion import OrthogonalizeDionState, orthogonalize_dion
from normtx.transforms.dualize import ScaleByDualNormState, dualize, scale_by_dual_norm
from normtx.transforms.escape_velocity import EscapeVelocityState, escape_velocity_lr
from normtx.transforms.max_logits import collect_max_logits, sow_max_logits
from normtx.transforms.modular import ModularNormPartitionState, modular_norm_partition
from normtx.transforms.neuron_norm import ScaleByNeuronRmsState, scale_by_neuron_rms, scale_to_rms
from normtx.transforms.orthogonalize import orthogonalize_newton_schulz
from normtx.transforms.qk_clip import QKClipState, QKLeaf, flax_mha_heads, qk_clip

__all__ = [
    "CautiousState",
    "CautiousWeightDecayState",
    "EscapeVelocityState",
    "ModularNormPartitionState",
    "OrthogonalizeDionState",
    "QKClipState",
    "QKLeaf",
    "RoleModular",
    "ScaleByDualNormState",
    "ScaleByNeuronRmsState",
    "add_cautious_weight_decay",
    "cautious",
    "collect_max_logits",
    "dualize",
    "escape_velocity_lr",
    "flax_mha_heads",
    "modular_norm",
    "modular_norm_partition",
    "orthogonalize_dion",
    "orthogonalize_newton_schulz",
    "qk_clip",
    "scale_by_dual_norm",
    "scale_by_neuron_rms",
    "scale_to_rms",
    "sow_max_logits",
]
