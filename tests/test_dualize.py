"""``normtx.dualize`` and ``normtx.scale_by_dual_norm`` as optax transforms (anthology Prop. 1–7)."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

import normtx
from normtx import norms

import oracles as orc


def _params(seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return {
        "dense": {
            "kernel": jnp.asarray(rng.standard_normal((6, 4)), dtype),
            "bias": jnp.asarray(rng.standard_normal(4), dtype),
        },
        "head": {"kernel": jnp.asarray(rng.standard_normal((4, 3)), dtype)},
    }


def _geometry(path, leaf):
    return norms.rms() if leaf.ndim == 1 else norms.spectral()


def _apply(tx, g):
    return tx.update(g, tx.init(g))[0]


def _oracle_step(grads, lam, scope):
    """NumPy float64: per leaf (dual/λ)·dualize with spectral kernels and RMS biases."""
    g = jax.tree.map(lambda x: np.asarray(x, np.float64), grads)
    ora = {
        1: orc.vector_oracles(2.0, lambda n: 1 / math.sqrt(n)),
        2: orc.schatten_oracles(math.inf),
    }
    duals = jax.tree.map(lambda x: ora[x.ndim][1](x), g)
    dirs = jax.tree.map(lambda x: ora[x.ndim][2](x), g)
    total = sum(jax.tree.leaves(duals))
    if scope == "tree":
        return jax.tree.map(lambda t: total / lam * t, dirs)
    return jax.tree.map(lambda d, t: d / lam * t, duals, dirs)


def test_dualize_maps_each_leaf_to_its_direction():
    g = _params(1)
    tx = normtx.dualize(_geometry)
    out, _ = tx.update(g, tx.init(g))
    expected = jax.tree.map(lambda x: _geometry(None, x).dualize(x), g)
    chex.assert_trees_all_close(out, expected, rtol=1e-6)
    u, _, vh = np.linalg.svd(np.asarray(g["dense"]["kernel"], np.float64), full_matrices=False)
    np.testing.assert_allclose(out["dense"]["kernel"], u @ vh, atol=2e-6)
    b = np.asarray(g["dense"]["bias"], np.float64)
    np.testing.assert_allclose(out["dense"]["bias"], 2 * b / np.linalg.norm(b), rtol=1e-6)


def test_dualize_leaves_none_leaves_unchanged():
    g = _params(2)
    tx = normtx.dualize({"dense": None, "head": norms.spectral()})
    out, _ = tx.update(g, tx.init(g))
    chex.assert_trees_all_equal(out["dense"], g["dense"])
    u, _, vh = np.linalg.svd(np.asarray(g["head"]["kernel"], np.float64), full_matrices=False)
    np.testing.assert_allclose(out["head"]["kernel"], u @ vh, atol=2e-6)


def test_a_modular_norm_with_scales_is_accepted_as_is():
    """``dualize(norms.modular(N, s))`` steps by dualize_l/s_l; scale_by_dual_norm by Prop. 7."""
    g = _params(17)
    scales = {"dense": 2.0, "head": 0.5}
    mod = norms.modular(_geometry, scales=scales)
    out = _apply(normtx.dualize(mod), g)
    plain = _apply(normtx.dualize(_geometry), g)
    chex.assert_trees_all_close(out["dense"], jax.tree.map(lambda x: x / 2.0, plain["dense"]))
    chex.assert_trees_all_close(out["head"], jax.tree.map(lambda x: x / 0.5, plain["head"]))
    step = _apply(normtx.scale_by_dual_norm(mod, sharpness=2.0), g)
    eta = float(mod.dual_norm(g)) / 2.0
    chex.assert_trees_all_close(step, jax.tree.map(lambda t: eta * t, out), rtol=1e-5)


@pytest.mark.parametrize("scope", ["tree", "leaf"])
@pytest.mark.parametrize("lam", [0.5, 3.0])
def test_scale_by_dual_norm_matches_the_oracle(scope, lam):
    g = _params(3)
    tx = normtx.scale_by_dual_norm(_geometry, sharpness=lam, scope=scope)
    out, state = tx.update(g, tx.init(g))
    chex.assert_trees_all_close(out, _oracle_step(g, lam, scope), rtol=1e-4, atol=1e-5)
    assert int(state.count) == 1


def test_prop2_sign_descent_equals_adam_without_ema():
    """Adam with β1 = β2 = 0 (and ε = 0) steps by -lr·sign(g) on nonzero gradients (eqs. 6–7)."""
    params = _params(4)
    grads = _params(5)
    lr = 0.01
    ours = optax.chain(normtx.dualize(norms.linf()), optax.scale_by_learning_rate(lr))
    adam = optax.adam(lr, b1=0.0, b2=0.0, eps=0.0)
    u1, _ = ours.update(grads, ours.init(params), params)
    u2, _ = adam.update(grads, adam.init(params), params)
    chex.assert_trees_all_close(u1, u2, rtol=1e-6)


def test_prop3_tree_scope_linf_is_global_sign_descent():
    """Every leaf steps by (Σ_l ‖G_l‖₁/λ)·sign(G_l): one global ℓ1 dual (eq. 11)."""
    g = _params(6)
    lam = 2.0
    out = _apply(normtx.scale_by_dual_norm(norms.linf(), sharpness=lam), g)
    total = sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(g))
    chex.assert_trees_all_close(
        out, jax.tree.map(lambda x: total / lam * jnp.sign(x), g), rtol=1e-5
    )


def test_prop5_tree_scope_spectral_steps_by_the_total_nuclear_norm():
    g = {"a": _params(7)["dense"]["kernel"], "b": _params(8)["head"]["kernel"]}
    out = _apply(normtx.scale_by_dual_norm(norms.spectral(), sharpness=1.0), g)
    svds = {k: np.linalg.svd(np.asarray(v, np.float64), full_matrices=False) for k, v in g.items()}
    eta = sum(s.sum() for _, s, _ in svds.values())  # η = Σ_l tr Σ_l (eq. 19)
    for k, (u, _, vh) in svds.items():
        np.testing.assert_allclose(out[k], eta * u @ vh, rtol=1e-4, atol=1e-5)


def test_prop6_spectral_descent_majorizes_the_square_loss_of_a_linear_predictor():
    """With λ = d_in/d_out and ‖x‖₂ = √d_in, each Prop. 5 step decreases the loss (eq. 21)
    by at least the model's promise ‖G‖†²/(2λ): majorization–minimization."""
    d_in, d_out, n = 8, 3, 64
    rng = np.random.default_rng(9)
    x = rng.standard_normal((n, d_in))
    x *= math.sqrt(d_in) / np.linalg.norm(x, axis=1, keepdims=True)
    y = rng.standard_normal((n, d_out))
    x, y = jnp.asarray(x), jnp.asarray(y)

    def loss(k):
        return 0.5 / n * jnp.sum((y - x @ k) ** 2) / d_out

    lam = d_in / d_out
    tx = optax.chain(normtx.scale_by_dual_norm(norms.spectral(), sharpness=lam), optax.scale(-1.0))
    k = jnp.zeros((d_in, d_out), jnp.float64)
    state = tx.init(k)
    for _ in range(30):
        g = jax.grad(loss)(k)
        promise = float(norms.spectral().dual_norm(g)) ** 2 / (2 * lam)
        u, state = tx.update(g, state)
        new_k = optax.apply_updates(k, u)
        assert float(loss(new_k)) <= float(loss(k)) - promise * (1 - 1e-9)
        k = new_k


def test_sharpness_schedule_follows_the_step_count():
    g = {"w": jnp.ones((2, 2), jnp.float32)}
    tx = normtx.scale_by_dual_norm(norms.l2(), sharpness=lambda count: 1.0 + count)
    state = tx.init(g)
    for step in range(3):
        out, state = tx.update(g, state)
        np.testing.assert_allclose(out["w"], 2.0 / (1.0 + step) * 0.5, rtol=1e-6)


@pytest.mark.parametrize("norm", [norms.spectral(), "callable"])
def test_inject_hyperparams_controls_the_sharpness(norm):
    """A callable norm spec must be declared static: inject_hyperparams reads callables as
    schedules (``static_args=('norm',)``); Norm objects need nothing."""
    g = {"w": _params(10)["dense"]["kernel"]}
    if norm == "callable":
        factory = optax.inject_hyperparams(normtx.scale_by_dual_norm, static_args=("norm",))
        tx = factory(norm=_geometry, sharpness=2.0)
    else:
        tx = optax.inject_hyperparams(normtx.scale_by_dual_norm)(norm, sharpness=2.0)
    state = tx.init(g)
    out_a, state = tx.update(g, state)
    state.hyperparams["sharpness"] = jnp.asarray(4.0)
    out_b, state = jax.jit(tx.update)(g, state)
    chex.assert_trees_all_close(out_b, jax.tree.map(lambda x: x / 2, out_a), rtol=1e-5)


@pytest.mark.parametrize("scope", ["tree", "leaf"])
def test_jit_matches_eager(scope):
    g = _params(11)
    tx = normtx.scale_by_dual_norm(_geometry, sharpness=1.5, scope=scope)
    s = tx.init(g)
    chex.assert_trees_all_close(jax.jit(tx.update)(g, s), tx.update(g, s), rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.float64])
def test_updates_keep_the_leaf_dtype(dtype):
    g = _params(12, dtype)
    for tx in (normtx.dualize(_geometry), normtx.scale_by_dual_norm(_geometry)):
        out, _ = tx.update(g, tx.init(g))
        assert all(x.dtype == dtype for x in jax.tree.leaves(out))
        chex.assert_tree_all_finite(out)


def test_zero_gradients_give_zero_updates():
    g = jax.tree.map(jnp.zeros_like, _params(13))
    for tx in (
        normtx.dualize(_geometry),
        normtx.scale_by_dual_norm(_geometry, scope="leaf"),
        normtx.scale_by_dual_norm(_geometry),
    ):
        out, _ = tx.update(g, tx.init(g))
        chex.assert_trees_all_equal(out, g)


def test_one_zero_leaf_in_tree_scope_stays_zero():
    g = _params(14)
    g["head"]["kernel"] = jnp.zeros_like(g["head"]["kernel"])
    out = _apply(normtx.scale_by_dual_norm(_geometry), g)
    chex.assert_trees_all_equal(out["head"]["kernel"], g["head"]["kernel"])
    chex.assert_tree_all_finite(out)


def test_training_a_chain_on_a_least_squares_problem():
    rng = np.random.default_rng(15)
    x = jnp.asarray(rng.standard_normal((128, 10)), jnp.float32)
    k_true = jnp.asarray(rng.standard_normal((10, 4)), jnp.float32)
    params = {"kernel": jnp.zeros((10, 4), jnp.float32), "bias": jnp.zeros(4, jnp.float32)}

    def loss(p):
        return jnp.mean((x @ p["kernel"] + p["bias"] - x @ k_true - 1.0) ** 2)

    tx = optax.chain(
        normtx.dualize(_geometry),
        optax.scale_by_learning_rate(optax.cosine_decay_schedule(0.1, 300)),
    )
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    start = float(loss(params))
    for _ in range(300):
        params, state = step(params, state)
    assert float(loss(params)) < 1e-3 * start


@pytest.mark.parametrize("axis_type", ["explicit", "auto"])
def test_runs_under_a_sharding_mesh_of_8_devices(axis_type):
    """Explicit meshes (``jax.make_mesh``'s default) need the matrix axes gathered for the SVD;
    Auto meshes are GSPMD's business. Both must give the unsharded result."""
    assert jax.device_count() == 8
    kind = {"explicit": AxisType.Explicit, "auto": AxisType.Auto}[axis_type]
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(kind, kind))
    rng = np.random.default_rng(16)
    g = {
        "kernel": jnp.asarray(rng.standard_normal((16, 8)), jnp.float32),
        "stack": jnp.asarray(rng.standard_normal((4, 6, 8)), jnp.float32),
        "bias": jnp.asarray(rng.standard_normal(8), jnp.float32),
    }
    shardings = {
        "kernel": NamedSharding(mesh, PartitionSpec("data", "model")),
        "stack": NamedSharding(mesh, PartitionSpec("data", None, "model")),
        "bias": NamedSharding(mesh, PartitionSpec("model")),
    }
    g_sharded = jax.device_put(g, shardings)
    spec = {
        "kernel": norms.spectral(),
        "bias": norms.rms(),
        "stack": norms.rms_to_rms(fan_in_axes=(1,), fan_out_axes=(2,)),
    }
    for tx in (normtx.scale_by_dual_norm(spec), normtx.dualize(spec)):
        out, _ = jax.jit(tx.update)(g_sharded, tx.init(g_sharded))
        # Sharded reductions sum in another order: float32 agreement to ~1e-5 relative.
        chex.assert_trees_all_close(out, tx.update(g, tx.init(g))[0], rtol=1e-4, atol=1e-6)
        assert out["stack"].sharding.device_set == g_sharded["stack"].sharding.device_set


# ---- bad input ------------------------------------------------------------------------------


def test_matrix_norm_on_a_bias_fails_at_init_naming_the_path():
    with pytest.raises(ValueError, match=r"dualize: .*'dense/bias' has shape \(4,\)"):
        normtx.dualize(norms.spectral()).init(_params())


def test_norm_tree_mismatch_fails_at_init():
    with pytest.raises(ValueError, match="does not match the parameter tree"):
        normtx.scale_by_dual_norm({"dense": norms.rms()}).init(_params())


@pytest.mark.parametrize("lam", [0.0, -1.0, "big"])
def test_bad_sharpness_is_rejected_at_construction(lam):
    with pytest.raises(ValueError, match="sharpness"):
        normtx.scale_by_dual_norm(norms.rms(), sharpness=lam)


def test_bad_scope_is_rejected_at_construction():
    with pytest.raises(ValueError, match="scope must be one of"):
        normtx.scale_by_dual_norm(norms.rms(), scope="layer")
