"""Matrix functions for the norms and transforms: polar factors and inverse roots."""

from normtx.linalg.polar import POLAR_METHODS, PolarMethod, check_polar_method, polar
from normtx.linalg.svd import singular_values, svd_polar, thresholded_svd

__all__ = [
    "POLAR_METHODS",
    "PolarMethod",
    "check_polar_method",
    "polar",
    "singular_values",
    "svd_polar",
    "thresholded_svd",
]
