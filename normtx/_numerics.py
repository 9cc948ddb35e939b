"""Numerical helpers every module shares: the compute dtype and a NaN-free division."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "compute_dtype",
    "div_by_max",
    "finite_matrices",
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
    quotient = num / _select(ok, den, lax.full_like(den, 1))
    return _select(ok, quotient, jnp.zeros_like(quotient))


def _select(pred: jax.Array, on_true: jax.Array, on_false: jax.Array) -> jax.Array:
    """``jnp.where`` for arrays of one dtype, broadcast, as one ``lax.select``: without
    ``jnp.where``'s nested ``jit``, whose tracing (and call in the program) every use in
    ``safe_div`` and ``div_by_max`` — for every leaf of every update — would repeat."""
    return lax.select(*jnp.broadcast_arrays(pred, on_true, on_false))


def finite_matrices(x: jax.Array) -> jax.Array:
    """For a batch of matrices ``(..., m, n)``: whether each is all finite, shape ``(..., 1, 1)``."""
    return jnp.all(jnp.isfinite(x), axis=(-2, -1), keepdims=True)


def div_by_max(x: jax.Array, m: jax.Array) -> jax.Array:
    """``x / m`` for ``m = max|x|`` over a reduction group (broadcastable to ``x``): in ``[-1, 1]``.

    Safe for every finite ``m``, which ``x / m`` is not: XLA rewrites a division by a broadcast
    scalar as a product with ``1/m``, subnormal for ``m >= 2^126`` (8.5e37 in float32) and flushed
    to 0 on CPU — a 1e38 gradient had a zero direction — and infinite for a subnormal ``m``. Here
    both are first multiplied by ``c = 2^-k`` when ``m > 2^k``, ``c = 2^k`` when ``m < 2^-k``, else
    1 (``k`` half the exponent range: 64 in float32, 512 in float64): a power of two, so the
    quotient is unchanged (an entry that ``c`` would flush to 0 has a quotient below the smallest
    normal number anyway), and ``1/(c m)`` stays normal. The group's work is a few scalar
    operations and each entry's two products: this runs for every leaf of every update, and its
    size is compile time. ``m = 0`` (so
    ``x = 0``) gives 0. A non-finite ``m`` (a NaN or Inf in the group) makes the whole group NaN:
    visible downstream, and never an Inf inside LAPACK (its SVD of a matrix with an Inf entry
    hangs). float32 or float64.
    """
    m = m.astype(x.dtype)
    big = 2.0 ** (jnp.finfo(x.dtype).maxexp // 2)

    def full(value):
        return lax.full_like(m, value)

    c = _select(m > big, full(1 / big), _select(m < 1 / big, full(big), full(1)))
    inv = _select(lax.is_finite(m), _select(m > 0, 1 / (m * c), full(0)), full(jnp.nan))
    return x * c * inv  # inv: per group
