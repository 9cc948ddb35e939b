"""The modular norm over whole trees (anthology Prop. 7) and how specs map onto parameter trees."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from normtx import norms

import oracles as orc

LEAF_ORACLES = {
    "w": (norms.spectral(), orc.schatten_oracles(math.inf)),
    "e": (norms.l1_to_rms(), orc.rows_oracles(2.0, lambda d_in, d_out: 1 / math.sqrt(d_out))),
    "b": (norms.rms(), orc.vector_oracles(2.0, lambda n: 1 / math.sqrt(n))),
}
SCALES = {"w": 1.0, "e": 3.0, "b": 0.5}


def _tree(seed):
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal((4, 3)),
        "e": rng.standard_normal((6, 3)),
        "b": rng.standard_normal(3),
    }


def _f32(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def _modular():
    return norms.modular({k: n for k, (n, _) in LEAF_ORACLES.items()}, scales=SCALES)


def _oracle_norm(tree):
    return max(SCALES[k] * LEAF_ORACLES[k][1][0](tree[k]) for k in tree)


def test_modular_norm_dual_and_dualize_match_the_formulas():
    g = _tree(0)
    mod = _modular()
    np.testing.assert_allclose(mod.norm(_f32(g)), _oracle_norm(g), rtol=2e-5)
    dual = sum(LEAF_ORACLES[k][1][1](g[k]) / SCALES[k] for k in g)
    np.testing.assert_allclose(mod.dual_norm(_f32(g)), dual, rtol=2e-5)
    t = mod.dualize(_f32(g))
    for k in g:
        np.testing.assert_allclose(
            t[k], LEAF_ORACLES[k][1][2](g[k]) / SCALES[k], rtol=1e-4, atol=1e-6
        )
    np.testing.assert_allclose(_oracle_norm(jax.tree.map(np.asarray, t)), 1.0, rtol=2e-5)


@pytest.mark.parametrize("lam", [0.5, 7.0])
def test_prop7_step_beats_feasible_points(lam):
    """Δ_l = -(η/s_l) dualize_l(G_l), η = (1/λ) Σ_k ‖G_k‖†/s_k minimises eq. 32."""
    g = _tree(1)
    mod = _modular()
    eta = float(mod.dual_norm(_f32(g))) / lam
    step = jax.tree.map(lambda t: -eta * np.asarray(t, np.float64), mod.dualize(_f32(g)))
    orc.assert_solves_eq32(g, step, _oracle_norm, lam, eta, seed=2)


def test_stacked_polar_factors_equal_the_leaf_by_leaf_ones(monkeypatch):
    """The accelerator path, forced on CPU: same-shape and transposed kernels stacked into one
    Newton–Schulz program give the CPU path's directions and duals, and both the float64
    polar factors (Prop. 5) within Newton–Schulz accuracy."""
    rng = np.random.default_rng(3)
    shapes = {"q": (8, 8), "k": (8, 8), "up": (8, 16), "down": (16, 8), "w": (5, 3), "b": (8,)}
    g = {k: rng.standard_normal(s) for k, s in shapes.items()}
    hidden = norms.rms_to_rms(polar="newton_schulz")
    mod = norms.modular(lambda path, x: norms.rms() if x.ndim == 1 else hidden)

    def programs():  # Newton–Schulz programs in the traced computation
        return str(jax.make_jaxpr(mod.duals_and_directions)(_f32(g))).count("name=_newton_schulz")

    run = jax.jit(lambda t: mod.duals_and_directions(t))
    leafwise = run(_f32(g))
    assert programs() == 4  # on CPU: (q, k) stacked; up; down; w (tall ones not turned)
    monkeypatch.setattr(norms.tree, "_turn_tall_matrices", lambda mesh: True)
    assert programs() == 3  # (q, k); (up, downᵀ); w
    run = jax.jit(lambda t: mod.duals_and_directions(t))  # a fresh trace takes the stacked path
    stacked = run(_f32(g))
    chex.assert_trees_all_close(stacked, leafwise, rtol=1e-5, atol=1e-6)
    ora = orc.schatten_oracles(math.inf)
    (duals, directions), keys = stacked, list(g)  # dict leaves in sorted-key order
    for k, d, t in zip(sorted(keys), duals, directions, strict=True):
        if g[k].ndim == 2:
            d_in, d_out = g[k].shape
            f = math.sqrt(d_out / d_in)
            np.testing.assert_allclose(t, f * ora[2](g[k]), atol=0.15 * f)  # 5 NS steps
            np.testing.assert_allclose(d, float(np.sum(g[k] * np.asarray(t))), rtol=1e-5)


def test_tree_norm_is_the_max_and_tree_dual_norm_the_sum():
    g = _f32(_tree(3))
    spec = {k: n for k, (n, _) in LEAF_ORACLES.items()}
    leaf_norms = [LEAF_ORACLES[k][0].norm(g[k]) for k in g]
    leaf_duals = [LEAF_ORACLES[k][0].dual_norm(g[k]) for k in g]
    np.testing.assert_allclose(norms.tree_norm(spec, g), max(leaf_norms), rtol=1e-7)
    np.testing.assert_allclose(norms.tree_dual_norm(spec, g), sum(leaf_duals), rtol=1e-6)


def test_prop3_global_sign_descent_dual_is_the_global_l1_norm():
    g = _f32(_tree(4))
    total = sum(np.abs(np.asarray(v)).sum() for v in jax.tree.leaves(g))
    np.testing.assert_allclose(norms.tree_dual_norm(norms.linf(), g), total, rtol=1e-6)


def test_prefix_tree_with_none_leaves_the_subtree_out():
    g = _f32({"a": {"w": np.ones((2, 2)), "b": np.ones(2)}, "c": np.ones((3, 3))})
    mod = norms.modular({"a": None, "c": norms.spectral()})
    out = mod.dualize(g)
    chex.assert_trees_all_equal(out["a"], g["a"])
    np.testing.assert_allclose(mod.dual_norm(g), 3.0, rtol=1e-6)  # nuclear norm of ones(3, 3)


def test_callable_spec_receives_slash_joined_paths():
    seen = []

    def spec(path, leaf):
        seen.append(path)
        return norms.rms() if leaf.ndim == 1 else norms.spectral()

    g = _f32({"layer": {"kernel": np.ones((2, 2)), "bias": np.ones(2)}})
    norms.modular(spec).dualize(g)
    assert sorted(seen) == ["layer/bias", "layer/kernel"]


def test_nnx_state_paths_drop_the_value_attribute():
    model = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    triples = norms.resolve_norms(
        lambda p, x: norms.rms() if x.ndim == 1 else norms.spectral(), state
    )
    assert sorted(p for p, _, _ in triples) == ["bias", "kernel"]


def test_mismatched_norm_tree_is_a_clear_error():
    g = _f32({"w": np.ones((2, 2)), "b": np.ones(2)})
    with pytest.raises(ValueError, match=r"does not match the parameter tree.*\['b', 'w'\]"):
        norms.modular({"w": norms.spectral(), "x": norms.rms()}).dual_norm(g)


def test_non_norm_entries_in_the_spec_are_rejected():
    g = _f32({"w": np.ones((2, 2))})
    with pytest.raises(ValueError, match=r"entry 'w'.*'spectral'"):
        norms.modular({"w": "spectral"}).dual_norm(g)
    with pytest.raises(ValueError, match="callable returned 3"):
        norms.modular(lambda p, x: 3).dual_norm(g)


def test_leaf_errors_name_the_path_shape_and_dtype():
    g = {"enc": {"bias": jnp.ones(5)}}
    with pytest.raises(ValueError, match=r"'enc/bias' has shape \(5,\)"):
        norms.modular(norms.spectral()).dual_norm(g)
    with pytest.raises(ValueError, match=r"'enc/bias' \(shape \(5,\), int32\)"):
        norms.modular(norms.rms()).dual_norm({"enc": {"bias": jnp.ones(5, jnp.int32)}})


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_scales_must_be_positive(bad):
    with pytest.raises(ValueError, match="> 0"):
        norms.modular(norms.rms(), scales=bad)
    with pytest.raises(ValueError, match=r"scale .* for leaf 'b'"):
        norms.modular(norms.rms(), scales={"b": bad}).dual_norm({"b": jnp.ones(2)})


def test_empty_tree_has_zero_norms():
    assert float(norms.modular(norms.rms()).norm({})) == 0.0
    assert float(norms.tree_dual_norm(norms.rms(), {})) == 0.0
