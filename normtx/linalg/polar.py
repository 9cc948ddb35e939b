"""``polar``: one entry point to the polar factor ``U Vᵀ`` (anthology Appendix A)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax

from normtx.linalg.svd import svd_polar

__all__ = ["POLAR_METHODS", "PolarMethod", "check_polar_method", "polar"]

PolarMethod = Literal["svd"] | Callable[[jax.Array], jax.Array]
POLAR_METHODS: tuple[str, ...] = ("svd",)


def check_polar_method(method, what: str = "polar") -> None:
    """Raises ``ValueError`` for an unknown method name (callables are accepted as they are)."""
    if callable(method):
        return
    if method not in POLAR_METHODS:
        raise ValueError(
            f"{what}: unknown polar method {method!r}; expected one of "
            f"{POLAR_METHODS} or a callable (..., m, n) -> (..., m, n)."
        )


def polar(g: jax.Array, *, method: PolarMethod = "svd") -> jax.Array:
    """The polar factor ``U Vᵀ`` of each matrix in ``g`` of shape ``(..., m, n)``.

    Args:
      g: matrices; leading axes are a batch.
      method: ``'svd'`` (exact) or a callable.

    Returns:
      ``U Vᵀ`` (``U diag(σ > tol) Vᵀ`` for rank-deficient inputs; 0 for 0) in ``g``'s compute dtype.
    """
    check_polar_method(method)
    if callable(method):
        return method(g)
    return svd_polar(g)
