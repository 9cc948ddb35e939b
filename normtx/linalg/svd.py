"""Exact, batched SVD-based pieces: singular values and the polar factor ``U Vᵀ``.

Both pre-scale each matrix by its largest entry (the directions are scale invariant and the
singular values are positively homogeneous), so float32 inputs of size 1e-30 or 1e38 neither
underflow nor overflow. Singular values below ``max(m, n) · eps · σ_max`` are treated as zero:
the polar factor of a rank-deficient matrix is ``U diag(σ > tol) Vᵀ`` (the minimum-norm choice
among the maximisers of anthology Prop. 4, and what Newton–Schulz converges to), and the polar
factor of the zero matrix is zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from normtx._numerics import compute_dtype, div_by_max

__all__ = ["singular_values", "svd_polar", "thresholded_svd"]


def _scaled(g: jax.Array) -> tuple[jax.Array, jax.Array]:
    g = g.astype(compute_dtype(g.dtype))
    m = jnp.max(jnp.abs(g), axis=(-2, -1), keepdims=True)
    return div_by_max(g, m), m[..., 0]


def singular_values(g: jax.Array) -> jax.Array:
    """Singular values of ``g`` (shape ``(..., m, n)``), descending, shape ``(..., min(m, n))``."""
    x, m = _scaled(g)
    return m * jnp.linalg.svd(x, compute_uv=False)


def thresholded_svd(g: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(U, σ, Vᵀ)`` of ``g / max|g|`` with negligible singular values set to exactly zero.

    The returned σ belong to the *scaled* matrix: callers use them for scale-free directions.
    """
    x, _ = _scaled(g)
    u, s, vh = jnp.linalg.svd(x, full_matrices=False)
    tol = s[..., :1] * (max(x.shape[-2:]) * jnp.finfo(x.dtype).eps)
    return u, jnp.where(s > tol, s, 0), vh


def svd_polar(g: jax.Array) -> jax.Array:
    """The polar factor ``U Vᵀ`` of each matrix in ``g`` (shape ``(..., m, n)``) by exact SVD."""
    u, s, vh = thresholded_svd(g)
    return (u * (s > 0).astype(u.dtype)[..., None, :]) @ vh
