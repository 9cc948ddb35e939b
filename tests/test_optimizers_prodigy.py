"""``normtx.optimizers.prodigy`` against ``optax.contrib.prodigy`` and a float64 NumPy oracle."""

from __future__ import annotations

from typing import NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import normtx

F32 = jnp.float32


class _MLP(nn.Module):
    dtype: jnp.dtype = F32
    param_dtype: jnp.dtype = F32

    @nn.compact
    def __call__(self, x):
        dense = lambda n: nn.Dense(n, dtype=self.dtype, param_dtype=self.param_dtype)  # noqa: E731
        return dense(3)(nn.relu(dense(8)(nn.tanh(dense(16)(x)))))


def _problem(seed=0, dtype=F32):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(64, 5)), dtype)
    y = jnp.asarray(rng.integers(0, 3, size=64))
    model = _MLP(param_dtype=dtype, dtype=dtype)
    params = model.init(jax.random.key(seed), x[:1])["params"]

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(
            model.apply({"params": p}, x), y
        ).mean()

    return params, jax.jit(jax.value_and_grad(loss))


def _train(tx, params, grad_fn, steps):
    """``steps`` updates in one compiled ``lax.scan``: final params, final state, losses."""

    def step(carry, _):
        p, state = carry
        loss, g = grad_fn(p)
        u, state = tx.update(g, state, p)
        return (optax.apply_updates(p, u), state), loss

    run = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), length=steps))
    (params, state), losses = run(params)
    return params, state, np.asarray(losses)


def _max_abs_diff(a, b) -> float:
    return max(
        float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


SETTINGS = {
    "default": dict(),
    "weight_decay": dict(weight_decay=0.1),
    "safeguard_warmup": dict(safeguard_warmup=True),
    "d_coef": dict(estim_lr_coef=0.3),
    "schedule_and_betas": dict(
        learning_rate=optax.cosine_decay_schedule(1.0, 100), betas=(0.8, 0.99), beta3=0.95
    ),
    "eps_and_estim_lr0": dict(eps=1e-6, estim_lr0=1e-4),
}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_matches_optax_contrib_prodigy_on_a_flax_mlp_100_steps(setting):
    # Bias correction is always on in optax (our default). 100 steps in float64, where the two
    # implementations differ only by rounding: parameters, d = η and losses agree to 1e-6 (the
    # float32 runs are in the next test).
    kw = SETTINGS[setting]
    params, grad_fn = _problem(dtype=jnp.float64)
    ours, s_ours, l_ours = _train(normtx.optimizers.prodigy(**kw), params, grad_fn, 100)
    ref, s_ref, l_ref = _train(optax.contrib.prodigy(**kw), params, grad_fn, 100)
    err = _max_abs_diff(ours, ref)
    print(f"{setting}: max |Δparams| after 100 float64 steps = {err:.2e}")
    assert err <= 1e-6
    eta = optax.tree_utils.tree_get(s_ours, "eta")
    np.testing.assert_allclose(eta, s_ref.estim_lr, rtol=1e-6)
    assert eta > 100 * kw.get("estim_lr0", 1e-6)  # the estimate really moved
    np.testing.assert_allclose(l_ours, l_ref, rtol=1e-6)


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_matches_optax_contrib_prodigy_in_float32_through_the_warmup(setting):
    # In float32 the two agree to 1e-6 while d warms up (20 steps: d grows up to 1e3-fold). Later
    # this small MLP's Prodigy dynamics amplify rounding: nudging optax's own initial weights by
    # one ulp moves its 100-step result by ~1e-5 to ~1, and our few-ulp per-step differences
    # (other association of η·lr·bc) grow the same way, so the 100-step comparison runs in
    # float64 above, where the two agree to ~1e-10 (and so does d = η; in float32 d inherits the
    # cancellation in w_0 - w_t, relative error ≈ |Δw| / |w_0 - w_t|).
    kw = SETTINGS[setting]
    params, grad_fn = _problem()
    ours, _, _ = _train(normtx.optimizers.prodigy(**kw), params, grad_fn, 20)
    ref, _, _ = _train(optax.contrib.prodigy(**kw), params, grad_fn, 20)
    err = _max_abs_diff(ours, ref)
    print(f"{setting}: max |Δparams| after 20 float32 steps = {err:.2e}")
    assert err <= 1e-6


# ---- an independent float64 oracle of Prodigy (Algorithm 3 as coded by its authors) ------------
def prodigy_oracle(grad, w0, steps, *, lr=1.0, b1=0.9, b2=0.999, eps=1e-8, d0=1e-6, d_coef=1.0,
                   wd=0.0, safeguard=False, bias_correction=True, cast=lambda x: x):  # fmt: skip
    """``cast`` rounds the step and the new weights as the weights' dtype does (float16, say)."""
    w0 = np.asarray(w0, np.float64)
    w, d, b3 = w0.copy(), d0, np.sqrt(b2)
    m, v, s, r = np.zeros_like(w0), np.zeros_like(w0), np.zeros_like(w0), 0.0
    ds = [d]
    for k in range(1, steps + 1):
        g = grad(w)
        bc = np.sqrt(1 - b2**k) / (1 - b1**k) if bias_correction else 1.0
        dlr = d * lr * bc
        m = b1 * m + (1 - b1) * d * g
        v = b2 * v + (1 - b2) * d * d * g * g
        r = b3 * r + (d / d0) * dlr * (g @ (w0 - w))
        s = b3 * s + (d / d0) * (d if safeguard else dlr) * g
        den = np.abs(s).sum()
        d_new = max(d, d_coef * r / den) if den > 0 else d
        w = cast(w - cast(dlr * (m / (np.sqrt(v) + d_new * eps) + wd * w)))  # ε scaled by new d
        d = d_new
        ds.append(d)
    return np.array(ds), w


@pytest.mark.parametrize("bias_correction", [True, False])
@pytest.mark.parametrize("safeguard", [False, True])
def test_matches_float64_oracle_with_and_without_bias_correction(bias_correction, safeguard):
    # PyTorch's Prodigy turns the bias correction off by default; optax always has it on. Both
    # against an independent float64 oracle (the library runs in float64 here).
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    target = rng.normal(size=6)

    def grad(w):
        return a.T @ (a @ w - target)

    tx = normtx.optimizers.prodigy(
        0.7, weight_decay=0.01, bias_correction=bias_correction, safeguard_warmup=safeguard,
        estim_lr0=1e-3,
    )  # fmt: skip
    w = jnp.zeros(6, jnp.float64)
    state = tx.init(w)
    etas = [optax.tree_utils.tree_get(state, "eta")]
    for _ in range(40):
        u, state = tx.update(jnp.asarray(grad(np.asarray(w))), state, w)
        w = optax.apply_updates(w, u)
        etas.append(optax.tree_utils.tree_get(state, "eta"))
    want_d, want_w = prodigy_oracle(
        grad, np.zeros(6), 40, lr=0.7, wd=0.01, d0=1e-3, safeguard=safeguard,
        bias_correction=bias_correction,
    )  # fmt: skip
    np.testing.assert_allclose(etas, want_d, rtol=1e-10)
    np.testing.assert_allclose(w, want_w, rtol=1e-10, atol=1e-12)
    assert want_d[-1] > 2 * want_d[0]  # the estimate moved


def test_max_growth_caps_the_estimate():
    params, grad_fn = _problem()
    etas = []
    tx = normtx.optimizers.prodigy(max_growth=1.1)
    state, p, update = tx.init(params), params, jax.jit(tx.update)
    for _ in range(30):
        etas.append(float(optax.tree_utils.tree_get(state, "eta")))
        u, state = update(grad_fn(p)[1], state, p)
        p = optax.apply_updates(p, u)
    growth = np.array(etas[1:]) / np.array(etas[:-1])
    assert growth.max() <= 1.1 * (1 + 1e-6)
    assert growth.max() > 1.05


# ---- reliability ------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["all", "one_leaf"])
def test_zero_gradients_for_100_steps_no_nan_unlike_optax(which):
    params, grad_fn = _problem()

    def grads(p):
        g = jax.tree.map(jnp.zeros_like, p)
        if which == "one_leaf":  # every leaf but the first Dense kernel gets its real gradient
            real = grad_fn(p)[1]
            g = {**real, "Dense_0": {**real["Dense_0"], "kernel": g["Dense_0"]["kernel"]}}
        return g

    def run(tx):
        state, p = tx.init(params), params
        for _ in range(100):
            u, state = jax.jit(tx.update)(grads(p), state, p)
            p = optax.apply_updates(p, u)
        return p, state

    ours, s_ours = run(normtx.optimizers.prodigy())
    assert all(np.isfinite(x).all() for x in jax.tree.leaves((ours, s_ours)))
    eta = float(optax.tree_utils.tree_get(s_ours, "eta"))
    if which == "all":
        assert eta == np.float32(1e-6)  # nothing to learn from: η unchanged
        np.testing.assert_array_equal(ours["Dense_0"]["kernel"], params["Dense_0"]["kernel"])
    else:
        assert eta > 1e-6
        np.testing.assert_array_equal(ours["Dense_0"]["kernel"], params["Dense_0"]["kernel"])

    # The contrast: optax.contrib.prodigy divides 0 by 0 in its d estimate when every gradient
    # is zero. Assert its NaN only where it really happens in the installed optax.
    ref, s_ref = run(optax.contrib.prodigy())
    ref_nan = bool(np.isnan(s_ref.estim_lr)) or any(np.isnan(x).any() for x in jax.tree.leaves(ref))
    print(f"optax {optax.__version__} prodigy, zero gradients ({which}): NaN = {ref_nan}")
    if ref_nan:
        assert np.isnan(s_ref.estim_lr)  # the NaN sits in the step size, which we keep finite


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_tiny_and_huge_gradients_never_nan(scale):
    # float32 Adam moments of η g overflow for 1e30 (v = inf: the step is 0) and underflow for
    # 1e-30; either way nothing is NaN and η stays finite.
    params, grad_fn = _problem()
    tx = normtx.optimizers.prodigy()
    state, p = tx.init(params), params
    for _ in range(100):
        g = jax.tree.map(lambda x: jnp.asarray(scale, F32) * x, grad_fn(p)[1])
        u, state = jax.jit(tx.update)(g, state, p)
        p = optax.apply_updates(p, u)
    ev = state[0]
    assert all(
        np.isfinite(x).all() for x in jax.tree.leaves((p, ev.eta, ev.numerator, ev.denominator))
    )
    assert all(not np.isnan(x).any() for x in jax.tree.leaves(state))


def _f16(x):
    return np.asarray(np.asarray(x, np.float64).astype(np.float16), np.float64)


def test_float16_params_keep_the_moments_and_sums_in_float32():
    """float16 weights (issue 15, item 3): ``m_t`` (≈ 0.1 η g), ``v_t`` (≈ 1e-3 η² g²) and
    ``s_t`` (η²-weighted) are below float16's smallest number at η_0 = 1e-6, so float16 buffers
    held 0: the Adam step lost its averages (``m/√v`` of the last gradient alone) and η its sums.
    They are float32 for float16 leaves (the anchor stays float16), and the run follows the float64
    oracle on the same float16 weights and gradients."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((12, 12)) / np.sqrt(12)
    w_star = rng.standard_normal(12)
    grad = lambda w: _f16(a.T @ (a @ (np.asarray(w, np.float64) - w_star)))  # noqa: E731
    tx = normtx.optimizers.prodigy()
    w = jnp.zeros(12, jnp.float16)
    state = tx.init(w)
    moments = optax.tree_utils.tree_get(state, "direction")
    assert moments.mu.dtype == moments.nu.dtype == state[0].grad_sum.dtype == F32
    assert state[0].anchor.dtype == jnp.float16
    step = jax.jit(tx.update)
    etas = [float(state[0].eta)]
    for _ in range(40):
        u, state = step(jnp.asarray(grad(w), jnp.float16), state, w)
        w = optax.apply_updates(w, u)
        etas.append(float(state[0].eta))
    want_ds, want_w = prodigy_oracle(grad, np.zeros(12), 40, cast=_f16)
    assert want_ds[-1] > 1e4 * want_ds[0]  # the estimate escapes η_0
    # A weight rounded the other way at a float16 tie (one ulp, 2^-11 relative) moves <g, w_0 - w>
    # by that much: η agrees to 1e-3 and the weights to two ulps (2^-10 in [1, 2)). The float16
    # buffers were off by 3.4x in η and 0.47 in the weights.
    np.testing.assert_allclose(etas, want_ds, rtol=1e-3)
    np.testing.assert_allclose(np.asarray(w, np.float64), want_w, rtol=0, atol=2e-3)


def test_float16_state_dtype_is_refused_at_construction():
    with pytest.raises(ValueError, match=r"prodigy: state_dtype=float16 cannot hold .*bfloat16"):
        normtx.optimizers.prodigy(state_dtype=jnp.float16)


class _Pair(NamedTuple):
    w: jax.Array
    b: jax.Array


def _pair(seed):
    rng = np.random.default_rng(seed)
    return _Pair(jnp.asarray(rng.standard_normal((3, 2))), jnp.asarray(rng.standard_normal(2)))


_MASK = _Pair(True, False)
STRUCTURES = {  # (ours, optax's) around tuple and NamedTuple params, masked and partitioned
    "tuple": (lambda tx: tx, lambda p: tuple(p)),
    "named_tuple": (lambda tx: tx, lambda p: p),
    "nested_tuples": (lambda tx: tx, lambda p: {"a": (p.w, (p.b,))}),
    "masked": (lambda tx: optax.masked(tx, _MASK), lambda p: p),
    "partition": (
        lambda tx: optax.partition({"p": tx, "z": optax.set_to_zero()}, _Pair("p", "z")),
        lambda p: p,
    ),
}


@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_tuple_params_and_masked_or_partitioned_match_optax(structure):
    """Issue 15, item 6: the direction's per-leaf results were split with ``is_leaf=tuple``, which
    took the params' own tuples and ``optax.MaskedNode`` (an empty tuple) for them: tuple params
    crashed, and so did prodigy inside ``optax.masked``/``optax.partition``. Five float64 steps
    equal ``optax.contrib.prodigy``'s under the same wrapper."""
    wrap, shape = STRUCTURES[structure]
    p0 = shape(_pair(0))
    runs = []
    for tx in (
        wrap(normtx.optimizers.prodigy(estim_lr0=1e-2)),
        wrap(optax.contrib.prodigy(estim_lr0=1e-2)),
    ):
        p, state = p0, tx.init(p0)
        for t in range(5):
            g = shape(_pair(10 + t))
            u, state = jax.jit(tx.update)(g, state, p)
            p = optax.apply_updates(p, u)
        runs.append(p)
    chex.assert_trees_all_close(runs[0], runs[1], rtol=1e-9, atol=1e-12)
    assert _max_abs_diff(runs[0], p0) > 1e-3  # it moved


def test_state_is_four_floats_per_param_like_optax():
    params, _ = _problem()
    n = sum(x.size for x in jax.tree.leaves(params))

    def per_param(shapes):
        return sum(x.size for x in jax.tree.leaves(shapes) if x.ndim > 0) / n

    ours = jax.eval_shape(normtx.optimizers.prodigy().init, params)
    assert per_param(ours) == 4 == per_param(jax.eval_shape(optax.contrib.prodigy().init, params))
    bf16 = jax.eval_shape(normtx.optimizers.prodigy(state_dtype=jnp.bfloat16).init, params)
    assert {x.dtype for x in jax.tree.leaves(bf16) if x.ndim > 0} == {jnp.dtype(jnp.bfloat16)}
    assert optax.tree_utils.tree_get(bf16, "eta").dtype == F32


def test_inject_hyperparams_and_jit_equal_eager():
    # 10 steps: jitted (one lax.scan), under optax.inject_hyperparams, and eager op by op.
    params, grad_fn = _problem()
    make = lambda: normtx.optimizers.prodigy(0.5, weight_decay=0.01)  # noqa: E731
    direct, s1, _ = _train(make(), params, grad_fn, 10)
    tx = optax.inject_hyperparams(normtx.optimizers.prodigy)(learning_rate=0.5, weight_decay=0.01)
    injected, s2, _ = _train(tx, params, grad_fn, 10)
    tx, p = make(), params
    state = tx.init(p)
    for _ in range(10):
        u, state = tx.update(grad_fn(p)[1], state, p)
        p = optax.apply_updates(p, u)
    for other in (injected, p):
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), direct, other
        )
    for other in (s2, state):
        np.testing.assert_allclose(
            optax.tree_utils.tree_get(other, "eta"), optax.tree_utils.tree_get(s1, "eta"), rtol=1e-5
        )
    assert float(optax.tree_utils.tree_get(s1, "eta")) > 2e-6  # it moved (from 1e-6)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(betas=(0.9, 1.0)), r"betas must be numbers in \[0, 1\)"),
        (dict(betas=(0.9,)), "betas must be a pair"),
        (dict(beta3=1.5), "beta3 must be None or a number in"),
        (dict(estim_lr0=0.0), "estim_lr0 must be > 0"),
        (dict(estim_lr_coef=-1.0), "estim_lr_coef must be > 0"),
        (dict(eps=-1.0), "eps must be >= 0"),
        (dict(weight_decay=-0.1), "weight_decay must be >= 0"),
        (dict(max_growth=1.0), "max_growth must be > 1"),
        (dict(safeguard_warmup=1), "safeguard_warmup must be True or False"),
    ],
)
def test_bad_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=match):
        normtx.optimizers.prodigy(**kw)


def test_missing_params():
    params, grad_fn = _problem()
    tx = normtx.optimizers.prodigy()
    with pytest.raises(ValueError, match="update needs the current params"):
        tx.update(grad_fn(params)[1], tx.init(params))
