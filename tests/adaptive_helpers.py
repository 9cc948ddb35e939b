"""Shared harness for the adaptive-family tests: run a transform on a gradient sequence, and
train a small Flax CNN on scikit-learn's bundled digits."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import normtx


def random_grads(seed: int, shape, steps: int, dtype=np.float32, scale: float = 1.0):
    """``steps`` standard-normal gradients of ``shape`` (a fixed, oblivious sequence)."""
    rng = np.random.default_rng(seed)
    return [(scale * rng.standard_normal(shape)).astype(dtype) for _ in range(steps)]


def run(tx: optax.GradientTransformation, w0, grads, *, jit: bool = True):
    """``[w_1, ..., w_{T+1}]`` (NumPy float64) and the updates, applying ``tx`` to ``grads``.

    ``w0`` and every gradient are pytrees (or arrays) of the same structure. ``jit=False`` runs
    the update eagerly (the jit == eager tests); jitted is the default because one compilation
    is much cheaper than dispatching every op of a matrix transform eagerly.
    """
    update = jax.jit(tx.update) if jit else tx.update
    w, state = w0, tx.init(w0)
    ws, ups = [jax.tree.map(lambda x: np.asarray(x, np.float64), w0)], []
    for g in grads:
        u, state = update(g, state, w)
        w = optax.apply_updates(w, u)
        ws.append(jax.tree.map(lambda x: np.asarray(x, np.float64), w))
        ups.append(jax.tree.map(lambda x: np.asarray(x, np.float64), u))
    return ws, ups


def run_through_an_overflow(tx: optax.GradientTransformation, grads):
    """Runs ``tx`` (jitted, from ``init`` of zeros) on ``grads[0]``, then ``grads[1]`` with its
    ``[0, 0]`` entry set to 1e20 (finite, but its square overflows float32), then ``grads[2]``.

    Checks that ``normtx.diagnostics`` reports the second step and not the third. Returns the
    gradients as run, the states after each step and the updates of each step (NumPy).
    """
    bad = np.array(grads[1])
    bad[0, 0] = 1e20
    grads = [grads[0], bad, grads[2]]
    update = jax.jit(tx.update)
    state, states, ups = tx.init(jnp.zeros_like(grads[0])), [], []
    for g in grads:
        u, state = update(jnp.asarray(g), state)
        states.append(state)
        ups.append(np.asarray(u))
    assert not bool(normtx.diagnostics(states[1], ups[1])["finite"])
    assert bool(normtx.diagnostics(states[2], ups[2])["finite"])
    return grads, states, ups


def assert_close_per_step(actual, desired, rtol: float):
    """``‖a_t - d_t‖_F <= rtol · ‖d_t‖_F`` for every step t (the natural metric for the output of a
    matrix function, whose small entries carry the absolute error of the large ones)."""
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    assert actual.shape == desired.shape, (actual.shape, desired.shape)
    for t, (a, d) in enumerate(zip(actual, desired, strict=True)):
        err, ref = np.linalg.norm(a - d), np.linalg.norm(d)
        assert err <= rtol * ref, f"step {t + 1}: relative error {err / ref:.3g} > {rtol:.3g}"


@functools.cache
def digits_data():
    """The 8×8 digits of ``sklearn.datasets.load_digits`` (bundled, no download), NHWC in [0, 1]."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 8, 8, 1).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(y.astype(np.int32))


def train_digits_cnn(tx: optax.GradientTransformation, *, steps: int = 40, batch: int = 64):
    """Trains a two-conv Flax CNN with ``tx``; returns the per-step training losses (NumPy)."""
    from flax import linen as nn

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(4, (3, 3))(x))
            x = nn.avg_pool(x, (2, 2), (2, 2))
            x = nn.relu(nn.Conv(8, (3, 3))(x))
            x = x.reshape(x.shape[0], -1)
            return nn.Dense(10)(x)

    x, y = digits_data()
    model = CNN()
    params = model.init(jax.random.key(0), x[:1])
    state = tx.init(params)

    @jax.jit
    def step(params, state, i):
        idx = (i * batch + jnp.arange(batch)) % x.shape[0]

        def loss_fn(p):
            logits = model.apply(p, x[idx])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y[idx]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for i in range(steps):
        params, state, loss = step(params, state, i)
        losses.append(loss)
    return np.asarray(jax.device_get(losses), np.float64)
