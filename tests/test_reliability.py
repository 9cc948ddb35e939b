"""Reliability (issue 10): non-finite and extreme gradients, every float dtype, strict promotion.

Every transform of ``registry.TRANSFORMS`` meets NaN, +Inf, 1e20, 1e30, 1e38 and 1e-38 gradients,
over the whole tree and in a single entry, in float32 and bfloat16, under ``jit``: one compiled
program per (transform, dtype) runs the whole matrix (the bad gradients are a batch, ``vmap``-ed).

- Inside ``optax.apply_if_finite`` a NaN/Inf step returns zero updates and leaves the inner state
  bit for bit as it was, so training continues as if the step had not happened (the next step
  is the uninterrupted run's).
- Without it nothing raises, and ``normtx.diagnostics(state, updates)['finite']`` reports it.
- Finite extremes give finite updates and states, with or without the guard, except where the
  exact result is out of range: transforms that keep squared gradients (Adam moments,
  Shampoo/AdaGrad statistics) cannot hold ``(1e20)²`` in float32/bfloat16, and a step scaled by the
  dual norm of an all-1e38 tree exceeds the float maximum. There the overflow is reported (not
  finite), never silently replaced (1e38 gradients used to get a zero direction: see
  ``normtx._numerics.div_by_max``). 1e-38 is subnormal in float32/bfloat16, which XLA:CPU
  flushes to zero: it must give a zero step, never a NaN from 0/0.

dtypes: updates keep the parameters' dtype (float16, bfloat16, float32, float64), state buffers
follow the explicit ``*_dtype`` arguments, and reductions run in float32 or wider. All of our code
traces under ``jax.numpy_dtype_promotion('strict')``.
"""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import normtx
from normtx import adaptive, norms, optimizers
from normtx._pytree import flatten_with_paths

import oracles as orc
import registry

NONFINITE = (math.nan, math.inf)
EXTREMES = (1e20, 1e30, 1e38, 1e-38)
F32_MAX = float(jnp.finfo(jnp.float32).max)  # bfloat16 has the same range
VARIANTS = [(v, where) for v in NONFINITE + EXTREMES for where in ("tree", "entry")]
# Keep (s g)² in state, out of float32/bfloat16 range (max ≈ 3.4e38) from |g| ≈ 1.8e19 / s: s = 1
# but for Prodigy, whose s is its step size d, estim_lr0 = 1e-6 at the first step (from 1e30 on).
SQUARES = {
    "muon",  # AdamW (optax.scale_by_adam) on the non-matrix leaves
    "normuon",  # as Muon
    "adamuon",  # as Muon
    "scale_by_neuron_rms(masked)",  # each neuron's mean square
    "prodigy",
    "full_adagrad",
    "adamw_fully_decoupled",
    "adam_nmf",
    "shampoo",
    "shampoo(ema, blocks, every=3)",
    "soap",  # its moments; from the first step its L = EMA of G Gᵀ (skipped, the update NaN)
}
SQUARED_SCALE = {"prodigy": 1e-6}
# Steps proportional to the dual norm ‖g‖† (Prop. 1/7 with step='dual_norm'): for the all-1e38 tree
# the exact step is out of range (the RMS dual of a bias alone is √n‖g‖₂ = 8 · 1e38 for n = 8).
DUAL_NORM_STEPS = {
    "scale_by_dual_norm",
    "modular_norm_partition",
    "modular_norm_partition(target_rms)",
    "modular_descent",
}
LOW = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _cast(tree, dtype):
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


def _bad(grads, value, where):
    """Every entry of every leaf (``'tree'``) or the head's ``kernel[0, 0]`` alone set to ``value``.

    The head is a leaf that every transform of ``SQUARES`` squares (Muon gives it AdamW).
    """
    if where == "tree":
        return jax.tree.map(lambda g: jnp.full_like(g, value), grads)
    k = grads["Dense_1"]["kernel"]
    return {**grads, "Dense_1": {**grads["Dense_1"], "kernel": k.at[0, 0].set(value)}}


@functools.cache
def _matrix(name: str, dtype: str):
    """One compiled update: every bad gradient, batched, with and without the guard.

    ``optax.apply_if_finite`` lets a non-finite step through once ``max_consecutive_errors`` is
    reached, so one traced ``guarded.update`` gives both results: from a state whose
    ``notfinite_count`` is 0 (guarded) and from one whose count is at the limit (the inner
    transform's own update, as without the guard). The state is ``init(w₀)`` and the update sees
    other weights ``w₁``, so that the rules that read ``w₀ - w₁`` (escape velocity) have
    something to read. Returns ``(inner state, guarded (updates, state), unguarded (updates,
    inner state))``, each batched over ``VARIANTS``.
    """
    dt = LOW[dtype]
    tx = registry.TRANSFORMS[name]()
    limit = 1
    guarded = optax.apply_if_finite(tx, max_consecutive_errors=limit)
    w0 = _cast(registry.params(), dt)
    w1 = _cast(jax.tree.map(lambda w, g: w - 0.01 * g, registry.params(), registry.grads(0)), dt)
    grads = _cast(registry.grads(1), dt)
    bad = [_bad(grads, v, w) for v, w in VARIANTS]
    batch = jax.tree.map(lambda *xs: jnp.stack(xs), *bad, *bad)
    counts = jnp.asarray([0] * len(bad) + [limit] * len(bad), jnp.int32)

    @functools.partial(jax.jit, compiler_options=registry.FAST_COMPILE)
    def run(batch, counts, gstate, params):
        def one(g, count):
            return guarded.update(g, gstate._replace(notfinite_count=count), params)

        return jax.vmap(one)(batch, counts)

    gstate = guarded.init(w0)
    u, s = jax.device_get(run(batch, counts, gstate, w1))
    n = len(bad)
    half = lambda tree, k: jax.tree.map(lambda x: x[k * n : (k + 1) * n], tree)  # noqa: E731
    return gstate.inner_state, (half(u, 0), half(s, 0)), (half(u, 1), half(s, 1).inner_state)


def _row(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


@pytest.mark.parametrize("dtype", list(LOW))
@pytest.mark.parametrize("name", list(registry.TRANSFORMS))
def test_apply_if_finite_skips_nonfinite_steps_and_leaves_the_state_untouched(name, dtype):
    state, (u, gstate), _ = _matrix(name, dtype)
    for i, (value, where) in enumerate(VARIANTS):
        if math.isfinite(value):
            continue
        ui, si = _row(u, i), _row(gstate, i)
        chex.assert_trees_all_equal(ui, jax.tree.map(np.zeros_like, ui))
        chex.assert_trees_all_equal(si.inner_state, state)  # no NaN, no trace of the step
        assert int(si.notfinite_count) == 1, (value, where)
        assert not bool(si.last_finite), (value, where)


@pytest.mark.parametrize("dtype", list(LOW))
@pytest.mark.parametrize("name", list(registry.TRANSFORMS))
def test_nonfinite_gradients_are_reported_not_raised(name, dtype):
    _, _, (u, state) = _matrix(name, dtype)
    for i, (value, where) in enumerate(VARIANTS):
        if not math.isfinite(value):
            report = normtx.diagnostics(_row(state, i), _row(u, i))
            assert not bool(report["finite"]), (name, dtype, value, where)


@pytest.mark.parametrize("dtype", list(LOW))
@pytest.mark.parametrize("name", list(registry.TRANSFORMS))
def test_extreme_finite_gradients_give_finite_updates_and_state(name, dtype):
    _, (gu, gstate), (u, state) = _matrix(name, dtype)
    for i, (value, where) in enumerate(VARIANTS):
        if not math.isfinite(value):
            continue
        gsi = _row(gstate, i)
        assert int(gsi.notfinite_count) == 0  # the guard passes finite gradients through
        for upd, st in ((_row(gu, i), gsi.inner_state), (_row(u, i), _row(state, i))):
            finite = bool(normtx.diagnostics(st, upd)["finite"])
            s = SQUARED_SCALE.get(name, 1.0)
            squared = name in SQUARES and (s * value) ** 2 > F32_MAX
            if squared or (value == 1e38 and name in DUAL_NORM_STEPS and where == "tree"):
                assert not finite, f"{name}: the overflow of {value} went unreported ({where})"
            else:
                assert finite, (name, dtype, value, where)


# ---- statistics that would keep a bad step for ever skip it -----------------------------------

OVERFLOWS = (1e20, 1e30)  # finite, but g gᵀ overflows float32
GUARDED = {  # name -> (transform, state fields the guard keeps, finite values it must skip too)
    "escape_velocity_lr(beta)": (
        registry.TRANSFORMS["escape_velocity_lr(beta)"],
        ("eta", "numerator", "grad_sum"),
        (),
    ),
    "full_adagrad": (registry.TRANSFORMS["full_adagrad"], ("stats",), OVERFLOWS),
    "shampoo(sum)": (
        lambda: adaptive.scale_by_shampoo(graft="sgd", vectors="graft"),
        ("stats_left", "stats_right"),
        OVERFLOWS,
    ),
    "shampoo(ema)": (
        registry.TRANSFORMS["shampoo(ema, blocks, every=3)"],
        ("stats_left", "stats_right"),
        OVERFLOWS,
    ),
}


@pytest.mark.parametrize("name", list(GUARDED))
def test_accumulated_statistics_skip_a_nonfinite_step_and_training_recovers(name):
    """Without ``apply_if_finite``: the bad step is reported (its updates or the last-step
    scalars), the sums and EMAs that would keep it for ever are unchanged, bit for bit, and the
    next good step is finite again — in contrast with momenta and Adam moments, which keep it (as
    in optax). Full AdaGrad's and Shampoo's statistics also skip a finite step whose ``g gᵀ``
    overflows, and report it by a NaN update (they used to take a finite step of about ``g``
    through the old statistics, reported by nothing).
    """
    make, fields, overflows = GUARDED[name]
    tx = make()
    params = registry.params()
    update = jax.jit(tx.update, compiler_options=registry.FAST_COMPILE)
    u, state = update(registry.grads(0), tx.init(params), params)
    params = optax.apply_updates(params, u)
    for value in NONFINITE + overflows:
        u, bad = update(_bad(registry.grads(1), value, "tree"), state, params)
        assert not bool(normtx.diagnostics(bad, u)["finite"]), value
        for field in fields:
            kept, before = (optax.tree_utils.tree_get(s, field) for s in (bad, state))
            chex.assert_trees_all_equal(kept, before)
        u, after = update(registry.grads(2), bad, params)
        assert bool(normtx.diagnostics(after, u)["finite"]), value


def test_adam_nmf_ema_target_stays_nonnegative_on_rows_without_gradient():
    """At t = 1 the EMA weight ``w = (1-β₂)/(1-β₂ᵗ)`` is 1; rounded above 1 in float32 it made the
    EM target ``(1-w) A B + w G²`` negative on rows without gradient (an embedding's unseen
    tokens): negative factors and NaN updates, which a NaN-hiding division turned into zeros.
    """
    g = np.random.default_rng(3).standard_normal((12, 8)).astype(np.float32)
    g[:6] = 0.0
    tx = adaptive.scale_by_adam_nmf(rank=1, key=jax.random.key(0), b1=0.9, b2=0.999)
    u, state = jax.jit(tx.update, compiler_options=registry.FAST_COMPILE)(g, tx.init(g))
    assert float(jnp.min(state.a)) > 0
    assert float(jnp.min(state.b)) > 0
    chex.assert_tree_all_finite(u)
    np.testing.assert_array_equal(np.asarray(u)[:6], 0.0)


# ---- diagnostics ----------------------------------------------------------------------------------


def test_diagnostics_collects_every_scalar_by_path_under_jit():
    tx = optax.apply_if_finite(registry.TRANSFORMS["modular_descent(escape_velocity)"](), 3)
    params = registry.params()
    state = tx.init(params)
    u, state = jax.jit(tx.update, compiler_options=registry.FAST_COMPILE)(
        registry.grads(0), state, params
    )
    report = jax.jit(normtx.diagnostics)(state, u)
    scalars = {path: leaf for path, leaf in flatten_with_paths(state)[0] if leaf.ndim == 0}
    assert set(report) == set(scalars) | {"finite"}
    for path, leaf in scalars.items():
        np.testing.assert_array_equal(report[path], leaf)
    names = {path.rsplit("/", 1)[-1] for path in report}
    assert {"eta", "numerator", "denominator", "global_eta", "notfinite_count"} <= names
    assert "inner_state/0/direction/1/dual_norms/Dense_0/kernel" in report
    assert bool(report["finite"])
    # 'finite' reads every floating array, not only the scalars: a momentum, or the updates.
    momentum = optax.tree_utils.tree_get(state, "trace")
    poisoned = optax.tree_utils.tree_set(state, trace=jax.tree.map(lambda m: m * np.nan, momentum))
    assert not bool(normtx.diagnostics(poisoned)["finite"])
    assert not bool(normtx.diagnostics(state, jax.tree.map(lambda x: x * np.inf, u))["finite"])


def test_scale_by_dual_norm_reports_the_dual_norm():
    """``ScaleByDualNormState.dual_norm`` is ``Σ_l N_l†(G_l)``: under ℓ∞ the ℓ1 norm of the tree."""
    tx = normtx.scale_by_dual_norm(norms.linf(), sharpness=3.0)
    g = registry.grads(0)
    _, state = jax.jit(tx.update)(g, tx.init(g))
    l1 = sum(np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree.leaves(g))
    np.testing.assert_allclose(float(normtx.diagnostics(state)["dual_norm"]), l1, rtol=1e-6)


# ---- dtypes and strict promotion -----------------------------------------------------------------

FLOATS = {"float16": jnp.float16, "bfloat16": jnp.bfloat16, "float32": jnp.float32}
FLOATS["float64"] = jnp.float64


@pytest.fixture
def strict_optax(monkeypatch):
    """``optax.scale_by_adam``'s bias correction computes ``decay**count`` (a Python float to the
    power of an int32), the one implicit promotion of the optax pieces our chains use (Muon's
    AdamW, ``adamw_fully_decoupled``). Replaced for these tests by the same formula with explicit
    dtypes, so that strict promotion checks our code.
    """

    def bias_correction(moment, decay, count):
        c = 1 - jnp.asarray(decay, jnp.float32) ** count.astype(jnp.float32)
        return jax.tree.map(lambda t: t / c.astype(t.dtype), moment)

    monkeypatch.setattr(optax.tree, "bias_correction", bias_correction)


def _abstract(tree, dtype):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), dtype), tree)


@pytest.mark.parametrize("dtype", list(FLOATS))
@pytest.mark.parametrize("name", list(registry.TRANSFORMS))
def test_updates_keep_the_param_dtype_under_strict_promotion(name, dtype, strict_optax):
    """Traced (``jax.eval_shape``) with strict dtype promotion: any implicit promotion raises."""
    tx = registry.TRANSFORMS[name]()
    params = _abstract(registry.params(), FLOATS[dtype])
    with jax.numpy_dtype_promotion("strict"):
        state = jax.eval_shape(tx.init, params)
        updates, new_state = jax.eval_shape(tx.update, params, state, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)  # the state keeps its dtypes


def _direction():
    return normtx.dualize(norms.linf())


@pytest.mark.parametrize(
    ("param_dtype", "state_dtype"), [(jnp.float32, jnp.bfloat16), (jnp.bfloat16, jnp.float32)]
)
@pytest.mark.parametrize(
    ("make", "fields"),
    [
        (
            lambda dt: normtx.escape_velocity_lr(
                _direction(), norm=norms.linf(), betas=(0.9, 0.99), state_dtype=dt
            ),
            ("anchor", "grad_sum"),
        ),
        (
            lambda dt: normtx.escape_velocity_lr(
                _direction(), norm=norms.linf(), anchor="previous", state_dtype=dt
            ),
            ("anchor",),
        ),
        (lambda dt: optimizers.prodigy(state_dtype=dt), ("anchor", "grad_sum", "mu", "nu")),
    ],
    ids=["escape_velocity_lr(beta)", "escape_velocity_lr(previous)", "prodigy"],
)
def test_state_buffers_follow_the_explicit_state_dtype(make, fields, param_dtype, state_dtype):
    tx = make(state_dtype)
    params = _abstract(registry.params(), param_dtype)
    with jax.numpy_dtype_promotion("strict"):
        state = jax.eval_shape(tx.init, params)
        updates, new_state = jax.eval_shape(tx.update, params, state, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
    for st in (state, new_state):
        for field in fields:
            buffers = optax.tree_utils.tree_get(st, field)
            assert {x.dtype for x in jax.tree.leaves(buffers)} == {jnp.dtype(state_dtype)}, field
        assert optax.tree_utils.tree_get(st, "eta").dtype == jnp.float32  # scalars: float32+


def test_orthogonalize_compute_dtype_keeps_the_update_dtype():
    tx = optax.masked(
        normtx.orthogonalize_newton_schulz(compute_dtype=jnp.bfloat16), registry.kernels
    )
    params = _abstract(registry.params(), jnp.float32)
    with jax.numpy_dtype_promotion("strict"):
        updates, _ = jax.eval_shape(tx.update, params, jax.eval_shape(tx.init, params), params)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)


BF16_NORMS = {
    "l2": (norms.l2(), orc.vector_oracles(2.0)),
    "l1": (norms.l1(), orc.vector_oracles(1.0)),
    "linf": (norms.linf(), orc.vector_oracles(math.inf)),
    "lp(3)": (norms.lp(3.0), orc.vector_oracles(3.0)),
    "rms": (norms.rms(), orc.vector_oracles(2.0, lambda n: 1 / math.sqrt(n))),
    "l1_to_rms": (
        norms.l1_to_rms(),
        orc.rows_oracles(2.0, lambda d_in, d_out: 1 / math.sqrt(d_out)),
    ),
    "spectral": (norms.spectral(), orc.schatten_oracles(math.inf)),
    "rms_to_rms": (
        norms.rms_to_rms(),
        orc.schatten_oracles(math.inf, lambda d_in, d_out: math.sqrt(d_in / d_out)),
    ),
}


@pytest.mark.parametrize("name", list(BF16_NORMS))
def test_bfloat16_dual_norms_reduce_in_float32(name):
    """A bfloat16 gradient is measured in float32: the dual norm of its 3072 entries matches the
    float64 oracle of the same (bfloat16) values to float32 accuracy — a bfloat16 reduction would
    be off by ~1e-2 — and the direction is the oracle's to bfloat16 rounding.
    """
    norm, (_, dual, direction) = BF16_NORMS[name]
    g = jnp.asarray(np.random.default_rng(0).standard_normal((64, 48)), jnp.bfloat16)
    g64 = np.asarray(g, np.float64)
    d, t = jax.jit(
        lambda g: (norm.dual_norm(g), norm.dualize(g)), compiler_options=registry.FAST_COMPILE
    )(g)
    assert d.dtype == jnp.float32
    assert t.dtype == jnp.bfloat16
    np.testing.assert_allclose(float(d), dual(g64), rtol=2e-6)
    want = direction(g64)
    err = np.abs(np.asarray(t, np.float64) - want)
    assert np.all(err <= 2.0**-8 * np.abs(want) + 1e-6 * np.abs(want).max()), err.max()


def test_bfloat16_inner_products_of_escape_velocity_reduce_in_float32():
    """``<ĝ, w₀ - w₁>`` and ``‖ĝ‖₁`` of bfloat16 leaves, in float32, against float64."""
    rng = np.random.default_rng(1)
    w0, w1, g = ({"k": jnp.asarray(rng.standard_normal((64, 48)), jnp.bfloat16)} for _ in range(3))
    tx = normtx.escape_velocity_lr(_direction(), norm=norms.linf())
    _, state = jax.jit(tx.update)(g, tx.init(w0), w1)
    g64, a64 = (
        np.asarray(g["k"], np.float64),
        np.asarray(w0["k"], np.float64) - np.asarray(w1["k"], np.float64),
    )
    gh = g64 / np.abs(g64).max()
    np.testing.assert_allclose(float(state.denominator), np.abs(gh).sum(), rtol=2e-6)
    assert abs(float(state.numerator) - (gh * a64).sum()) <= 2e-6 * np.abs(gh * a64).sum()
