"""``normtx.optimizers.normuon`` and ``normtx.optimizers.adamuon`` against their papers.

Oracles: the float64 NumPy ports of NorMuon's and AdaMuon's Algorithm 1
(``muon_family_oracles``, in the papers' ``(d_out, d_in)`` layout, with Muon's quintic
Newton–Schulz) for the hidden kernel, ``optax.adamw`` for every other leaf (Muon's split), and the
closed forms of the ``β₂ = 0`` limits: NorMuon gives every neuron the RMS ``ρ``, AdaMuon gives
every entry the magnitude ``ρ`` (``ρ · sign(O_t)``).
"""

import chex
import jax
import jax.numpy as jnp
import muon_family_oracles as ref
import numpy as np
import optax
import pytest

from normtx import optimizers

import registry

ROLES = {
    "Dense_0": {"kernel": "hidden", "bias": "bias"},
    "Dense_1": {"kernel": "head", "bias": "bias"},
}
HIDDEN = ("Dense_0", "kernel")
LR, WD, ADAM = 0.05, 0.1, dict(adam_learning_rate=0.01, adam_b1=0.8, adam_b2=0.9, adam_eps=1e-3)


def _params(dtype=jnp.float64):
    return jax.tree.map(lambda x: x.astype(dtype), registry.params())


def _run(tx, steps, dtype=jnp.float64):
    """``steps`` jitted steps; returns the updates and the params before each step."""
    params = _params(dtype)
    update = jax.jit(tx.update, compiler_options=registry.FAST_COMPILE)
    state = tx.init(params)
    us, ps = [], []
    for t in range(steps):
        g = jax.tree.map(lambda x: x.astype(dtype), registry.grads(t))
        u, state = update(g, state, params)
        us.append(u)
        ps.append(params)
        params = optax.apply_updates(params, u)
    return us, ps


def _hidden(tree):
    return np.asarray(tree[HIDDEN[0]][HIDDEN[1]], np.float64)


def _check_hidden(us, ps, directions, rtol):
    """Each step: ``u_t = -η (D_t + λ W_{t-1})`` on the hidden kernel (decoupled weight decay)."""
    for u, p, d in zip(us, ps, directions, strict=True):
        want = -LR * (d + WD * _hidden(p))
        np.testing.assert_allclose(_hidden(u), want, rtol=rtol, atol=rtol * 1e-2)


def _check_adamw(us, steps):
    """Every leaf but the hidden kernel: ``optax.adamw`` with the ``adam_*`` hyperparameters."""
    want, _ = _run(
        optax.adamw(
            ADAM["adam_learning_rate"],
            b1=ADAM["adam_b1"],
            b2=ADAM["adam_b2"],
            eps=ADAM["adam_eps"],
            weight_decay=WD,
        ),
        steps,
    )
    for u, w in zip(us, want, strict=True):
        for path in (("Dense_0", "bias"), ("Dense_1", "kernel"), ("Dense_1", "bias")):
            np.testing.assert_allclose(u[path[0]][path[1]], w[path[0]][path[1]], rtol=1e-10)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize(
    ("make", "port"),
    [(optimizers.normuon, ref.normuon), (optimizers.adamuon, ref.adamuon)],
    ids=["normuon", "adamuon"],
)
def test_algorithm_1_on_hidden_kernels_and_adamw_elsewhere(make, port, nesterov):
    kw = dict(beta=0.9, beta2=0.8, eps=1e-6, rms=0.3, nesterov=nesterov)
    tx = make(LR, **kw, weight_decay=WD, adam_weight_decay=WD, roles=ROLES, **ADAM)
    us, ps = _run(tx, 6)
    grads = [_hidden(registry.grads(t)) for t in range(6)]
    directions = port(grads, beta1=0.9, beta2=0.8, eps=1e-6, rms=0.3, nesterov=nesterov)
    _check_hidden(us, ps, directions, rtol=1e-6)
    _check_adamw(us, 6)


def test_normuon_without_averaging_gives_every_neuron_the_rms_rho():
    """``β₂ = 0, ε = 0``: ``v = mean_fan_in(O²)`` of this step, so every neuron (fan-out column of
    the kernel) of the direction has RMS exactly ``ρ``: ``η ρ`` in the update."""
    tx = optimizers.normuon(LR, beta2=0.0, eps=0.0, rms=0.3, roles=ROLES)
    us, _ = _run(tx, 3, jnp.float32)
    for u in us:
        rms = np.sqrt(np.mean(_hidden(u) ** 2, axis=0))
        np.testing.assert_allclose(rms, LR * 0.3, rtol=1e-5)


def test_adamuon_without_averaging_is_sign_descent_on_the_polar_factor():
    """``β₂ = 0, ε → 0``: ``V = O ⊙ O``, ``Ô = sign(O)`` and ``‖Ô‖_F = √(mn)``, so the direction is
    ``ρ · sign(O_t)``: every entry of the update has magnitude ``η ρ``, with the sign of the port's
    ``O_t = NS(sign(M_t))``."""
    tx = optimizers.adamuon(LR, beta=0.9, beta2=0.0, eps=1e-30, rms=0.3, roles=ROLES)
    us, _ = _run(tx, 3)
    grads = [_hidden(registry.grads(t)) for t in range(3)]
    m = None
    for t, u in enumerate(us):
        m = grads[t] if m is None else 0.9 * m + grads[t]
        o = ref.newton_schulz(np.sign(m.T)).T
        np.testing.assert_allclose(np.abs(_hidden(u)), LR * 0.3, rtol=1e-12)
        np.testing.assert_array_equal(np.sign(_hidden(u)), -np.sign(o))


@pytest.mark.parametrize("make", [optimizers.normuon, optimizers.adamuon])
def test_zero_gradients_give_zero_updates(make):
    tx = make(LR, weight_decay=0.0)
    params = _params(jnp.float32)
    zeros = jax.tree.map(jnp.zeros_like, params)
    u, state = jax.jit(tx.update)(zeros, tx.init(params), params)
    chex.assert_trees_all_equal(u, zeros)
    chex.assert_tree_all_finite(state)


@pytest.mark.parametrize("make", [optimizers.normuon, optimizers.adamuon])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_updates_keep_the_param_dtype(make, dtype):
    tx = make(LR)
    params = _params(dtype)
    u, _ = jax.eval_shape(tx.update, params, tx.init(params), params)
    chex.assert_trees_all_equal_shapes_and_dtypes(u, params)
