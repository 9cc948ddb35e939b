"""normtx: norm-based optimizers for JAX/Optax.

An optimizer is a *norm* (the direction of the step) and a *step size*. normtx makes both
first-class ``optax.GradientTransformation`` pieces (Bernstein & Newhouse, *Old Optimizer, New
Norm*, 2024; Stratos, *Adaptive Learning Methods*).
"""

from normtx import adaptive, dims, linalg, norms, optimizers, roles, sharding
from normtx.diagnostics import diagnostics
from normtx.transforms import (
    CautiousState,
    EscapeVelocityState,
    OrthogonalizeDionState,
    QKClipState,
    QKLeaf,
    ScaleByDualNormState,
    ScaleByNeuronRmsState,
    add_cautious_weight_decay,
    cautious,
    dualize,
    escape_velocity_lr,
    modular_norm,
    modular_norm_partition,
    orthogonalize_dion,
    orthogonalize_newton_schulz,
    qk_clip,
    scale_by_dual_norm,
    scale_by_neuron_rms,
    scale_to_rms,
)

__version__ = "0.1.0"

__all__ = [
    "CautiousState",
    "EscapeVelocityState",
    "OrthogonalizeDionState",
    "QKClipState",
    "QKLeaf",
    "ScaleByDualNormState",
    "ScaleByNeuronRmsState",
    "__version__",
    "adaptive",
    "add_cautious_weight_decay",
    "cautious",
    "diagnostics",
    "dims",
    "dualize",
    "escape_velocity_lr",
    "linalg",
    "modular_norm",
    "modular_norm_partition",
    "norms",
    "optimizers",
    "orthogonalize_dion",
    "orthogonalize_newton_schulz",
    "qk_clip",
    "roles",
    "scale_by_dual_norm",
    "scale_by_neuron_rms",
    "scale_to_rms",
    "sharding",
]
