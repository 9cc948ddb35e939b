"""``normtx.orthogonalize_newton_schulz`` on Flax models, stacked layers, and against optax's Muon.

Oracles: the float64 SVD of every slice with the schedule's scalar polynomial applied to its
normalised singular values (``polar_helpers.iteration_oracle``), the exact polar factor for a
converged schedule, and ``optax.contrib``'s own Newton–Schulz and ``scale_by_muon``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import _muon
from polar_helpers import ROUNDING_ATOL, iteration_oracle, polar64, rel_error

import normtx
from normtx.dims import CONV_HWIO, DimensionNumbers
from normtx.linalg import newton_schulz_schedule

MUON = (3.4445, -4.7750, 2.0315)
STACKED = DimensionNumbers((1,), (2,))


def _slices_oracle(x, dims, schedule, factor):
    """Leaf -> matrices (batch, d_in, d_out) in NumPy, oracle per slice, and back."""
    x = np.asarray(x, np.float64)
    fin, fout = dims
    batch = [a for a in range(x.ndim) if a not in fin + fout]
    perm = batch + list(fin) + list(fout)
    moved = x.transpose(perm)
    d_in = int(np.prod([x.shape[a] for a in fin]))
    d_out = int(np.prod([x.shape[a] for a in fout]))
    mats = moved.reshape(-1, d_in, d_out)
    out = factor(d_in, d_out) * iteration_oracle(mats, schedule)
    return out.reshape(moved.shape).transpose(np.argsort(perm))


RMS = lambda d_in, d_out: np.sqrt(d_out / d_in)  # noqa: E731


class _CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(5)(x)


def _conv_dims(path, leaf):
    return CONV_HWIO if leaf.ndim == 4 else None


def test_in_an_optax_chain_on_a_flax_cnn():
    """Kernels (a conv HWIO kernel and a dense kernel) get ``-lr · √(d_out/d_in) · X_T`` per
    matrix; biases go to Adam through ``optax.partition``."""
    model = _CNN()
    x = jax.random.normal(jax.random.key(0), (4, 6, 6, 3))
    y = jax.random.normal(jax.random.key(1), (4, 5))
    params = model.init(jax.random.key(2), x)
    labels = jax.tree.map(lambda p: "ns" if p.ndim >= 2 else "adam", params)
    lr = 0.1
    tx = optax.chain(
        optax.partition(
            {
                "ns": normtx.orthogonalize_newton_schulz(dimension_numbers=_conv_dims),
                "adam": optax.scale_by_adam(),
            },
            labels,
        ),
        optax.scale_by_learning_rate(lr),
    )
    state = tx.init(params)

    @jax.jit
    def loss(p):
        return jnp.mean((model.apply(p, x) - y) ** 2)

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, g, u

    _, _, grads, updates = step(params, state)
    schedule = newton_schulz_schedule("polar_express", 5)
    for name, dims in (("Conv_0", CONV_HWIO), ("Dense_0", DimensionNumbers((0,), (1,)))):
        g = grads["params"][name]["kernel"]
        u = updates["params"][name]["kernel"]
        assert u.shape == g.shape
        assert u.dtype == g.dtype
        d_in = int(np.prod([g.shape[a] for a in dims.fan_in_axes]))
        d_out = int(np.prod([g.shape[a] for a in dims.fan_out_axes]))
        np.testing.assert_allclose(
            np.asarray(u),
            -lr * _slices_oracle(g, dims, schedule, RMS),
            atol=lr * RMS(d_in, d_out) * ROUNDING_ATOL,
        )
    losses = [float(loss(params))]
    p, s = params, tx.init(params)
    for _ in range(10):
        p, s, _, _ = step(p, s)
        losses.append(float(loss(p)))
    assert losses[-1] < losses[0]


def test_stacked_layers_are_orthogonalized_slice_by_slice():
    g = jax.random.normal(jax.random.key(3), (3, 6, 10), jnp.float32)
    tx = normtx.orthogonalize_newton_schulz(steps=10, scale="spectral", dimension_numbers=STACKED)
    u, _ = tx.update({"w": g}, tx.init({"w": g}))
    for i in range(3):
        assert rel_error(u["w"][i], polar64(g[i])) < 1e-3
    # not the polar factor of the flattened (18, 10) matrix
    flat = polar64(np.asarray(g).reshape(18, 10)).reshape(3, 6, 10)
    assert rel_error(u["w"], flat) > 0.1


@pytest.mark.parametrize(
    ("scale", "factor"),
    [
        ("spectral", lambda i, o: 1.0),
        ("rms_to_rms", RMS),
        ("muon", lambda i, o: np.sqrt(max(1.0, o / i))),
        (0.5, lambda i, o: 0.5),
    ],
)
def test_scales(scale, factor):
    rng = np.random.default_rng(4)
    tree = {
        "wide": jnp.asarray(rng.standard_normal((6, 14)), jnp.float32),
        "tall": jnp.asarray(rng.standard_normal((14, 6)), jnp.float32),
    }
    tx = normtx.orthogonalize_newton_schulz(scale=scale)
    u, _ = tx.update(tree, tx.init(tree))
    schedule = newton_schulz_schedule("polar_express", 5)
    for k, g in tree.items():
        expected = _slices_oracle(g, DimensionNumbers((0,), (1,)), schedule, factor)
        size = factor(*g.shape)  # float32 rounding of the iteration, scaled with the update
        np.testing.assert_allclose(np.asarray(u[k]), expected, atol=ROUNDING_ATOL * size)


def test_schatten4_normalization_and_cubic_schedule_pass_through():
    g = jax.random.normal(jax.random.key(9), (2, 12, 10), jnp.float32)  # direct, not Gram
    for kwargs, schatten in (({"normalization": "schatten4"}, 4), ({"coefficients": "cubic"}, 2)):
        tx = normtx.orthogonalize_newton_schulz(
            scale="spectral", dimension_numbers=STACKED, **kwargs
        )
        u, _ = tx.update({"w": g}, tx.init({"w": g}))
        schedule = newton_schulz_schedule(kwargs.get("coefficients", "polar_express"), 5)
        np.testing.assert_allclose(
            np.asarray(u["w"]), iteration_oracle(g, schedule, schatten=schatten), atol=ROUNDING_ATOL
        )


def _mixed_tree():
    rng = np.random.default_rng(5)
    f32 = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
    return {
        "a": f32(8, 12),
        "b": f32(12, 8),  # same short-side-first shape as "a"
        "c": f32(2, 8, 12),  # a stack of two more
        "d": f32(5, 7),
        "e": jnp.asarray(rng.standard_normal((8, 12)), jnp.bfloat16),  # same shape, other dtype
        "f": f32(3, 3, 2, 4),  # conv HWIO: (18, 4)
    }


def _mixed_dims(path, leaf):
    if path == "c":
        return STACKED
    return CONV_HWIO if leaf.ndim == 4 else None


def _count_iterations(fn, *args):
    """How many Newton–Schulz iterations (calls of the jitted kernel) a traced update makes."""
    return str(jax.make_jaxpr(fn)(*args)).count("name=_newton_schulz")


def test_batched_equals_per_leaf_and_uses_fewer_kernels():
    tree = _mixed_tree()
    batched = normtx.orthogonalize_newton_schulz(dimension_numbers=_mixed_dims)
    single = normtx.orthogonalize_newton_schulz(
        dimension_numbers=_mixed_dims, batch_same_shapes=False
    )
    ub, _ = batched.update(tree, batched.init(tree))
    us, _ = single.update(tree, single.init(tree))
    for k in tree:
        assert ub[k].dtype == tree[k].dtype
        np.testing.assert_allclose(
            np.asarray(ub[k], np.float32), np.asarray(us[k], np.float32), atol=ROUNDING_ATOL
        )
    # groups: {a, b, c} (8, 12) f32, {d} (5, 7), {e} (8, 12) bf16, {f} (4, 18): 4 iterations, not 6
    assert _count_iterations(lambda t: batched.update(t, optax.EmptyState())[0], tree) == 4
    assert _count_iterations(lambda t: single.update(t, optax.EmptyState())[0], tree) == 6


def test_jit_equals_eager_and_zero_gives_zero():
    tree = _mixed_tree()
    tree["z"] = jnp.zeros((8, 12), jnp.float32)
    tx = normtx.orthogonalize_newton_schulz(dimension_numbers=_mixed_dims)
    state = tx.init(tree)
    eager, _ = tx.update(tree, state)
    jitted, _ = jax.jit(tx.update)(tree, state)
    for k in tree:
        np.testing.assert_allclose(
            np.asarray(eager[k], np.float32), np.asarray(jitted[k], np.float32), atol=ROUNDING_ATOL
        )
    np.testing.assert_array_equal(np.asarray(eager["z"]), 0.0)
    assert np.isfinite(np.asarray(eager["a"])).all()


def test_low_precision_leaves_keep_their_dtype_and_bf16_compute():
    g = jax.random.normal(jax.random.key(6), (16, 24), jnp.float32)
    tree = {"h": g.astype(jnp.float16), "b": g.astype(jnp.bfloat16)}
    tx = normtx.orthogonalize_newton_schulz(steps=10, scale="spectral", compute_dtype=jnp.bfloat16)
    u, _ = tx.update(tree, tx.init(tree))
    assert u["h"].dtype == jnp.float16
    assert u["b"].dtype == jnp.bfloat16
    for k in tree:
        assert rel_error(u[k], polar64(np.asarray(tree[k], np.float64))) < 3e-2


def test_matches_optax_newton_schulz():
    """Same quintic, same steps: optax.contrib's orthogonalization is the oracle."""
    rng = np.random.default_rng(7)
    tree = {
        "w": jnp.asarray(rng.standard_normal((12, 20)), jnp.float32),
        "t": jnp.asarray(rng.standard_normal((20, 12)), jnp.float32),
        "s": jnp.asarray(rng.standard_normal((3, 10, 6)), jnp.float32),
    }
    dims = {"w": None, "t": None, "s": STACKED}
    ours = normtx.orthogonalize_newton_schulz(
        coefficients="muon", scale="spectral", dimension_numbers=dims
    )
    u, _ = jax.jit(ours.update)(tree, ours.init(tree))
    coeffs = jnp.asarray(MUON)
    optax_dims = {"s": _muon.MuonDimensionNumbers(1, 2)}
    for k, g in tree.items():
        ref = _muon.orthogonalize_via_newton_schulz(
            g, coeffs, 5, dimension_numbers=optax_dims.get(k)
        )
        np.testing.assert_allclose(np.asarray(u[k]), np.asarray(ref), atol=1e-5)


def test_matches_optax_scale_by_muon_with_width_scaling():
    """``scale='muon'`` is optax's ``scale_by_muon`` (β = 0) followed by its width scaling."""
    rng = np.random.default_rng(8)
    tree = {
        "up": jnp.asarray(rng.standard_normal((8, 24)), jnp.float32),
        "down": jnp.asarray(rng.standard_normal((24, 8)), jnp.float32),
    }
    optax_dims = {k: _muon.MuonDimensionNumbers() for k in tree}
    ref_tx = optax.chain(
        _muon.scale_by_muon(
            ns_coeffs=MUON,
            ns_steps=5,
            beta=0.0,
            nesterov=False,
            weight_dimension_numbers=optax_dims,
        ),
        _muon.scale_by_shape(optax_dims),
    )
    ref, _ = ref_tx.update(tree, ref_tx.init(tree))
    ours = normtx.orthogonalize_newton_schulz(coefficients="muon", scale="muon")
    u, _ = ours.update(tree, ours.init(tree))
    for k in tree:
        np.testing.assert_allclose(np.asarray(u[k]), np.asarray(ref[k]), atol=1e-5)


# ---- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("leaf", "dims", "match"),
    [
        (
            jnp.ones(4, jnp.float32),
            None,
            r"'bad' \(shape \(4,\), float32\).*not a matrix.*modular_norm_partition",
        ),
        (jnp.ones((2, 3), jnp.int32), None, r"'bad' \(shape \(2, 3\), int32\).*floating"),
        (
            jnp.ones((2, 3, 4), jnp.float32),
            None,
            r"'bad' \(shape \(2, 3, 4\), float32\).*rank 3.*dimension_numbers=",
        ),
        (
            jnp.ones((2, 3, 4), jnp.float32),
            DimensionNumbers((0, 1), (1, 2)),
            r"overlap.*'bad'.*float32",
        ),
        (jnp.ones((0, 3), jnp.float32), None, r"'bad' \(shape \(0, 3\), float32\).*empty"),
    ],
)
def test_bad_leaves_fail_at_init_naming_the_leaf(leaf, dims, match):
    tree = {"good": jnp.ones((3, 3)), "bad": leaf}
    tx = normtx.orthogonalize_newton_schulz(
        dimension_numbers=None if dims is None else {"good": None, "bad": dims}
    )
    with pytest.raises(ValueError, match=match):
        tx.init(tree)


def test_bad_dims_spec():
    tx = normtx.orthogonalize_newton_schulz(dimension_numbers=lambda p, x: "rows")
    with pytest.raises(ValueError, match="DimensionNumbers"):
        tx.init({"w": jnp.ones((3, 3))})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps"),
        ({"coefficients": "sextic"}, "coefficients"),
        ({"scale": "frobenius"}, "scale"),
        ({"scale": -1.0}, "scale"),
        ({"scale": None}, "scale"),
        ({"compute_dtype": jnp.int8}, "compute_dtype"),
        ({"batch_same_shapes": 1}, "batch_same_shapes"),
        ({"normalization": "l1"}, "normalization"),
    ],
)
def test_bad_hyperparameters_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        normtx.orthogonalize_newton_schulz(**kwargs)
