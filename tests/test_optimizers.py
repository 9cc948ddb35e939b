"""Ready-made optimizers: each equals its formula, works with inject_hyperparams, and trains."""

from __future__ import annotations

import json
import math
import pathlib
import string
import textwrap

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state
from sklearn.datasets import load_digits

import normtx
from normtx import norms
from normtx.optimizers import modular_descent

import oracles as orc

RMS_TO_RMS = orc.schatten_oracles(math.inf, lambda d_in, d_out: math.sqrt(d_in / d_out))[2]
RMS = orc.vector_oracles(2.0, lambda n: 1 / math.sqrt(n))[2]


def _f32(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def _mlp_tree(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return {
        "Dense_0": {"kernel": scale * rng.standard_normal((6, 4)), "bias": rng.standard_normal(4)},
        "Dense_1": {"kernel": scale * rng.standard_normal((4, 3)), "bias": rng.standard_normal(3)},
    }


def _run(tx, grads, params):
    """Applies ``tx`` to a list of gradients; returns the list of updates (float64)."""
    state = tx.init(params)
    out = []
    for g in grads:
        u, state = tx.update(g, state, params)
        out.append(jax.tree.map(lambda x: np.asarray(x, np.float64), u))
        params = optax.apply_updates(params, u)
    return out


def _ema(grads, beta, nesterov):
    """NumPy oracle of the momentum: m = β m + (1-β) g; Nesterov (1-β) g + β m."""
    m = jax.tree.map(np.zeros_like, grads[0])
    out = []
    for g in grads:
        m = jax.tree.map(lambda m, g: beta * m + (1 - beta) * g, m, g)
        out.append(jax.tree.map(lambda m, g: (1 - beta) * g + beta * m, m, g) if nesterov else m)
    return out


# ---- each optimizer is its formula ---------------------------------------------------------------


@pytest.mark.parametrize("nesterov", [False, True])
def test_sign_descent_with_momentum_is_sign_of_the_ema(nesterov):
    grads = [_mlp_tree(s) for s in range(3)]
    params = _f32(_mlp_tree(9))
    got = _run(
        normtx.optimizers.sign_descent(0.1, momentum=0.8, nesterov=nesterov),
        [_f32(g) for g in grads],
        params,
    )
    for u, m in zip(got, _ema(grads, 0.8, nesterov)):
        chex.assert_trees_all_close(u, jax.tree.map(lambda m: -0.1 * np.sign(m), m))


def test_sign_descent_dual_norm_step_is_prop2():
    g = _mlp_tree(0)
    (u,) = _run(
        normtx.optimizers.sign_descent(1.0, step="dual_norm", sharpness=4.0), [_f32(g)], _f32(g)
    )
    l1 = sum(np.abs(x).sum() for x in jax.tree.leaves(g))
    chex.assert_trees_all_close(u, jax.tree.map(lambda x: -(l1 / 4.0) * np.sign(x), g), rtol=1e-5)


def test_normalized_sgd_normalizes_each_leaf():
    g = _mlp_tree(1)
    (u,) = _run(normtx.optimizers.normalized_sgd(0.5), [_f32(g)], _f32(g))
    chex.assert_trees_all_close(
        u, jax.tree.map(lambda x: -0.5 * x / np.linalg.norm(x), g), rtol=1e-5, atol=1e-7
    )


def test_spectral_descent_is_the_polar_factor_and_l2_on_vectors():
    g = _mlp_tree(2)
    (u,) = _run(normtx.optimizers.spectral_descent(0.1), [_f32(g)], _f32(g))
    expected = jax.tree.map(
        lambda x: -0.1 * (orc.polar(x) if x.ndim == 2 else x / np.linalg.norm(x)), g
    )
    chex.assert_trees_all_close(u, expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match=r"spectral_descent: leaf 'w' \(shape \(2, 3, 4\)"):
        normtx.optimizers.spectral_descent(0.1).init({"w": jnp.ones((2, 3, 4), jnp.float32)})


def test_modular_descent_is_momentum_then_the_unit_modular_step():
    grads = [_mlp_tree(s) for s in range(3)]
    params = _f32(_mlp_tree(7))
    tx = modular_descent(0.1, momentum=0.5, weight_decay=0.01)
    state = tx.init(params)
    for g, m in zip(grads, _ema(grads, 0.5, False)):
        u, state = tx.update(_f32(g), state, params)
        for name in ("Dense_0", "Dense_1"):
            k, b = m[name]["kernel"], m[name]["bias"]
            w = np.asarray(params[name]["kernel"], np.float64)
            np.testing.assert_allclose(
                u[name]["kernel"], -0.1 * (RMS_TO_RMS(k) + 0.01 * w), rtol=1e-4, atol=1e-6
            )
            # Biases are not decayed.
            np.testing.assert_allclose(u[name]["bias"], -0.1 * RMS(b), rtol=1e-5, atol=1e-7)
        params = optax.apply_updates(params, u)


def test_modular_descent_dual_norm_step_is_prop7():
    g = _mlp_tree(3)
    (u,) = _run(
        modular_descent(1.0, momentum=0.0, step="dual_norm", sharpness=2.0), [_f32(g)], _f32(g)
    )
    duals = {}
    for name in g:
        k, b = g[name]["kernel"], g[name]["bias"]
        duals[name] = np.sqrt(k.shape[1] / k.shape[0]) * np.linalg.svd(k)[1].sum()
        duals[name] += np.sqrt(b.size) * np.linalg.norm(b)
    eta = sum(duals.values()) / 2.0
    for name in g:
        np.testing.assert_allclose(
            u[name]["kernel"], -eta * RMS_TO_RMS(g[name]["kernel"]), rtol=1e-4, atol=1e-6
        )


def test_modular_descent_escape_velocity_grows_the_step():
    """A constant gradient g and unit modular steps T: <g, w_0 - w_t> = (η_0 + … + η_{t-1}) ‖g‖†
    exactly when the rule measures the partition's norm (<g, T> = ‖g‖†), so eq. 28 gives
    η_{t+1} = max(η_t, η_0 + … + η_{t-1}): 1, 1, 1, 2, 3, 5 (× η_0)."""
    params = _f32(_mlp_tree(4))
    # η_0 = 1e-2: steps far above the float32 rounding of weights of size 1.
    tx = modular_descent(1.0, momentum=0.0, escape_velocity=True, init_lr=1e-2)
    state = tx.init(params)
    g = _f32(_mlp_tree(5))
    etas = [1e-2]
    for _ in range(5):
        u, state = tx.update(g, state, params)
        params = optax.apply_updates(params, u)
        etas.append(float(optax.tree_utils.tree_get(state, "eta")))
    np.testing.assert_allclose(etas, 1e-2 * np.array([1, 1, 1, 2, 3, 5]), rtol=1e-4)
    # The last update is η_4 times the unit modular direction.
    np.testing.assert_allclose(
        u["Dense_0"]["bias"], -3e-2 * RMS(np.asarray(g["Dense_0"]["bias"])), rtol=1e-4
    )


@pytest.mark.parametrize("constrained", [True, False])
def test_scion_updates(constrained):
    grads = [_mlp_tree(s) for s in range(3)]
    params = _f32(_mlp_tree(8))
    tx = normtx.optimizers.scion(0.1, radius=3.0, momentum=0.6, constrained=constrained)
    state = tx.init(params)
    for g, d in zip(grads, _ema(grads, 0.6, False)):
        new, state = tx.update(_f32(g), state, params)
        new = optax.apply_updates(params, new)
        for name in g:
            w = np.asarray(params[name]["kernel"], np.float64)
            lmo = -3.0 * RMS_TO_RMS(d[name]["kernel"])
            # Constrained: w <- (1-γ) w + γ lmo(d); unconstrained: w <- w + γ lmo(d).
            expected = (0.9 * w if constrained else w) + 0.1 * lmo
            np.testing.assert_allclose(new[name]["kernel"], expected, rtol=1e-4, atol=1e-6)
        params = new


def test_scion_constrained_iterates_stay_in_the_ball():
    params = _f32(_mlp_tree(0, scale=0.01))
    tx = normtx.optimizers.scion(0.3, radius=2.0, momentum=0.0)
    mod = normtx.modular_norm()
    state = tx.init(params)
    for s in range(6):
        u, state = tx.update(_f32(_mlp_tree(s + 10)), state, params)
        params = optax.apply_updates(params, u)
        assert float(mod.norm(params)) <= 2.0 * (1 + 1e-5)


# ---- inject_hyperparams and validation -----------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "kwargs"),
    [
        (normtx.optimizers.sign_descent, dict(learning_rate=0.1, momentum=0.5)),
        (normtx.optimizers.normalized_sgd, dict(learning_rate=0.1, weight_decay=0.1)),
        (normtx.optimizers.spectral_descent, dict(learning_rate=0.1, step="dual_norm")),
        (modular_descent, dict(learning_rate=0.1, momentum=0.5, scales={"bias": 2.0})),
        (modular_descent, dict(learning_rate=1.0, escape_velocity=True, init_lr=1e-3)),
        (modular_descent, dict(learning_rate=0.1, scales=2.0)),
        (normtx.optimizers.scion, dict(learning_rate=0.1, radius=2.0)),
    ],
)
def test_inject_hyperparams_matches_the_plain_chain(factory, kwargs):
    grads = [_f32(_mlp_tree(s)) for s in range(3)]
    params = _f32(_mlp_tree(9))
    plain = _run(factory(**kwargs), grads, params)
    injected_tx = optax.inject_hyperparams(factory)(**kwargs)
    injected = _run(injected_tx, grads, params)
    for a, b in zip(plain, injected):
        chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-7)
    # The learning rate is live in the state: doubling it doubles the update.
    state = injected_tx.init(params)
    u, _ = injected_tx.update(grads[0], state, params)
    state.hyperparams["learning_rate"] = 2 * state.hyperparams["learning_rate"]
    u2, _ = injected_tx.update(grads[0], state, params)
    chex.assert_trees_all_close(u2, jax.tree.map(lambda x: 2 * x, u), rtol=1e-6)


def test_hyperparameters_are_validated_at_construction():
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        modular_descent(-1.0)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
        normtx.optimizers.sign_descent(0.1, momentum=1.0)
    with pytest.raises(ValueError, match="nesterov must be True or False"):
        normtx.optimizers.normalized_sgd(0.1, nesterov=1)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        normtx.optimizers.spectral_descent(0.1, weight_decay=-0.1)
    with pytest.raises(ValueError, match="step must be one of"):
        modular_descent(0.1, step="exact")
    with pytest.raises(ValueError, match="unknown role 'hiden' in norms"):
        modular_descent(0.1, norms={"hiden": norms.rms()})
    with pytest.raises(ValueError, match="learning_rate must be <= 1"):
        normtx.optimizers.scion(2.0)
    with pytest.raises(ValueError, match="radius must be > 0"):
        normtx.optimizers.scion(0.1, radius=0.0)
    with pytest.raises(ValueError, match="escape_velocity must be True or False"):
        modular_descent(0.1, escape_velocity="yes")


# ---- training -----------------------------------------------------------------------------------


def _digits():
    x, y = load_digits(return_X_y=True)
    return jnp.asarray(x / 16.0, jnp.float32), jnp.asarray(y)


def test_nnx_optimizer_trains_an_mlp_on_digits():
    x, y = _digits()
    model = nnx.Sequential(
        nnx.Linear(64, 64, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(64, 10, rngs=nnx.Rngs(1))
    )
    optimizer = nnx.Optimizer(model, modular_descent(0.1, weight_decay=1e-4), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer)) for _ in range(40)]
    accuracy = float((model(x).argmax(-1) == y).mean())
    assert losses[-1] < 0.2 * losses[0], losses
    assert accuracy > 0.9


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(64)(x)))


def test_linen_train_state_trains_on_digits_with_escape_velocity():
    x, y = _digits()
    model = LinenMLP()
    state = train_state.TrainState.create(
        apply_fn=model.apply,
        params=model.init(jax.random.key(0), x[:1])["params"],
        # Eq. 28 as printed: no momentum, η grows from η_0 until the weights escape.
        tx=modular_descent(1.0, momentum=0.0, escape_velocity=True, init_lr=1e-4),
    )

    @jax.jit
    def train_step(state):
        def loss_fn(params):
            logits = state.apply_fn({"params": params}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    losses = []
    for _ in range(50):
        state, loss = train_step(state)
        losses.append(float(loss))
    assert losses[-1] < 0.2 * losses[0], losses
    assert float(optax.tree_utils.tree_get(state.opt_state, "eta")) > 100 * 1e-4


def _char_data(length=20000):
    """Characters of a few standard-library sources, read from the local Python install."""
    text = "".join(
        pathlib.Path(m.__file__).read_text(encoding="utf-8") for m in (textwrap, string, json)
    )
    text = text[:length]
    chars = sorted(set(text))
    return np.array([chars.index(c) for c in text], np.int32), len(chars)


class TinyTransformer(nnx.Module):
    def __init__(self, vocab, context, d, rngs):
        self.tok = nnx.Embed(vocab, d, rngs=rngs)
        self.pos = nnx.Embed(context, d, rngs=rngs)
        self.ln1 = nnx.LayerNorm(d, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=4, in_features=d, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d, rngs=rngs)
        self.fc1 = nnx.Linear(d, 4 * d, rngs=rngs)
        self.fc2 = nnx.Linear(4 * d, d, rngs=rngs)
        self.ln_f = nnx.LayerNorm(d, rngs=rngs)
        self.head = nnx.Linear(d, vocab, rngs=rngs)

    def __call__(self, tokens):
        h = self.tok(tokens) + self.pos(jnp.arange(tokens.shape[1]))
        h = h + self.attn(self.ln1(h), mask=nnx.make_causal_mask(tokens))
        h = h + self.fc2(nnx.gelu(self.fc1(self.ln2(h))))
        return self.head(self.ln_f(h))


@pytest.mark.slow
def test_nnx_optimizer_trains_a_tiny_char_transformer():
    data, vocab = _char_data()
    context, batch, steps = 32, 32, 40
    model = TinyTransformer(vocab, context, 32, nnx.Rngs(0))
    got = normtx.roles.infer(nnx.state(model, nnx.Param))
    assert (got["tok"]["embedding"].name, got["head"]["kernel"].name) == ("embedding", "head")
    assert got["attn"]["out"]["kernel"].name == "attention"
    optimizer = nnx.Optimizer(model, modular_descent(0.02), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, xb, yb):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    rng = np.random.default_rng(0)
    losses = []
    for _ in range(steps):
        starts = rng.integers(0, len(data) - context - 1, size=batch)
        xb = jnp.asarray(np.stack([data[s : s + context] for s in starts]))
        yb = jnp.asarray(np.stack([data[s + 1 : s + context + 1] for s in starts]))
        losses.append(float(train_step(model, optimizer, xb, yb)))
    assert np.mean(losses[-5:]) < 0.65 * losses[0], losses
