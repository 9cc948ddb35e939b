"""``target_rms``: the modular norm measured relative to each leaf's RMS at init (Prop. 7 again)."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import normtx
from normtx import norms

import oracles as orc

ROLES = {"w": "hidden", "e": "embedding", "b": "gain", "z": "bias"}
S = {"w": 1.0, "e": 3.0, "b": 0.5, "z": 2.0}
SCALES = {"hidden": 1.0, "embedding": 3.0, "gain": 0.5, "bias": 2.0}
EXACT = {"hidden": norms.rms_to_rms()}
ORACLES = {
    "w": orc.schatten_oracles(math.inf, lambda d_in, d_out: math.sqrt(d_in / d_out)),
    "e": orc.rows_oracles(2.0, lambda d_in, d_out: 1 / math.sqrt(d_out)),
    "b": orc.vector_oracles(2.0, lambda n: 1 / math.sqrt(n)),
    "z": orc.vector_oracles(2.0, lambda n: 1 / math.sqrt(n)),
}


def _init_params():
    """Flax-like init: embedding rows of RMS ~1/√d, a fan-in kernel, gains 0.7, zero biases."""
    rng = np.random.default_rng(0)
    return {
        "w": rng.standard_normal((5, 3)) / math.sqrt(5),
        "e": rng.standard_normal((6, 4)) / math.sqrt(4),
        "b": np.full(3, 0.7),
        "z": np.zeros(3),
    }


def _grads(seed):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(v.shape) for k, v in _init_params().items()}


def _f32(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def _r_oracle(params):
    """r_l: the float64 RMS at init for embedding, gain and bias (1 if it is 0), 1 for hidden."""
    rms = {k: float(np.sqrt(np.mean(np.square(v)))) for k, v in params.items()}
    return {k: (rms[k] if k != "w" and rms[k] > 0 else 1.0) for k in params}


def _partition(**kw):
    return normtx.modular_norm_partition(ROLES, scales=SCALES, norms=EXACT, **kw)


def test_unit_step_is_r_times_the_unit_direction():
    """Each leaf's step is r_l dualize_l(G_l)/s_l: an embedding row moves by r_l in RMS."""
    p0, g = _init_params(), _grads(1)
    tx = _partition(step="unit", target_rms="init")
    state = tx.init(_f32(p0))
    r = _r_oracle(p0)
    assert r["z"] == 1.0  # zero init: the norm's own unit
    assert r["w"] == 1.0  # hidden kernels are not rescaled
    for k in p0:
        assert state.target_rms[k].dtype == jnp.float32
        np.testing.assert_allclose(state.target_rms[k], r[k], rtol=1e-6)
    out, _ = tx.update(_f32(g), state)
    for k in g:
        np.testing.assert_allclose(out[k], r[k] * ORACLES[k][2](g[k]) / S[k], rtol=1e-5, atol=1e-7)
    # every row of the embedding's step has RMS r_e / s_e
    row_rms = np.sqrt(np.mean(np.square(np.asarray(out["e"], np.float64)), axis=1))
    np.testing.assert_allclose(row_rms, r["e"] / S["e"], rtol=1e-5)
    # the zero-initialised bias is still trained: its step is the unrescaled one, not zero
    np.testing.assert_allclose(np.sqrt(np.mean(np.square(out["z"]))), 1 / S["z"], rtol=1e-5)


@pytest.mark.parametrize("lam", [0.5, 4.0])
def test_prop7_step_solves_eq32_for_the_rescaled_norm(lam):
    """Δ_l = -(η/s_l) r_l dualize_l(G_l), η = (1/λ) Σ_k r_k N_k†(G_k)/s_k minimises
    <G, Δ> + (λ/2) (max_l s_l N_l(Δ_l)/r_l)², against random and nearby points."""
    p0, g = _init_params(), _grads(2)
    r = _r_oracle(p0)
    tx = _partition(sharpness=lam, target_rms="init")
    out, state = tx.update(_f32(g), tx.init(_f32(p0)))
    step = {k: -np.asarray(v, np.float64) for k, v in out.items()}
    duals = {k: r[k] * ORACLES[k][1](g[k]) for k in g}  # the rescaled norm's dual norms
    eta = sum(duals[k] / S[k] for k in g) / lam
    np.testing.assert_allclose(state.global_eta, eta, rtol=1e-5)
    for k in g:
        np.testing.assert_allclose(state.dual_norms[k], duals[k], rtol=1e-5)

    def norm(d):  # the rescaled modular norm max_l s_l N_l(d_l)/r_l
        return max(S[k] * ORACLES[k][0](d[k]) / r[k] for k in d)

    orc.assert_solves_eq32(g, step, norm, lam, eta, seed=3)


def test_a_number_per_role_and_init_for_a_matrix_role():
    """``{'embedding': 0.25}`` is r = 0.25 for every embedding leaf; ``{'hidden': 'init'}``
    measures the kernel; roles not named keep r = 1."""
    p0, g = _init_params(), _grads(4)
    tx = _partition(step="unit", target_rms={"embedding": 0.25, "hidden": "init"})
    out, state = tx.update(_f32(g), tx.init(_f32(p0)))
    r = {"w": float(np.sqrt(np.mean(np.square(p0["w"])))), "e": 0.25, "b": 1.0, "z": 1.0}
    for k in g:
        np.testing.assert_allclose(state.target_rms[k], r[k], rtol=1e-6)
        np.testing.assert_allclose(out[k], r[k] * ORACLES[k][2](g[k]) / S[k], rtol=1e-5, atol=1e-7)


def test_modular_descent_and_escape_velocity_use_the_rescaled_norm():
    """modular_descent's first step is -lr r_l dualize_l(g_l)/s_l; with escape velocity the
    rule's denominator is Σ_k r_k N_k†(ĝ_k)/s_k (eq. 28 in the rescaled norm), ĝ = g/max|g|."""
    p0, g = _init_params(), _grads(5)
    r = _r_oracle(p0)
    kw = {"roles": ROLES, "scales": SCALES, "norms": EXACT, "target_rms": "init"}
    tx = normtx.optimizers.modular_descent(0.1, momentum=0.0, **kw)
    out, _ = tx.update(_f32(g), tx.init(_f32(p0)), _f32(p0))
    for k in g:
        np.testing.assert_allclose(
            out[k], -0.1 * r[k] * ORACLES[k][2](g[k]) / S[k], rtol=1e-5, atol=1e-7
        )
    tx = normtx.optimizers.modular_descent(1.0, escape_velocity=True, **kw)
    _, state = tx.update(_f32(g), tx.init(_f32(p0)), _f32(p0))
    top = max(np.abs(v).max() for v in g.values())
    den = sum(r[k] * ORACLES[k][1](g[k] / top) / S[k] for k in g)
    np.testing.assert_allclose(state[0].denominator, den, rtol=1e-5)


def test_jit_state_structure_checkpoint_and_dtypes():
    p0, g = _f32(_init_params()), _f32(_grads(6))
    tx = normtx.optimizers.modular_descent(0.1, roles=ROLES, norms=EXACT, target_rms="init")
    state = jax.jit(tx.init)(p0)
    chex.assert_trees_all_equal_structs(tx.init(p0), state)
    (part,) = [s for s in state if isinstance(s, normtx.transforms.ModularNormPartitionState)]
    assert jax.tree.structure(part.target_rms) == jax.tree.structure(p0)
    # a checkpoint (host arrays, restored into the structure) resumes to the same update
    leaves, treedef = jax.tree.flatten(state)
    restored = jax.tree.unflatten(treedef, [np.asarray(x) for x in leaves])
    eager, s1 = tx.update(g, state, p0)
    jitted, s2 = jax.jit(tx.update)(g, restored, p0)
    chex.assert_trees_all_close(eager, jitted, rtol=1e-6)
    chex.assert_trees_all_close(s1, s2, rtol=1e-6)
    # each leaf keeps its dtype (r is float32 whatever the leaf's)
    p16 = {**p0, "e": p0["e"].astype(jnp.bfloat16)}
    g16 = {**g, "e": g["e"].astype(jnp.bfloat16)}
    out16, s16 = jax.jit(tx.update)(g16, tx.init(p16), p16)
    assert out16["e"].dtype == jnp.bfloat16
    assert out16["w"].dtype == jnp.float32
    (part16,) = [s for s in s16 if isinstance(s, normtx.transforms.ModularNormPartitionState)]
    assert part16.target_rms["e"].dtype == jnp.float32
    # a zero gradient: a zero update, no NaN
    zero, _ = tx.update(jax.tree.map(jnp.zeros_like, g), state, p0)
    for k, v in zero.items():
        assert not np.any(np.asarray(v, np.float32)), k
    # off (the default): no recorded r, the partition's state as before
    (off,) = [
        s
        for s in normtx.optimizers.modular_descent(0.1, roles=ROLES).init(p0)
        if isinstance(s, normtx.transforms.ModularNormPartitionState)
    ]
    assert off.target_rms is None


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("mean", r"target_rms must be None, 'init' or a dict"),
        (0.5, r"target_rms must be None, 'init' or a dict"),
        ({"hiden": "init"}, r"target_rms names 'hiden', which is not a role"),
        ({"frozen": "init"}, r"target_rms names 'frozen', which is not a role"),
        ({"embedding": 0.0}, r"target_rms\['embedding'\] must be 'init' or a finite number > 0"),
        ({"embedding": -1}, r"target_rms\['embedding'\] must be 'init' or a finite number > 0"),
        ({"embedding": math.inf}, r"target_rms\['embedding'\] must be 'init' or a finite"),
        ({"embedding": True}, r"target_rms\['embedding'\] must be 'init' or a finite"),
        ({"embedding": "first"}, r"target_rms\['embedding'\] must be 'init' or a finite"),
    ],
)
def test_bad_target_rms_fails_at_construction(value, match):
    with pytest.raises(ValueError, match="modular_norm_partition: " + match):
        normtx.modular_norm_partition(target_rms=value)
    with pytest.raises(ValueError, match=match):
        normtx.optimizers.modular_descent(0.1, target_rms=value)
