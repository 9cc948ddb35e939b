"""``online_regret``: the online-convex-optimisation harness of notes §1, checked on SGD (§2)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from normtx.adaptive import online_regret


def _linear_losses(T=300, d=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (T, d)) + 0.2 * np.sign(rng.standard_normal(d))


def test_regret_and_iterates_match_a_numpy_replay_of_sgd():
    grads = _linear_losses()
    d = grads.shape[1]
    w1 = np.zeros(d)
    u = -np.sign(grads.sum(axis=0))
    res = online_regret(optax.sgd(0.05), jnp.asarray(w1), jnp.asarray(grads), jnp.asarray(u))
    ws = [w1]
    for g in grads:
        ws.append(ws[-1] - 0.05 * g)
    np.testing.assert_allclose(np.asarray(res.iterates), np.stack(ws[:-1]), atol=1e-12)
    np.testing.assert_allclose(np.asarray(res.final), ws[-1], atol=1e-12)
    np.testing.assert_allclose(np.asarray(res.losses), np.einsum("td,td->t", grads, ws[:-1]))
    expected = float(np.sum(grads * np.stack(ws[:-1])) - np.sum(grads @ u))
    np.testing.assert_allclose(float(res.regret), expected, rtol=1e-12)


def test_sgd_satisfies_bound_20():
    # Eq. 20 with A = I and a fixed η:  Regret_T(u) <= ‖w_1 - u‖²/(2η) + (η/2) Σ_t ‖g_t‖².
    grads = _linear_losses(T=1000, seed=1)
    w1 = jnp.zeros(grads.shape[1])
    u = -np.sign(grads.sum(axis=0))
    for eta in (1e-3, 1e-2, 1e-1):
        res = online_regret(optax.sgd(eta), w1, jnp.asarray(grads), jnp.asarray(u))
        bound = np.sum(u**2) / (2 * eta) + eta / 2 * np.sum(grads**2)
        assert float(res.regret) <= bound


def test_pytree_params():
    grads = {"a": jnp.ones((4, 2, 3)), "b": -jnp.ones((4, 5))}
    w1 = {"a": jnp.zeros((2, 3)), "b": jnp.zeros(5)}
    res = jax.jit(online_regret, static_argnums=0)(optax.sgd(1.0), w1, grads, w1)
    assert res.losses.shape == (4,)
    assert res.iterates["a"].shape == (4, 2, 3)
    # w_t = -(t-1) g, so <g, w_t> = -(t-1)‖g‖² with ‖g‖² = 6 + 5 = 11.
    np.testing.assert_allclose(np.asarray(res.losses), -11.0 * np.arange(4))
    np.testing.assert_allclose(float(res.regret), -11.0 * 6)
