"""Ready-made optimizers: each equals its formula, works with inject_hyperparams, and trains."""

from __future__ import annotations

import json
import math
import pathlib
import string
import textwrap
import warnings

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
from normtx._pytree import flatten_with_paths
from normtx.optimizers import modular_descent

import oracles as orc

EXACT = {role: norms.rms_to_rms() for role in ("hidden", "attention", "conv", "head")}
RMS_TO_RMS = orc.schatten_oracles(math.inf, lambda d_in, d_out: math.sqrt(d_in / d_out))[2]
RMS = orc.vector_oracles(2.0, lambda n: 1 / math.sqrt(n))[2]
ROWS = orc.rows_oracles(2.0, lambda d_in, d_out: 1 / math.sqrt(d_out))[2]  # ℓ1 -> RMS


def _f32(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def _mlp_tree(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return {
        "Dense_0": {"kernel": scale * rng.standard_normal((6, 4)), "bias": rng.standard_normal(4)},
        "Dense_1": {"kernel": scale * rng.standard_normal((4, 3)), "bias": rng.standard_normal(3)},
    }


def _run(tx, grads, params, *, jit=False):
    """Applies ``tx`` to a list of gradients; returns the list of updates (float64)."""
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    out = []
    for g in grads:
        u, state = update(g, state, params)
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
    (u,) = _run(normtx.optimizers.spectral_descent(0.1, polar="svd"), [_f32(g)], _f32(g))
    expected = jax.tree.map(
        lambda x: -0.1 * (orc.polar(x) if x.ndim == 2 else x / np.linalg.norm(x)), g
    )
    chex.assert_trees_all_close(u, expected, rtol=1e-4, atol=1e-6)
    # The default polar factor is 5 Newton–Schulz steps of the Polar Express schedule.
    (u,) = _run(normtx.optimizers.spectral_descent(0.1), [_f32(g)], _f32(g))
    k = _f32(g)["Dense_0"]["kernel"]
    np.testing.assert_allclose(
        u["Dense_0"]["kernel"], -0.1 * normtx.linalg.newton_schulz(k), rtol=1e-5, atol=1e-7
    )
    with pytest.raises(ValueError, match=r"spectral_descent: leaf 'w' \(shape \(2, 3, 4\)"):
        normtx.optimizers.spectral_descent(0.1).init({"w": jnp.ones((2, 3, 4), jnp.float32)})


NO_MOMENTUM = {  # optimizer -> the oracle of its unit step for one gradient leaf
    "sign_descent": np.sign,
    "normalized_sgd": lambda x: x / np.linalg.norm(x),
    "spectral_descent": lambda x: orc.polar(x) if x.ndim == 2 else x / np.linalg.norm(x),
}


@pytest.mark.parametrize("name", list(NO_MOMENTUM))
def test_momentum_zero_keeps_no_buffer_so_a_nan_step_does_not_poison_the_next(name):
    """Issue 15, item 9: ``momentum=0`` builds no trace, so the state holds no per-parameter
    buffer in which a NaN gradient would stay (``0 · NaN = NaN``): the step after a NaN step is the
    oracle's step for its own gradient. With momentum the NaN stays, as in any EMA."""
    kw = {"polar": "svd"} if name == "spectral_descent" else {}
    params = _f32(_mlp_tree(9))
    nan = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), params)
    g = _mlp_tree(2)
    tx = getattr(normtx.optimizers, name)(0.1, **kw)
    state = tx.init(params)
    assert not [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
    (u1, u2) = _run(tx, [nan, _f32(g)], params, jit=True)
    assert all(np.isnan(x).all() for x in jax.tree.leaves(u1))  # the bad step is visible
    chex.assert_trees_all_close(
        u2, jax.tree.map(lambda x: -0.1 * NO_MOMENTUM[name](x), g), rtol=1e-5, atol=1e-7
    )
    with_momentum = getattr(normtx.optimizers, name)(0.1, momentum=0.5, **kw)
    (_, u2) = _run(with_momentum, [nan, _f32(g)], params, jit=True)
    assert all(np.isnan(x).all() for x in jax.tree.leaves(u2))


def test_modular_descent_is_momentum_then_the_unit_modular_step():
    grads = [_mlp_tree(s) for s in range(3)]
    params = _f32(_mlp_tree(7))
    tx = modular_descent(0.1, momentum=0.5, weight_decay=0.01, norms=EXACT)
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
        modular_descent(1.0, momentum=0.0, step="dual_norm", sharpness=2.0, norms=EXACT),
        [_f32(g)],
        _f32(g),
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
    tx = modular_descent(1.0, momentum=0.0, escape_velocity=True, init_lr=1e-2, norms=EXACT)
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


def _hidden_stack_tree(seed):
    """Two same-shape hidden kernels, a head and biases: stacks of Newton–Schulz programs."""
    rng = np.random.default_rng(seed)
    shapes = {"Dense_0": (8, 8), "Dense_1": (8, 8), "Dense_2": (8, 16), "head": (16, 5)}
    return {
        k: {"kernel": rng.standard_normal(s) / math.sqrt(s[0]), "bias": rng.standard_normal(s[1])}
        for k, s in shapes.items()
    }


@pytest.mark.parametrize("step", ["unit", "dual_norm"])
def test_modular_descent_escape_velocity_is_the_composition_of_its_parts(step):
    """``modular_descent(escape_velocity=True)`` measures the raw gradient's dual norms inside the
    partition's own polar-factor programs; the oracle is the same optimizer written from public
    parts, where ``escape_velocity_lr`` computes those dual norms on its own (a second set of
    Newton–Schulz programs). Same η trajectory and weights over 25 noisy steps: the fused path
    computes every polar factor with the same per-matrix operations, so only float32 rounding of
    the sums may differ."""
    params = _f32(_hidden_stack_tree(0))
    fused = modular_descent(
        1.0, momentum=0.9, escape_velocity=True, weight_decay=0.01, step=step, init_lr=1e-6
    )  # escape_velocity_lr's default η_0 (modular_descent's own is 1e-3)
    is_matrix = lambda p: jax.tree.map(lambda r: r.is_matrix, normtx.roles.infer(p))  # noqa: E731
    parts = optax.chain(
        normtx.escape_velocity_lr(
            optax.chain(
                optax.trace(decay=0.9),
                optax.scale(0.1),
                normtx.modular_norm_partition(step=step),
                optax.add_decayed_weights(0.01, is_matrix),
            ),
            norm=normtx.modular_norm(),
        ),
        optax.scale_by_learning_rate(1.0),
    )
    states = [fused.init(params), parts.init(params)]
    ps = [params, params]
    updates = [jax.jit(fused.update), jax.jit(parts.update)]
    for t in range(25):
        g = _f32(jax.tree.map(lambda x, t=t: x + 0.3 * t, _hidden_stack_tree(100 + t)))
        for i in range(2):
            u, states[i] = updates[i](g, states[i], ps[i])
            ps[i] = optax.apply_updates(ps[i], u)
        etas = [float(optax.tree_utils.tree_get(st, "eta")) for st in states]
        np.testing.assert_allclose(etas[0], etas[1], rtol=1e-5)
    assert etas[0] > 1e-4  # the step size did grow from 1e-6: the comparison saw the rule act
    chex.assert_trees_all_close(ps[0], ps[1], rtol=1e-5, atol=1e-6)


def test_escape_velocity_adds_no_newton_schulz_program_to_modular_descent():
    """The gradient's nuclear norms (the rule's dual norm) are computed in the same stacked
    programs as the momentum's polar factors: one Newton–Schulz program per matrix shape, with
    escape velocity or without."""
    params = _f32(_hidden_stack_tree(0))

    def programs(tx):
        state = tx.init(params)
        jaxpr = jax.make_jaxpr(tx.update)(params, state, params)
        return str(jaxpr).count("name=_newton_schulz")

    plain = programs(modular_descent(0.1, momentum=0.9))
    assert plain == 3  # (8, 8) x 2 stacked; (8, 16); (16, 5)
    assert programs(modular_descent(1.0, momentum=0.9, escape_velocity=True)) == plain


@pytest.mark.parametrize("constrained", [True, False])
def test_scion_updates(constrained):
    grads = [_mlp_tree(s) for s in range(3)]
    params = _f32(_mlp_tree(8))
    tx = normtx.optimizers.scion(
        0.1, radius=3.0, momentum=0.6, constrained=constrained, norms=EXACT
    )
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
    tx = normtx.optimizers.scion(0.3, radius=2.0, momentum=0.0, norms=EXACT)
    mod = normtx.modular_norm(norms=EXACT)
    state = tx.init(params)
    for s in range(6):
        u, state = tx.update(_f32(_mlp_tree(s + 10)), state, params)
        params = optax.apply_updates(params, u)
        assert float(mod.norm(params)) <= 2.0 * (1 + 1e-5)


def _muon_tree(seed):
    rng = np.random.default_rng(seed)
    return {
        "Embed_0": {"embedding": rng.standard_normal((10, 8))},
        "Dense_0": {"kernel": rng.standard_normal((8, 16)), "bias": rng.standard_normal(16)},
        "Dense_1": {"kernel": rng.standard_normal((16, 12)), "bias": rng.standard_normal(12)},
        "Dense_2": {"kernel": rng.standard_normal((12, 4)), "bias": rng.standard_normal(4)},
    }


HIDDEN = ("Dense_0", "Dense_1")  # Dense_2 is the head, Embed_0 the embedding


def _max_error(a, b, names=HIDDEN):
    return max(float(np.max(np.abs(a[n]["kernel"] - b[n]["kernel"]))) for n in names)


def test_muon_matches_optax_contrib_muon_on_hidden_matrices():
    """Same quintic, 5 steps, momentum 0.95 without Nesterov, √max(1, d_out/d_in) scaling."""
    grads = [_f32(_muon_tree(s)) for s in range(4)]
    params = _f32(_muon_tree(9))
    ours = _run(normtx.optimizers.muon(0.02, nesterov=False), grads, params, jit=True)
    theirs = _run(optax.contrib.muon(0.02, nesterov=False), grads, params, jit=True)
    errors = [_max_error(a, b) for a, b in zip(ours, theirs)]
    assert max(errors) < 1e-5, errors
    # With Nesterov the first step agrees too (both orthogonalize a multiple of g_1); later steps
    # differ by optax's bias corrections, see the next test for Jordan's reference form.
    ours = _run(normtx.optimizers.muon(0.02), grads[:1], params)
    theirs = _run(optax.contrib.muon(0.02), grads[:1], params)
    assert _max_error(ours[0], theirs[0]) < 1e-5


def _ns_muon_oracle(m):
    """Jordan's quintic, 5 steps, in float64 (transposing a tall matrix), times √max(1, n/m)."""
    x = m.T if m.shape[0] > m.shape[1] else m
    x = x / np.linalg.norm(x)
    for _ in range(5):
        a = x @ x.T
        x = 3.4445 * x + (-4.7750 * a + 2.0315 * a @ a) @ x
    x = x.T if m.shape[0] > m.shape[1] else x
    return np.sqrt(max(1.0, m.shape[1] / m.shape[0])) * x


def test_muon_nesterov_is_jordans_reference_and_others_are_adamw():
    grads = [_muon_tree(s) for s in range(4)]
    params = _f32(_muon_tree(9))
    # Weight decay off: the hidden update is -lr · NS(Nesterov momentum) exactly.
    ours = _run(
        normtx.optimizers.muon(0.02, adam_learning_rate=1e-3), [_f32(g) for g in grads], params
    )
    for u, m in zip(ours, _ema(grads, 0.95, True)):
        for name in HIDDEN:
            np.testing.assert_allclose(
                u[name]["kernel"], -0.02 * _ns_muon_oracle(m[name]["kernel"]), atol=2e-7
            )
    # Decoupled weight decay on the orthogonalized leaves: -lr · (NS(m) + wd · w).
    (u,) = _run(normtx.optimizers.muon(0.02, weight_decay=0.1), [_f32(grads[0])], params)
    m = _ema(grads[:1], 0.95, True)[0]["Dense_0"]["kernel"]
    w = np.asarray(params["Dense_0"]["kernel"], np.float64)
    np.testing.assert_allclose(
        u["Dense_0"]["kernel"], -0.02 * (_ns_muon_oracle(m) + 0.1 * w), atol=2e-7
    )
    # Every other leaf is optax.adamw with the adam_* hyperparameters.
    adam = _run(optax.adamw(1e-3, weight_decay=0.0), [_f32(g) for g in grads], params)
    for u, a in zip(ours, adam):
        for path in (("Embed_0", "embedding"), ("Dense_2", "kernel"), ("Dense_0", "bias")):
            np.testing.assert_allclose(u[path[0]][path[1]], a[path[0]][path[1]], rtol=1e-6)


def test_muon_under_optax_partition_keeps_the_whole_trees_head():
    """Issue 15, item 4: with the head sent to ``optax.set_to_zero`` by ``optax.partition`` (or
    masked out by ``optax.masked``), Muon saw the last hidden layer as the head and gave it to
    AdamW. Every hidden kernel is still orthogonalized (Jordan's Newton–Schulz in float64), the
    head gets nothing, and the warning says the head found by position is masked out."""
    grads = [_muon_tree(s) for s in range(3)]
    params = _f32(_muon_tree(9))
    labels = {
        k: jax.tree.map(lambda _, k=k: "z" if k == "Dense_2" else "m", v) for k, v in params.items()
    }
    mask = jax.tree.map(lambda label: label == "m", labels)
    wrapped = {
        "partition": optax.partition(
            {"m": normtx.optimizers.muon(0.02), "z": optax.set_to_zero()}, labels
        ),
        "masked": optax.masked(normtx.optimizers.muon(0.02), mask),
    }
    for name, tx in wrapped.items():
        with pytest.warns(UserWarning, match=r"'Dense_2/kernel'.*It is masked out here"):
            ours = _run(tx, [_f32(g) for g in grads], params)
        for u, m in zip(ours, _ema(grads, 0.95, True)):
            for layer in HIDDEN:
                np.testing.assert_allclose(
                    u[layer]["kernel"],
                    -0.02 * _ns_muon_oracle(m[layer]["kernel"]),
                    atol=2e-7,
                    err_msg=name,
                )
            if name == "partition":
                assert not np.any(u["Dense_2"]["kernel"])


@pytest.mark.parametrize("others", ["adamw", "modular"])
def test_describe_gives_the_route_muon_takes(others):
    """``normtx.optimizers.describe(params, 'muon', ...)``: each leaf's route is what the optimizer
    does with it (the polar factor: Jordan's Newton–Schulz in float64; AdamW: optax.adamw; the
    modular step: its role's unit step), and the head found by position carries a note."""
    g = _muon_tree(3)
    params = _f32(_muon_tree(9))
    kw = dict(beta=0.0, others=others) | ({"adam_learning_rate": 1e-3} if others == "adamw" else {})
    with pytest.warns(UserWarning, match="head by position"):
        table = normtx.optimizers.describe(params, "muon", learning_rate=0.1, **kw)
    assert table.header[-2:] == ("route", "note")
    routes = {row[0]: row[-2] for row in table.rows}
    notes = {row[0]: row[-1] for row in table.rows if row[-1]}
    assert notes == {"Dense_2/kernel": "head by position (pass head=)"}
    (u,) = _run(normtx.optimizers.muon(0.1, **kw), [_f32(g)], params)
    (adam,) = _run(optax.adamw(1e-3, weight_decay=0.0), [_f32(g)], params)
    got, grad, want_adam = (dict(flatten_with_paths(t)[0]) for t in (u, g, adam))
    for path, route in routes.items():
        x = grad[path]
        if route == "polar factor":
            np.testing.assert_allclose(got[path], -0.1 * _ns_muon_oracle(x), atol=2e-7)
        elif route == "adamw":
            np.testing.assert_allclose(got[path], want_adam[path], rtol=1e-6)
        elif x.ndim == 1 or path == "Embed_0/embedding":  # the unit step of RMS, ℓ1 -> RMS
            assert route == "modular step", route
            unit = RMS(x) if x.ndim == 1 else ROWS(x)
            np.testing.assert_allclose(got[path], -0.1 * unit, rtol=1e-5, atol=1e-7)
        else:  # the head's RMS -> RMS step, its U Vᵀ by Polar Express (σ within ±13% of 1)
            assert route == "modular step", route
            want = -0.1 * RMS_TO_RMS(x)
            assert np.linalg.norm(got[path] - want) <= 0.13 * np.linalg.norm(want)
    counts = {r: list(routes.values()).count(r) for r in set(routes.values())}
    assert counts == {"polar factor": 2, "adamw" if others == "adamw" else "modular step": 5}
    # head=False: no note, no warning, and Dense_2 is orthogonalized too.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        off = normtx.optimizers.describe(params, "muon", head=False, **kw)
    assert {row[0]: row[-2] for row in off.rows}["Dense_2/kernel"] == "polar factor"


def test_a_models_only_kernel_taken_as_head_is_reported():
    """Issue 15, item 4: a tree whose only kernel sits at the top level made it the head by
    position, and Muon sent it to AdamW without a word. The warning and the table say so, and
    ``head=False`` orthogonalizes it (Jordan's Newton–Schulz in float64)."""
    g = {"kernel": np.random.default_rng(0).standard_normal((6, 4)), "bias": np.ones(4)}
    params = _f32(g)
    with pytest.warns(UserWarning, match=r"'kernel', the last Dense kernel .* head='kernel'"):
        table = normtx.optimizers.describe(params, "muon")
    assert {r[0]: (r[2], r[-2], r[-1]) for r in table.rows}["kernel"] == (
        "head",
        "adamw",
        "head by position (pass head=)",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (u,) = _run(normtx.optimizers.muon(0.1, beta=0.0, head=False), [params], params)
    np.testing.assert_allclose(u["kernel"], -0.1 * _ns_muon_oracle(g["kernel"]), atol=2e-7)


def test_describe_of_modular_descent_and_scion_shows_frozen_and_unnormed_leaves():
    params = _f32(_muon_tree(9))
    kw = dict(head="Dense_2", labels={"embedding": "frozen"}, norms={"bias": None})
    for name in ("modular_descent", "scion"):
        table = normtx.optimizers.describe(params, name, **kw)
        routes = {row[0]: row[-2] for row in table.rows}
        assert routes["Embed_0/embedding"] == "zero (frozen)"
        assert routes["Dense_0/bias"] == "momentum"
        assert routes["Dense_2/kernel"] == "modular step"
        assert table == normtx.optimizers.describe(params, name, learning_rate=0.1, **kw)


def test_muon_modular_others_and_scales():
    g = _muon_tree(3)
    (u,) = _run(
        normtx.optimizers.muon(0.1, beta=0.0, others="modular", scale="rms_to_rms"),
        [_f32(g)],
        _f32(g),
    )
    rows = orc.rows_oracles(2.0, lambda d_in, d_out: 1 / math.sqrt(d_out))[2]
    np.testing.assert_allclose(
        u["Embed_0"]["embedding"], -0.1 * rows(g["Embed_0"]["embedding"]), rtol=1e-5
    )
    np.testing.assert_allclose(u["Dense_0"]["bias"], -0.1 * RMS(g["Dense_0"]["bias"]), rtol=1e-5)
    k = _f32(g)["Dense_1"]["kernel"]
    ns = normtx.linalg.newton_schulz(k, coefficients="muon")
    np.testing.assert_allclose(
        u["Dense_1"]["kernel"], -0.1 * math.sqrt(12 / 16) * ns, rtol=1e-5, atol=1e-7
    )
    # The head keeps its modular norm (RMS -> RMS with Polar Express), not Muon's polar factor.
    head = _f32(g)["Dense_2"]["kernel"]
    np.testing.assert_allclose(
        u["Dense_2"]["kernel"],
        -0.1 * math.sqrt(4 / 12) * normtx.linalg.newton_schulz(head),
        rtol=1e-5,
        atol=1e-7,
    )


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
        (normtx.optimizers.muon, dict(learning_rate=0.1, adam_learning_rate=0.01)),
        (normtx.optimizers.muon, dict(learning_rate=0.1, others="modular", weight_decay=0.1)),
    ],
)
def test_inject_hyperparams_matches_the_plain_chain(factory, kwargs):
    grads = [_f32(_mlp_tree(s)) for s in range(3)]
    params = _f32(_mlp_tree(9))
    plain = _run(factory(**kwargs), grads, params)
    static = ("ns_steps",) if factory is normtx.optimizers.muon else ()
    injected_tx = optax.inject_hyperparams(factory, static_args=static)(**kwargs)
    injected = _run(injected_tx, grads, params)
    # Injected hyperparameters are float32 arrays where the plain chain uses Python floats
    # (1 - β rounds differently), so updates of size ~0.1 agree to float32 rounding.
    for a, b in zip(plain, injected):
        chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-6)
    # The learning rates are live in the state: doubling them doubles the update.
    state = injected_tx.init(params)
    u, _ = injected_tx.update(grads[0], state, params)
    for name in ("learning_rate", "adam_learning_rate"):
        if name in state.hyperparams:
            state.hyperparams[name] = 2 * state.hyperparams[name]
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
    with pytest.raises(ValueError, match="others must be one of"):
        normtx.optimizers.muon(0.1, others="adam")
    with pytest.raises(ValueError, match="scale must be one of"):
        normtx.optimizers.muon(0.1, scale="max")
    with pytest.raises(ValueError, match="unknown coefficients 'quintic'"):
        normtx.optimizers.muon(0.1, ns_coefficients="quintic")
    with pytest.raises(ValueError, match=r"adam_b2 must be in \[0, 1\)"):
        normtx.optimizers.muon(0.1, adam_b2=1.5)
    with pytest.raises(ValueError, match="unknown polar method 'qr'"):
        normtx.optimizers.spectral_descent(0.1, polar="qr")


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


class _LinenBlock(nn.Module):
    d: int

    @nn.compact
    def __call__(self, h, _):
        mask = nn.make_causal_mask(jnp.ones(h.shape[:2]))
        h = h + nn.MultiHeadDotProductAttention(num_heads=4)(nn.LayerNorm()(h), mask=mask)
        h = h + nn.Dense(self.d)(nn.gelu(nn.Dense(4 * self.d)(nn.LayerNorm()(h))))
        return h, None


class LinenScannedLM(nn.Module):
    vocab: int
    context: int
    d: int

    @nn.compact
    def __call__(self, tokens):
        h = nn.Embed(self.vocab, self.d)(tokens)
        h = h + nn.Embed(self.context, self.d)(jnp.arange(tokens.shape[1]))
        stack = nn.scan(
            _LinenBlock, variable_axes={"params": 0}, split_rngs={"params": True}, length=2
        )
        h, _ = stack(self.d, name="blocks")(h, None)
        return nn.Dense(self.vocab)(nn.LayerNorm()(h))


@pytest.mark.slow
def test_linen_train_state_trains_a_scanned_char_transformer():
    data, vocab = _char_data()
    context, batch, steps = 32, 32, 25
    model = LinenScannedLM(vocab, context, 32)
    params = model.init(jax.random.key(0), jnp.ones((1, context), jnp.int32))["params"]
    got = normtx.roles.infer(params)
    assert got["blocks"]["Dense_0"]["kernel"] == normtx.roles.Role("hidden", (1,), (2,), (0,))
    assert got["Dense_0"]["kernel"].name == "head"
    state = train_state.TrainState.create(
        apply_fn=model.apply, params=params, tx=modular_descent(0.02)
    )

    @jax.jit
    def train_step(state, xb, yb):
        def loss_fn(p):
            logits = state.apply_fn({"params": p}, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    rng = np.random.default_rng(1)
    losses = []
    for _ in range(steps):
        starts = rng.integers(0, len(data) - context - 1, size=batch)
        xb = jnp.asarray(np.stack([data[s : s + context] for s in starts]))
        yb = jnp.asarray(np.stack([data[s + 1 : s + context + 1] for s in starts]))
        state, loss = train_step(state, xb, yb)
        losses.append(float(loss))
    assert np.mean(losses[-5:]) < 0.7 * losses[0], losses


def test_nnx_optimizer_with_muon_on_digits():
    """Muon's role labels work on both the nnx State (init) and the pure arrays (update)."""
    x, y = _digits()
    model = nnx.Sequential(
        nnx.Linear(64, 64, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(64, 10, rngs=nnx.Rngs(1))
    )
    tx = normtx.optimizers.muon(0.1, adam_learning_rate=1e-2, weight_decay=1e-4)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer)) for _ in range(25)]
    assert losses[-1] < 0.3 * losses[0], losses
