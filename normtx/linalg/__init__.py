"""Matrix functions for the norms and transforms: polar factors and inverse roots."""

from normtx.linalg.newton_schulz import NORMALIZATIONS, newton_schulz
from normtx.linalg.ns_coefficients import (
    NS_SCHEDULES,
    newton_schulz_schedule,
    optimal_odd_quintic,
    polar_express_coefficients,
)
from normtx.linalg.polar import POLAR_METHODS, PolarMethod, check_polar_method, polar
from normtx.linalg.roots import (
    INVERSE_ROOT_METHODS,
    InversePthRootInfo,
    inverse_pth_root,
    inverse_root_polar,
)
from normtx.linalg.sketch import sketch_polar
from normtx.linalg.svd import singular_values, svd_polar, thresholded_svd

__all__ = [
    "INVERSE_ROOT_METHODS",
    "NORMALIZATIONS",
    "NS_SCHEDULES",
    "POLAR_METHODS",
    "InversePthRootInfo",
    "PolarMethod",
    "check_polar_method",
    "inverse_pth_root",
    "inverse_root_polar",
    "newton_schulz",
    "newton_schulz_schedule",
    "optimal_odd_quintic",
    "polar",
    "polar_express_coefficients",
    "singular_values",
    "sketch_polar",
    "svd_polar",
    "thresholded_svd",
]
