r"""Cautious updates: the sign mask of Cautious Optimizers and Cautious Weight Decay.

Two one-line modifications that keep only the coordinates where two vectors agree in sign:

- ``cautious(inner)`` (Liang et al., 2024) wraps any transform and zeroes the coordinates of its
  update ``u`` whose sign disagrees with the gradient ``g`` (they would climb the loss to first
  order), rescaling the rest so that the update keeps its average size;
- ``add_cautious_weight_decay(λ)`` (Chen et al., 2025) adds the decoupled decay ``λ x`` only on
  the coordinates where the update ``u`` and the parameter ``x`` have the same sign.

Both take and return a *descent direction* (the normtx convention: the chain ends in
``optax.scale_by_learning_rate``), which is the sign convention of both papers' ``u_t``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from normtx._numerics import compute_dtype
from normtx._validation import check_positive
from normtx.adaptive._leaves import map_with_params

__all__ = ["CautiousState", "CautiousWeightDecayState", "add_cautious_weight_decay", "cautious"]


class CautiousState(NamedTuple):
    """State of ``cautious``."""

    inner_state: Any  # the wrapped transform's state
    kept: Any  # per leaf, an int32 scalar: the number Σφ of coordinates kept at the last step


class CautiousWeightDecayState(NamedTuple):
    """State of ``add_cautious_weight_decay``."""

    count: jax.Array  # int32 scalar: steps taken (the argument of a weight-decay schedule)


def _agree(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a ⊙ b > 0`` entrywise, from the signs: no product to overflow or underflow, and False at
    a NaN. (``1e-30 · -1e-30`` rounds to ``-0.0`` in float32, whose sign test would be wrong.)"""
    return ((a > 0) & (b > 0)) | ((a < 0) & (b < 0))


def _cautious_leaf(u: jax.Array, g: jax.Array, floor: Any) -> tuple[jax.Array, jax.Array]:
    """``(u ⊙ φ / max(mean φ, floor), Σ φ)`` with ``φ = 1[u ⊙ g > 0]``, in the compute dtype.

    As ``u ⊙ φ · n / max(Σ φ, floor · n)`` for ``n`` entries: the count is exact, and no division
    by a constant (which XLA may turn into a product with its rounded reciprocal: jit != eager).
    """
    dt = compute_dtype(u.dtype)
    keep = _agree(u, g)
    size = math.prod(u.shape)
    count = jnp.sum(keep, dtype=jnp.int32)
    floor_count = jnp.asarray(floor).astype(dt) * size
    scale = jnp.asarray(size, dt) / jnp.maximum(count.astype(dt), floor_count)
    # u ⊙ φ by a product, not a select: a non-finite u stays visible (NaN) where it is masked.
    out = u.astype(dt) * keep.astype(dt) * scale
    return out.astype(u.dtype), count


def cautious(
    inner: optax.GradientTransformation,
    *,
    mean_floor: float | jax.Array = 1e-3,
) -> optax.GradientTransformationExtraArgs:
    r"""Masks ``inner``'s update where its sign disagrees with the gradient's (Cautious Optimizers).

    With ``u_t = inner(g_t)`` (a descent direction, e.g. Adam's ``m̂/(√v̂ + ε)``) and the raw
    gradient ``g_t``, on each leaf:

    .. math:: \phi_t = \mathbb{1}[u_t \odot g_t > 0], \qquad
              \tilde u_t = \frac{u_t \odot \phi_t}{\max(\operatorname{mean}(\phi_t),\ \delta)}

    so every kept coordinate descends to first order: ``<ũ_t, g_t> >= 0`` coordinate by
    coordinate, for any inner transform (the paper's guarantee: the cautious update never points
    uphill, and momentum methods keep their Hamiltonian/Lyapunov descent). The
    division by the fraction of kept coordinates keeps the average update size; the mean is taken
    per leaf, as the paper's PyTorch code does per parameter tensor.

    The paper's Algorithm 1 divides by ``mean(φ) + ε`` with ``ε`` only guarding ``0/0``; here the
    mean is clipped from below at ``δ = mean_floor`` instead (as common implementations do): the
    two agree wherever ``mean(φ) >= δ`` up to the ``O(ε)`` bias, the update is exactly ``u_t``
    where all signs agree (``mean(φ) = 1``), a leaf that keeps nothing (a zero gradient) gets a
    zero update, and no coordinate is ever scaled by more than ``1/δ``.

    Args:
      inner: the transform to wrap; it must return a *descent direction* (``optax.scale_by_adam()``,
        ``optax.trace(0.9)``, a normtx direction), not a final update with the learning rate's
        negative sign (``optax.adam(lr)``), whose mask would keep the wrong coordinates. Its extra
        arguments are passed through.
      mean_floor: ``δ in (0, 1]``, the smallest value the kept fraction is divided by (a number,
        or an array under ``optax.inject_hyperparams``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` returning a descent direction (end the chain
      with ``optax.scale_by_learning_rate``). Each leaf keeps its dtype; a zero gradient gives a
      zero update, never a NaN. The state keeps the number of each leaf's coordinates kept at
      the last step (``kept``) for logging.

    Raises:
      ValueError: at construction, for an ``inner`` that is not a ``GradientTransformation`` or a
        ``mean_floor`` outside ``(0, 1]``.

    Example:
      C-AdamW is ``optax.chain(normtx.cautious(optax.scale_by_adam()),
      optax.add_decayed_weights(1e-2), optax.scale_by_learning_rate(1e-3))``. With heavy-ball
      momentum: at the second step ``m = 0.9 (1, 1, 1, 1) + (1, -0.5, 1, 1)`` disagrees with ``g``
      on the second coordinate, which is dropped; the other three are divided by ``mean φ = 3/4``.

      >>> tx = normtx.cautious(optax.trace(decay=0.9))
      >>> step = jax.jit(tx.update)
      >>> _, state = step(jnp.ones(4, jnp.float32), tx.init(jnp.zeros(4, jnp.float32)))
      >>> u, state = step(jnp.array([1.0, -0.5, 1.0, 1.0], jnp.float32), state)
      >>> print(np.round(u, 4))  # (1.9, 0, 1.9, 1.9) / 0.75
      [2.5333 0.     2.5333 2.5333]

    References:
      Liang, Chen, Liu & Liu, *Cautious Optimizers: Improving Training with One Line of Code*,
      arXiv:2411.16085 (2024), Algorithm 1.
    """
    what = "cautious"
    if not isinstance(inner, optax.GradientTransformation):
        raise ValueError(
            f"{what}: inner must be an optax.GradientTransformation (e.g. optax.scale_by_adam()), "
            f"got {inner!r}."
        )
    check_positive("mean_floor", mean_floor, what)
    if isinstance(mean_floor, numbers.Real) and mean_floor > 1:
        raise ValueError(f"{what}: mean_floor must be in (0, 1], got {mean_floor!r}.")
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        kept = jax.tree.map(lambda _: jnp.zeros([], jnp.int32), params)
        return CautiousState(inner_state=inner.init(params), kept=kept)

    def update_fn(updates, state, params=None, **extra_args):
        directions, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        pairs = jax.tree.map(lambda u, g: _cautious_leaf(u, g, mean_floor), directions, updates)
        is_pair = lambda x: isinstance(x, tuple) and len(x) == 2  # noqa: E731
        out = jax.tree.map(lambda pair: pair[0], pairs, is_leaf=is_pair)
        kept = jax.tree.map(lambda pair: pair[1], pairs, is_leaf=is_pair)
        return out, CautiousState(inner_state=inner_state, kept=kept)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def add_cautious_weight_decay(
    weight_decay: float | jax.Array | optax.Schedule,
    *,
    mask: Any | Callable[[Any], Any] | None = None,
) -> optax.GradientTransformation:
    r"""Adds ``λ x`` to the update only where the update and the parameter agree in sign (CWD).

    With the update ``u_t`` (a descent direction) and the parameters ``x_t``, on each coordinate:

    .. math:: u_t \mapsto u_t + \lambda\, \mathbb{1}[u_t \odot x_t \ge 0] \odot x_t

    so that, after ``optax.scale_by_learning_rate(η)``, ``x_{t+1} = x_t - η_t (u_t + λ 𝕀(u_t x_t
    >= 0) x_t)`` (Algorithm 1). Where ``u_t`` and ``x_t`` agree, the step already moves the
    coordinate towards zero and the decay adds to it; where they disagree, the step moves it away
    from zero and the decay, which would resist that move, is skipped: unlike decoupled decay it
    does not change the objective (the paper's bilevel reading). It chains like
    ``optax.add_decayed_weights`` (same place in the chain, same ``mask``), and equals it where
    every coordinate agrees (``u_t ⊙ x_t >= 0`` everywhere).

    Args:
      weight_decay: ``λ >= 0``: a number, an array (e.g. under ``optax.inject_hyperparams``) or a
        schedule ``count -> λ_t``.
      mask: which leaves decay: ``None`` (all), a pytree prefix of the params with booleans, or a
        callable ``params -> such a pytree`` (as ``optax.add_decayed_weights``'s ``mask``).

    Returns:
      An ``optax.GradientTransformation`` returning a descent direction; it needs ``params``. Each
      leaf keeps its dtype.

    Raises:
      ValueError: at construction for a negative or non-finite ``weight_decay``; at ``update``
        when ``params`` is missing.

    Example:
      In a chain: ``optax.chain(optax.scale_by_adam(), normtx.add_cautious_weight_decay(0.1),
      optax.scale_by_learning_rate(1e-3))``. Alone, on a direction ``u``: the decay is added where
      ``u`` and ``x`` agree in sign (the first and last coordinates).

      >>> tx = normtx.add_cautious_weight_decay(0.1)
      >>> x = jnp.array([2.0, -1.0, -3.0], jnp.float32)
      >>> u, _ = jax.jit(tx.update)(jnp.array([1.0, 1.0, -1.0], jnp.float32), tx.init(x), x)
      >>> [round(float(v), 4) for v in u]  # (1 + 0.2, 1, -1 - 0.3)
      [1.2, 1.0, -1.3]

    References:
      Chen, Li, Liang, Su, Xie, Pierse, Liang, Lao & Liu, *Cautious Weight Decay*,
      arXiv:2510.12402 (2025), Algorithm 1.
    """
    what = "add_cautious_weight_decay"
    check_positive("weight_decay", weight_decay, what, allow_zero=True)

    def init_fn(params):
        del params
        return CautiousWeightDecayState(count=jnp.zeros([], jnp.int32))

    def leaf(u, x, lam, dt):
        # 1[u ⊙ x >= 0] from the signs (zeros included), without forming the product.
        decay = ((u >= 0) & (x >= 0)) | ((u <= 0) & (x <= 0))
        return (u.astype(dt) + lam * jnp.where(decay, x.astype(dt), 0)).astype(u.dtype)

    def update_fn(updates, state, params=None):
        out = map_with_params(leaf, weight_decay, state.count, updates, params, what)
        return out, CautiousWeightDecayState(count=optax.safe_increment(state.count))

    tx = optax.GradientTransformation(init_fn, update_fn)
    return tx if mask is None else optax.masked(tx, mask)
