"""Numerical helpers every module shares: the compute dtype and a NaN-free division."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "compute_dtype",
    "div_by_max",
    "finite_matrices",
    "max_scaler",
    "safe_div",
    "sum_widest",
    "to_compute",
    "widest_float",
]


def compute_dtype(dtype) -> jnp.dtype:
    """Reductions and matrix functions run in at least float32.

    float16/bfloat16 (and non-float dtypes) -> float32; float32 and float64 stay. No implicit
    promotion is involved, so it also holds under ``jax.numpy_dtype_promotion('strict')``.
    """
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize >= 4:
        return dtype
    return jnp.dtype(jnp.float32)


def to_compute(x: jax.Array) -> jax.Array:
    """``x`` as an array in its compute dtype (``compute_dtype``: float32 or wider)."""
    x = jnp.asarray(x)
    return x.astype(compute_dtype(x.dtype))


def widest_float(*dtypes) -> jnp.dtype:
    """The widest of ``dtypes`` raised to the compute dtype (float32 when none is given).

    An explicit choice, so that sums over leaves of mixed precision need no implicit promotion.
    """
    return max(
        (compute_dtype(d) for d in dtypes), key=lambda d: d.itemsize, default=jnp.dtype(jnp.float32)
    )


def sum_widest(xs) -> jax.Array:
    """The sum of scalars (per-leaf dual norms, inner products) in their ``widest_float`` dtype."""
    xs = list(xs)
    dtype = widest_float(*(x.dtype for x in xs))
    return sum((x.astype(dtype) for x in xs), jnp.zeros((), dtype))


def safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """``num / den``, and 0 where ``den <= 0`` (no NaN from 0/0).

    A NaN ``den`` is not hidden: it gives NaN, so a non-finite input stays visible downstream.
    """
    ok = ~(den <= 0)
    return jnp.where(ok, num / jnp.where(ok, den, 1), 0)


def finite_matrices(x: jax.Array) -> jax.Array:
    """For a batch of matrices ``(..., m, n)``: whether each is all finite, shape ``(..., 1, 1)``."""
    return jnp.all(jnp.isfinite(x), axis=(-2, -1), keepdims=True)


def _pow2(k: jax.Array, dtype) -> jax.Array:
    """``2^k`` exactly in ``dtype`` (float32 or float64) for integers ``k`` in its normal range."""
    info = jnp.finfo(dtype)
    biased = k + (info.maxexp - 1)
    return lax.bitcast_convert_type(biased << info.nmant, dtype)


def div_by_max(x: jax.Array, m: jax.Array) -> jax.Array:
    """``x / m`` for ``m = max|x|`` over a reduction group (broadcastable to ``x``): in ``[-1, 1]``.

    Safe for every finite ``m``, which ``x / m`` is not: XLA rewrites a division by a broadcast
    scalar as a product with ``1/m``, subnormal for ``m >= 2^126`` (8.5e37 in float32) and flushed
    to 0 on CPU — a 1e38 gradient had a zero direction. Here ``m = f·2^e`` with ``e`` read off
    the exponent bits of ``m`` (``1 <= f < 2`` for a normal ``m``; a subnormal ``m`` has the
    smallest ``e`` and ``f < 1``): ``x`` is scaled by ``2^-e`` exactly (two normal halves), then
    divided by ``f``. A handful of integer operations, no ``frexp``: this runs for every leaf of
    every update, and its size is compile time. ``m = 0`` (so ``x = 0``) gives 0. A non-finite
    ``m`` (a NaN or Inf in the group) makes the whole group NaN: visible downstream, and never an
    Inf inside LAPACK (its SVD of a matrix with an Inf entry hangs). float32 or float64.
    """
    return max_scaler(m, x.dtype)(x)


def max_scaler(m: jax.Array, dtype) -> Callable[[jax.Array], jax.Array]:
    """``x -> div_by_max(x, m)`` with the exponent work done once: for many arrays sharing ``m``
    (every leaf of a tree divided by the tree's largest entry), each then costs three products
    and a division."""
    info = jnp.finfo(dtype)
    itype = jnp.int32 if info.bits == 32 else jnp.int64
    m = m.astype(dtype)
    bits = lax.bitcast_convert_type(m, itype)
    field = (bits >> info.nmant) & ((1 << info.nexp) - 1)
    e = jnp.maximum(field, 1) - (info.maxexp - 1)  # a subnormal m scales like the smallest normal
    h = e >> 1  # floor(e / 2): both halves 2^-h and 2^(h-e) stay normal
    lo, hi = _pow2(-h, dtype), _pow2(h - e, dtype)
    f = m * lo * hi
    finite = jnp.isfinite(m)

    def scale(x: jax.Array) -> jax.Array:
        return jnp.where(finite, safe_div(x * lo * hi, f), jnp.nan)

    return scale
