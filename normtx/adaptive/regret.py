r"""Online convex optimisation harness: run a transform against linear losses, measure its regret.

At step ``t`` the learner proposes ``w_t``, the enemy reveals ``l_t(w) = <g_t, w>``, and the
learner pays ``l_t(w_t)`` (lecture notes §1). The regret against a fixed comparator ``u`` is

.. math:: \mathrm{Regret}_T(u) = \sum_{t=1}^T \langle g_t, w_t\rangle - \langle g_t, u\rangle .

Linear losses are the worst case of the analysis (a convex loss's regret is at most that of its
linearisation, notes §3.1.1), so every bound of the notes (eq. 18–20, 23, 27, 36, and the
exponentiated-gradient bound of ``normtx.adaptive.exponentiated``) can be checked with it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["OnlineRegret", "online_regret"]


class OnlineRegret(NamedTuple):
    """What ``online_regret`` returns."""

    regret: jax.Array  # scalar: Σ_t <g_t, w_t> - <g_t, u>
    losses: jax.Array  # (T,): the learner's losses <g_t, w_t>
    iterates: Any  # params pytree with a leading axis T: w_1, ..., w_T (w_t pays loss t)
    final: Any  # params pytree: w_{T+1}


def _vdot(a: Any, b: Any) -> jax.Array:
    parts = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.vdot(x, y), a, b))
    return sum(parts, jnp.zeros([], jnp.result_type(*parts)))


def online_regret(
    tx: optax.GradientTransformation, params: Any, gradients: Any, comparator: Any
) -> OnlineRegret:
    """Plays ``tx`` from ``params`` against the linear losses ``<g_t, ·>`` and returns its regret.

    Args:
      tx: any ``optax.GradientTransformation`` whose updates are added with
        ``optax.apply_updates`` (a descent chain ending in a learning rate, or a transform that
        returns the final update such as ``exponentiated_gradient``).
      params: ``w_1``.
      gradients: the loss sequence: a pytree like ``params`` whose leaves have a leading axis ``T``
        (an oblivious enemy: ``g_t`` does not depend on ``w_t``).
      comparator: ``u``, a pytree like ``params`` (e.g. the best point in hindsight).

    Returns:
      An ``OnlineRegret``. Runs as one ``lax.scan``; call it under ``jax.jit`` for speed.
    """

    def step(carry, g):
        w, state = carry
        loss = _vdot(g, w)
        updates, state = tx.update(g, state, w)
        return (optax.apply_updates(w, updates), state), (loss, w)

    (final, _), (losses, iterates) = jax.lax.scan(step, (params, tx.init(params)), gradients)
    comparator_loss = jnp.sum(jax.vmap(lambda g: _vdot(g, comparator))(gradients))
    return OnlineRegret(jnp.sum(losses) - comparator_loss, losses, iterates, final)
