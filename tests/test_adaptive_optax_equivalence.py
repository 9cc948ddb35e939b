"""The notes' SGD, AdaGrad, RMSProp, Adam, AMSGrad, coupled AdamW and Adafactor *are* optax's.

normtx does not re-implement what optax has; these tests check our reading of the notes: each
oracle in ``adaptive_oracles`` is the notes' equations in NumPy float64, and optax (run in float64,
so that the comparison is tight) must produce the same iterates for 5 steps on random data.
"""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from adaptive_helpers import random_grads, run
from adaptive_oracles import (
    adafactor_section_5_1,
    adagrad_diagonal,
    adamw_coupled,
    adamw_section_4_4,
    rmsprop,
    sgd,
)

STEPS = 5
SHAPE = (6, 4)
TOL = {"rtol": 1e-11, "atol": 1e-12}


def _setup(seed=0, shape=SHAPE):
    grads = random_grads(seed, shape, STEPS, np.float64)
    w0 = np.random.default_rng(seed + 100).standard_normal(shape)
    return w0, grads


def _check(tx, oracle_ws, w0, grads):
    ws, _ = run(tx, w0, grads)
    np.testing.assert_allclose(np.stack(ws), np.stack(oracle_ws), **TOL)


def test_eq21_sgd_is_optax_sgd():
    w0, grads = _setup()
    _check(optax.sgd(0.1), sgd(w0, grads, 0.1), w0, grads)


def test_eq37_diagonal_adagrad_is_optax_adagrad():
    w0, grads = _setup(1)
    tx = optax.adagrad(0.1, initial_accumulator_value=0.0, eps=0.0)
    _check(tx, adagrad_diagonal(w0, grads, 0.1), w0, grads)


def test_eq38_rmsprop_without_momentum_is_optax_rmsprop():
    w0, grads = _setup(2)
    tx = optax.rmsprop(0.01, decay=0.9, eps=0.0, initial_scale=0.0)
    _check(tx, rmsprop(w0, grads, 0.01, b1=0.0, b2=0.9), w0, grads)


def test_eq38_rmsprop_with_momentum_is_adam_with_bias_corrections_folded_into_the_step():
    # m_t / sqrt(v_t) = (m̄_t / sqrt(v̄_t)) (1 - b1^t) / sqrt(1 - b2^t): eq. 38 is eq. 39 with the
    # step size eta (1 - b1^t)/sqrt(1 - b2^t). (optax.rmsprop's momentum is a heavy ball on the
    # *scaled* step, a different method.)
    w0, grads = _setup(3)
    lr, b1, b2 = 0.01, 0.9, 0.99
    step = lambda c: lr * (1 - b1 ** (c + 1)) / jnp.sqrt(1 - b2 ** (c + 1))  # noqa: E731
    tx = optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=0.0), optax.scale_by_learning_rate(step))
    _check(tx, rmsprop(w0, grads, lr, b1=b1, b2=b2), w0, grads)


@pytest.mark.parametrize("eps", [1e-8, 0.3])
def test_eq39_adam_is_optax_adam(eps):
    w0, grads = _setup(4)
    oracle = adamw_section_4_4(
        w0, grads, eta_max=0.01, lam_max=0.0, s=[1.0] * STEPS, b1=0.9, b2=0.999, eps=eps
    )
    _check(optax.adam(0.01, b1=0.9, b2=0.999, eps=eps), oracle, w0, grads)


def test_section_4_4c_amsgrad_is_optax_amsgrad():
    # Shrinking gradients make v̄_t fall, so the running maximum is what the step uses.
    w0, grads = _setup(5)
    grads = [g * 0.5**t for t, g in enumerate(grads)]
    oracle = adamw_section_4_4(
        w0,
        grads,
        eta_max=0.01,
        lam_max=0.0,
        s=[1.0] * STEPS,
        b1=0.9,
        b2=0.5,
        eps=1e-8,
        amsgrad=True,
    )
    plain = adamw_section_4_4(
        w0, grads, eta_max=0.01, lam_max=0.0, s=[1.0] * STEPS, b1=0.9, b2=0.5, eps=1e-8
    )
    assert np.max(np.abs(np.stack(oracle) - np.stack(plain))) > 1e-4  # the max is active
    _check(optax.amsgrad(0.01, b1=0.9, b2=0.5, eps=1e-8), oracle, w0, grads)


def test_section_4_3_coupled_adamw_is_optax_adamw():
    w0, grads = _setup(6)
    eta = [0.01 * (1 - 0.1 * t) for t in range(STEPS)]
    oracle = adamw_coupled(w0, grads, eta=eta, lam=0.3, b1=0.9, b2=0.99, eps=1e-8)
    tx = optax.adamw(lambda c: 0.01 * (1 - 0.1 * c), b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.3)
    _check(tx, oracle, w0, grads)


def _debiased_decay(count, beta):
    # The bias-corrected EMA  x̄_t = x_t / (1 - β^t)  obeys  x̄_t = β_t x̄_{t-1} + (1 - β_t) y_t
    # with  β_t = β (1 - β^{t-1}) / (1 - β^t);  optax counts steps from 0 (t = count + 1).
    t = count + 1
    return beta * (1 - beta ** (t - 1)) / (1 - beta**t)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5)])
def test_section_5_1_adafactor_is_optax_factored_rms(shape):
    w0, grads = _setup(7, shape)
    beta, lr = 0.8, 0.01
    tx = optax.chain(
        optax.scale_by_factored_rms(
            min_dim_size_to_factor=1, epsilon=0.0, decay_rate=beta, decay_rate_fn=_debiased_decay
        ),
        optax.scale_by_learning_rate(lr),
    )
    _check(tx, adafactor_section_5_1(w0, grads, lr, beta), w0, grads)
