"""Fully decoupled AdamW (notes §4.3–4.4, DESIGN §6 sign erratum fixed)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from adaptive_helpers import random_grads, run
from adaptive_oracles import adamw_section_4_4

from normtx.adaptive import adamw_fully_decoupled, add_decoupled_weight_decay

STEPS = 5


def schedule(count):
    return 0.5 + 0.1 * count  # s_t for step t = count + 1


def _w0(shape=(6, 4), seed=10):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("jit", [False, True])
def test_section_4_4_algorithm_matches_numpy(amsgrad, jit):
    w0 = _w0()
    grads = [g * 0.6**t for t, g in enumerate(random_grads(0, w0.shape, STEPS))]
    hp = dict(eta_max=0.05, lam_max=0.1, b1=0.9, b2=0.8, eps=1e-8)
    oracle = adamw_section_4_4(
        w0, grads, s=[schedule(c) for c in range(STEPS)], amsgrad=amsgrad, **hp
    )
    tx = adamw_fully_decoupled(
        learning_rate=hp["eta_max"],
        weight_decay=hp["lam_max"],
        schedule=schedule,
        b1=0.9,
        b2=0.8,
        eps=1e-8,
        amsgrad=amsgrad,
    )
    ws, _ = run(tx, jnp.asarray(w0), [jnp.asarray(g) for g in grads], jit=jit)
    np.testing.assert_allclose(np.stack(ws), np.stack(oracle), rtol=2e-6, atol=2e-6)


def test_decay_sign_shrinks_weights():
    # DESIGN §6: with zero gradients the update must *shrink* w, not grow it.
    w0 = jnp.asarray(_w0())
    tx = adamw_fully_decoupled(learning_rate=0.1, weight_decay=0.2)
    u, _ = tx.update(jnp.zeros_like(w0), tx.init(w0), w0)
    np.testing.assert_allclose(np.asarray(u), -0.2 * np.asarray(w0), rtol=1e-6)


def test_equals_coupled_optax_adamw_when_lambda_is_lambda_max_over_eta_max():
    # -s_t (η_max d + λ_max w) = -(s_t η_max)(d + (λ_max/η_max) w): optax.adamw with
    # learning_rate η_t = s_t η_max and weight_decay λ = λ_max / η_max. Run in float64: an identity.
    eta_max, lam_max = 0.03, 0.012
    w0 = jnp.asarray(_w0(), jnp.float64)
    grads = [jnp.asarray(g, jnp.float64) for g in random_grads(1, w0.shape, 8)]
    ours = adamw_fully_decoupled(
        learning_rate=eta_max, weight_decay=lam_max, schedule=schedule, b1=0.9, b2=0.99
    )
    coupled = optax.adamw(
        lambda c: eta_max * schedule(c), b1=0.9, b2=0.99, weight_decay=lam_max / eta_max
    )
    ws, _ = run(ours, w0, grads)
    ws_optax, _ = run(coupled, w0, grads)
    np.testing.assert_allclose(np.stack(ws), np.stack(ws_optax), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("eta_max", [1e-4, 1e-2, 1.0])
def test_decay_is_independent_of_eta_max(eta_max):
    # With zero gradients only the decay acts: w_{T+1} = Π_t (1 - s_t λ_max) w_1 whatever η_max.
    lam_max, T = 0.05, 10
    w0 = jnp.asarray(_w0())
    zeros = [jnp.zeros_like(w0)] * T
    tx = adamw_fully_decoupled(learning_rate=eta_max, weight_decay=lam_max, schedule=schedule)
    ws, _ = run(tx, w0, zeros)
    factor = np.prod([1 - schedule(c) * lam_max for c in range(T)])
    np.testing.assert_allclose(ws[-1], factor * np.asarray(w0, np.float64), rtol=1e-5)


def test_coupled_decay_depends_on_eta_but_decoupled_does_not():
    # The point of §4.3: tuning the learning rate retunes coupled decay, not decoupled decay.
    w0 = jnp.asarray(_w0())
    zeros = [jnp.zeros_like(w0)] * 5

    def shrink(tx):
        ws, _ = run(tx, w0, zeros)
        return np.linalg.norm(ws[-1]) / np.linalg.norm(ws[0])

    coupled = [shrink(optax.adamw(eta, weight_decay=1.0)) for eta in (1e-3, 1e-1)]
    decoupled = [
        shrink(adamw_fully_decoupled(learning_rate=eta, weight_decay=1e-2)) for eta in (1e-3, 1e-1)
    ]
    assert coupled[1] < coupled[0] - 0.3
    np.testing.assert_allclose(decoupled[0], decoupled[1], rtol=1e-6)


def test_mask_excludes_leaves_from_decay():
    params = {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}
    zeros = jax.tree.map(jnp.zeros_like, params)
    tx = adamw_fully_decoupled(
        learning_rate=0.1,
        weight_decay=0.5,
        mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p),
    )
    u, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(u["kernel"], -0.5 * np.ones((3, 2)))
    np.testing.assert_array_equal(u["bias"], np.zeros(2))
    tx = adamw_fully_decoupled(
        learning_rate=0.1, weight_decay=0.5, mask={"kernel": False, "bias": True}
    )
    u, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_array_equal(u["kernel"], np.zeros((3, 2)))


def test_any_direction_gets_decoupled_decay():
    # add_decoupled_weight_decay after a plain direction (here the gradient itself).
    w = jnp.asarray(_w0())
    g = jnp.asarray(random_grads(2, w.shape, 1)[0])
    tx = add_decoupled_weight_decay(learning_rate=0.2, weight_decay=0.01, schedule=lambda c: 0.5)
    u, state = tx.update(g, tx.init(w), w)
    np.testing.assert_allclose(u, -0.5 * (0.2 * g + 0.01 * w), rtol=1e-6)
    assert int(state.count) == 1


def test_zero_gradients_and_zero_params_give_zero_update():
    w = jnp.zeros((4, 3), jnp.bfloat16)
    tx = adamw_fully_decoupled(learning_rate=0.1, weight_decay=0.1)
    u, _ = jax.jit(tx.update)(jnp.zeros_like(w), tx.init(w), w)
    assert u.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(u, np.float32), 0)


def test_state_memory_is_adams_two_floats_per_param():
    params = {"a": jnp.zeros((7, 5)), "b": jnp.zeros((5,))}
    n = 7 * 5 + 5
    for amsgrad, per_param in [(False, 2), (True, 3)]:
        tx = adamw_fully_decoupled(learning_rate=0.1, weight_decay=0.1, amsgrad=amsgrad)
        shapes = jax.eval_shape(tx.init, params)
        floats = sum(
            x.size for x in jax.tree.leaves(shapes) if jnp.issubdtype(x.dtype, jnp.floating)
        )
        assert floats == per_param * n


def test_bad_hyperparameters_and_inputs():
    with pytest.raises(ValueError, match="schedule=s"):
        add_decoupled_weight_decay(learning_rate=optax.constant_schedule(0.1), weight_decay=0.1)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        add_decoupled_weight_decay(learning_rate=0.1, weight_decay=-1.0)
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        adamw_fully_decoupled(learning_rate=0.0, weight_decay=0.1)
    with pytest.raises(ValueError, match="b2"):
        adamw_fully_decoupled(learning_rate=0.1, weight_decay=0.1, b2=1.0)
    tx = add_decoupled_weight_decay(learning_rate=0.1, weight_decay=0.1)
    w = {"layer": {"step": jnp.zeros((3,), jnp.int32)}}
    with pytest.raises(ValueError, match=r"'layer/step' \(shape \(3,\), int32\)"):
        tx.init(w)
    w = jnp.ones(3)
    with pytest.raises(ValueError, match="params"):
        tx.update(w, tx.init(w))
