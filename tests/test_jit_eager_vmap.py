"""jit == eager == vmap for every transform and optimizer of ``tests/registry.py``.

Three independent problems (params and gradients drawn separately) run three steps each:
eagerly one by one (``update`` called op by op, without ``jax.jit``), and all at once under
``jax.jit(jax.vmap(tx.update))`` over a leading problem axis (state from ``jax.vmap(tx.init)``).
Each slice of the batched run must equal its eager run: vmap must not mix the problems (every
reduction, norm and polar factor is per problem), and no code path may depend on being traced
or batched. One compiled program per transform checks both (the plain ``jax.jit(tx.update)``
against eager is checked for every public factory in ``test_hyperparams.py``). In float64, so
that the two executions of the same math agree to rounding (1e-9) even through iterations that
amplify it (Newton-Schulz, inverse roots of rank-deficient statistics).
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import registry

PROBLEMS = 3
STEPS = 3


def _draw(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda p: jnp.asarray(scale * rng.standard_normal(p.shape) / math.sqrt(p.shape[0])),
        registry.params(),
    )


def _run(tx, params, grads, init, update):
    """``STEPS`` steps from ``params``; returns the updates of every step and the last state."""
    state = init(params)
    updates = []
    for g in grads:
        u, state = update(g, state, params)
        params = optax.apply_updates(params, u)
        updates.append(u)
    return updates, state


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _unstack(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


@pytest.mark.parametrize("name", list(registry.TRANSFORMS))
def test_jit_of_vmap_equals_eager_per_problem(name):
    tx = registry.TRANSFORMS[name]()
    params = [_draw(10 + b) for b in range(PROBLEMS)]
    grads = [[_draw(100 * b + t, scale=3.0) for t in range(STEPS)] for b in range(PROBLEMS)]

    batched = _run(
        tx,
        _stack(params),
        [_stack([grads[b][t] for b in range(PROBLEMS)]) for t in range(STEPS)],
        jax.vmap(tx.init),
        jax.jit(jax.vmap(tx.update)),
    )
    for b in range(PROBLEMS):
        eager = _run(tx, params[b], grads[b], tx.init, tx.update)
        chex.assert_trees_all_close(_unstack(batched, b), eager, rtol=1e-9, atol=1e-12)
        chex.assert_tree_all_finite(eager)
