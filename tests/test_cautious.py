"""``cautious`` and ``add_cautious_weight_decay`` against NumPy float64 closed forms and optax.

- Cautious Optimizers (Liang et al. 2024, Algorithm 1): ``φ = 1[u ⊙ g > 0]``, the update is
  ``u ⊙ φ / max(mean φ, δ)`` per leaf; the inner update ``u`` comes from optax's own transform
  (the oracle for the inner part), the mask and the rescaling from NumPy.
- Cautious Weight Decay (Chen et al. 2025, Algorithm 1): ``u + λ 1[u ⊙ x >= 0] ⊙ x``.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import normtx

import registry


def _tree(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda p: jnp.asarray(scale * rng.standard_normal(p.shape), jnp.float32),
        registry.params(),
    )


def _cautious_oracle(u, g, floor):
    """NumPy float64: ``(u ⊙ φ / max(mean φ, δ), Σ φ)``."""
    u64, g64 = np.asarray(u, np.float64), np.asarray(g, np.float64)
    phi = (u64 * g64 > 0).astype(np.float64)
    return u64 * phi / max(phi.mean(), floor), int(phi.sum())


def _run(tx, grads, params, jit=True):
    update = jax.jit(tx.update) if jit else tx.update
    state = tx.init(params)
    outs = []
    for g in grads:
        u, state = update(g, state, params)
        outs.append(u)
    return outs, state


@pytest.mark.parametrize(
    ("floor", "jit"), [(1e-3, True), (0.75, True), (1e-3, False)], ids=["jit", "floor", "eager"]
)
def test_cautious_is_the_masked_and_rescaled_inner_update(floor, jit):
    """Three steps of cautious Adam (two eager): each is optax's Adam direction masked and rescaled as the
    NumPy closed form says (δ = 0.75 binds on the leaves that keep less than 3/4)."""
    params, grads = registry.params(), [_tree(s) for s in range(3 if jit else 2)]
    inner = optax.scale_by_adam(b1=0.9)
    outs, state = _run(normtx.cautious(inner, mean_floor=floor), grads, params, jit)
    inner_outs, _ = _run(inner, grads, params, jit)
    for u_c, u_in, g in zip(outs, inner_outs, grads):
        for c, u, gg in zip(jax.tree.leaves(u_c), jax.tree.leaves(u_in), jax.tree.leaves(g)):
            want, _ = _cautious_oracle(u, gg, floor)
            assert c.dtype == jnp.float32
            np.testing.assert_allclose(np.asarray(c, np.float64), want, rtol=1e-6, atol=0)
    kept = [
        _cautious_oracle(u, g, floor)[1]
        for u, g in zip(*map(jax.tree.leaves, (inner_outs[-1], grads[-1])))
    ]
    assert [int(k) for k in jax.tree.leaves(state.kept)] == kept
    sizes = [x.size for x in jax.tree.leaves(params)]
    assert any(k < 0.75 * n for k, n in zip(kept, sizes))  # the floor 0.75 binds somewhere


def test_the_floor_caps_the_rescaling_at_one_over_delta():
    """One coordinate of 4000 agrees: mean φ = 2.5e-4 < δ = 1e-3, so it is scaled by 1000, not by
    4000."""
    g = jnp.ones((4000,), jnp.float32)
    inner_update = jnp.full((4000,), -1.0, jnp.float32).at[7].set(2.0)
    inner = optax.GradientTransformation(
        lambda p: optax.EmptyState(), lambda u, s, p=None: (inner_update, s)
    )
    u, state = normtx.cautious(inner).update(g, normtx.cautious(inner).init(g))
    want = np.zeros(4000)
    want[7] = 2.0 / 1e-3
    np.testing.assert_allclose(np.asarray(u, np.float64), want, rtol=1e-6)
    assert int(state.kept) == 1


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_all_signs_agreeing_gives_the_inner_update_bit_for_bit(dtype):
    """At Adam's first step ``u = g/(|g| + ε)`` has the sign of ``g`` everywhere: mean φ = 1 and
    the cautious update is Adam's exactly."""
    params = jax.tree.map(lambda x: x.astype(dtype), registry.params())
    g = jax.tree.map(lambda x: x.astype(dtype), _tree(0))
    inner = optax.scale_by_adam()
    tx = normtx.cautious(inner)
    u, state = jax.jit(tx.update)(g, tx.init(params), params)
    want, _ = jax.jit(inner.update)(g, inner.init(params), params)
    chex.assert_trees_all_equal(u, want)
    chex.assert_trees_all_equal(state.kept, jax.tree.map(lambda x: np.int32(x.size), g))


def test_zero_gradient_gives_a_zero_update_not_nan():
    """Momentum carries a non-zero direction into a step whose gradient is zero: φ = 0 on every
    leaf (mean 0), and the update is exactly zero."""
    params = registry.params()
    tx = normtx.cautious(optax.trace(decay=0.9))
    zeros = jax.tree.map(jnp.zeros_like, params)
    outs, state = _run(tx, [_tree(0), zeros], params)
    chex.assert_trees_all_equal(outs[1], zeros)
    chex.assert_trees_all_equal(state.kept, jax.tree.map(lambda _: np.int32(0), params))
    chex.assert_tree_all_finite(state)


def test_cautious_adam_never_points_uphill_on_a_quadratic():
    """The paper's guarantee: ``<ũ_t, g_t> >= 0``, coordinate by coordinate, at every step — on an
    ill-conditioned quadratic where plain Adam's momentum does point uphill (so the check is not
    vacuous) — and the cautious run still descends."""
    rng = np.random.default_rng(0)
    d = 64
    curv = jnp.asarray(np.logspace(-2, 2, d), jnp.float32)
    loss = lambda w: 0.5 * jnp.sum(curv * w**2)  # noqa: E731
    grad = jax.jit(jax.grad(loss))
    w0 = jnp.asarray(rng.standard_normal(d), jnp.float32)
    results = {}
    for name, direction in (
        ("adam", optax.scale_by_adam()),
        ("cautious", normtx.cautious(optax.scale_by_adam())),
    ):
        tx = optax.chain(direction, optax.scale_by_learning_rate(0.05))
        update, w, state = jax.jit(tx.update), w0, tx.init(w0)
        worst, losses = np.inf, []
        for _ in range(60):
            g = grad(w)
            u, state = update(g, state, w)
            worst = min(worst, float(jnp.min(-u * g)))  # -u: the descent direction
            w = optax.apply_updates(w, u)
            losses.append(float(loss(w)))
        results[name] = worst, losses
    assert results["adam"][0] < 0  # Adam's update climbs on some coordinate at some step
    assert results["cautious"][0] >= 0
    assert results["cautious"][1][-1] < 1e-2 * float(loss(w0))


def test_cautious_passes_extra_args_to_the_inner_transform():
    seen = {}

    def update(u, s, p=None, *, tag):
        seen["tag"] = tag
        return u, s

    inner = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)
    g = _tree(0)
    tx = normtx.cautious(inner)
    u, _ = tx.update(g, tx.init(g), None, tag=3)
    assert seen["tag"] == 3
    chex.assert_trees_all_equal(u, g)  # the identity agrees with g everywhere


# ---- cautious weight decay ------------------------------------------------------------------------


def _cwd_oracle(u, x, lam):
    u64, x64 = np.asarray(u, np.float64), np.asarray(x, np.float64)
    return u64 + lam * (u64 * x64 >= 0) * x64


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_cautious_weight_decay_decays_only_where_update_and_param_agree(jit):
    params, u = registry.params(), _tree(1)
    u = jax.tree.map(lambda a: a.at[0].set(0.0), u)  # u = 0: 1[0 · x >= 0] = 1, decay applies
    tx = normtx.add_cautious_weight_decay(0.1)
    update = jax.jit(tx.update) if jit else tx.update
    out, state = update(u, tx.init(params), params)
    for o, uu, x in zip(*map(jax.tree.leaves, (out, u, params))):
        assert o.dtype == jnp.float32
        np.testing.assert_allclose(
            np.asarray(o, np.float64), _cwd_oracle(uu, x, 0.1), rtol=1e-6, atol=1e-7
        )
    assert int(state.count) == 1


def test_cautious_weight_decay_equals_optax_where_every_sign_agrees():
    """``u = sign(x) |g|``: every coordinate agrees, so CWD is ``optax.add_decayed_weights``:
    the same float32 operations, bit for bit op by op (eager; compiled, XLA may contract
    ``u + λx`` into an FMA in one program and not the other); ``mask`` excludes leaves as optax's
    does."""
    params = registry.params()
    u = jax.tree.map(lambda x, g: jnp.sign(x) * jnp.abs(g), params, _tree(2))
    for mask in (None, registry.kernels):
        ours = normtx.add_cautious_weight_decay(0.1, mask=mask)
        theirs = optax.add_decayed_weights(0.1, mask=mask)
        got, _ = ours.update(u, ours.init(params), params)
        want, _ = theirs.update(u, theirs.init(params), params)
        chex.assert_trees_all_equal(got, want)
    assert not np.array_equal(got["Dense_0"]["kernel"], u["Dense_0"]["kernel"])
    chex.assert_trees_all_equal(got["Dense_0"]["bias"], u["Dense_0"]["bias"])  # masked out


def test_cautious_weight_decay_follows_a_schedule():
    params, u = registry.params(), _tree(3)
    schedule = lambda count: 0.1 * (count + 1)  # noqa: E731
    tx = normtx.add_cautious_weight_decay(schedule)
    update, state = jax.jit(tx.update), tx.init(params)
    for step in range(3):
        out, state = update(u, state, params)
        for o, uu, x in zip(*map(jax.tree.leaves, (out, u, params))):
            np.testing.assert_allclose(
                np.asarray(o, np.float64),
                _cwd_oracle(uu, x, 0.1 * (step + 1)),
                rtol=1e-6,
                atol=1e-7,
            )


def test_c_adamw_with_cautious_weight_decay_chains():
    """The two compose (the chain of both papers): one jitted step equals the closed form."""
    params, g = registry.params(), _tree(4)
    tx = optax.chain(
        normtx.cautious(optax.scale_by_adam()),
        normtx.add_cautious_weight_decay(0.1),
        optax.scale_by_learning_rate(0.01),
    )
    out, _ = jax.jit(tx.update)(g, tx.init(params), params)
    adam, _ = optax.scale_by_adam().update(g, optax.scale_by_adam().init(params))
    for o, a, gg, x in zip(*map(jax.tree.leaves, (out, adam, g, params))):
        c, _ = _cautious_oracle(a, gg, 1e-3)
        np.testing.assert_allclose(
            np.asarray(o, np.float64), -0.01 * _cwd_oracle(c, x, 0.1), rtol=1e-6, atol=1e-9
        )
