"""Every normtx transform is a good optax citizen (non-negotiable 6).

For each transform: the state is a pytree of arrays (``jax.eval_shape`` of ``init`` works), it
checkpoints with orbax and resumes bit-for-bit, and ``optax.MultiSteps`` and ``optax.masked``
compose with it under jit (``optax.apply_if_finite``: ``tests/test_reliability.py``).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from normtx import adaptive

import registry


def _run(tx, state, params, steps, start=0):
    update = jax.jit(tx.update, compiler_options=registry.FAST_COMPILE)
    for i in range(start, start + steps):
        updates, state = update(registry.grads(i), state, params)
        params = optax.apply_updates(params, updates)
    return params, state


@pytest.mark.parametrize("name", list(registry.TRANSFORMS))
def test_state_is_arrays_and_checkpoints_with_orbax(name, tmp_path):
    """Save params + state after 2 steps, restore them from disk, take 2 more steps: the params
    and the state are bit for bit those of 4 uninterrupted steps. The registry holds every
    optimizer factory's state-changing options (escape velocity with and without EMAs, anchor
    'previous'; modular descent with and without it; Muon with others='adamw' and 'modular';
    Shampoo resuming mid-interval on stale roots)."""
    tx = registry.TRANSFORMS[name]()
    params = registry.params()
    abstract = jax.eval_shape(tx.init, params)
    for leaf in jax.tree.leaves(abstract):
        assert isinstance(leaf, jax.ShapeDtypeStruct), f"{name}: non-array state leaf {leaf!r}"

    uninterrupted = _run(tx, tx.init(params), params, 4)
    params, state = _run(tx, tx.init(params), params, 2)
    item = {"params": params, "opt_state": state}  # what a training loop checkpoints
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp_path / "state", item)
    ckpt.wait_until_finished()
    restored = ckpt.restore(tmp_path / "state", jax.tree.map(ocp.utils.to_shape_dtype_struct, item))
    chex.assert_trees_all_equal_structs(restored, item)
    chex.assert_trees_all_equal(restored, item)

    resumed = _run(tx, restored["opt_state"], restored["params"], 2, start=2)
    chex.assert_trees_all_equal(resumed, uninterrupted)
    chex.assert_tree_all_finite(resumed)


def _dyadic_grads(seed, k):
    """``k`` gradients on the grid Z/8 in [-2, 2]: their means are exact in float32."""
    rng = np.random.default_rng(seed)
    return [
        jax.tree.map(
            lambda p: jnp.asarray(rng.integers(-16, 17, p.shape) / 8, p.dtype), registry.params()
        )
        for _ in range(k)
    ]


@pytest.mark.parametrize("name", list(registry.TRANSFORMS))
def test_multisteps_equals_one_step_on_the_mean_gradient(name):
    """k micro-steps of ``optax.MultiSteps`` are one inner step on the mean of their gradients.

    That is the math of gradient accumulation (for a mean loss over equal micro-batches the mean
    is the big-batch gradient), for every transform. MultiSteps keeps a running mean
    ``acc + (g - acc)/(n + 1)``; with k = 2 and gradients on a dyadic grid every term of it is
    exact, so the inner transform sees exactly the oracle's mean, and the results are bitwise
    equal but for what the two compiled programs round differently: Adam's moments
    ``β m + (1-β) g``, statistics of a Newton–Schulz output (NorMuon's neuron second moments)
    (float32 rounding of O(1) terms: rtol 1e-6, atol 1e-7). Between micro-steps the update is
    zero and the inner state untouched (bitwise the state before the micro-step).
    Two macro steps, the params moving in between.
    """
    k = 2
    tx = registry.TRANSFORMS[name]()
    multi = optax.MultiSteps(tx, every_k_schedule=k)
    multi_update, update = jax.jit(multi.update), jax.jit(tx.update)
    params = registry.params()
    multi_state, state = multi.init(params), tx.init(params)
    for macro in range(2):
        micro = _dyadic_grads(macro, k)
        for g in micro[:-1]:
            before = multi_state.inner_opt_state
            u, multi_state = multi_update(g, multi_state, params)
            chex.assert_trees_all_equal(u, jax.tree.map(jnp.zeros_like, u))
            chex.assert_trees_all_equal(multi_state.inner_opt_state, before)
        u, multi_state = multi_update(micro[-1], multi_state, params)
        mean = jax.tree.map(lambda *gs: sum(gs) / k, *micro)
        expected, state = update(mean, state, params)
        chex.assert_trees_all_close(u, expected, rtol=1e-6, atol=1e-7)
        chex.assert_trees_all_close(multi_state.inner_opt_state, state, rtol=1e-6, atol=1e-7)
        chex.assert_tree_all_finite(u)
        params = optax.apply_updates(params, u)


def test_exponentiated_gradient_checkpoints_and_stays_on_the_simplex(tmp_path):
    tx = adaptive.exponentiated_gradient(learning_rate=0.1)
    w = jnp.full(5, 0.2, jnp.float32)
    state = tx.init(w)
    update = jax.jit(tx.update)
    for i in range(3):
        u, state = update(jnp.arange(5.0, dtype=jnp.float32) * (i - 1), state, w)
        w = optax.apply_updates(w, u)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp_path / "eg", {"w": w, "opt_state": state})
    ckpt.wait_until_finished()
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"w": w, "opt_state": state})
    chex.assert_trees_all_equal(ckpt.restore(tmp_path / "eg", target)["opt_state"], state)
    np.testing.assert_allclose(float(w.sum()), 1.0, rtol=1e-6)
    assert bool((w > 0).all())
