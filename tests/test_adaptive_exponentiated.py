"""Exponentiated gradient (notes Appendix E, eq. 59–60) and its regret bound (eq. 8)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from adaptive_helpers import random_grads, run
from adaptive_oracles import exponentiated_gradient as eg_oracle
from adaptive_oracles import kl

from normtx.adaptive import exponentiated_gradient, online_regret

EPS32 = np.finfo(np.float32).eps


def _dirichlet(seed, shape):
    rng = np.random.default_rng(seed)
    x = rng.gamma(1.0, size=shape)
    return x / x.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize(("shape", "axis"), [((10,), None), ((3, 5), -1), ((4, 3), 0)])
def test_eq60_matches_numpy(shape, axis, jit):
    w0 = _dirichlet(0, shape[::-1] if axis == 0 else shape)
    w0 = w0.T if axis == 0 else w0
    if axis is None:
        w0 = w0 / w0.sum()
    grads = random_grads(1, shape, 5)
    oracle = eg_oracle(w0, grads, 0.7, axis=axis)
    tx = exponentiated_gradient(learning_rate=0.7, axis=axis)
    ws, _ = run(tx, jnp.asarray(w0, jnp.float32), [jnp.asarray(g) for g in grads], jit=jit)
    np.testing.assert_allclose(np.stack(ws), np.stack(oracle), rtol=1e-5, atol=1e-7)


def test_lemma_e1_step_minimises_linear_loss_plus_kl():
    # w_{t+1} = argmin_{w ∈ Δ} η gᵀw + KL(w, w_t): no feasible point does better.
    w0 = _dirichlet(2, (6,))
    g = random_grads(3, (6,), 1, np.float64)[0]
    eta = 0.9
    tx = exponentiated_gradient(learning_rate=eta)
    u, _ = tx.update(jnp.asarray(g, jnp.float32), tx.init(w0), jnp.asarray(w0, jnp.float32))
    w1 = w0 + np.asarray(u, np.float64)

    def objective(w):
        return eta * g @ w + kl(w, w0)

    others = _dirichlet(4, (3000, 6))
    best = objective(w1)
    assert all(best <= objective(w) + 1e-6 for w in others)


def test_iterates_stay_on_the_simplex_for_1000_steps():
    d, T = 10, 1000
    w = jnp.asarray(_dirichlet(5, (d,)), jnp.float32)
    grads = jnp.asarray(np.random.default_rng(6).uniform(-3, 3, (T, d)), jnp.float32)
    res = online_regret(exponentiated_gradient(learning_rate=0.5), w, grads, w)
    ws = np.asarray(res.iterates)
    assert (ws >= 0).all()
    assert (np.asarray(res.final) >= 0).all()
    # Each step renormalises, so the error never accumulates: a few ulps of the d-term sum.
    assert np.abs(ws.astype(np.float64).sum(axis=1) - 1).max() <= d * EPS32


@pytest.mark.parametrize("eta_scale", [0.3, 1.0, 3.0])
def test_regret_bound_on_online_linear_losses(eta_scale):
    # Eq. 8 with ψ = -H (1-strongly convex in ℓ1 by Pinsker, dual norm ℓ∞) and a fixed η:
    #   Regret_T(u) <= (KL(u, w_1) - KL(u, w_{T+1}))/η + (η/2) Σ_t ‖g_t‖∞²
    #              <= log(d)/η + (η/2) Σ_t ‖g_t‖∞²            (w_1 uniform).
    d, T = 10, 1000
    rng = np.random.default_rng(7)
    grads = rng.uniform(0, 1, (T, d))
    grads[:, 3] -= 0.1  # one expert is slightly better; the sign flips mid-way for another
    grads[T // 2 :, 7] -= 0.3
    eta = eta_scale * np.sqrt(2 * np.log(d) / T)
    w1 = jnp.full((d,), 1 / d, jnp.float32)
    best = int(np.argmin(grads.sum(axis=0)))
    u = np.eye(d)[best]
    tx = exponentiated_gradient(learning_rate=eta)
    res = jax.jit(online_regret, static_argnums=0)(tx, w1, jnp.asarray(grads, jnp.float32), u)
    # Recompute the regret in float64 from the iterates (independent of the library's sums).
    ws = np.asarray(res.iterates, np.float64)
    regret = float(np.sum(grads * ws) - grads.sum(axis=0)[best])
    np.testing.assert_allclose(float(res.regret), regret, rtol=1e-4, atol=1e-3)
    sum_sq = float(np.sum(np.abs(grads).max(axis=1) ** 2))
    kl_bound = (kl(u, np.full(d, 1 / d)) - kl(u, np.asarray(res.final))) / eta + eta / 2 * sum_sq
    assert regret <= kl_bound + 1e-3
    assert kl_bound <= np.log(d) / eta + eta / 2 * sum_sq + 1e-9
    assert regret > 0  # the bound is tested against a learner that does pay something


def test_zero_gradient_gives_zero_update_and_no_nan():
    w = jnp.full((8,), 0.125, jnp.float32)  # sums to 1 exactly in float32
    tx = exponentiated_gradient(learning_rate=1.0)
    u, _ = tx.update(jnp.zeros_like(w), tx.init(w), w)
    np.testing.assert_array_equal(np.asarray(u), 0)


def test_huge_steps_concentrate_on_the_best_coordinate_without_nan():
    w = jnp.asarray(_dirichlet(8, (5,)), jnp.float32)
    g = jnp.asarray([3.0, -1.0, 2.0, 0.5, 7.0], jnp.float32)
    tx = exponentiated_gradient(learning_rate=1e4)
    u, _ = tx.update(g, tx.init(w), w)
    w1 = optax.apply_updates(w, u)
    assert np.isfinite(np.asarray(w1)).all()
    np.testing.assert_allclose(np.asarray(w1), np.eye(5)[1], atol=1e-6)


def test_bfloat16_leaf_keeps_dtype_and_stays_nonnegative():
    w = jnp.asarray(_dirichlet(9, (16,)), jnp.bfloat16)
    g = jnp.asarray(random_grads(10, (16,), 1)[0], jnp.bfloat16)
    tx = exponentiated_gradient(learning_rate=2.0)
    u, _ = tx.update(g, tx.init(w), w)
    assert u.dtype == jnp.bfloat16
    assert (np.asarray(optax.apply_updates(w, u), np.float32) >= 0).all()


def test_state_is_one_counter():
    shapes = jax.eval_shape(exponentiated_gradient(learning_rate=0.1).init, {"p": jnp.ones(7)})
    assert [x.shape for x in jax.tree.leaves(shapes)] == [()]


def test_errors_name_the_leaf():
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        exponentiated_gradient(learning_rate=0.0)
    tx = exponentiated_gradient(learning_rate=0.1, axis=2)
    with pytest.raises(
        ValueError, match=r"axis=2 is out of range for leaf 'mix/w' \(shape \(3, 4\)"
    ):
        tx.init({"mix": {"w": jnp.ones((3, 4))}})
    tx = exponentiated_gradient(learning_rate=0.1)
    with pytest.raises(ValueError, match=r"'counts' \(shape \(3,\), int32\)"):
        tx.init({"counts": jnp.ones(3, jnp.int32)})
    w = jnp.ones(3) / 3
    with pytest.raises(ValueError, match="needs the params"):
        tx.update(w, tx.init(w))
