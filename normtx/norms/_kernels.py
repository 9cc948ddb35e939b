"""Overflow- and underflow-safe ℓp kernels shared by every norm.

Each reduction group is first divided by its largest magnitude (``normtx._numerics.div_by_max``,
safe up to the float maximum), so gradients of size 1e-30 or 1e38 in float32 give the same
directions as gradients of size 1 (squares of 1e-30 underflow to 0 and squares of 1e30 overflow to
inf; scaled values never do). All functions take arrays already in the compute dtype (float32 or
wider) and reduce over one axis.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from normtx._numerics import div_by_max, safe_div

__all__ = ["dual_exponent", "lmo", "pnorm", "validate_p"]


def validate_p(p: float, what: str) -> float:
    """A norm needs ``p >= 1`` (``inf`` allowed); fails at construction with a clear error."""
    try:
        p = float(p)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: p must be a number >= 1 or inf, got {p!r}.") from e
    if math.isnan(p) or p < 1:
        raise ValueError(f"{what}: p must be >= 1 (p < 1 is not a norm), got p={p}.")
    return p


def dual_exponent(p: float) -> float:
    """q with 1/p + 1/q = 1 (q = inf for p = 1, q = 1 for p = inf)."""
    if p == 1:
        return math.inf
    if math.isinf(p):
        return 1.0
    return p / (p - 1.0)


def _unit_pnorm(a: jax.Array, p: float, axis: int) -> jax.Array:
    """ℓp norm of non-negative ``a`` with entries in [0, 1]."""
    if math.isinf(p):
        return jnp.max(a, axis=axis)
    if p == 1:
        return jnp.sum(a, axis=axis)
    if p == 2:
        return jnp.sqrt(jnp.sum(a * a, axis=axis))
    return jnp.sum(a**p, axis=axis) ** (1.0 / p)


def pnorm(x: jax.Array, p: float, axis: int = -1) -> jax.Array:
    """‖x‖_p over ``axis``, safe against overflow and underflow."""
    a = jnp.abs(x)
    m = jnp.max(a, axis=axis, keepdims=True)
    return jnp.squeeze(m, axis) * _unit_pnorm(div_by_max(a, m), p, axis)


def lmo(x: jax.Array, p: float, axis: int = -1) -> jax.Array:
    """The unit ℓp vector aligned with ``x``: ``argmax_{‖t‖_p <= 1} <x, t>`` over ``axis``.

    ``sign(x)|x|^{q-1} / ‖x‖_q^{q-1}``: ``sign(x)`` at p = inf, ``x/‖x‖₂`` at p = 2, a
    signed one-hot at the largest ``|x|`` at p = 1 (ties go to the first index). A zero group maps
    to zero.
    """
    if math.isinf(p):
        return jnp.sign(x)
    a = jnp.abs(x)
    if p == 1:
        idx = jnp.argmax(a, axis=axis, keepdims=True)
        iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, axis % x.ndim)
        return jnp.where(iota == idx, jnp.sign(x), 0).astype(x.dtype)
    q = dual_exponent(p)
    u = div_by_max(a, jnp.max(a, axis=axis, keepdims=True))
    r = safe_div(u, jnp.expand_dims(_unit_pnorm(u, q, axis), axis))
    if p == 2:
        return jnp.sign(x) * r
    return jnp.sign(x) * r ** (q - 1.0)
