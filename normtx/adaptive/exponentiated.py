r"""Exponentiated gradient: mirror descent with the negative entropy on the simplex.

Mirror descent (lecture notes eq. 1) with ``V = Δ^{d-1}`` and ``ψ(w) = Σ_i w_i log w_i`` is

.. math:: w_{t+1} = \arg\min_{w \in \Delta} g_t^\top w + \tfrac{1}{\eta_t}\,\mathrm{KL}(w, w_t),
          \qquad w_{t+1,i} = \frac{w_{t,i}\, e^{-\eta_t g_{t,i}}}{\sum_j w_{t,j}\, e^{-\eta_t g_{t,j}}}

(Lemma E.1, eq. 59–60): multiplicative weights. ``ψ`` is 1-strongly convex in ℓ1 (Pinsker), so the
general bound (8) gives, for a fixed ``η`` and any comparator ``u`` on the simplex,

.. math:: \sum_t l_t(w_t) - l_t(u) \le \frac{\mathrm{KL}(u, w_1) - \mathrm{KL}(u, w_{T+1})}{\eta}
          + \frac{\eta}{2}\sum_t \|g_t\|_\infty^2 \le \frac{\log d}{\eta}
          + \frac{\eta}{2}\sum_t \|g_t\|_\infty^2

from a uniform ``w_1`` (normtx's test suite checks both on T = 1000 steps).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from normtx._numerics import compute_dtype, safe_div
from normtx._pytree import describe_leaf
from normtx._validation import check_positive, check_static
from normtx.adaptive._leaves import check_float_leaves, map_with_params

__all__ = ["ExponentiatedGradientState", "exponentiated_gradient"]


class ExponentiatedGradientState(NamedTuple):
    """State of ``exponentiated_gradient``."""

    count: jax.Array  # int32 scalar: steps taken (the argument of a learning-rate schedule)


def _eg_step(w: jax.Array, g: jax.Array, eta: jax.Array, axis: int | None) -> jax.Array:
    """``w ⊙ exp(-η g) / Σ w ⊙ exp(-η g)`` along ``axis`` (all entries for ``None``)."""
    dt = compute_dtype(w.dtype)
    w32, g32 = w.astype(dt), g.astype(dt)
    axes = None if axis is None else (axis,)
    # Shift by the smallest gradient on the support: the factors lie in (0, 1], the largest weight
    # of the support keeps a factor of 1, so the normaliser cannot underflow to 0. A zero gradient
    # gives factors of exactly 1 and the step w / Σw (= w when w sums to 1).
    g_min = jnp.min(jnp.where(w32 > 0, g32, jnp.inf), axis=axes, keepdims=True)
    factor = jnp.exp(-eta * jnp.where(w32 > 0, g32 - g_min, 0))
    unnorm = w32 * factor
    return safe_div(unnorm, jnp.sum(unnorm, axis=axes, keepdims=True))


def exponentiated_gradient(
    *,
    learning_rate: ArrayLike | optax.Schedule,
    axis: int | None = None,
) -> optax.GradientTransformation:
    r"""Multiplicative-weights mirror descent on the probability simplex (notes eq. 59–60).

    .. math:: w_{t+1} = \frac{w_t \odot e^{-\eta_t g_t}}{\langle w_t, e^{-\eta_t g_t}\rangle},
              \qquad u_t = w_{t+1} - w_t

    Each leaf is a point of the simplex (``axis=None``: all its entries are one distribution), or
    a stack of points (``axis=k``: every slice along axis ``k`` is a distribution, e.g. the rows of
    a mixture matrix with ``axis=-1``). The transform needs ``params`` and returns the *final*
    update ``u`` — the mirror step is not a direction times a step size — so that
    ``optax.apply_updates(w, u)`` lands on the simplex: entries stay nonnegative exactly and each
    distribution sums to 1 up to rounding (a few ulps, renormalised every step, so errors do not
    accumulate). Entries that are 0 stay 0 (the notes assume full support). Values are not checked
    (that would be a host sync): pass leaves that are distributions. Use ``optax.partition`` to
    combine it with other transforms for other leaves.

    Args:
      learning_rate: ``η_t > 0``, a number or a schedule ``count -> η``.
      axis: ``None`` (each leaf is one distribution) or the axis along which each slice is one.

    Returns:
      An ``optax.GradientTransformation`` returning ``w_{t+1} - w_t`` in each leaf's dtype.

    Raises:
      ValueError: at construction for a non-positive learning rate; at ``init`` for non-float
        leaves, an ``axis`` out of range or distributions with no entries (naming the leaf); at
        ``update`` without ``params``.

    Example:
      >>> tx = normtx.adaptive.exponentiated_gradient(learning_rate=0.1)
      >>> w = jnp.full((10,), 0.1, jnp.float32)  # uniform on Δ⁹
      >>> g = jnp.zeros(10, jnp.float32).at[0].set(1.0)
      >>> u, state = jax.jit(tx.update)(g, tx.init(w), w)
      >>> w = optax.apply_updates(w, u)  # still on Δ⁹
      >>> print(f"{float(w.sum()):.5f} {float(w[0]):.4f}")  # w₀ = e^{-0.1} / (e^{-0.1} + 9)
      1.00000 0.0914

    References:
      Stratos, *Adaptive Learning Methods*, §1.1–1.2, Appendix D (eq. 53) and E (Lemma E.1).
      Kivinen & Warmuth, *Exponentiated gradient versus gradient descent*, 1997.
    """
    what = "exponentiated_gradient"
    check_positive("learning_rate", learning_rate, what)
    check_static("axis", axis, what)
    if axis is not None and (not isinstance(axis, int) or isinstance(axis, bool)):
        raise ValueError(f"{what}: axis must be an int or None, got {axis!r}.")

    def _check(params):
        for path, leaf in check_float_leaves(params, what):
            ndim = jnp.ndim(leaf)
            if axis is not None and not -ndim <= axis < ndim:
                raise ValueError(
                    f"{what}: axis={axis} is out of range for leaf {describe_leaf(path, leaf)}."
                )
            if (jnp.size(leaf) if axis is None else jnp.shape(leaf)[axis]) == 0:
                along = "" if axis is None else f" along axis={axis}"
                raise ValueError(
                    f"{what}: leaf {describe_leaf(path, leaf)} is empty{along}: a point of the "
                    "simplex needs at least one entry."
                )

    def init_fn(params):
        _check(params)
        return ExponentiatedGradientState(count=jnp.zeros([], jnp.int32))

    def leaf_update(g, w, eta, dt):
        return (_eg_step(w, g, eta, axis) - w.astype(dt)).astype(w.dtype)

    def update_fn(updates, state, params=None):
        new_updates = map_with_params(
            leaf_update, learning_rate, state.count, updates, params, what
        )
        return new_updates, ExponentiatedGradientState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)
