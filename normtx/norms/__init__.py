"""The geometry: norms of leaves and trees, their duals, and their dualization maps.

Every norm has ``norm(x)``, ``dual_norm(g)`` and ``dualize(g) = argmax_{‖t‖<=1} <g, t>``.
"""

from normtx.norms.base import Norm
from normtx.norms.operator import (
    L1ToLp,
    L1ToRms,
    LpToLinf,
    OperatorNorm,
    RmsToRms,
    Schatten,
    Spectral,
    l1_to_lp,
    l1_to_rms,
    lp_to_linf,
    rms_to_rms,
    schatten,
    spectral,
)
from normtx.norms.tree import (
    Modular,
    NormSpec,
    ScaleSpec,
    as_modular,
    modular,
    resolve_norms,
    tree_dual_norm,
    tree_norm,
)
from normtx.norms.vector import Frobenius, Lp, Rms, VectorNorm, frobenius, l1, l2, linf, lp, rms

__all__ = [
    "Frobenius",
    "L1ToLp",
    "L1ToRms",
    "Lp",
    "LpToLinf",
    "Modular",
    "Norm",
    "NormSpec",
    "OperatorNorm",
    "Rms",
    "RmsToRms",
    "ScaleSpec",
    "Schatten",
    "Spectral",
    "VectorNorm",
    "as_modular",
    "frobenius",
    "l1",
    "l1_to_lp",
    "l1_to_rms",
    "l2",
    "linf",
    "lp",
    "lp_to_linf",
    "modular",
    "resolve_norms",
    "rms",
    "rms_to_rms",
    "schatten",
    "spectral",
    "tree_dual_norm",
    "tree_norm",
]
