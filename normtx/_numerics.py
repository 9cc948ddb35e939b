"""Two numerical helpers every module shares: the compute dtype and a NaN-free division."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["compute_dtype", "safe_div"]


def compute_dtype(dtype) -> jnp.dtype:
    """Reductions and matrix functions run in at least float32 (DESIGN §2, dtypes)."""
    return jnp.promote_types(dtype, jnp.float32)


def safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """``num / den`` where ``den > 0`` and 0 elsewhere (no NaN from 0/0)."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1), 0)
