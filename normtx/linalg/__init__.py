"""Matrix functions for the norms and transforms: polar factors and inverse roots."""

from normtx.linalg.polar import POLAR_METHODS, PolarMethod, check_polar_method, polar
from normtx.linalg.roots import INVERSE_ROOT_METHODS, InversePthRootInfo, inverse_pth_root
from normtx.linalg.svd import singular_values, svd_polar, thresholded_svd

__all__ = [
    "INVERSE_ROOT_METHODS",
    "POLAR_METHODS",
    "InversePthRootInfo",
    "PolarMethod",
    "check_polar_method",
    "inverse_pth_root",
    "polar",
    "singular_values",
    "svd_polar",
    "thresholded_svd",
]
