"""``modular_norm_partition`` and ``modular_norm``: Prop. 7 over a whole network, by role."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

import normtx
from normtx import norms
from normtx.roles import Role

import oracles as orc

# Three leaves with three different norms and scales: an RMS -> RMS hidden kernel, an ℓ1 -> RMS
# embedding table and an RMS gain.
ROLES = {"w": "hidden", "e": "embedding", "b": "gain"}
SCALES = {"hidden": 1.0, "embedding": 3.0, "gain": 0.5}
S = {"w": 1.0, "e": 3.0, "b": 0.5}
# The exact (SVD) polar factor for the matrix roles, to compare with float64 oracles; the default
# Newton–Schulz backend is checked separately.
EXACT = {role: norms.rms_to_rms() for role in ("hidden", "attention", "conv", "head")}
ORACLES = {
    "w": orc.schatten_oracles(math.inf, lambda d_in, d_out: math.sqrt(d_in / d_out)),
    "e": orc.rows_oracles(2.0, lambda d_in, d_out: 1 / math.sqrt(d_out)),
    "b": orc.vector_oracles(2.0, lambda n: 1 / math.sqrt(n)),
}


def _grads(seed):
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal((5, 3)),
        "e": rng.standard_normal((6, 3)),
        "b": rng.standard_normal(3),
    }


def _f32(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def _modular_norm_oracle(tree):
    return max(S[k] * ORACLES[k][0](np.asarray(tree[k], np.float64)) for k in tree)


def _dual_oracle(g):
    return {k: ORACLES[k][1](g[k]) for k in g}


def _step(tx, g):
    return tx.update(g, tx.init(g))


def _partition(**kw):
    return normtx.modular_norm_partition(ROLES, scales=SCALES, norms=EXACT, **kw)


@pytest.mark.parametrize("lam", [0.5, 4.0])
def test_prop7_step_beats_random_feasible_points(lam):
    """Δ_l = -(η/s_l) dualize_l(G_l), η = (1/λ) Σ_k N_k†(G_k)/s_k solves eq. 32."""
    g = _grads(0)
    tx = _partition(sharpness=lam)
    out, state = tx.update(_f32(g), tx.init(_f32(g)))
    step = {k: -np.asarray(v, np.float64) for k, v in out.items()}  # the output is descended
    duals = _dual_oracle(g)
    eta = sum(duals[k] / S[k] for k in g) / lam
    np.testing.assert_allclose(state.global_eta, eta, rtol=1e-5)
    for k in g:
        np.testing.assert_allclose(state.dual_norms[k], duals[k], rtol=1e-5)
        np.testing.assert_allclose(
            step[k], -(eta / S[k]) * ORACLES[k][2](g[k]), rtol=1e-4, atol=1e-6
        )
    orc.assert_solves_eq32(g, step, _modular_norm_oracle, lam, eta, seed=1)


def test_modular_norm_dual_is_the_sum_formula_and_agrees_with_the_partition():
    g = _grads(2)
    mod = normtx.modular_norm(ROLES, scales=SCALES, norms=EXACT)
    duals = _dual_oracle(g)
    np.testing.assert_allclose(mod.dual_norm(_f32(g)), sum(duals[k] / S[k] for k in g), rtol=1e-5)
    np.testing.assert_allclose(mod.norm(_f32(g)), _modular_norm_oracle(g), rtol=1e-5)
    tx = _partition(sharpness=2.0)
    _, state = tx.update(_f32(g), tx.init(_f32(g)))
    np.testing.assert_allclose(state.global_eta, mod.dual_norm(_f32(g)) / 2.0, rtol=1e-6)
    # The unit step is the modular norm's dualization: modular norm 1, <G, T> = the dual norm.
    unit, _ = _partition(step="unit").update(_f32(g), tx.init(_f32(g)))
    chex.assert_trees_all_close(unit, mod.dualize(_f32(g)), rtol=1e-6)
    np.testing.assert_allclose(_modular_norm_oracle(unit), 1.0, rtol=1e-5)
    inner = sum(np.vdot(g[k], np.asarray(unit[k], np.float64)) for k in g)
    np.testing.assert_allclose(inner, sum(duals[k] / S[k] for k in g), rtol=1e-5)


def test_scanned_leaf_is_one_matrix_per_layer():
    rng = np.random.default_rng(3)
    g = {"stack": rng.standard_normal((3, 4, 6)), "b": rng.standard_normal((3, 6))}
    roles = {"stack": "scanned/hidden", "b": "scanned/bias"}
    tx = normtx.modular_norm_partition(roles, step="unit", norms=EXACT)
    out, state = tx.update(_f32(g), tx.init(_f32(g)))
    rms_to_rms = orc.schatten_oracles(math.inf, lambda d_in, d_out: math.sqrt(d_in / d_out))
    rms = orc.vector_oracles(2.0, lambda n: 1 / math.sqrt(n))
    for i in range(3):
        np.testing.assert_allclose(out["stack"][i], rms_to_rms[2](g["stack"][i]), rtol=1e-4)
        np.testing.assert_allclose(out["b"][i], rms[2](g["b"][i]), rtol=1e-5)
    # Dual norm of a stack = sum over its layers (the leaf is a small modular norm, unit scales).
    np.testing.assert_allclose(
        state.dual_norms["stack"], sum(rms_to_rms[1](m) for m in g["stack"]), rtol=1e-5
    )


def test_default_matrix_norm_uses_the_newton_schulz_polar_express_backend():
    rng = np.random.default_rng(12)
    g = _f32({"w": rng.standard_normal((12, 5)), "e": rng.standard_normal((6, 5))})
    tx = normtx.modular_norm_partition({"w": "hidden", "e": "embedding"}, step="unit")
    out, _ = _step(tx, g)
    ns = normtx.linalg.newton_schulz(g["w"], steps=5, coefficients="polar_express")
    np.testing.assert_allclose(out["w"], math.sqrt(5 / 12) * ns, rtol=1e-5, atol=1e-7)
    # The embedding (ℓ1 -> RMS) needs no polar factor: exact.
    np.testing.assert_allclose(out["e"], ORACLES["e"][2](np.asarray(g["e"])), rtol=1e-5)


def test_attention_kernels_use_their_dims():
    rng = np.random.default_rng(4)
    qkv = rng.standard_normal((8, 2, 4))  # (d_model, heads, d_head)
    out = rng.standard_normal((2, 4, 8))  # (heads, d_head, d_model)
    g = {"attn": {"query": {"kernel": qkv}, "out": {"kernel": out}}}
    rms_to_rms = orc.schatten_oracles(math.inf, lambda d_in, d_out: math.sqrt(d_in / d_out))
    upd, _ = _step(
        normtx.modular_norm_partition(
            {"attn": {"query": {"kernel": "attention"}, "out": {"kernel": "attention"}}},
            step="unit",
            norms=EXACT,
        ),
        _f32(g),
    )
    np.testing.assert_allclose(
        upd["attn"]["query"]["kernel"],
        rms_to_rms[2](qkv.reshape(8, 8)).reshape(8, 2, 4),
        rtol=1e-4,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        upd["attn"]["out"]["kernel"],
        rms_to_rms[2](out.reshape(8, 8)).reshape(2, 4, 8),
        rtol=1e-4,
        atol=1e-6,
    )
    # Heads as a batch axis: one (d_model, d_head) matrix per head.
    tx = normtx.modular_norm_partition(
        {"attn": {"query": {"kernel": Role("attention", (0,), (2,), batch_axes=(1,))}}},
        step="unit",
        norms=EXACT,
    )
    upd, _ = _step(tx, _f32({"attn": {"query": {"kernel": qkv}}}))
    for h in range(2):
        np.testing.assert_allclose(
            upd["attn"]["query"]["kernel"][:, h], rms_to_rms[2](qkv[:, h]), rtol=1e-4, atol=1e-6
        )


def test_norm_none_passes_through_and_zero_gradient_gives_zero():
    g = _f32(_grads(5))
    tx = normtx.modular_norm_partition(ROLES, norms={**EXACT, "gain": None}, step="dual_norm")
    out, state = tx.update(g, tx.init(g))
    chex.assert_trees_all_close(out["b"], g["b"])
    assert float(state.dual_norms["b"]) == 0.0
    zero = jax.tree.map(jnp.zeros_like, g)
    out, state = _partition().update(zero, _partition().init(zero))
    for leaf in jax.tree.leaves(out):
        assert not np.any(np.isnan(leaf))
        assert not np.any(leaf)
    assert float(state.global_eta) == 0.0


def test_dtypes_are_kept():
    g = {
        "w": jnp.ones((5, 3), jnp.bfloat16),
        "e": jnp.arange(18, dtype=jnp.float32).reshape(6, 3),
        "b": jnp.ones(3, jnp.float16),
    }
    out, state = _partition().update(g, _partition().init(g))
    assert {k: v.dtype for k, v in out.items()} == {k: v.dtype for k, v in g.items()}
    assert state.global_eta.dtype == jnp.float32
    assert {v.dtype for v in jax.tree.leaves(state.dual_norms)} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("step", ["dual_norm", "unit"])
def test_jit_equals_eager(step):
    g = _f32(_grads(6))
    tx = _partition(step=step, sharpness=3.0)
    state = tx.init(g)
    eager = tx.update(g, state)
    jitted = jax.jit(tx.update)(g, state)
    chex.assert_trees_all_close(eager, jitted, rtol=1e-6, atol=1e-7)


def test_sharded_params_on_a_mesh_of_8_devices():
    mesh = jax.make_mesh((8,), ("x",))
    rng = np.random.default_rng(7)
    g = _f32(
        {
            "w": rng.standard_normal((16, 8)),
            "e": rng.standard_normal((32, 8)),
            "b": rng.standard_normal(8),
        }
    )
    specs = {"w": PartitionSpec("x", None), "e": PartitionSpec("x", None), "b": PartitionSpec()}
    sharded = jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), g, specs)
    tx = _partition(sharpness=2.0)
    state = tx.init(sharded)
    out, new_state = jax.jit(tx.update)(sharded, state)
    ref, ref_state = tx.update(g, tx.init(g))
    chex.assert_trees_all_close(out, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_state.global_eta, ref_state.global_eta, rtol=1e-6)
    assert len(out["w"].sharding.device_set) == 8  # the update stays on the mesh


def test_inject_hyperparams_sharpness():
    g = _f32(_grads(8))
    tx = optax.inject_hyperparams(normtx.modular_norm_partition, static_args=("step",))(
        ROLES, scales=SCALES, norms=EXACT, sharpness=2.0
    )
    state = tx.init(g)
    out, state = tx.update(g, state)
    ref, _ = _partition(sharpness=2.0).update(g, _partition().init(g))
    chex.assert_trees_all_close(out, ref, rtol=1e-6)
    state.hyperparams["sharpness"] = jnp.asarray(4.0)
    out4, _ = tx.update(g, state)
    chex.assert_trees_all_close(out4, jax.tree.map(lambda x: x / 2, ref), rtol=1e-6)


def test_sharpness_schedule():
    g = _f32(_grads(9))
    tx = _partition(sharpness=lambda count: 1.0 + count)
    state = tx.init(g)
    _, state = tx.update(g, state)
    eta0 = float(state.global_eta)
    _, state = tx.update(g, state)
    np.testing.assert_allclose(float(state.global_eta), eta0 / 2, rtol=1e-6)


def test_escape_velocity_measures_the_partitions_norm():
    """``escape_velocity_lr(norm=modular_norm(...))`` reads the dual norm the partition uses."""
    g = _f32(_grads(10))
    params = jax.tree.map(lambda x: 0.1 * x, g)
    mod = normtx.modular_norm(ROLES, scales=SCALES, norms=EXACT)
    tx = normtx.escape_velocity_lr(_partition(step="unit"), norm=mod, init_lr=1e-3)
    state = tx.init(params)
    moved = jax.tree.map(lambda p, d: p - 0.5 * d, params, g)
    _, state = tx.update(g, state, moved)
    # <g, w_0 - w_t> / Σ_l N_l†(g_l)/s_l, floored at η_0 (anthology eq. 28 for this norm).
    inner = sum(np.vdot(np.asarray(g[k], np.float64), 0.5 * np.asarray(g[k])) for k in g)
    expected = max(1e-3, inner / sum(_dual_oracle(g)[k] / S[k] for k in g))
    np.testing.assert_allclose(state.eta, expected, rtol=1e-5)


def test_bad_hyperparameters_fail_at_construction():
    with pytest.raises(ValueError, match="step must be one of"):
        normtx.modular_norm_partition(step="exact")
    with pytest.raises(ValueError, match="sharpness must be > 0"):
        normtx.modular_norm_partition(sharpness=0.0)
    with pytest.raises(ValueError, match=r"scales\['gain'\] must be a number > 0"):
        normtx.modular_norm_partition(scales={"gain": -1.0})
    with pytest.raises(ValueError, match="unknown role 'hiden' in norms"):
        normtx.modular_norm_partition(norms={"hiden": norms.rms()})
    with pytest.raises(ValueError, match="masses= is only used with scales='mass'"):
        normtx.modular_norm_partition(masses={"hidden": 2.0})
    with pytest.raises(ValueError, match="not both"):
        normtx.modular_norm_partition(ROLES, head="w")


def test_bad_leaves_fail_at_init_naming_the_path():
    g = _f32(_grads(11))
    with pytest.raises(ValueError, match=r"modular_norm_partition: leaf 'b' \(shape \(3,\)"):
        normtx.modular_norm_partition(ROLES, norms={"gain": norms.spectral()}).init(g)
    with pytest.raises(ValueError, match=r"roles without a parameter: \['x'\]"):
        normtx.modular_norm_partition({"w": "hidden", "e": "embedding", "x": "gain"}).init(g)
    with pytest.raises(ValueError, match=r"cannot classify 3 leaf/leaves"):
        normtx.modular_norm_partition().init(g)
